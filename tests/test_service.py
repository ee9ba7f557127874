"""
Tests for L{fmq.service} and L{Dispatcher.close}: start failures and a graceful stop.
"""

from __future__ import annotations

import gc
import signal
from pathlib import Path
from types import ModuleType
from typing import cast
from unittest import SkipTest

import pytest_twisted
from twisted.application.service import Service
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from fmq.brokers.lock import LockHeld
from fmq.connections import Connections
from fmq.dispatch import Dispatcher
from fmq.errors import ShuttingDown
from fmq.keys import CallerRequest, method_and_path
from fmq.service import Drain, FmqService, exit_cleanly_on_sigterm, settle_heap
from fmq.testing import MemoryBroker
from tests.e2e import PATIENCE, SlowReader, eventually


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


class Pending(Resource):
    """
    A resource that answers nothing until the test does: each request is
    kept in C{requests}.
    """

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class DrainTests(SynchronousTestCase):
    """
    At stop, waiting callers get 503, idle connections close at once, and a
    connection still answering closes once its answer is finished; the stop
    ends when every connection's transport is closed, or after its patience.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock)
        self.broker.startService()
        self.dispatcher = Dispatcher(self.broker, self.clock, 60.0, method_and_path)
        self.resource = Pending()
        self.site = Site(self.resource)
        self.connections = Connections()
        self.connections.track(self.site)
        self.drain = Drain(self.dispatcher, self.connections, self.clock, patience=5.0)
        self.drain.startService()

    def connect(self, site: Site | None = None) -> StringTransport:
        transport = StringTransport()
        transport.protocol = (site or self.site).buildProtocol(None)
        transport.protocol.makeConnection(transport)
        return transport

    def closed(self, transport: StringTransport) -> None:
        """
        The transport has sent all it held and closed.
        """
        transport.protocol.connectionLost(Failure(ConnectionDone()))

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

    def test_idle_connections_close_at_once(self) -> None:
        """
        The stop closes the callers' idle connections at once, not others',
        and ends once their transports have closed, not before.
        """
        transports = [self.connect() for _ in range(2)]
        other = self.connect(Site(Resource()))
        stopped = self.drain.stopService()
        self.assertEqual([t.disconnecting for t in transports + [other]], [True, True, False])
        self.clock.advance(1)
        self.assertNoResult(stopped)
        for transport in transports:
            self.closed(transport)
        self.clock.advance(0.02)
        self.successResultOf(stopped)

    def test_answer_being_written_is_let_finish(self) -> None:
        """
        A connection whose request is not finished (its answer still being
        written, e.g. slice by slice) stays open until the request finishes;
        then it is closed, and the stop ends once its transport has closed.
        """
        transport = self.connect()
        transport.protocol.dataReceived(b"GET /big HTTP/1.1\r\nHost: fmq\r\n\r\n")
        [request] = self.resource.requests
        request.setHeader(b"content-length", b"6")
        request.write(b"abc")
        stopped = self.drain.stopService()
        self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        request.write(b"def")
        request.finish()
        self.clock.advance(0.02)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        self.closed(transport)
        self.clock.advance(0.02)
        self.successResultOf(stopped)
        self.assertTrue(transport.value().endswith(b"\r\n\r\nabcdef"))

    def test_when_drained(self) -> None:
        """
        What is to run once the drain ends (writing the last access lines)
        runs then, after the last connection closed, not when the stop begins.
        """
        drained: list[str] = []
        drain = Drain(
            self.dispatcher,
            self.connections,
            self.clock,
            when_drained=[lambda: drained.append("drained")],
        )
        drain.startService()
        transport = self.connect()
        stopped = drain.stopService()
        self.assertEqual(drained, [])
        self.closed(transport)
        self.clock.advance(0.02)
        self.successResultOf(stopped)
        self.assertEqual(drained, ["drained"])

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


class OneWrite(Resource):
    """
    Answers C{body} in one write, as the front does today.
    """

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        Resource.__init__(self)
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-length", b"%d" % len(self.body))
        return self.body


@implementer(IPullProducer)
class Slices:
    """
    Answers C{body} in slices, one each time the connection asks for more.
    """

    def __init__(self, request: Request, body: bytes, size: int = 1 << 16) -> None:
        self.request, self.body, self.size, self.offset = request, body, size, 0
        request.setHeader(b"content-length", b"%d" % len(body))
        request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.offset >= len(self.body):
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(self.body[self.offset : self.offset + self.size])
        self.offset += self.size

    def stopProducing(self) -> None:
        pass


class Sliced(OneWrite):
    """
    Answers C{body} slice by slice through a producer.
    """

    def render_GET(self, request: Request) -> int:
        Slices(request, self.body)
        return NOT_DONE_YET


async def drain_a_slow_reader(resource: OneWrite) -> None:
    """
    Stop a real site while a slow reader is in the middle of a multi-megabyte
    answer, then cut what is still open as the reactor's shutdown does: the
    reader has had every byte of its answer.
    """
    from twisted.internet import reactor

    connections = Connections()
    site = Site(resource)
    connections.track(site)
    dispatcher = Dispatcher(MemoryBroker(reactor), reactor, 60.0, method_and_path)
    drain = Drain(dispatcher, connections, reactor, patience=PATIENCE)
    drain.startService()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        reader = SlowReader(port.getHost().port, b"/", head_start=1 << 18)
        await eventually(lambda: reader.received >= 1 << 18, "the first bytes")
        stopped = drain.stopService()
        reader.go.set()
        await stopped
        left = list(connections)
        for channel in left:  # what the reactor's shutdown does next
            channel.transport.abortConnection()
        await eventually(lambda: reader.done, "the reader to finish")
        assert reader.error is None
        head, _, got = reader.data.partition(b"\r\n\r\n")
        assert b"content-length: %d" % len(resource.body) in head.lower()
        assert len(got) == len(resource.body)
        assert got == resource.body
        assert left == []
    finally:
        for channel in connections:
            channel.transport.abortConnection()
        await port.stopListening()


BODY = bytes(range(256)) * (16 * 1024 * 1024 // 256)


@pytest_twisted.ensureDeferred
async def test_drain_on_a_real_reactor_waits_for_the_buffer() -> None:
    """
    An answer written at once and still in the transport's buffer reaches a
    slow reader in full before the stop ends.
    """
    await drain_a_slow_reader(OneWrite(BODY))


@pytest_twisted.ensureDeferred
async def test_drain_on_a_real_reactor_waits_for_a_producer() -> None:
    """
    An answer still being produced slice by slice reaches a slow reader in
    full before the stop ends.
    """
    await drain_a_slow_reader(Sliced(BODY))


class FakeReactor:
    def __init__(self) -> None:
        self.stopped = 0

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


class Collector:
    """
    A stand-in for the C{gc} module that records what is called.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


class FreezingCollector(Collector):
    def freeze(self) -> None:
        self.calls.append("freeze")


class SettleHeapTests(SynchronousTestCase):
    """
    Once started, fmq keeps the objects it made while starting out of every
    later garbage collection, where the interpreter can.
    """

    def test_freezes_the_heap(self) -> None:
        """
        The objects alive are frozen: collections no longer walk them.
        """
        if not hasattr(gc, "freeze"):
            raise SkipTest("this interpreter's gc cannot freeze (PyPy)")
        gc.unfreeze()
        self.addCleanup(gc.unfreeze)
        settle_heap()
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_collects_before_freezing(self) -> None:
        """
        What is already garbage is collected first, not frozen for good.
        """
        collector = FreezingCollector()
        settle_heap(cast(ModuleType, collector))
        self.assertEqual(collector.calls, ["collect", "freeze"])

    def test_nothing_without_freeze(self) -> None:
        """
        On an interpreter whose gc has no C{freeze} (PyPy) it does nothing.
        """
        collector = Collector()
        settle_heap(cast(ModuleType, collector))
        self.assertEqual(collector.calls, [])
