"""
Drivers for the broker contract suite (L{tests.test_broker_contract}): each
starts one kind of broker and plays its backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fmq.protocol import BrokerRequest, encode_request
from fmq.testing import MemoryBroker
from tests.brokers import file_broker
from tests.e2e import eventually, sleep

AMQP_URL = os.environ.get("FMQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


class FileDriver:
    """
    A L{FileBroker} on a L{Clock} in a temporary directory.
    """

    name = "file"
    ttl = 300.0
    takes_back = True

    def __init__(self, tmp: Path) -> None:
        self.clock = Clock()
        self.directory = tmp / "broker"
        self.broker = file_broker(self.directory, self.clock)

    async def start(self) -> None:
        self.broker.startService()

    async def requests(self, count: int) -> list[bytes]:
        found = sorted(p.read_bytes() for p in self.directory.glob("*.req"))
        assert len(found) == count, found
        return found

    async def answer(self, request: BrokerRequest, data: bytes) -> None:
        temp = self.directory / f"tmp-{request.key}"
        temp.write_bytes(data)
        os.rename(temp, self.directory / f"{request.key}.resp")
        self.clock.advance(0.05)

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def stop(self) -> None:
        if self.broker.running:
            await _maybe(self.broker.stopService())


class MemoryDriver(FileDriver):
    """
    A L{MemoryBroker} on a L{Clock}.
    """

    name = "memory"

    def __init__(self, tmp: Path) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock, request_ttl=self.ttl)

    async def requests(self, count: int) -> list[bytes]:
        found = sorted(encode_request(r) for r in self.broker.outstanding())
        assert len(found) == count, found
        return found

    async def answer(self, request: BrokerRequest, data: bytes) -> None:
        self.broker.respond(request, data)


class AmqpDriver:
    """
    An L{AmqpBroker} on the real reactor and RabbitMQ, with a request queue
    of its own; the driver consumes it as the backend would.
    """

    name = "amqp"
    ttl = 6.0  # real seconds: long enough for a slow machine's first half to stay quiet
    takes_back = False  # a published message cannot be recalled

    def __init__(self, tmp: Path) -> None:
        from fmq.brokers.amqp import AmqpBroker

        self.queue = f"fmq.test.{os.getpid()}.{id(self)}"
        self.broker = AmqpBroker(reactor, AMQP_URL, self.queue, request_ttl=self.ttl,
                                 connect_timeout=5, reconnect_max=1)  # fmt: skip
        self.messages: list[tuple[Any, Any, bytes]] = []
        self._backend: Any = None

    async def start(self) -> None:
        self._backend = await connect(AMQP_URL)
        channel = await self._backend.channel()
        await channel.queue_declare(queue=self.queue, durable=True)
        queue, _ = await channel.basic_consume(queue=self.queue, auto_ack=True)
        self._channel = channel

        async def take() -> None:
            while True:
                try:
                    _, _, properties, body = await queue.get()
                except Exception:
                    return
                self.messages.append((properties, body))

        Deferred.fromCoroutine(take())
        self.broker.startService()
        await eventually(lambda: self.broker.available, "the broker to connect", patience=30)

    async def requests(self, count: int) -> list[bytes]:
        await eventually(lambda: len(self.messages) >= count, f"{count} messages", patience=30)
        await sleep(0.05)
        assert len(self.messages) == count, self.messages
        return sorted(body for _, body in self.messages)

    async def answer(self, request: BrokerRequest, data: bytes) -> None:
        import pika

        [(properties, _)] = [
            m for m in self.messages if m[0].headers.get("fmq-key") == request.key
        ][:1]
        self.messages.remove((properties, _))
        self._channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            body=data,
            properties=pika.BasicProperties(correlation_id=properties.correlation_id),
        )

    async def elapse(self, seconds: float) -> None:
        await sleep(seconds)

    async def stop(self) -> None:
        if self.broker.running:
            await _maybe(self.broker.stopService())
        backend, self._backend = self._backend, None
        if backend is not None:
            await self._channel.queue_delete(queue=self.queue)
            closed = backend.closed
            backend.close()
            await closed


async def connect(url: str) -> Any:
    """
    A pika Twisted connection to C{url}, ready.
    """
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    parameters = pika.URLParameters(url)
    protocol = TwistedProtocolConnection(parameters)
    ready = protocol.ready
    endpoint = TCP4ClientEndpoint(reactor, parameters.host, parameters.port, timeout=5)
    await connectProtocol(endpoint, protocol)
    await ready
    return protocol


async def queued(connection, queue: str) -> int | None:
    """
    How many messages C{queue} holds, or C{None} if it does not exist.
    """
    from pika.exceptions import ChannelClosedByBroker

    channel = await connection.channel()
    try:
        frame = await channel.queue_declare(queue=queue, passive=True)
    except ChannelClosedByBroker:
        return None
    channel.close()
    return frame.method.message_count


def rabbitmq_reachable() -> str | None:
    """
    C{None} if RabbitMQ answers at the test URL, else why not.
    """
    import socket

    import pika

    parameters = pika.URLParameters(AMQP_URL)
    try:
        with socket.create_connection((parameters.host, parameters.port), timeout=3):
            return None
    except OSError as e:
        return f"RabbitMQ is not reachable at {parameters.host}:{parameters.port}: {e}"


async def _maybe(result: Any) -> None:
    if isinstance(result, Deferred):
        await result
