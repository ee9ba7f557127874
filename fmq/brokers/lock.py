"""
One fmq per directory: an exclusive C{flock} on a lock file inside it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fmq.brokers.layout import LOCK_NAME


class LockHeld(Exception):
    """
    Another process holds the directory's lock.
    """

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(path, holder)
        self.path = path
        self.holder = holder

    def __str__(self) -> str:
        return f"cannot take the lock {self.path}: held by pid {self.holder}"


class DirectoryLock:
    """
    The lock on a broker directory, taken again if the directory is replaced.

    The lock file stays after release: removing it would let two processes
    lock two different files of the same name.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd: int | None = None
        self._directory_id: tuple[int, int] | None = None

    def acquire(self) -> None:
        """
        Take the lock and write this process's pid into the file.

        @raise LockHeld: another process holds it.
        @raise OSError: the file cannot be opened.
        """
        directory = os.stat(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self.release()
        self._fd = fd
        self._directory_id = (directory.st_dev, directory.st_ino)

    def holds(self, directory: os.stat_result) -> bool:
        """
        Whether this lock is held on the directory as it is now (not one
        that was removed and made again).
        """
        return self._fd is not None and self._directory_id == (directory.st_dev, directory.st_ino)

    def release(self) -> None:
        """
        Give the lock up; harmless if not held.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._directory_id = None
