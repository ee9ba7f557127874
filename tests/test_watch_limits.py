"""
The file broker when the system's inotify limits are reached: Twisted's
C{INotify} raising C{INotifyError} at start and when the watch is made again.
No system setting is changed: Twisted's own hook for its C library calls
(C{INotify._inotify}) is replaced by one that runs out on demand.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import _inotify
from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers.watch import InotifyWatcher, inotify_available, inotify_watcher
from fmq.protocol import BrokerRequest
from tests.brokers import CHECK, POLL, FileBackend, file_broker


class LimitedInotify:
    """
    Twisted's C{_inotify} calls, but with as few instances or watches left
    as the test says (C{None}: as many as the system gives).
    """

    INotifyError = _inotify.INotifyError

    def __init__(self) -> None:
        self.instances_left: int | None = None
        self.watches_left: int | None = None

    def init(self) -> int:
        if self.instances_left is not None:
            if self.instances_left <= 0:
                raise _inotify.INotifyError("INotify initialization error.")
            self.instances_left -= 1
        return _inotify.init()

    def add(self, fd: int, path: Any, mask: int) -> int:
        if self.watches_left is not None:
            if self.watches_left <= 0:
                raise _inotify.INotifyError(f"Failed to add watch on '{path!r}' - (-1)")
            self.watches_left -= 1
        return _inotify.add(fd, path, mask)

    def remove(self, fd: int, wd: int) -> None:
        _inotify.remove(fd, wd)


class LimitTests(SynchronousTestCase):
    """
    Out of inotify instances or watches, fmq falls back to its scan with one
    warning, never a traceback, and stays available.
    """

    def setUp(self) -> None:
        if not inotify_available():
            self.skipTest("no inotify on this platform")
        from twisted.internet import inotify

        self.limits = LimitedInotify()
        self.patch(inotify.INotify, "_inotify", self.limits)
        self.reactor = MemoryReactorClock()
        self.directory = Path(self.mktemp())
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def start_broker(self) -> None:
        self.broker = file_broker(
            self.directory, self.reactor, watcher=inotify_watcher(self.reactor)
        )
        self.broker.startService()
        self.addCleanup(lambda: self.broker.running and self.broker.stopService())

    def warnings(self) -> list[str]:
        return [
            e["log_format"].format(**e)
            for e in self.events
            if e["log_level"] in (LogLevel.warn, LogLevel.error, LogLevel.critical)
            and "unavailable" not in e["log_format"]
        ]

    def assert_scan_delivers(self) -> None:
        request = BrokerRequest.of(b"GET", b"/scanned")
        answer = self.broker.submit(request)
        FileBackend(self.directory, self.reactor).answer(request, b"200\nby the scan")
        self.reactor.advance(POLL)
        self.assertEqual(self.successResultOf(answer).body, b"by the scan")

    def test_watcher_out_of_instances(self) -> None:
        """
        With no instance left, starting a watcher raises an C{OSError} that
        names the limit.
        """
        self.directory.mkdir()
        self.limits.instances_left = 0
        watcher = InotifyWatcher(self.reactor, self.directory, lambda name: None)
        error = self.assertRaises(OSError, watcher.start)
        self.assertIn("max_user_instances", str(error))

    def test_watcher_out_of_watches(self) -> None:
        """
        With no watch left, starting a watcher raises an C{OSError} that names
        the limit, and the instance it made is closed.
        """
        self.directory.mkdir()
        self.limits.watches_left = 0
        watcher = InotifyWatcher(self.reactor, self.directory, lambda name: None)
        error = self.assertRaises(OSError, watcher.start)
        self.assertIn("max_user_watches", str(error))
        self.assertEqual(self.reactor.getReaders(), [])

    def test_out_of_instances_at_start(self) -> None:
        """
        At start, no instance left: the broker starts, is available, logs one
        warning and answers by its scan.
        """
        self.limits.instances_left = 0
        self.start_broker()
        self.assertTrue(self.broker.available)
        [warning] = self.warnings()
        self.assertIn("relying on the scan", warning)
        self.assertIn("max_user_instances", warning)
        self.assert_scan_delivers()

    def test_out_of_watches_at_start(self) -> None:
        """
        At start, no watch left: the same.
        """
        self.limits.watches_left = 0
        self.start_broker()
        self.assertTrue(self.broker.available)
        [warning] = self.warnings()
        self.assertIn("max_user_watches", warning)
        self.assert_scan_delivers()

    def test_out_of_instances_when_the_directory_returns(self) -> None:
        """
        When the directory comes back and no instance is left to watch it
        again, the broker is available again at once, warns once however
        often the directory comes back, and answers by its scan.
        """
        self.start_broker()
        self.limits.instances_left = 0
        for _ in range(3):
            shutil.rmtree(self.directory)
            self.reactor.advance(CHECK)
            self.assertFalse(self.broker.available)
            self.directory.mkdir()
            self.reactor.advance(CHECK)
            self.assertTrue(self.broker.available)
            self.reactor.advance(CHECK * 5)
        [warning] = self.warnings()
        self.assertIn("relying on the scan", warning)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assert_scan_delivers()

    def test_watching_again_once_the_limit_frees(self) -> None:
        """
        After a fallback, the next time the directory comes back with an
        instance free, it is watched again; a later fallback warns again.
        """
        self.limits.instances_left = 0
        self.start_broker()
        self.limits.instances_left = None
        shutil.rmtree(self.directory)
        self.reactor.advance(CHECK)
        self.directory.mkdir()
        self.reactor.advance(CHECK)
        self.assertEqual(len(self.reactor.getReaders()), 1)  # the new INotify
        self.limits.instances_left = 0
        shutil.rmtree(self.directory)
        self.reactor.advance(CHECK)
        self.directory.mkdir()
        self.reactor.advance(CHECK)
        self.assertEqual(len(self.warnings()), 2)
        self.assertTrue(self.broker.available)


class BrokenWatcher:
    """
    A watcher with a bug: it cannot start.
    """

    def __init__(self, directory: Path, on_file: Any) -> None:
        pass

    def start(self) -> None:
        raise RuntimeError("a bug in a watcher")

    def stop(self) -> None:
        pass


class BrokenWatcherTests(SynchronousTestCase):
    """
    A watcher's bug is logged as one, and never makes the broker unavailable.
    """

    def test_bug_at_start(self) -> None:
        """
        The broker starts, is available and answers by its scan.
        """
        clock = MemoryReactorClock()
        directory = Path(self.mktemp())
        broker = file_broker(directory, clock, watcher=BrokenWatcher)
        broker.startService()
        self.addCleanup(broker.stopService)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(broker.available)
        request = BrokerRequest.of(b"GET", b"/x")
        answer = broker.submit(request)
        FileBackend(directory, clock).answer(request, b"200\nscanned")
        clock.advance(POLL)
        self.assertEqual(self.successResultOf(answer).body, b"scanned")
