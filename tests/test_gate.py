"""
Tests for L{fmq.gate}: the HTTP listener pauses before this process runs out
of file descriptors and resumes as they free up.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from zope.interface.verify import verifyObject

from fmq.connections import Connections
from fmq.gate import AcceptGate, GatedPort, GatedTCP4ServerEndpoint, resume_room, room


class RoomTests(SynchronousTestCase):
    """
    Tests for L{room} and L{resume_room}, the pure decisions.
    """

    def test_room_below_the_limit(self) -> None:
        """
        The room is what the limit leaves once the open descriptors and the
        spare are counted, and never negative.
        """
        self.assertEqual(room(400, 512, 64), 48)
        self.assertEqual(room(448, 512, 64), 0)
        self.assertEqual(room(500, 512, 64), 0)

    def test_no_limit(self) -> None:
        """
        Without a limit there is always room.
        """
        self.assertEqual(room(10**6, None, 64), sys.maxsize)

    def test_resume_room(self) -> None:
        """
        A paused listener waits for a quarter of its connections to close, at
        most 16 and at least one.
        """
        self.assertEqual(resume_room(440), 16)
        self.assertEqual(resume_room(40), 10)
        self.assertEqual(resume_room(2), 1)
        self.assertEqual(resume_room(0), 1)


class FakeListener:
    """
    A listening port that records whether it reads.
    """

    def __init__(self) -> None:
        self.reading = True
        self.changes = 0

    def startReading(self) -> None:
        self.reading = True
        self.changes += 1

    def stopReading(self) -> None:
        self.reading = False
        self.changes += 1


class AcceptGateTests(SynchronousTestCase):
    """
    Tests for L{AcceptGate} on a fake listener and clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connections = Connections()
        self.others = 10
        self.counts = 0
        self.gate = AcceptGate(
            self.connections, self.clock, limit=100, spare=10, count=self.count, quiet=5.0
        )
        self.listener = FakeListener()
        self.gate.listening(self.listener)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def count(self) -> int:
        self.counts += 1
        return self.others + len(self.connections)

    def open(self, n: int) -> list[HTTPChannel]:
        channels = [cast(HTTPChannel, object()) for _ in range(n)]
        for channel in channels:
            self.connections.opened(channel)
        return channels

    def close(self, channels: list[HTTPChannel]) -> None:
        for channel in channels:
            self.connections.closed(channel)

    def lines(self) -> list[str]:
        return [e["log_format"] for e in self.events if e.get("log_namespace") == "fmq"]

    def test_allows_the_room_left(self) -> None:
        """
        The listener may accept as many connections as fit under the limit
        less the spare, counting what else is open.
        """
        self.assertEqual(self.gate.allowed(), 80)
        self.open(30)
        self.assertEqual(self.gate.allowed(), 50)
        self.assertTrue(self.listener.reading)
        self.assertFalse(self.gate.paused)

    def test_pauses_when_full(self) -> None:
        """
        With no room left the listener stops reading, so new connections
        wait in the backlog, and one line says so.
        """
        self.open(80)
        self.assertEqual(self.gate.allowed(), 0)
        self.assertFalse(self.listener.reading)
        self.assertTrue(self.gate.paused)
        self.assertEqual(self.gate.allowed(), 0)
        [line] = self.lines()
        self.assertIn("out of descriptors", line)
        self.assertEqual(self.events[-1]["connections"], 80)
        self.assertEqual(self.events[-1]["limit"], 100)

    def test_counts_again_before_pausing(self) -> None:
        """
        Before pausing, the descriptors are counted again: if other files
        were closed since, the room they leave is used.
        """
        self.open(80)
        self.others = 5
        self.assertEqual(self.gate.allowed(), 5)
        self.assertTrue(self.listener.reading)

    def test_resumes_as_connections_close(self) -> None:
        """
        A paused listener reads again once enough connections have closed
        that more than one new connection fits.
        """
        channels = self.open(80)
        self.gate.allowed()
        self.close(channels[:15])
        self.assertFalse(self.listener.reading)
        self.close(channels[15:16])
        self.assertTrue(self.listener.reading)
        self.assertEqual(self.gate.allowed(), 16)

    def test_resumes_when_other_descriptors_free_up(self) -> None:
        """
        A paused listener counts the open descriptors every second, and
        resumes when enough are freed even if no connection closed.
        """
        channels = self.open(80)
        self.others = 20
        self.gate.allowed()
        self.close(channels[:10])
        self.assertFalse(self.listener.reading)
        self.clock.advance(1)
        self.assertFalse(self.listener.reading)
        self.others = 0
        self.clock.advance(1)
        self.assertTrue(self.listener.reading)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 7)

    def test_one_line_each_way_for_a_stretch(self) -> None:
        """
        Pauses and resumes close together log one line at the first pause,
        and one once no pause came for the quiet time.
        """
        channels = self.open(80)
        self.gate.allowed()
        for _ in range(3):
            self.close(channels[:20])
            channels = channels[20:] + self.open(20)
            self.clock.advance(1)
            self.gate.allowed()
        self.assertFalse(self.listener.reading)
        self.assertEqual(len(self.lines()), 1)
        self.close(channels[:20])
        self.clock.advance(4.9)
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.lines()), 2)
        self.assertIn("accepted again", self.lines()[-1])
        self.assertEqual(self.events[-1]["pauses"], 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped(self) -> None:
        """
        Once the listener stops, the gate never resumes it and leaves no
        timer behind.
        """
        channels = self.open(80)
        self.gate.allowed()
        changes = self.listener.changes
        self.gate.stopped()
        self.close(channels)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.listener.changes, changes)

    def test_no_limit(self) -> None:
        """
        Without a limit nothing is counted and the listener never pauses.
        """
        gate = AcceptGate(self.connections, self.clock, limit=None, count=self.count)
        gate.listening(self.listener)
        self.open(10_000)
        self.assertEqual(gate.allowed(), sys.maxsize)
        self.assertEqual(self.counts, 1)  # the first gate's


class GatedPortTests(SynchronousTestCase):
    """
    Tests for L{GatedPort} and L{GatedTCP4ServerEndpoint} on a real socket
    and a fake reactor.
    """

    def test_accepts_no_more_than_allowed(self) -> None:
        """
        The port accepts as many connections as the gate allows, leaves the
        rest waiting in the backlog while paused, and accepts them once
        connections close.
        """
        reactor = MemoryReactorClock()
        connections = Connections()
        gate = AcceptGate(
            connections, reactor, limit=100, spare=0, count=lambda: 97 + len(connections)
        )
        factory = Factory.forProtocol(Protocol)
        built: list[Protocol] = []

        def build(addr: Any) -> Protocol:
            protocol = Protocol()
            built.append(protocol)
            connections.opened(cast(HTTPChannel, protocol))
            return protocol

        factory.buildProtocol = build  # type: ignore[method-assign]
        endpoint = GatedTCP4ServerEndpoint(reactor, 0, gate, 50, "127.0.0.1")
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        port = self.successResultOf(endpoint.listen(factory))
        self.addCleanup(reactor.advance, 0)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, GatedPort)
        clients = []
        for _ in range(5):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            self.addCleanup(client.close)
            clients.append(client)
        self.assertIn(port, reactor.readers)
        port.doRead()
        self.assertEqual(len(built), 3)
        port.doRead()
        self.assertEqual(len(built), 3)
        self.assertEqual(len(connections), 3)
        self.assertNotIn(port, reactor.readers)
        self.close(built, connections)
        self.assertIn(port, reactor.readers)
        port.doRead()
        self.assertEqual(len(built), 5)
        self.close(built[3:], connections)

    def close(self, protocols: list[Protocol], connections: Connections) -> None:
        for protocol in protocols:
            cast(Any, protocol.transport).connectionLost(Failure(ConnectionDone()))
            connections.closed(cast(HTTPChannel, protocol))

    def test_stop_listening(self) -> None:
        """
        A port paused by its gate and then stopped is not resumed.
        """
        reactor = MemoryReactorClock()
        connections = Connections()
        gate = AcceptGate(
            connections, reactor, limit=10, spare=0, count=lambda: 10 + len(connections)
        )
        endpoint = GatedTCP4ServerEndpoint(reactor, 0, gate, 50, "127.0.0.1")
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        port.doRead()
        self.assertNotIn(port, reactor.readers)
        port.stopListening()
        reactor.advance(0)
        self.assertNotIn(port, reactor.readers)
        self.assertEqual(reactor.getDelayedCalls(), [])
