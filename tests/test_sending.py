"""
Tests for L{fmq.sending}: a collapsed answer is held once, however many
callers read it and however slowly.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from fmq.dispatch import Dispatcher
from fmq.keys import method_and_path
from fmq.sending import SLICE
from fmq.testing import MemoryBroker
from fmq.web import Front

#: a body many slices long, whose every slice differs
BIG = bytes(range(251)) * (SLICE * 6 // 251) + b"tail"


class SlowReader(StringTransport):
    """
    A caller's connection that reads only when told, with Twisted's own rule
    for a full buffer: past C{limit} bytes unsent, its producer is paused;
    once everything is sent, it is resumed.

    @ivar peak: the most bytes it ever held unsent.
    """

    limit = 64 * 1024

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.received = b""
        self.peak = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        held = len(self.value())
        self.peak = max(self.peak, held)
        if held > self.limit and self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def read(self) -> bytes:
        """
        Send everything held to the caller, then ask for more.
        """
        self.received += self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return self.received

    def read_all(self) -> bytes:
        """
        Read until nothing more comes.
        """
        while self.value():
            self.read()
        return self.received


def body_of(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


class SharedBodyTests(SynchronousTestCase):
    """
    Collapsed callers of a large answer, each on its own connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock)
        self.broker.startService()
        self.dispatcher = Dispatcher(self.broker, self.clock, 60.0, method_and_path)
        self.site = Site(Front(self.dispatcher).app.resource(), reactor=self.clock)

    def connect(self, method: bytes = b"GET", target: bytes = b"/big") -> SlowReader:
        """
        A caller on its own connection that has sent its request.
        """
        transport = SlowReader()
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(b"%s %s HTTP/1.1\r\nHost: fmq.test\r\n\r\n" % (method, target))
        return transport

    def test_held_once(self) -> None:
        """
        Twenty callers that have not read yet each hold at most a couple of
        slices, not the body; once they read, each gets the whole body,
        intact, with an exact Content-Length.
        """
        callers = [self.connect() for _ in range(20)]
        self.assertEqual(len(self.broker.sent), 1)
        self.broker.respond(self.broker.sent[0], b"200\n" + BIG)
        for caller in callers:
            self.assertLessEqual(caller.peak, 2 * SLICE + 1024)
        for caller in callers:
            head, body = body_of(caller.read_all())
            self.assertIn(b"\r\nContent-Length: %d\r\n" % len(BIG), head + b"\r\n")
            self.assertEqual(body, BIG)
            self.assertLessEqual(caller.peak, 2 * SLICE + 1024)

    def test_unfinished_while_sending(self) -> None:
        """
        The request stays unfinished until its last slice is written, so a
        drain sees an answer still being sent; then it is finished.
        """
        caller = self.connect()
        [request] = caller.producer.requests
        finished = request.notifyFinish()
        self.broker.respond(self.broker.sent[0], b"200\n" + BIG)
        self.assertFalse(request.finished)
        self.assertNoResult(finished)
        while not request.finished:
            caller.read()
        self.successResultOf(finished)
        self.assertEqual(body_of(caller.read())[1], BIG)

    def test_caller_leaves_mid_answer(self) -> None:
        """
        A caller that goes away mid-answer gets nothing more written, its
        request is not finished, and nothing is logged as an error; the other
        callers still get the whole body.
        """
        leaving, staying = self.connect(), self.connect()
        [request] = leaving.producer.requests
        self.broker.respond(self.broker.sent[0], b"200\n" + BIG)
        leaving.read()
        leaving.producer.connectionLost(Failure(ConnectionDone()))
        leaving.clear()  # what was in flight is lost with the connection
        leaving.read()
        self.assertEqual(leaving.value(), b"")
        self.assertLess(len(leaving.received), len(BIG))
        self.assertFalse(request.finished)
        self.assertEqual(body_of(staying.read_all())[1], BIG)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_head_sends_no_body(self) -> None:
        """
        HEAD of a large answer sends its headers, with the body's length, and
        no body.
        """
        caller = self.connect(b"HEAD")
        self.broker.respond(self.broker.sent[0], b"200\n" + BIG)
        head, body = body_of(caller.read_all())
        self.assertIn(b"\r\nContent-Length: %d\r\n" % len(BIG), head + b"\r\n")
        self.assertEqual(body, b"")


class StubTreqTests(SynchronousTestCase):
    """
    A large collapsed answer through L{StubTreq}.
    """

    def test_collapsed_large_answer(self) -> None:
        """
        Every collapsed caller gets the whole large body, not chunked.
        """
        clock = Clock()
        broker = MemoryBroker(clock)
        broker.startService()
        stub = StubTreq(Front(Dispatcher(broker, clock, 60.0, method_and_path)).app.resource())
        ds = [stub.get("http://fmq.test/big") for _ in range(3)]
        broker.respond(broker.sent[0], b"201\n" + BIG)
        stub.flush()
        for d in ds:
            response = self.successResultOf(d)
            self.assertEqual(response.code, 201)
            self.assertEqual(response.length, len(BIG))
            self.assertEqual(self.successResultOf(response.content()), BIG)
