"""
The file broker's directory, as pure functions: what each name is, what to do
with the files a previous run left, when to read, when to retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import attrs

REQUEST = ".req"
RESPONSE = ".resp"
#: prefix of fmq's own files; dotfiles are never taken for requests or answers
PRIVATE_PREFIX = ".fmq-"
LOCK_NAME = ".fmq.lock"
#: first delay between attempts to delete a file; it doubles up to the cap
FIRST_DELETE_RETRY = 0.1


def request_name(key: str) -> str:
    return key + REQUEST


def response_name(key: str) -> str:
    return key + RESPONSE


class Paths:
    """
    The paths of names in one directory, each built once and kept (up to
    C{keep} of them): joining a C{Path} and turning it into a string cost more
    than the system call it is for, several times per broker request.
    """

    def __init__(self, directory: Path, keep: int = 4096) -> None:
        self._directory = directory
        self._keep = keep
        self._paths: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        """
        C{directory / name}.
        """
        path = self._paths.get(name)
        if path is None:
            if len(self._paths) >= self._keep:
                self._paths.clear()
            path = self._paths[name] = self._directory / name
            str(path)  # a Path keeps its string once made
        return path


def temporary_name(name: str, pid: int) -> str:
    """
    Where fmq writes C{name} before renaming it into place.
    """
    return f"{PRIVATE_PREFIX}{name}.{pid}.tmp"


@attrs.frozen
class Leftovers:
    """
    What a directory holds when fmq starts or gets it back.

    @ivar unanswered: keys of requests with no answer: to adopt.
    @ivar answered: keys of requests with an answer nobody waits for any
        more, and of answers with no request: to delete.
    @ivar temporaries: fmq's own half-written files: to delete.
    """

    unanswered: tuple[str, ...] = ()
    answered: tuple[str, ...] = ()
    temporaries: tuple[str, ...] = ()


def sort_leftovers(names: Iterable[str]) -> Leftovers:
    """
    Sort a directory listing into L{Leftovers}; other files are not fmq's.
    """
    names = set(names)
    requests = {n[: -len(REQUEST)] for n in names if n.endswith(REQUEST) and n[0] != "."}
    responses = {n[: -len(RESPONSE)] for n in names if n.endswith(RESPONSE) and n[0] != "."}
    temporaries = {n for n in names if n.startswith(PRIVATE_PREFIX) and n.endswith(".tmp")}
    return Leftovers(
        unanswered=tuple(sorted(requests - responses)),
        answered=tuple(sorted(responses)),
        temporaries=tuple(sorted(temporaries)),
    )


def answer_keys(names: Iterable[str]) -> list[str]:
    """
    The keys of the answers in a directory listing (dotfiles are not answers).
    """
    return [n[: -len(RESPONSE)] for n in names if n.endswith(RESPONSE) and n[0] != "."]


def settled(
    previous: tuple[int, int, int] | None,
    current: tuple[int, int, int],
    seen_at: float,
    now: float,
    settle_time: float,
) -> bool:
    """
    Whether a response of unknown state may be read: it has not changed
    (inode, size, mtime) for C{settle_time} seconds.
    """
    if settle_time <= 0:
        return True
    return previous == current and now - seen_at >= settle_time


def retry_delay(attempt: int, cap: float) -> float:
    """
    Seconds before the next attempt to delete a file: exponential, capped.
    """
    return min(FIRST_DELETE_RETRY * 2 ** min(attempt, 30), cap)


def ttl_left(ttl: float, written_at: float, now: float) -> float:
    """
    Seconds of TTL left to a request written at C{written_at}; a clock that
    went backwards gives it the full TTL, never more.
    """
    return min(ttl, max(0.0, ttl - (now - written_at)))
