"""
Stand-ins for pika's Twisted adapter, for unit tests of L{fmq.brokers.amqp}:
a connection, its channel and the reply consumer, driven by the test as
RabbitMQ would drive them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika.spec
from pika.adapters.twisted_connection import ClosableDeferredQueue
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ConsumerCancelled,
    UnroutableError,
)
from twisted.internet.defer import Deferred, succeed


class FakeMethod:
    """
    A method frame: pika hands callbacks an object whose C{method} is the method.
    """

    def __init__(self, method: Any) -> None:
        self.method = method


class FakeConnectionImpl:
    """
    The part of C{pika.connection.Connection} the broker registers callbacks on.
    """

    def __init__(self) -> None:
        self.on_frame: dict[type, list[Callable[[Any], None]]] = {}
        self.on_blocked: list[Callable[[Any, Any], None]] = []
        self.on_unblocked: list[Callable[[Any, Any], None]] = []
        self.callbacks = self

    def add(self, prefix: int, kind: type, callback: Callable[[Any], None], *a: Any) -> None:
        self.on_frame.setdefault(kind, []).append(callback)

    def add_on_connection_blocked_callback(self, callback: Callable[[Any, Any], None]) -> None:
        self.on_blocked.append(callback)

    def add_on_connection_unblocked_callback(self, callback: Callable[[Any, Any], None]) -> None:
        self.on_unblocked.append(callback)


class FakeTransport:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class FakeChannel:
    """
    A C{TwistedChannel} in confirm mode with one consumer: it records what is
    published and lets the test confirm, return, answer, cancel and close.
    """

    def __init__(self) -> None:
        self.declared: list[str] = []
        self.published: list[tuple[Any, bytes, Deferred[Any]]] = []
        self.replies = ClosableDeferredQueue()
        self.on_closed: Deferred[Any] = Deferred()
        self.is_open = True
        self.declare_result: Deferred[Any] | None = None

    def queue_declare(self, queue: str, durable: bool = False) -> Deferred[Any]:
        self.declared.append(queue)
        if self.declare_result is not None:
            return self.declare_result
        return succeed(None)

    def confirm_delivery(self) -> Deferred[Any]:
        return succeed(None)

    def basic_consume(self, queue: str, auto_ack: bool = False) -> Deferred[Any]:
        return succeed((self.replies, "ctag"))

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool
    ) -> Deferred[Any]:
        if not self.is_open:
            raise pika.exceptions.ChannelWrongStateError("channel closed")
        confirmed: Deferred[Any] = Deferred()
        self.published.append((properties, body, confirmed))
        return confirmed

    def reply(self, properties: Any, body: bytes) -> None:
        """
        A reply arrives for the message published with C{properties}.
        """
        self.replies.put((self, None, properties, body))

    def return_unroutable(self, index: int) -> None:
        """
        RabbitMQ returns published message C{index}: no queue took it.
        """
        properties, body, confirmed = self.published[index]
        confirmed.errback(UnroutableError([(self, None, properties, body)]))

    def cancel_consumer(self) -> None:
        """
        RabbitMQ cancels the reply consumer (C{basic.cancel} from the server).
        """
        self.replies.close(ConsumerCancelled())

    def close_by_server(self, code: int = 406, text: str = "PRECONDITION_FAILED") -> None:
        """
        RabbitMQ closes the channel, in the order pika's adapter reports it.
        """
        self.closed_by(ChannelClosedByBroker(code, text))

    def closed_by(self, reason: Exception) -> None:
        self.is_open = False
        for _, _, confirmed in self.published:
            if not confirmed.called:
                confirmed.errback(reason)
        self.replies.close(reason)
        self.on_closed.callback(reason)


class FakeConnection:
    """
    A ready C{TwistedProtocolConnection} with one channel.
    """

    def __init__(self) -> None:
        self._impl = FakeConnectionImpl()
        self.transport = FakeTransport()
        self.closed: Deferred[Any] = Deferred()
        self.is_open = True
        self.channels: list[FakeChannel] = []

    def channel(self) -> Deferred[FakeChannel]:
        channel = FakeChannel()
        self.channels.append(channel)
        return succeed(channel)

    def close(self) -> Deferred[Any]:
        if self.is_open:
            self.lose(None)
        return self.closed

    def lose(self, reason: Exception | None) -> None:
        """
        The connection ends: its channel closes, then C{closed} fires.
        """
        self.is_open = False
        for channel in self.channels:
            if channel.is_open:
                channel.closed_by(reason or ConnectionClosedByBroker(200, "Normal shutdown"))
        self.closed.callback(reason)

    def close_by_server(self, code: int = 320, text: str = "CONNECTION_FORCED") -> None:
        for callback in self._impl.on_frame.get(pika.spec.Connection.Close, []):
            callback(FakeMethod(pika.spec.Connection.Close(code, text)))
        self.lose(ConnectionClosedByBroker(code, text))

    def block(self, reason: str = "low on memory") -> None:
        for callback in self._impl.on_blocked:
            callback(self._impl, FakeMethod(pika.spec.Connection.Blocked(reason)))

    def unblock(self) -> None:
        for callback in self._impl.on_unblocked:
            callback(self._impl, FakeMethod(pika.spec.Connection.Unblocked()))


class FakeRabbit:
    """
    The C{dial} of L{fmq.brokers.amqp.AmqpBroker}: every call is a new ready
    L{FakeConnection}, kept in L{connections}.
    """

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []

    def __call__(self) -> tuple[FakeConnection, Deferred[Any]]:
        connection = FakeConnection()
        self.connections.append(connection)
        return connection, succeed(None)

    @property
    def connection(self) -> FakeConnection:
        """
        The last connection made.
        """
        return self.connections[-1]

    @property
    def channel(self) -> FakeChannel:
        """
        The last channel of the last connection.
        """
        return self.connection.channels[-1]
