"""
A hostile backend, run as its own process: it answers each C{.req} in place
in two opens (the status, then the body appended), then opens the answer for
writing again and again until fmq has taken it, as C{touch} or a second worker would. Any of those
opens may land while fmq holds a read lease on the file.

Run as C{python -m tests.rewriter DIRECTORY COUNT BODY_BYTES}; it exits after
answering COUNT requests and prints, as JSON, how many it answered and the
longest any open for writing was held up.
"""

from __future__ import annotations

import json
import os
import sys
import time

#: seconds to keep reopening an answer fmq has not yet taken
REOPEN_FOR = 1.0


def _open_for_writing(path: str, flags: int, slowest: list[float]) -> int | None:
    started = time.monotonic()
    try:
        fd = os.open(path, os.O_WRONLY | flags, 0o644)
    except FileNotFoundError:
        return None  # fmq has read and deleted it already
    slowest[0] = max(slowest[0], time.monotonic() - started)
    return fd


def answer(directory: str, key: str, body: bytes, slowest: list[float]) -> None:
    """
    Answer C{key} in place in two opens, then reopen it for writing.
    """
    path = os.path.join(directory, f"{key}.resp")
    fd = _open_for_writing(path, os.O_CREAT | os.O_TRUNC, slowest)
    if fd is None:
        return
    os.write(fd, b"200\n")
    os.close(fd)
    fd = _open_for_writing(path, os.O_APPEND, slowest)
    if fd is None:
        return
    os.write(fd, body)
    os.close(fd)
    until = time.monotonic() + REOPEN_FOR
    while time.monotonic() < until:
        fd = _open_for_writing(path, 0, slowest)
        if fd is None:
            return
        os.close(fd)


def main(directory: str, count: int, body_bytes: int) -> None:
    body = b"x" * body_bytes
    answered: set[str] = set()
    slowest = [0.0]
    deadline = time.monotonic() + 600
    while len(answered) < count and time.monotonic() < deadline:
        keys = [n[: -len(".req")] for n in os.listdir(directory) if n.endswith(".req")]
        fresh = [k for k in keys if k not in answered]
        for key in fresh:
            answer(directory, key, body, slowest)
            answered.add(key)
        if not fresh:
            time.sleep(0.001)
    print(json.dumps({"answered": len(answered), "slowest_open": slowest[0]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
