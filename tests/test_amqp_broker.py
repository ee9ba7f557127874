"""
The AMQP broker's own behaviour on the real RabbitMQ: unroutable requests,
dropped replies, and a RabbitMQ that is not there at start.
"""

from __future__ import annotations

import pika
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.portforward import ProxyFactory

from fmq.brokers.amqp import AmqpBroker
from fmq.errors import BrokerUnavailable
from fmq.protocol import BrokerRequest
from tests.contract import AMQP_URL, AmqpDriver
from tests.e2e import eventually, free_port, sleep
from tests.test_broker_contract import outcome, skip_without_rabbitmq


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
    L{BrokerUnavailable}: published C{mandatory}, it comes back.
    """
    await driver._channel.queue_delete(queue=driver.queue)
    answer = driver.broker.submit(BrokerRequest.of(b"GET", b"/nowhere"))
    assert isinstance(await outcome(answer), BrokerUnavailable)
    assert driver.broker.in_flight() == 0
    await driver._channel.queue_declare(queue=driver.queue, durable=True)


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
