"""
Backends for tests: each plays the backend of one broker, and one contract
suite (L{BrokerContractTests}) runs against every broker.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from fmq.brokers.file import FileBroker
from fmq.errors import MalformedResponse, RequestExpired, ShuttingDown, Withdrawn
from fmq.interfaces import IBroker
from fmq.protocol import BrokerRequest, BrokerResponse
from fmq.testing import MemoryBroker

POLL = 0.05
CHECK = 0.5
TTL = 300.0


class FileBackend:
    """
    Plays the backend of a L{FileBroker} in a directory: reads C{.req} files
    and writes C{.resp} files atomically.
    """

    def __init__(self, directory: Path, clock: Clock) -> None:
        self.directory = directory
        self.clock = clock

    def requests(self) -> list[bytes]:
        """
        The contents of the request files, sorted.
        """
        return sorted(p.read_bytes() for p in self.directory.glob("*.req"))

    def answer(self, request: BrokerRequest, data: bytes) -> None:
        temp = self.directory / f"tmp-{request.key}"
        temp.write_bytes(data)
        os.rename(temp, self.directory / f"{request.key}.resp")

    def deliver(self) -> None:
        self.clock.advance(POLL)


class MemoryBackend:
    """
    Plays the backend of a L{MemoryBroker}.
    """

    def __init__(self, broker: MemoryBroker, clock: Clock) -> None:
        self.broker = broker
        self.clock = clock

    def requests(self) -> list[bytes]:
        return sorted(r.method + b" " + r.target + b"\n" for r in self.broker.outstanding())

    def answer(self, request: BrokerRequest, data: bytes) -> None:
        self.broker.respond(request, data)

    def deliver(self) -> None:
        self.clock.advance(0)


def file_broker(directory: Path, clock: Clock, **kwargs) -> FileBroker:
    options = dict(
        poll_interval=POLL,
        request_ttl=TTL,
        settle_time=0.2,
        delete_retry_max=5.0,
        check_interval=CHECK,
    )
    options.update(kwargs)
    return FileBroker(directory, clock, **options)


class BrokerContractTests:
    """
    What every L{IBroker} must do. Subclasses define C{make()} returning a
    started broker and its backend.
    """

    def make(self):
        raise NotImplementedError()

    def setUp(self) -> None:
        self.broker, self.backend = self.make()
        self.addCleanup(lambda: self.broker.running and self.broker.stopService())

    def test_provides_ibroker(self) -> None:
        """
        The broker provides L{IBroker}.
        """
        self.assertTrue(verifyObject(IBroker, self.broker))
        self.assertTrue(self.broker.available)

    def test_round_trip(self) -> None:
        """
        A submitted request reaches the backend as C{METHOD PATH\\n}, and its
        answer fires the Deferred with the parsed response.
        """
        request = BrokerRequest.of(b"GET", b"/items?id=1")
        answer = self.broker.submit(request)
        self.assertEqual(self.backend.requests(), [b"GET /items?id=1\n"])
        self.assertEqual(self.broker.in_flight(), 1)
        self.assertNoResult(answer)
        self.backend.answer(request, b"201\r\nbody\r\nmore")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer), BrokerResponse(201, b"body\r\nmore"))
        self.assertEqual(self.broker.in_flight(), 0)
        self.assertEqual(self.backend.requests(), [])

    def test_requests_are_independent(self) -> None:
        """
        Requests with different keys are answered each with its own answer.
        """
        a, b = BrokerRequest.of(b"GET", b"/a"), BrokerRequest.of(b"GET", b"/b")
        answer_a, answer_b = self.broker.submit(a), self.broker.submit(b)
        self.backend.answer(b, b"200\nb")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer_b).body, b"b")
        self.assertNoResult(answer_a)
        self.backend.answer(a, b"200\na")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer_a).body, b"a")

    def test_same_key_both_answered(self) -> None:
        """
        Two requests with one key are both answered, first come first served.
        """
        first, second = BrokerRequest.of(b"GET", b"/x"), BrokerRequest.of(b"GET", b"/x")
        answers = [self.broker.submit(first), self.broker.submit(second)]
        self.assertEqual(self.broker.in_flight(), 2)
        for n, request in enumerate([first, second]):
            self.backend.answer(request, b"200\n%d" % n)
            self.backend.deliver()
        self.assertEqual([self.successResultOf(a).body for a in answers], [b"0", b"1"])

    def test_malformed(self) -> None:
        """
        An answer that is not a status line fails with L{MalformedResponse}.
        """
        request = BrokerRequest.of(b"GET", b"/bad")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"")
        self.backend.deliver()
        self.failureResultOf(answer, MalformedResponse)
        self.assertEqual(self.backend.requests(), [])

    def test_ttl(self) -> None:
        """
        A request unanswered for the TTL fails with L{RequestExpired} and is withdrawn.
        """
        answer = self.broker.submit(BrokerRequest.of(b"GET", b"/slow"))
        self.backend.clock.advance(TTL - 1)
        self.assertNoResult(answer)
        self.backend.clock.advance(1)
        self.failureResultOf(answer, RequestExpired)
        self.assertEqual(self.backend.requests(), [])
        self.assertEqual(self.broker.in_flight(), 0)

    def test_withdraw(self) -> None:
        """
        A withdrawn request fails with L{Withdrawn} and leaves the backend.
        """
        request = BrokerRequest.of(b"GET", b"/w")
        answer = self.broker.submit(request)
        self.broker.withdraw(request)
        self.failureResultOf(answer, Withdrawn)
        self.assertEqual(self.backend.requests(), [])
        self.broker.withdraw(request)  # twice is harmless

    def test_cancel_withdraws(self) -> None:
        """
        Cancelling the Deferred withdraws the request.
        """
        answer = self.broker.submit(BrokerRequest.of(b"GET", b"/c"))
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        self.assertEqual(self.backend.requests(), [])
        self.assertEqual(self.broker.in_flight(), 0)

    def test_stop_fails_unanswered(self) -> None:
        """
        Stopping fails unanswered requests with L{ShuttingDown}; new ones too.
        """
        answer = self.broker.submit(BrokerRequest.of(b"GET", b"/s"))
        self.broker.stopService()
        self.failureResultOf(answer, ShuttingDown)
        self.failureResultOf(self.broker.submit(BrokerRequest.of(b"GET", b"/t")), ShuttingDown)
        self.assertEqual(self.backend.clock.getDelayedCalls(), [])


def make_file(test) -> tuple[FileBroker, FileBackend]:
    clock = Clock()
    directory = Path(test.mktemp())
    broker = file_broker(directory, clock)
    broker.startService()
    return broker, FileBackend(directory, clock)


def make_memory(test) -> tuple[MemoryBroker, MemoryBackend]:
    clock = Clock()
    broker = MemoryBroker(clock, request_ttl=TTL)
    broker.startService()
    return broker, MemoryBackend(broker, clock)
