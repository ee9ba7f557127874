"""
The AMQP broker: requests go to a RabbitMQ queue, answers come back on this
instance's direct reply-to pseudo-queue.

Why direct reply-to (C{amq.rabbitmq.reply-to}) rather than an exclusive reply
queue: nothing to declare or clean up per instance, no queue left behind by a
crashed instance, and replies for an instance that is gone are dropped by
RabbitMQ at once. Its limit suits fmq: the reply address belongs to the
channel, so after a reconnect the requests still in flight cannot be answered
and their callers get 503 at once, which fmq would do anyway.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fmq.errors import (
    AnswerTooLarge,
    BrokerRequestFailed,
    BrokerUnavailable,
    MalformedResponse,
    RequestExpired,
    ShuttingDown,
    Withdrawn,
)
from fmq.interfaces import IBroker
from fmq.logs import debugging
from fmq.protocol import BrokerRequest, BrokerResponse, encode_request, parse_response

REPLY_TO = "amq.rabbitmq.reply-to"
#: starts a connection: the protocol, and a Deferred that fires once it is ready
Dial = Callable[[], tuple[Any, "Deferred[Any]"]]
#: the header that carries the md5 broker key
KEY_HEADER = "fmq-key"


@attrs.define(eq=False)
class _Outstanding:
    request: BrokerRequest
    deferred: Deferred[BrokerResponse]
    expiry: IDelayedCall


def reconnect_delay(attempt: int, cap: float) -> float:
    """
    Seconds before the next connection attempt: 0.5, 1, 2, ... up to C{cap}.
    """
    return min(0.5 * 2 ** min(attempt, 30), cap)


@implementer(IBroker)
class AmqpBroker(Service):
    """
    A broker over RabbitMQ (AMQP 0-9-1), with pika's Twisted adapter.

    @ivar dropped_replies: replies with an unknown or already answered id.
    @ivar blocked: C{True} while RabbitMQ blocks this connection's publishes
        (C{connection.blocked}: a memory or disk alarm).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        request_queue: str,
        *,
        request_ttl: float,
        connect_timeout: float = 10.0,
        reconnect_max: float = 10.0,
        max_answer_bytes: int | None = None,
        dial: Dial | None = None,
    ) -> None:
        """
        @param max_answer_bytes: a larger reply fails its request with
            L{AnswerTooLarge} (502); C{None} for no cap. pika has the message
            in memory by then: the cap keeps it from going further.
        @param dial: how to connect (for tests); by default TCP to the host
            and port of C{url}, with pika's Twisted adapter.
        """
        import pika

        self._reactor = reactor
        self._properties = pika.BasicProperties
        self._parameters = pika.URLParameters(url)
        # how this instance shows in RabbitMQ's management and rabbitmqctl
        self._parameters.client_properties = {"connection_name": f"fmq pid {os.getpid()}"}
        self._queue_name = request_queue
        self._ttl = request_ttl
        self._connect_timeout = connect_timeout
        self._reconnect_max = reconnect_max
        self._max_answer_bytes = max_answer_bytes
        self._dial = dial or self._dial_tcp
        self._outstanding: dict[str, _Outstanding] = {}
        # request.id -> its correlation ids, so withdraw finds them at once
        self._by_request: dict[int, set[str]] = {}
        self._channel: Any = None
        self._connection: Any = None
        self._generation = 0
        self._attempt = 0
        self._reconnect: IDelayedCall | None = None
        self._stopping = False
        self._down_logged = False
        self._declaring = False
        self._blocked_since = 0.0
        self.blocked = False
        self.dropped_replies = 0
        self.delete_retries = 0  # RabbitMQ removes what it delivered

    @property
    def available(self) -> bool:
        """
        C{True} while connected, with the channel and the reply consumer set
        up, and not blocked.
        """
        return self._channel is not None and not self.blocked

    # -- the service

    def startService(self) -> None:
        """
        Connect; a RabbitMQ that is not there yet is retried, not fatal.
        """
        Service.startService(self)
        self._stopping = False
        self._connect()

    def stopService(self) -> Deferred[None] | None:
        """
        Fail what is in flight with L{ShuttingDown} and close the connection.
        """
        Service.stopService(self)
        self._stopping = True
        if self._reconnect is not None and self._reconnect.active():
            self._reconnect.cancel()
        self._fail_all(ShuttingDown())
        self._channel = None
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            closed = connection.closed
            connection.close()
            if isinstance(closed, Deferred):
                done: Deferred[None] = Deferred()
                closed.addBoth(lambda _: done.callback(None))
                return done.addTimeout(5, self._reactor).addErrback(lambda f: None)
        return None

    # -- IBroker

    def submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        correlation_id = uuid.uuid4().hex
        deferred: Deferred[BrokerResponse] = Deferred(lambda d: self._cancel(correlation_id))
        if not self.running:
            deferred.errback(ShuttingDown())
            return deferred
        if not self.available:
            deferred.errback(BrokerUnavailable())
            return deferred
        properties = self._properties(
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            delivery_mode=2,
            expiration=str(int(self._ttl * 1000)),
            headers={KEY_HEADER: request.key},
        )
        expiry = self._reactor.callLater(self._ttl, self._expire, correlation_id)
        self._outstanding[correlation_id] = _Outstanding(request, deferred, expiry)
        self._by_request.setdefault(request.id, set()).add(correlation_id)
        try:
            published = self._channel.basic_publish(
                exchange="",
                routing_key=self._queue_name,
                body=encode_request(request),
                properties=properties,
                mandatory=True,
            )
        except Exception as e:  # a closing channel raises instead of failing
            self.log.warn("cannot publish {key}: {error}", key=request.key, error=repr(e))
            self._end(correlation_id, BrokerUnavailable())
            return deferred
        published.addErrback(self._not_confirmed, correlation_id)
        if debugging():
            self.log.debug(
                "published {key} ({request}) as {id}",
                key=request.key,
                request=request.line,
                id=correlation_id,
            )
        return deferred

    def withdraw(self, request: BrokerRequest) -> None:
        for correlation_id in list(self._by_request.get(request.id, ())):
            if self._outstanding[correlation_id].request is request:
                self._end(correlation_id, Withdrawn())

    def in_flight(self) -> int:
        return len(self._outstanding)

    # -- connecting

    def _dial_tcp(self) -> tuple[Any, Deferred[Any]]:
        from pika.adapters.twisted_connection import TwistedProtocolConnection

        protocol = TwistedProtocolConnection(self._parameters)
        ready = protocol.ready  # it is set to None once it fires
        endpoint = TCP4ClientEndpoint(
            cast(IReactorTCP, self._reactor),
            self._parameters.host,
            self._parameters.port,
            timeout=int(self._connect_timeout),
        )
        connected = connectProtocol(endpoint, protocol)
        connected.addCallback(lambda _: ready)
        return protocol, connected

    def _connect(self) -> None:
        self._generation += 1
        self.blocked = False
        generation = self._generation
        protocol, connected = self._dial()
        connected.addTimeout(self._connect_timeout, self._reactor)
        connected.addCallback(lambda _: Deferred.fromCoroutine(self._set_up(protocol, generation)))
        connected.addErrback(self._connect_failed, protocol, generation)

    async def _set_up(self, protocol: Any, generation: int) -> None:
        self._watch_blocked(protocol, generation)
        channel = await protocol.channel()
        await channel.queue_declare(queue=self._queue_name, durable=True)
        await channel.confirm_delivery()
        replies, _ = await channel.basic_consume(queue=REPLY_TO, auto_ack=True)
        if generation != self._generation or self._stopping:
            protocol.close()
            return
        self._connection = protocol
        self._channel = channel
        self._watch_close(protocol, generation)
        channel.on_closed.addCallback(lambda reason: self._lost(generation, _describe(reason)))
        self._attempt = 0
        self._down_logged = False
        self.log.info(
            "connected to RabbitMQ at {host}:{port}; requests go to queue {queue}",
            host=self._parameters.host,
            port=self._parameters.port,
            queue=self._queue_name,
        )
        Deferred.fromCoroutine(self._read_replies(replies, generation))

    def _watch_blocked(self, protocol: Any, generation: int) -> None:
        """
        Follow C{connection.blocked} and C{connection.unblocked}: while
        blocked, RabbitMQ reads nothing more from this connection, so a new
        request would only wait out its caller's timeout.
        """
        impl = getattr(protocol, "_impl", None)
        if impl is None:
            return

        def blocked(connection: Any, frame: Any) -> None:
            if generation != self._generation or self.blocked:
                return
            self.blocked = True
            self._blocked_since = self._reactor.seconds()
            self.log.warn(
                "RabbitMQ blocks publishers ({reason}): new requests get 503 until it"
                " unblocks; {in_flight} in flight wait on",
                reason=getattr(frame.method, "reason", None) or "no reason given",
                in_flight=len(self._outstanding),
            )

        def unblocked(connection: Any, frame: Any) -> None:
            if generation != self._generation or not self.blocked:
                return
            self.blocked = False
            self.log.info(
                "RabbitMQ unblocked publishers after {seconds:.1f}s; taking requests again",
                seconds=self._reactor.seconds() - self._blocked_since,
            )

        impl.add_on_connection_blocked_callback(blocked)
        impl.add_on_connection_unblocked_callback(unblocked)

    def _watch_close(self, protocol: Any, generation: int) -> None:
        """
        Log the broker's own reason for closing (the adapter replaces it
        with C{ConnectionDone}), and handle the loss once.
        """
        import pika.spec

        def closed_by_broker(frame: Any) -> None:
            method = frame.method
            reason = f"connection closed by RabbitMQ: {method.reply_code} {method.reply_text}"
            self._lost(generation, reason, close=False)  # pika closes it

        impl = getattr(protocol, "_impl", None)
        if impl is not None:
            impl.callbacks.add(0, pika.spec.Connection.Close, closed_by_broker)
        protocol.closed.addBoth(lambda error: self._lost(generation, _describe(error)))

    def _connect_failed(self, failure: Any, protocol: Any, generation: int) -> None:
        if generation != self._generation:
            return
        try:
            protocol.transport.loseConnection()
        except Exception:
            pass
        self._down(f"cannot connect: {failure.getErrorMessage() or failure.type.__name__}")

    def _lost(self, generation: int, reason: str, close: bool = True) -> None:
        """
        The connection, its channel or the reply consumer is gone: whichever
        is noticed first ends this connection, once.

        @param close: close the connection if it is still open.
        """
        if generation != self._generation:
            return
        self._generation += 1  # anything from the old connection is stale now
        self._channel = None
        self.blocked = False
        connection, self._connection = self._connection, None
        if close and connection is not None and connection.is_open:
            try:
                connection.close()  # a channel alone is gone: start afresh
            except Exception:
                pass
        if self._stopping:
            return
        self._down(reason)

    def _down(self, reason: str) -> None:
        """
        Not connected: fail what is in flight (its replies can no longer come),
        and try again after a capped backoff.
        """
        if not self._down_logged:
            self.log.error(
                "RabbitMQ at {host}:{port} is unavailable: {reason}",
                host=self._parameters.host,
                port=self._parameters.port,
                reason=reason,
            )
            self._down_logged = True
        self._fail_all(BrokerUnavailable())
        if self._stopping:
            return
        delay = reconnect_delay(self._attempt, self._reconnect_max)
        self._attempt += 1
        self._reconnect = self._reactor.callLater(delay, self._connect)

    # -- replies

    async def _read_replies(self, replies: Any, generation: int) -> None:
        """
        Take replies one at a time (a C{get()} from inside its own callback
        would recurse once per queued reply).
        """
        while generation == self._generation:
            try:
                _, _, properties, body = await replies.get()
            except Exception as e:  # closed with the channel, or cancelled
                self._lost(generation, _describe(e))
                return
            self._reply(properties.correlation_id, body)

    def _reply(self, correlation_id: str | None, body: bytes) -> None:
        outstanding = self._forget(correlation_id or "")
        if outstanding is None:
            self.dropped_replies += 1
            self.log.info("dropped a reply with unknown id {id}", id=correlation_id)
            return
        try:
            if self._max_answer_bytes is not None and len(body) > self._max_answer_bytes:
                raise AnswerTooLarge(
                    f"{len(body)} bytes, larger than max_answer_bytes ({self._max_answer_bytes})"
                )
            response = parse_response(body)
        except MalformedResponse as e:
            self.log.warn(
                "malformed reply for {key} ({request}): {error}",
                key=outstanding.request.key,
                request=outstanding.request.line,
                error=str(e),
            )
            outstanding.deferred.errback(e)
        else:
            outstanding.deferred.callback(response)

    # -- ending a request

    def _not_confirmed(self, failure: Any, correlation_id: str) -> None:
        from pika.exceptions import NackError, UnroutableError

        if failure.check(UnroutableError):
            self._declare_again(correlation_id)
        elif failure.check(NackError) and correlation_id in self._outstanding:
            self.log.warn("request {id} was refused by RabbitMQ (nack)", id=correlation_id)
        # else the channel is gone, which is logged once for all
        self._end(correlation_id, BrokerUnavailable())

    def _declare_again(self, correlation_id: str) -> None:
        """
        A request came back unroutable: its queue was deleted. Declare it
        again, once for however many come back meanwhile.
        """
        channel = self._channel
        if channel is None or self._declaring:
            return
        self._declaring = True
        self.log.warn(
            "request {id} came back unroutable: queue {queue} is missing; declaring it again",
            id=correlation_id,
            queue=self._queue_name,
        )

        def declared(result: object) -> None:
            self._declaring = False
            if isinstance(result, Failure):
                self.log.warn(
                    "cannot declare queue {queue} again: {error}",
                    queue=self._queue_name,
                    error=result.getErrorMessage() or repr(result.value),
                )
            else:
                self.log.info("declared queue {queue} again", queue=self._queue_name)

        try:
            channel.queue_declare(queue=self._queue_name, durable=True).addBoth(declared)
        except Exception:  # a closing channel may raise
            declared(Failure())

    def _expire(self, correlation_id: str) -> None:
        outstanding = self._outstanding.get(correlation_id)
        if outstanding is not None:
            self.log.warn(
                "no reply for {key} ({request}) within {ttl}s",
                key=outstanding.request.key,
                request=outstanding.request.line,
                ttl=self._ttl,
            )
            self._end(correlation_id, RequestExpired())

    def _cancel(self, correlation_id: str) -> None:
        self._forget(correlation_id)

    def _forget(self, correlation_id: str) -> _Outstanding | None:
        outstanding = self._outstanding.pop(correlation_id, None)
        if outstanding is None:
            return None
        if outstanding.expiry.active():
            outstanding.expiry.cancel()
        ids = self._by_request[outstanding.request.id]
        ids.discard(correlation_id)
        if not ids:
            del self._by_request[outstanding.request.id]
        return outstanding

    def _end(self, correlation_id: str, error: BrokerRequestFailed) -> None:
        outstanding = self._forget(correlation_id)
        if outstanding is not None:
            outstanding.deferred.errback(error)

    def _fail_all(self, error: BrokerRequestFailed) -> None:
        for correlation_id in list(self._outstanding):
            self._end(correlation_id, error)


def _describe(error: Any) -> str:
    """
    Why a channel or its reply consumer ended, for the log.
    """
    from pika.exceptions import ChannelClosed, ConnectionClosed, ConsumerCancelled

    error = getattr(error, "value", error)  # a Failure
    if isinstance(error, ConsumerCancelled):
        return "RabbitMQ cancelled the reply consumer"
    if isinstance(error, ChannelClosed):
        return f"channel closed: {error.reply_code} {error.reply_text}"
    if isinstance(error, ConnectionClosed):
        return f"connection closed: {error.reply_code} {error.reply_text}"
    return f"connection lost: {error!r}"
