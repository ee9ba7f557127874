"""
Reading an answer only once it is complete, and never one that is not for
the request in flight.

What a C{.resp} is gets decided from its metadata before any byte is read:
older than the request file, it answers an earlier request and is never
read; a link, not a regular file, or larger than the cap, it is refused
unread. A complete answer is one whose writer has closed it (a read lease
says so) or, where that cannot be known or the writer keeps it open, one that
has not changed (inode, size, mtime) for C{settle_time}: its identity is
checked on each look, its data read once (by L{fmq.brokers.answerfile}).
"""

from __future__ import annotations

import stat
from pathlib import Path

import attrs
from twisted.internet.interfaces import IReactorTime

from fmq.brokers.answerfile import ResponseFile, refusal
from fmq.brokers.fs import FileSystem
from fmq.brokers.keystate import Sighting
from fmq.brokers.layout import Paths, response_name
from fmq.errors import MalformedResponse

__all__ = ["Absent", "AnswerReader", "Found", "Refused", "Stale", "Unsettled"]


@attrs.frozen
class Absent:
    """
    No answer yet.
    """


@attrs.frozen
class Stale:
    """
    An answer older than the request in flight: a late one to an earlier
    request, not read.
    """


@attrs.frozen
class Unsettled:
    """
    An answer still being written, or not yet unchanged for the settle time.

    @ivar sighting: what to remember of it until the next look.
    @ivar new: the sighting differs from the one before.
    """

    sighting: Sighting
    new: bool


@attrs.frozen
class Found:
    """
    A complete answer, read.
    """

    answer: ResponseFile


@attrs.frozen
class Refused:
    """
    An answer fmq does not read: a symbolic link, not a regular file, or
    larger than the cap.

    @ivar why: the error its request ends with (502).
    """

    why: MalformedResponse


class AnswerReader:
    """
    Looks at one key's answer file for the request in flight.

    @ivar max_bytes: the largest answer read; C{None}: no cap.
    """

    def __init__(
        self,
        directory: Path,
        fs: FileSystem,
        clock: IReactorTime,
        settle_time: float,
        max_bytes: int | None = None,
    ) -> None:
        self._directory = directory
        self._paths = Paths(directory)
        self._fs = fs
        self._clock = clock
        self._settle_time = settle_time
        self.max_bytes = max_bytes

    def look(
        self, key: str, written_ns: int, sighting: Sighting | None, complete: bool = False
    ) -> Absent | Stale | Unsettled | Found | Refused:
        """
        What C{key}'s answer is now.

        @param written_ns: the request file's mtime: an answer older than it
            belongs to an earlier request.
        @param sighting: the answer as seen at the last look, if unsettled.
        @param complete: an event said the file was closed or renamed into place.
        @raise OSError: it could not be looked at (not C{ENOENT}).
        """
        path = self._paths(response_name(key))
        st = self._fs.lstat(path)
        if st is None:
            return Absent()
        if stat.S_ISREG(st.st_mode) and st.st_mtime_ns < written_ns:
            return Stale()
        refused = refusal(st, self.max_bytes)
        if refused is not None:
            return _outcome(refused, written_ns)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = self._clock.seconds()
        if sighting is not None and sighting.identity == identity:
            if now - sighting.since >= self._settle_time:
                return self._read(path, written_ns, lease=False)
            if not sighting.leasable and not complete:
                return Unsettled(sighting, new=False)
        try:
            found = self._fs.read_response(path, self.max_bytes)
        except FileNotFoundError:
            return Absent()
        if found is None:  # open for writing
            return self._unsettled(sighting, identity, now, leasable=True)
        if found.refused is not None or found.closed or complete:
            return _outcome(found, written_ns)
        if found.mtime_ns < written_ns:
            return Stale()
        return self._unsettled(sighting, identity, now, leasable=False)

    def _read(self, path: Path, written_ns: int, lease: bool) -> Absent | Stale | Found | Refused:
        try:
            found = self._fs.read_response(path, self.max_bytes, lease=lease)
        except FileNotFoundError:
            return Absent()
        if found is None:
            return Absent()  # only a lease could say so, and none was asked for
        return _outcome(found, written_ns)

    def _unsettled(
        self,
        sighting: Sighting | None,
        identity: tuple[int, int, int],
        now: float,
        leasable: bool,
    ) -> Unsettled:
        if sighting is not None and sighting.identity == identity:
            return Unsettled(sighting, new=False)
        return Unsettled(Sighting(identity, now, leasable), new=True)


def _outcome(found: ResponseFile, written_ns: int) -> Stale | Found | Refused:
    """
    What a file looked at or read is: refused, older than the request, or its answer.
    """
    if found.refused is not None:
        return Refused(found.refused)
    if found.mtime_ns < written_ns:
        return Stale()
    return Found(found)
