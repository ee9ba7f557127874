"""
Being told at once when a file arrives in the broker directory (inotify),
so an answer does not wait for the next scan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorFDSet
from twisted.python.filepath import FilePath

#: what a watcher calls with the name of a file renamed into, or closed after
#: writing in, the directory
OnFile = Callable[[str], None]


class Watcher(Protocol):
    """
    Watches one directory; made again whenever the directory is replaced.
    """

    def start(self) -> None:
        """
        Begin watching.

        @raise OSError: the directory cannot be watched (the system's limits
            reached, say); the caller falls back to scanning.
        """

    def stop(self) -> None:
        """
        Stop watching; calling it twice is harmless.
        """


WatcherFactory = Callable[[Path, OnFile], Watcher]


def inotify_available() -> bool:
    """
    Whether C{twisted.internet.inotify} works here (Linux).
    """
    try:
        from twisted.internet import inotify
        from twisted.python import _inotify

        _inotify.init  # noqa: B018  (the C binding loads lazily)
    except (ImportError, AttributeError, OSError):
        return False
    return hasattr(inotify, "INotify")


class InotifyWatcher:
    """
    A L{Watcher} over Twisted's C{INotify}, watching C{IN_MOVED_TO} (a file
    renamed into place) and C{IN_CLOSE_WRITE} (a file written in place and
    closed), never C{IN_CREATE}, when the data is not there yet.

    Twisted drops C{IN_Q_OVERFLOW}, and an C{INotify} whose directory is
    deleted stops for good: the broker's scan and its availability check
    (which makes a new watcher) cover both.

    Twisted raises C{INotifyError}, not an C{OSError}, when the kernel's
    limits are reached (C{fs.inotify.max_user_instances} at C{inotify_init},
    C{max_user_watches} at C{inotify_add_watch}); L{start} turns it into an
    C{OSError} naming the limit, as L{Watcher} promises.
    """

    def __init__(self, reactor: IReactorFDSet, directory: Path, on_file: OnFile) -> None:
        self._reactor = reactor
        self._directory = directory
        self._on_file = on_file
        self._notifier: Any = None

    def start(self) -> None:
        from twisted.internet import inotify

        try:
            notifier = inotify.INotify(self._reactor)
        except inotify.INotifyError:
            raise OSError(
                "no inotify instance to be had (fs.inotify.max_user_instances"
                " reached, or out of file descriptors)"
            ) from None
        try:
            notifier.startReading()
            notifier.watch(
                FilePath(str(self._directory)),
                mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE,
                callbacks=[self._event],
            )
        except inotify.INotifyError:
            notifier.loseConnection()
            raise OSError(
                "cannot add an inotify watch (fs.inotify.max_user_watches reached,"
                " or the directory is gone)"
            ) from None
        except Exception:
            notifier.loseConnection()
            raise
        self._notifier = notifier

    def stop(self) -> None:
        if self._notifier is not None:
            notifier, self._notifier = self._notifier, None
            if notifier.connected:
                notifier.loseConnection()

    def _event(self, ignored: object, path: FilePath[bytes], mask: int) -> None:
        self._on_file(path.basename().decode("utf-8", "surrogateescape"))


def inotify_watcher(reactor: IReactorFDSet) -> WatcherFactory:
    """
    A factory of L{InotifyWatcher}s on C{reactor}.
    """
    return lambda directory, on_file: InotifyWatcher(reactor, directory, on_file)
