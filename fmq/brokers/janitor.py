"""
Deleting a key's files, the request first, retrying with backoff.

The request goes first so that a backend that scans never sees a request
without its answer twice. Which names are left, and how long to wait before
the next attempt, is the key's state (L{fmq.brokers.keystate}); the janitor
only unlinks and keeps the retry timers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from fmq.brokers.actions import Action, RetryDelete
from fmq.brokers.fs import FileSystem
from fmq.brokers.keystate import KeyTable
from fmq.brokers.layout import Paths

__all__ = ["Janitor"]


class Janitor:
    """
    Carries out L{fmq.brokers.actions.Delete} for a directory.

    @ivar retries: attempts to delete a file that had to be retried.
    """

    log = Logger()

    def __init__(
        self,
        directory: Path,
        fs: FileSystem,
        clock: IReactorTime,
        keys: KeyTable,
        run: Callable[[list[Action]], None],
    ) -> None:
        """
        @param run: carries out the actions that follow a deletion (the
            next request for the key).
        """
        self._directory = directory
        self._paths = Paths(directory)
        self._fs = fs
        self._clock = clock
        self._keys = keys
        self._run = run
        self._timers: dict[str, IDelayedCall] = {}
        self.retries = 0

    def sweep(self, key: str) -> None:
        """
        Delete what is left of C{key}'s files, in order, until one fails.
        """
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        while True:
            state = self._keys.get(key)
            if state is None or not state.cleaning:
                return
            name = state.cleaning[0]
            try:
                self._fs.unlink(self._paths(name))
            except OSError as e:
                self.retries += 1
                for action in self._keys.delete_failed(key):
                    assert isinstance(action, RetryDelete)
                    self.log.warn(
                        "cannot delete {name}: {error}; retry {attempt} in {delay:.2f}s",
                        name=name,
                        error=e.strerror or str(e),
                        attempt=state.attempts,
                        delay=action.delay,
                    )
                    self._timers[key] = self._clock.callLater(action.delay, self._retry, key)
                return
            self._run(self._keys.deleted(key, name))

    def _retry(self, key: str) -> None:
        self._timers.pop(key, None)
        self.sweep(key)

    def stop(self) -> None:
        """
        Cancel every retry.
        """
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
