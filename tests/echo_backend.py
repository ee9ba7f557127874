"""
A backend for end-to-end tests that reads requests with the standard library
only, never with fmq's code, so that it checks fmq's formats as any backend
author would read them.

C{python echo_backend.py DIRECTORY FORMAT} answers each C{.req} in DIRECTORY
with a JSON echo of what it read (method, target, headers, body). The
target's C{form=} query parameter picks the answer form: C{bare} (C{200}),
C{reason} (C{200 OK}), C{http} (with headers, some of which fmq must drop)
or C{bom} (the HTTP form behind a UTF-8 byte-order mark). C{/status/NNN}
answers NNN with a body.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def read(data: bytes, format: str) -> dict:
    """
    Method, target, headers and body of a request in C{format}.
    """
    if format == "json":
        request = json.loads(data)
        if "body_base64" in request:
            body = base64.b64decode(request["body_base64"])
        else:
            body = request["body"].encode("utf-8")
        return {**request, "body": body}
    head, _, rest = data.partition(b"\n")
    if format == "line":
        method, target = head.decode().split(" ")
        return {"method": method, "target": target, "headers": [], "body": rest}
    method, target, version = head.decode().rstrip("\r").split(" ")
    assert version == "HTTP/1.1", version
    file = io.BytesIO(rest)
    headers = http.client.parse_headers(file)
    body = file.read(int(headers["Content-Length"]))
    assert file.read() == b"", "bytes after the body"
    return {"method": method, "target": target, "headers": headers.items(), "body": body}


def answer(request: dict) -> bytes:
    """
    The answer to C{request}, in the form its target asks for.
    """
    target = request["target"]
    if target.startswith("/status/"):
        return target[len("/status/") :].encode() + b"\nleftover body"
    body = request["body"]
    echo = json.dumps(
        {
            "method": request["method"],
            "target": target,
            "headers": [[k, v] for k, v in request["headers"]],
            "body": body.decode("latin-1"),
        }
    ).encode()
    form = parse_qs(urlsplit(target).query).get("form", ["bare"])[0]
    if form == "bare":
        return b"200\n" + echo
    if form == "reason":
        return b"200 OK\r\n" + echo
    head = (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /made/1\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n"
        b"Content-Length: 99999\r\n\r\n"
    )
    return (b"\xef\xbb\xbf" if form == "bom" else b"") + head + echo


def main(directory: Path, format: str) -> None:
    while True:
        for req in directory.glob("*.req"):
            resp = req.with_suffix(".resp")
            if resp.exists():
                continue
            try:
                data = req.read_bytes()
            except FileNotFoundError:
                continue
            tmp = directory / f".{req.stem}.tmp"
            tmp.write_bytes(answer(read(data, format)))
            os.rename(tmp, resp)
        time.sleep(0.005)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
