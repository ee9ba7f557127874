"""
The AMQP broker's own behaviour: on stand-ins for pika (L{tests.amqp_fakes}),
and on the real RabbitMQ (unroutable requests, dropped replies, a RabbitMQ
that is not there at start).
"""

from __future__ import annotations

import pika
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers.amqp import AmqpBroker
from fmq.errors import AnswerTooLarge, BrokerUnavailable, Withdrawn
from fmq.protocol import BrokerRequest, BrokerResponse
from tests.amqp_fakes import FakeRabbit
from tests.contract import AMQP_URL, AmqpDriver, queued
from tests.e2e import eventually, free_port, sleep
from tests.test_broker_contract import outcome, skip_without_rabbitmq


class _NoScan(dict):
    """
    A dict that refuses to be walked: whoever looks up one entry by going
    through all of them fails.
    """

    def _refuse(self, *args, **kwargs):
        raise AssertionError("walked every outstanding request")

    __iter__ = items = values = keys = _refuse  # type: ignore[assignment]


class AmqpBrokerTests(SynchronousTestCase):
    """
    L{AmqpBroker} on a L{Clock} and a L{FakeRabbit}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.rabbit = FakeRabbit()
        self.broker = AmqpBroker(self.clock, "amqp://guest:guest@rabbit.test:5672/%2F",
                                 "fmq.requests", request_ttl=300.0, dial=self.rabbit)  # fmt: skip
        self.events: list[dict] = []
        self.broker.log = Logger(observer=self.events.append)
        self.broker.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.broker.running:
            self.broker.stopService()

    def logged(self, text: str) -> list[dict]:
        """
        The events whose format mentions C{text}.
        """
        return [e for e in self.events if text in (e.get("log_format") or "")]

    def submit(self, target: bytes = b"/a") -> tuple[BrokerRequest, object]:
        request = BrokerRequest.of(b"GET", target)
        return request, self.broker.submit(request)

    def test_round_trip(self) -> None:
        """
        A request is published to the request queue; the reply with its
        correlation id answers it.
        """
        self.assertTrue(self.broker.available)
        _, answer = self.submit()
        [(properties, body, _)] = self.rabbit.channel.published
        self.assertEqual(body, b"GET /a\n")
        self.rabbit.channel.reply(properties, b"200\nhello")
        self.assertEqual(self.successResultOf(answer), BrokerResponse(200, b"hello"))
        self.assertEqual(self.broker.in_flight(), 0)

    def test_answer_over_the_cap_is_502(self) -> None:
        """
        A reply larger than C{max_answer_bytes} fails its request with
        L{AnswerTooLarge} (502); one at the cap is delivered.
        """
        self.broker.stopService()
        self.broker = AmqpBroker(self.clock, "amqp://guest:guest@rabbit.test:5672/%2F",
                                 "fmq.requests", request_ttl=300.0, dial=self.rabbit,
                                 max_answer_bytes=10)  # fmt: skip
        self.broker.log = Logger(observer=self.events.append)
        self.broker.startService()
        _, over = self.submit(b"/over")
        _, at = self.submit(b"/at")
        [(over_properties, _, _), (at_properties, _, _)] = self.rabbit.channel.published
        self.rabbit.channel.reply(over_properties, b"200\n123456789")
        self.rabbit.channel.reply(at_properties, b"200\n12345")
        self.assertEqual(self.failureResultOf(over, AnswerTooLarge).value.status, 502)
        self.assertEqual(self.successResultOf(at), BrokerResponse(200, b"12345"))
        [event] = self.logged("malformed reply")
        self.assertIn("larger than max_answer_bytes", event["error"])

    def test_withdraw_looks_up_one_request(self) -> None:
        """
        Withdrawing a request finds it directly, without walking the others:
        5,000 hang-ups cost 5,000 lookups, not 12.5 million.
        """
        sent = [self.submit(b"/%d" % n) for n in range(50)]
        outstanding = _NoScan(self.broker._outstanding)
        self.broker._outstanding = outstanding
        self.addCleanup(lambda: setattr(self.broker, "_outstanding", dict(dict.items(outstanding))))
        for request, answer in sent[::2]:
            self.broker.withdraw(request)
            self.failureResultOf(answer, Withdrawn)
        self.assertEqual(self.broker.in_flight(), 25)
        self.broker.withdraw(BrokerRequest.of(b"GET", b"/unknown"))
        self.broker.withdraw(sent[0][0])
        self.assertEqual(self.broker.in_flight(), 25)
        for properties, _, _ in self.rabbit.channel.published[1::2]:
            self.rabbit.channel.reply(properties, b"200\n")
        for _, answer in sent[1::2]:
            self.successResultOf(answer)
        self.assertEqual(self.broker.in_flight(), 0)
        self.assertEqual(self.broker.dropped_replies, 0)

    def published_and_confirmed(self, count: int) -> list:
        """
        C{count} requests published and confirmed by RabbitMQ: in flight.
        """
        answers = [self.submit(b"/%d" % n)[1] for n in range(count)]
        for _, _, confirmed in self.rabbit.channel.published:
            confirmed.callback(None)
        return answers

    def assert_lost_and_back(self, answers: list, reason: str) -> None:
        """
        The requests in flight failed with 503 at once, the loss was logged
        once with C{reason}, and half a second later a new connection serves.
        """
        for answer in answers:
            self.failureResultOf(answer, BrokerUnavailable)
        self.assertFalse(self.broker.available)
        self.assertEqual(self.broker.in_flight(), 0)
        [event] = self.logged("is unavailable")
        self.assertIn(reason, event["reason"])
        old = self.rabbit.connection
        self.assertFalse(old.is_open)
        self.clock.advance(0.5)
        self.assertEqual(len(self.rabbit.connections), 2)
        self.assertTrue(self.broker.available)
        _, answer = self.submit(b"/after")
        [(properties, _, _)] = self.rabbit.channel.published
        self.rabbit.channel.reply(properties, b"200\nback")
        self.assertEqual(self.successResultOf(answer).body, b"back")
        self.assertEqual(self.rabbit.connections[0].channels[0].published[-1][1], b"GET /2\n")

    def test_channel_closed_by_server(self) -> None:
        """
        A channel that RabbitMQ closes on its own is a lost connection: 503 at
        once to what is in flight, unavailable, then a new connection.
        """
        answers = self.published_and_confirmed(3)
        self.rabbit.channel.close_by_server(404, "NOT_FOUND - no queue 'x'")
        self.assert_lost_and_back(answers, "404 NOT_FOUND")

    def test_reply_consumer_cancelled(self) -> None:
        """
        RabbitMQ cancelling the reply consumer (no replies can come any more)
        is a lost connection too.
        """
        answers = self.published_and_confirmed(3)
        self.rabbit.channel.cancel_consumer()
        self.assert_lost_and_back(answers, "cancelled the reply consumer")

    def test_connection_closed_by_server(self) -> None:
        """
        A connection RabbitMQ closes is handled once, its reason logged.
        """
        answers = self.published_and_confirmed(3)
        self.rabbit.connection.close_by_server(320, "CONNECTION_FORCED - fmq test")
        self.assert_lost_and_back(answers, "320 CONNECTION_FORCED")

    def test_unconfirmed_requests_on_channel_loss(self) -> None:
        """
        Requests not yet confirmed when the channel closes fail with 503,
        and the loss is still logged once.
        """
        answers = [self.submit(b"/%d" % n)[1] for n in range(3)]
        self.rabbit.channel.close_by_server()
        self.assert_lost_and_back(answers, "406 PRECONDITION_FAILED")

    def test_unroutable_declares_the_queue_again(self) -> None:
        """
        A request returned unroutable (its queue deleted) fails with 503, and
        the request queue is declared again, once however many come back.
        """
        channel = self.rabbit.channel
        self.assertEqual(channel.declared, ["fmq.requests"])
        channel.declare_result = Deferred()
        answers = [self.submit(b"/%d" % n)[1] for n in range(3)]
        for n in range(3):
            channel.return_unroutable(n)
            self.failureResultOf(answers[n], BrokerUnavailable)
        self.assertEqual(channel.declared, ["fmq.requests"] * 2)
        self.assertEqual(len(self.logged("declaring it again")), 1)
        channel.declare_result.callback(None)
        self.assertEqual(len(self.logged("declared queue")), 1)
        self.assertTrue(self.broker.available)
        _, answer = self.submit(b"/later")
        properties, _, confirmed = channel.published[-1]
        confirmed.callback(None)
        channel.reply(properties, b"200\nlater")
        self.assertEqual(self.successResultOf(answer).body, b"later")

    def test_declaring_again_fails(self) -> None:
        """
        If the queue cannot be declared again, that is logged and the next
        unroutable request tries again.
        """
        channel = self.rabbit.channel
        channel.declare_result = fail(ValueError("refused"))
        _, answer = self.submit()
        channel.return_unroutable(0)
        self.failureResultOf(answer, BrokerUnavailable)
        [event] = self.logged("cannot declare")
        self.assertIn("refused", event["error"])
        channel.declare_result = None
        _, answer = self.submit()
        channel.return_unroutable(1)
        self.failureResultOf(answer, BrokerUnavailable)
        self.assertEqual(channel.declared, ["fmq.requests"] * 3)

    def test_blocked_refuses_at_once(self) -> None:
        """
        While RabbitMQ blocks publishers, new requests fail with 503 at once
        and those in flight wait on; on unblock it takes requests again. Each
        change is logged once.
        """
        answers = self.published_and_confirmed(2)
        self.assertFalse(self.broker.blocked)
        self.rabbit.connection.block("low on memory")
        self.rabbit.connection.block("low on memory")
        self.assertTrue(self.broker.blocked)
        self.assertFalse(self.broker.available)
        _, refused = self.submit(b"/refused")
        self.failureResultOf(refused, BrokerUnavailable)
        self.assertEqual(len(self.rabbit.channel.published), 2)
        for answer in answers:
            self.assertNoResult(answer)
        self.assertEqual(self.broker.in_flight(), 2)
        [event] = self.logged("blocks publishers")
        self.assertEqual(event["reason"], "low on memory")
        self.clock.advance(7)
        self.rabbit.connection.unblock()
        self.rabbit.connection.unblock()
        self.assertFalse(self.broker.blocked)
        self.assertTrue(self.broker.available)
        [event] = self.logged("unblocked publishers")
        self.assertEqual(event["seconds"], 7)
        for n, answer in enumerate(answers):
            self.rabbit.channel.reply(self.rabbit.channel.published[n][0], b"200\nwaited")
            self.assertEqual(self.successResultOf(answer).body, b"waited")
        request, answer = self.submit(b"/after")
        self.assertEqual(len(self.rabbit.channel.published), 3)
        self.assertNoResult(answer)
        self.broker.withdraw(request)
        self.failureResultOf(answer, Withdrawn)

    def test_blocked_ends_with_its_connection(self) -> None:
        """
        A connection lost while blocked takes the block with it: the new
        connection takes requests unless RabbitMQ blocks it too.
        """
        self.rabbit.connection.block("low on disk")
        self.rabbit.connection.close_by_server()
        self.assertFalse(self.broker.blocked)
        self.clock.advance(0.5)
        self.assertTrue(self.broker.available)
        self.rabbit.connections[0].unblock()  # stale: ignored
        self.rabbit.connections[0].block()
        self.assertTrue(self.broker.available)


@pytest.fixture
def driver(tmp_path):
    skip_without_rabbitmq()
    from twisted.internet.defer import Deferred

    driver = AmqpDriver(tmp_path)
    pytest_twisted.blockon(Deferred.fromCoroutine(driver.start()))
    yield driver
    pytest_twisted.blockon(Deferred.fromCoroutine(driver.stop()))


@pytest_twisted.ensureDeferred
async def test_unroutable_request_is_503(driver) -> None:
    """
    A request that RabbitMQ cannot route (its queue was deleted) fails with
    L{BrokerUnavailable}: published C{mandatory}, it comes back. The broker
    declares the queue again, and the next request lands in it.
    """
    await driver._channel.queue_delete(queue=driver.queue)
    answer = driver.broker.submit(BrokerRequest.of(b"GET", b"/nowhere"))
    assert isinstance(await outcome(answer), BrokerUnavailable)
    assert driver.broker.in_flight() == 0
    connection = driver._backend

    async def queue_is_back() -> bool:
        return await queued(connection, driver.queue) is not None

    await eventually(queue_is_back, "the request queue to be declared again")
    request = BrokerRequest.of(b"GET", b"/later")
    later = driver.broker.submit(request)

    async def request_queued() -> bool:
        return await queued(connection, driver.queue) == 1

    await eventually(request_queued, "the next request in the queue")
    assert driver.broker.available
    driver.broker.withdraw(request)
    assert isinstance(await outcome(later), Withdrawn)


@pytest_twisted.ensureDeferred
async def test_unknown_and_repeated_replies_dropped(driver) -> None:
    """
    A reply whose id is unknown, or already answered, is dropped and counted.
    """
    request = BrokerRequest.of(b"GET", b"/once")
    answer = driver.broker.submit(request)
    await driver.requests(1)
    [(properties, _)] = driver.messages
    for _ in range(2):
        driver._channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            body=b"200\nonce",
            properties=pika.BasicProperties(correlation_id=properties.correlation_id),
        )
    driver._channel.basic_publish(
        exchange="",
        routing_key=properties.reply_to,
        body=b"200\nstranger",
        properties=pika.BasicProperties(correlation_id="not-ours"),
    )
    assert (await outcome(answer)).body == b"once"
    await eventually(lambda: driver.broker.dropped_replies == 2, "two dropped replies")


@pytest_twisted.ensureDeferred
async def test_rabbitmq_missing_at_start(tmp_path) -> None:
    """
    With nothing listening, the broker starts unavailable (503, no crash),
    keeps trying, and connects when RabbitMQ appears.
    """
    skip_without_rabbitmq()
    port = free_port()
    parameters = pika.URLParameters(AMQP_URL)
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    broker = AmqpBroker(reactor, url, f"fmq.test.missing.{port}", request_ttl=5,
                        connect_timeout=2, reconnect_max=0.5)  # fmt: skip
    broker.startService()
    listening = None
    try:
        await sleep(1.0)
        assert not broker.available
        answer = broker.submit(BrokerRequest.of(b"GET", b"/x"))
        assert isinstance(await outcome(answer), BrokerUnavailable)
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        listening = await endpoint.listen(ProxyFactory(parameters.host, parameters.port))
        await eventually(lambda: broker.available, "the broker to connect", patience=30)
    finally:
        stopped = broker.stopService()
        if stopped is not None:
            await stopped
        if listening is not None:
            await listening.stopListening()
    connection = pika.BlockingConnection(parameters)
    connection.channel().queue_delete(queue=f"fmq.test.missing.{port}")
    connection.close()
