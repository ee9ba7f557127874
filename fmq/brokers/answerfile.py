"""
Reading one answer file a backend wrote, whatever the backend did to it.

The type and size of the file are decided from C{lstat} and C{fstat} before
a byte is read: a symbolic link is never followed, a FIFO or device never
opened, an answer larger than the cap never read into memory. A backend still
writing the file in place is told apart by a read lease, whose break is
routed to a signal that cannot stop the process.

When to read (is the answer for the request in flight, has it settled) is
L{fmq.brokers.reader}'s to decide; this module only reads safely.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import sys
from pathlib import Path

import attrs

from fmq.errors import AnswerTooLarge, MalformedResponse, NotARegularFile
from fmq.protocol import BrokerResponse, parse_response

__all__ = ["LEASE_SIGNAL", "ResponseFile", "read_answer", "refusal"]

_F_SETLEASE: int | None = getattr(fcntl, "F_SETLEASE", None)
# Linux's F_SETSIG; some Pythons' fcntl module does not name it.
_F_SETSIG: int | None = getattr(fcntl, "F_SETSIG", 10 if sys.platform == "linux" else None)

#: The signal a broken lease sends fmq. Linux sends SIGIO by default, whose
#: default action ends the process; SIGURG's is to ignore it, and fmq never
#: asks for out-of-band data, the only other reason it is sent.
LEASE_SIGNAL = signal.SIGURG

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

#: bytes read at once when the file's size does not say more
_CHUNK = 65536


@attrs.frozen
class ResponseFile:
    """
    A response file as read, with its identity.

    @ivar closed: C{True} when no process had the file open for writing as it
        was read; C{None} when that cannot be known here (no lease rights), so
        the caller must wait for the file to settle instead.
    @ivar refused: why the file was not read (a link, not a regular file,
        too large), or C{None}; C{data} is then empty.
    """

    data: bytes
    inode: int
    size: int
    mtime_ns: int
    closed: bool | None
    refused: MalformedResponse | None = attrs.field(default=None, eq=False)

    def response(self) -> BrokerResponse:
        """
        The answer this file holds.

        @raise MalformedResponse: the file was refused, or is not an answer.
        """
        if self.refused is not None:
            raise self.refused
        return parse_response(self.data)


def read_answer(
    path: Path, max_bytes: int | None = None, lease: bool = True
) -> ResponseFile | None:
    """
    Read the answer at C{path}, unless a process still has it open for writing.

    @param max_bytes: the largest answer read; a larger one is refused
        unread. C{None}: no cap.
    @param lease: C{False} to read it as it is, without asking whether a
        writer still has it open (it has settled).
    @return: the file (perhaps refused), or C{None} while it is open for
        writing (only known with C{lease}).
    @raise FileNotFoundError: there is no such file.
    @raise OSError: it cannot be opened or read.
    """
    refused = refusal(os.lstat(path), max_bytes)
    if refused is not None:
        return refused
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:  # made a link since the lstat
            return refusal(os.lstat(path), max_bytes)
        raise
    try:
        st = os.fstat(fd)
        refused = refusal(st, max_bytes)
        if refused is not None:
            return refused
        closed = _take_lease(fd) if lease else None
        if closed is False:
            return None
        try:
            data = _read_at_most(fd, st.st_size, max_bytes)
        finally:
            if closed:
                _release_lease(fd)
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        return _refused(st, AnswerTooLarge(_too_large(len(data), max_bytes, "grew while read")))
    return ResponseFile(data, st.st_ino, len(data), st.st_mtime_ns, closed)


def refusal(st: os.stat_result, max_bytes: int | None) -> ResponseFile | None:
    """
    A refused L{ResponseFile} if C{st} is not a file fmq reads, else C{None}.
    """
    if stat.S_ISLNK(st.st_mode):
        return _refused(st, NotARegularFile("a symbolic link, not followed"))
    if not stat.S_ISREG(st.st_mode):
        return _refused(st, NotARegularFile(f"not a regular file ({_kind(st.st_mode)})"))
    if max_bytes is not None and st.st_size > max_bytes:
        return _refused(st, AnswerTooLarge(_too_large(st.st_size, max_bytes)))
    return None


def _refused(st: os.stat_result, why: MalformedResponse) -> ResponseFile:
    return ResponseFile(b"", st.st_ino, st.st_size, st.st_mtime_ns, True, why)


def _too_large(size: int, max_bytes: int, how: str = "not read") -> str:
    return f"{size} bytes, more than max_answer_bytes ({max_bytes}); {how}"


def _kind(mode: int) -> str:
    for test, name in [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]:
        if test(mode):
            return name
    return f"mode {mode:o}"


def _take_lease(fd: int) -> bool | None:
    """
    Take a read lease on C{fd}, its break routed to L{LEASE_SIGNAL} first.

    @return: C{True} if taken; C{False} if refused because a process has the
        file open for writing; C{None} if leases cannot be used here.
    """
    if _F_SETLEASE is None or _F_SETSIG is None:
        return None
    try:
        fcntl.fcntl(fd, _F_SETSIG, LEASE_SIGNAL)
    except OSError:
        return None  # without the signal routed, a lease could kill fmq
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return False if e.errno == errno.EAGAIN else None
    return True


def _release_lease(fd: int) -> None:
    """
    Give the lease back at once, so a writer held up by its break goes on.
    """
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)  # type: ignore[arg-type]
    except OSError:
        pass  # already broken and gone; closing the file releases it anyway


def _read_at_most(fd: int, size: int, max_bytes: int | None) -> bytes:
    """
    Read C{fd} to its end, but never more than C{max_bytes + 1} bytes.
    """
    left = None if max_bytes is None else max_bytes + 1
    chunks = []
    want = max(size + 1, _CHUNK)
    while left is None or left > 0:
        chunk = os.read(fd, want if left is None else min(want, left))
        if not chunk:
            break
        chunks.append(chunk)
        if left is not None:
            left -= len(chunk)
    return b"".join(chunks)
