"""
Reading an answer only once it is complete, and never one that is not for
the request in flight.

What a C{.resp} is gets decided from its metadata before any byte is read:
older than the request file, it answers an earlier request and is never
read. A complete answer is one whose writer has closed it (a read lease says
so) or, where that cannot be known or the writer keeps it open, one that has
not changed (inode, size, mtime) for C{settle_time}: its identity is checked
on each look, its data read once.
"""

from __future__ import annotations

import stat
from pathlib import Path

import attrs
from twisted.internet.interfaces import IReactorTime

from fmq.brokers.fs import FileSystem, ResponseFile
from fmq.brokers.keystate import Sighting
from fmq.brokers.layout import response_name

__all__ = ["Absent", "AnswerReader", "Found", "Stale", "Unsettled"]


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


class AnswerReader:
    """
    Looks at one key's answer file for the request in flight.
    """

    def __init__(
        self, directory: Path, fs: FileSystem, clock: IReactorTime, settle_time: float
    ) -> None:
        self._directory = directory
        self._fs = fs
        self._clock = clock
        self._settle_time = settle_time

    def look(
        self, key: str, written_ns: int, sighting: Sighting | None, complete: bool = False
    ) -> Absent | Stale | Unsettled | Found:
        """
        What C{key}'s answer is now.

        @param written_ns: the request file's mtime: an answer older than it
            belongs to an earlier request.
        @param sighting: the answer as seen at the last look, if unsettled.
        @param complete: an event said the file was closed or renamed into place.
        @raise OSError: it could not be looked at (not C{ENOENT}).
        """
        path = self._directory / response_name(key)
        try:
            st = self._fs.lstat(path)
        except FileNotFoundError:
            return Absent()
        if stat.S_ISREG(st.st_mode) and st.st_mtime_ns < written_ns:
            return Stale()
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = self._clock.seconds()
        if sighting is not None and sighting.identity == identity:
            if now - sighting.since >= self._settle_time:
                return self._read(path, written_ns, lease=False)
            if not sighting.leasable and not complete:
                return Unsettled(sighting, new=False)
        try:
            found = self._fs.read_response(path)
        except FileNotFoundError:
            return Absent()
        if found is None:  # open for writing
            return self._unsettled(sighting, identity, now, leasable=True)
        if found.mtime_ns < written_ns:
            return Stale()
        if found.closed or complete:
            return Found(found)
        return self._unsettled(sighting, identity, now, leasable=False)

    def _read(self, path: Path, written_ns: int, lease: bool) -> Absent | Stale | Found:
        try:
            found = self._fs.read_response(path, lease=lease)
        except FileNotFoundError:
            return Absent()
        if found is None:
            return Absent()  # only a lease could say so, and none was asked for
        if found.mtime_ns < written_ns:
            return Stale()
        return Found(found)

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
