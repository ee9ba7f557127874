"""
Tests for L{fmq.service} and L{Dispatcher.close}: start failures and a graceful stop.
"""

from __future__ import annotations

import signal
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fmq.brokers.lock import LockHeld
from fmq.dispatch import Dispatcher
from fmq.errors import ShuttingDown
from fmq.keys import CallerRequest, method_and_path
from fmq.service import Drain, FmqService, exit_cleanly_on_sigterm, site_connections
from fmq.testing import MemoryBroker


class Failing(Service):
    def __init__(self, error: Exception, privileged: bool = False) -> None:
        self.error = error
        self.privileged = privileged

    def privilegedStartService(self) -> None:
        if self.privileged:
            raise self.error

    def startService(self) -> None:
        raise self.error


class FmqServiceTests(SynchronousTestCase):
    """
    Expected start failures end the start with one line.
    """

    def assertOneLine(self, error: Exception, expected: str, privileged: bool) -> None:
        root = FmqService()
        Failing(error, privileged).setServiceParent(root)
        start = root.privilegedStartService if privileged else root.startService
        exit = self.assertRaises(SystemExit, start)
        self.assertEqual(str(exit.code), expected)

    def test_lock_held(self) -> None:
        """
        A held lock names the lock file and the holder.
        """
        for privileged in (True, False):
            self.assertOneLine(
                LockHeld(Path("/d/.fmq.lock"), "42"),
                "fmq: cannot take the lock /d/.fmq.lock: held by pid 42",
                privileged,
            )

    def test_port_taken(self) -> None:
        """
        A port already in use names the address.
        """
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        self.assertOneLine(
            error, "fmq: cannot listen on 127.0.0.1:8080: [Errno 98] Address already in use", True
        )

    def test_other_errors_pass(self) -> None:
        """
        Unexpected errors are not disguised.
        """
        root = FmqService()
        Failing(ZeroDivisionError()).setServiceParent(root)
        self.assertRaises(ZeroDivisionError, root.startService)


class DrainTests(SynchronousTestCase):
    """
    At stop, waiting callers get 503 and connections close once written.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock)
        self.broker.startService()
        self.dispatcher = Dispatcher(self.broker, self.clock, 60.0, method_and_path)
        self.site = Site(Resource())
        self.readers: list[StringTransport] = []
        self.reactor = FakeReactor(self.readers)
        self.drain = Drain(
            self.dispatcher, site_connections(self.reactor, self.site), self.clock, patience=5.0
        )
        self.drain.startService()

    def connect(self, site: Site | None = None) -> StringTransport:
        transport = StringTransport()
        transport.protocol = (site or self.site).buildProtocol(None)
        transport.protocol.makeConnection(transport)
        self.readers.append(transport)
        return transport

    def test_waiting_callers_get_shutting_down(self) -> None:
        """
        Every waiting caller, and every later one, fails with L{ShuttingDown}.
        """
        waiting = [self.dispatcher.handle(CallerRequest(b"GET", b"/a")) for _ in range(3)]
        self.drain.stopService()
        for d in waiting:
            self.failureResultOf(d, ShuttingDown)
        self.assertEqual(self.dispatcher.callers_waiting, 0)
        self.failureResultOf(self.dispatcher.handle(CallerRequest(b"GET", b"/b")), ShuttingDown)
        self.assertEqual(self.broker.in_flight(), 1)  # the broker request stays

    def test_waits_for_connections_to_close(self) -> None:
        """
        The stop closes the callers' connections, not others, and waits until
        they have closed after their writes.
        """
        transports = [self.connect() for _ in range(2)]
        other = self.connect(Site(Resource()))
        stopped = self.drain.stopService()
        self.assertEqual([t.disconnecting for t in transports + [other]], [True, True, False])
        self.assertNoResult(stopped)
        self.readers[:] = [other]
        self.clock.advance(0.02)
        self.successResultOf(stopped)

    def test_gives_up_after_patience(self) -> None:
        """
        A connection that does not close does not hold the stop for ever.
        """
        self.connect()
        stopped = self.drain.stopService()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.2)
        self.successResultOf(stopped)


class FakeReactor:
    def __init__(self, readers: list | None = None) -> None:
        self.stopped = 0
        self.readers = readers if readers is not None else []

    def getReaders(self) -> list:
        return list(self.readers)

    def callFromThread(self, f, *args) -> None:
        f(*args)

    def stop(self) -> None:
        self.stopped += 1


class SigtermTests(SynchronousTestCase):
    """
    SIGTERM stops the reactor like any shutdown, so twistd exits 0.
    """

    def test_handler_stops_reactor(self) -> None:
        """
        The installed handler stops the reactor and records no exit signal.
        """
        original = signal.getsignal(signal.SIGTERM)
        self.addCleanup(signal.signal, signal.SIGTERM, original)
        reactor = FakeReactor()
        exit_cleanly_on_sigterm(reactor)
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        self.assertEqual(reactor.stopped, 1)
        self.assertFalse(hasattr(reactor, "_exitSignal"))
