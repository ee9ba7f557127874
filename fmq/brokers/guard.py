"""
Keeping the broker directory usable: created, locked, checked, watched.

The guard says when the directory stops being usable (missing, not a
folder, not writable, full, replaced, locked by another process) and when it
is back; each change is logged once. While it is usable, a watcher (inotify)
tells of files as they arrive, made again whenever the directory is; where
none can be had (the system's inotify limits reached), the scan does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from fmq.brokers.fs import FileSystem
from fmq.brokers.lock import DirectoryLock, LockHeld
from fmq.brokers.watch import OnFile, Watcher, WatcherFactory

__all__ = ["DirectoryGuard"]


class DirectoryGuard:
    """
    The lock on, the checks of, and the watch over one broker directory.

    @ivar available: whether the directory was usable at the last check.
    @ivar watching: whether a watcher is armed on it now.
    """

    log = Logger()

    def __init__(
        self,
        directory: Path,
        fs: FileSystem,
        watcher: WatcherFactory | None,
        on_file: OnFile,
        on_lost: Callable[[], None],
        on_back: Callable[[], None],
    ) -> None:
        """
        @param watcher: makes the watcher; C{None} to rely on the scan alone.
        @param on_file: called with each name the watcher reports.
        @param on_lost: called each time the directory becomes unusable.
        @param on_back: called each time it is usable again (and at start).
        """
        self.directory = directory
        self._fs = fs
        self._make_watcher = watcher
        self._on_file = on_file
        self._on_lost = on_lost
        self._on_back = on_back
        self.lock = DirectoryLock(directory)
        self._watcher: Watcher | None = None
        self.available = False
        self._lost_logged = False
        self._watch_failed = False

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def take(self) -> None:
        """
        Create the directory if missing, lock it, and check it.

        @raise LockHeld: another process holds the lock.
        """
        try:
            self._fs.ensure_directory(self.directory)
        except OSError as e:
            self.log.error(
                "cannot create {directory}: {error}",
                directory=str(self.directory),
                error=e.strerror,
            )
        self.check(starting=True)

    def release(self) -> None:
        """
        Stop watching and give the lock up.
        """
        self._disarm()
        self.lock.release()

    def check(self, starting: bool = False) -> None:
        """
        Check that the directory is usable and still the one locked; on a
        change, say so.

        @raise LockHeld: when starting, another process holds the lock.
        """
        error = self._fs.probe(self.directory)
        if error is not None:
            self.lose(error.strerror or str(error))
            return
        try:
            directory = self._fs.stat(self.directory)
        except OSError as e:  # removed since the probe
            self.lose(e.strerror or str(e))
            return
        if not self.lock.holds(directory):
            if self.available:
                self.lose("the directory was replaced")
            self._disarm()
            try:
                self.lock.acquire()
            except LockHeld as e:
                if starting:
                    raise
                self.lose(str(e))
                return
            except OSError as e:
                self.lose(e.strerror or str(e))
                return
        if not self.available:
            self._arm()
            self.available = True
            if not starting:
                self.log.info(
                    "broker directory {directory} is usable again", directory=str(self.directory)
                )
            self._on_back()

    def check_safely(self) -> None:
        """
        L{check} for a loop: a bug is logged, and the loop goes on.
        """
        try:
            self.check()
        except Exception:
            self.log.failure("unexpected error checking {directory}", directory=str(self.directory))

    def lose(self, reason: str) -> None:
        """
        The directory is unusable: log it (once per change) and say so.
        """
        if self.available or not self._lost_logged:
            self.log.error(
                "broker directory {directory} is unavailable: {reason}",
                directory=str(self.directory),
                reason=reason,
            )
        self._lost_logged = True
        self.available = False
        self._on_lost()

    def _arm(self) -> None:
        """
        Watch the directory if a watcher can; else the scan does, with one
        warning per fallback. Never makes the directory unavailable.
        """
        self._disarm()
        if self._make_watcher is None:
            return
        try:
            watcher = self._make_watcher(self.directory, self._on_file)
            watcher.start()
        except OSError as e:
            if not self._watch_failed:  # once, not at every return of the directory
                self.log.warn(
                    "cannot watch {directory} ({error}); relying on the scan",
                    directory=str(self.directory),
                    error=e.strerror or str(e),
                )
            self._watch_failed = True
            return
        except Exception:
            self.log.failure("unexpected error watching {directory}", directory=str(self.directory))
            return
        self._watch_failed = False
        self._watcher = watcher

    def _disarm(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            watcher.stop()
