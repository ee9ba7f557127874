"""
The fleet's registry on Redis (C{[fleet] registry = redis://...}), through
txredisapi's protocols on connections this module makes and remakes itself.

Two connections: one for commands (leases, publishing) and one subscribed to
answer channels, as Redis wants. Either one lost, both are closed, the
registry is unavailable, and it connects again with a capped backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fmq.interfaces import IRegistry
from fmq.settings import Settings, mask_password

__all__ = ["RELEASE", "RENEW", "RedisAddress", "RedisRegistry", "fleet_identity", "make_fleet"]

#: renew the lease if the token still holds it
RENEW = b"""
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""

#: give the lease up if the token still holds it
RELEASE = b"""
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


@attrs.frozen
class RedisAddress:
    """
    Where the registry is: C{redis://[:password@]host[:port][/db]}.
    """

    host: str
    port: int
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """
        @raise ValueError: C{url} is not a C{redis://} URL.
        """
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"not a redis://host[:port][/db] URL: {mask_password(url)!r}")
        path = parts.path.strip("/")
        try:
            port = parts.port or 6379
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(
                f"not a redis://host[:port][/db] URL: {mask_password(url)!r}"
            ) from None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, db, password)


def _protocols() -> tuple[type, type]:
    """
    txredisapi's protocol classes, imported when a registry is used: it
    imports Twisted's TLS support, which a lone instance does not need.
    """
    try:
        import txredisapi
    except ImportError as e:
        raise ValueError(
            f"[fleet] registry needs txredisapi, which cannot be imported: {e}"
        ) from None

    class Commands(txredisapi.RedisProtocol):
        lost = staticmethod(lambda: None)

        def connectionLost(self, why: Failure) -> None:
            txredisapi.RedisProtocol.connectionLost(self, why)
            self.lost()

    class Subscriber(txredisapi.SubscriberProtocol):
        lost = staticmethod(lambda: None)
        received = staticmethod(lambda channel, message: None)

        def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
            self.received(channel, message)

        def connectionLost(self, why: Failure) -> None:
            txredisapi.SubscriberProtocol.connectionLost(self, why)
            self.lost()

    return Commands, Subscriber


@implementer(IRegistry)
class RedisRegistry(Service):
    """
    The registry on a Redis server.

    @ivar available: C{True} while both connections are up.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        reactor: Any,
        connect_timeout: float = 5.0,
        reconnect_max: float = 5.0,
        heartbeat: float = 1.0,
        channels: str = "fmq:*",
    ) -> None:
        """
        @param channels: the pattern of the answer channels to listen to
            (the namespace's, see L{fmq.fleet}).
        @param heartbeat: seconds between PINGs on both connections; one
            unanswered for two of them counts as the connection lost.
        @raise ValueError: the URL is not a Redis URL, or txredisapi is missing.
        """
        self._address = RedisAddress.parse(url)
        self._where = mask_password(url)
        self._commands_class, self._subscriber_class = _protocols()
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._reconnect_max = reconnect_max
        self._heartbeat = heartbeat
        self._channels = channels
        self._watchers: list[Callable[[bool], None]] = []
        self._receivers: dict[bytes, list[Callable[[bytes], None]]] = {}
        self._commands: Any = None
        self._subscriber: Any = None
        self._generation = 0
        self._retry: IDelayedCall | None = None
        self._delay = 0.0
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._state: bool | None = None  # None: never said
        self.available = False

    def watch(self, callback: Callable[[bool], None]) -> None:
        self._watchers.append(callback)

    def startService(self) -> None:
        Service.startService(self)
        self._connect()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        # Closed, not aborted: what holders wrote on the way out (a "claim"
        # for the others, a lease released) still reaches Redis.
        self._drop(None, gently=True)
        self.available = False

    # -- connections

    def _connect(self) -> None:
        self._retry = None
        self._generation += 1
        generation = self._generation
        Deferred.fromCoroutine(self._open(generation)).addErrback(self._failed, generation)

    async def _open(self, generation: int) -> None:
        address = self._address
        endpoint = TCP4ClientEndpoint(
            self._reactor, address.host, address.port, timeout=self._connect_timeout
        )
        options = {"charset": None, "convertNumbers": False}
        commands = self._commands_class(**options)
        subscriber = self._subscriber_class(**options)
        self._commands, self._subscriber = commands, subscriber
        for protocol in (commands, subscriber):
            connecting = connectProtocol(endpoint, protocol)
            connecting.addTimeout(self._connect_timeout, self._reactor)
            await connecting
            if generation != self._generation:
                return
            protocol.lost = lambda: self._lost(generation)
            if address.password is not None:
                await self._within(protocol.execute_command("AUTH", address.password))
            if protocol is commands and address.db:
                await self._within(protocol.execute_command("SELECT", address.db))
        subscriber.received = self._received
        await self._within(subscriber.psubscribe(self._channels))
        if generation != self._generation:
            return
        if generation == self._generation and self.running:
            self._delay = 0.0
            self._pinger.start(self._heartbeat, now=False)
            self._change(True)

    def _within(self, deferred: Deferred[Any]) -> Deferred[Any]:
        return deferred.addTimeout(self._connect_timeout, self._reactor)

    def _failed(self, failure: Failure, generation: int) -> None:
        if generation == self._generation:
            self._drop(failure.getErrorMessage())

    def _lost(self, generation: int) -> None:
        if generation == self._generation:
            self._drop("connection lost")

    def _drop(self, reason: str | None, gently: bool = False) -> None:
        """
        Close both connections, forget every subscription, say the registry
        is unavailable, and try again later unless stopping.
        """
        self._generation += 1
        if self._pinger.running:
            self._pinger.stop()
        for protocol in (self._commands, self._subscriber):
            if protocol is not None and protocol.transport is not None:
                if gently:
                    protocol.transport.loseConnection()
                else:
                    protocol.transport.abortConnection()
        self._commands = self._subscriber = None
        self._receivers.clear()
        if reason is not None:
            self._change(False, reason)
        if self.running and self._retry is None:
            self._delay = min(self._reconnect_max, max(0.1, self._delay * 2))
            self._retry = self._reactor.callLater(self._delay, self._connect)

    def _change(self, available: bool, reason: str = "") -> None:
        self.available = available
        if self._state is available:
            return
        self._state = available
        if available:
            self.log.info(
                "fleet registry {where} reachable: collapsing across the fleet",
                where=self._where,
            )
        else:
            self.log.warn(
                "fleet registry {where} unreachable ({reason}): each instance collapses "
                "its own callers until it is back",
                where=self._where,
                reason=reason,
            )
        for callback in list(self._watchers):
            callback(available)

    def _ping(self) -> None:
        generation = self._generation
        for protocol in (self._commands, self._subscriber):
            if protocol is not None:
                pinging = protocol.ping() if protocol is self._commands else self._sub_ping()
                pinging.addTimeout(2 * self._heartbeat, self._reactor).addErrback(
                    lambda f: self._failed(
                        Failure(ConnectionError("no answer to PING")), generation
                    )
                )

    def _sub_ping(self) -> Deferred[Any]:
        return self._subscriber.execute_command("PING")

    # -- the registry

    def _command(self, *args: object) -> Deferred[Any]:
        if self._commands is None or not self.available:
            return fail(ConnectionError("registry unreachable"))
        return self._commands.execute_command(*args)

    def claim(self, name: str, token: str, milliseconds: int) -> Deferred[bool]:
        return self._command("SET", name, token, "PX", milliseconds, "NX").addCallback(
            lambda reply: reply == "OK"
        )

    def renew(self, name: str, token: str, milliseconds: int) -> Deferred[bool]:
        return self._command("EVAL", RENEW, 1, name, token, milliseconds).addCallback(
            lambda reply: reply == 1
        )

    def release(self, name: str, token: str) -> Deferred[bool]:
        return self._command("EVAL", RELEASE, 1, name, token).addCallback(lambda reply: reply == 1)

    def publish(self, channel: str, message: bytes) -> Deferred[None]:
        return self._command("PUBLISH", channel, message).addCallback(lambda _: None)

    def subscribe(self, channel: str, receiver: Callable[[bytes], None]) -> Deferred[None]:
        """
        Messages on C{channel} reach C{receiver} at once: the subscriber
        connection is subscribed to every answer channel of the namespace
        (C{PSUBSCRIBE}) before the registry says it is available, which saves
        a group a round trip to Redis before it claims the lease.
        """
        if self._subscriber is None or not self.available:
            return fail(ConnectionError("registry unreachable"))
        self._receivers.setdefault(channel.encode(), []).append(receiver)
        return succeed(None)

    def unsubscribe(self, channel: str, receiver: Callable[[bytes], None]) -> None:
        key = channel.encode()
        receivers = self._receivers.get(key)
        if receivers is not None and receiver in receivers:
            receivers.remove(receiver)
            if not receivers:
                del self._receivers[key]

    def _received(self, channel: bytes, message: bytes) -> None:
        for receiver in list(self._receivers.get(channel, [])):
            receiver(message)


def fleet_identity(settings: Settings) -> dict[str, str]:
    """
    The settings that change an answer, from which the fleet's namespace is
    made (L{fmq.fleet.namespace}): instances that differ in any never share.
    """
    broker = settings.broker
    if broker.type == "amqp":
        url = urlsplit(settings.amqp.url)
        where = f"{url.hostname}:{url.port or 5672}{url.path or '/'} {settings.amqp.request_queue}"
    elif broker.type == "file":
        where = str(broker.directory)
    else:
        where = ""
    return {
        "collapse_key": settings.service.collapse_key,
        "request_format": broker.request_format,
        "broker": broker.type,
        "where": where,
        "mode": settings.service.mode,
    }


def make_fleet(settings: Settings, reactor: Any) -> tuple[Any, RedisRegistry] | None:
    """
    The fleet and its registry for C{settings}, or C{None} when C{[fleet]
    registry} is empty or the mode is naive (nothing to collapse).

    @raise ValueError: the registry URL cannot be used; the message names the key.
    """
    from uuid import uuid4

    from fmq.fleet import Fleet, namespace

    if not settings.fleet.registry or settings.service.mode != "collapse":
        return None
    space = namespace(fleet_identity(settings))
    try:
        registry = RedisRegistry(settings.fleet.registry, reactor, channels=f"fmq:{space}:*")
    except ValueError as e:
        message = str(e)
        raise ValueError(
            message if message.startswith("[fleet]") else f"[fleet] registry: {message}"
        ) from None
    fleet = Fleet(
        registry,
        reactor,
        space,
        uuid4().hex[:12],
        settings.fleet.lease,
        settings.broker.request_ttl,
        settings.broker.max_answer_bytes,
    )
    return fleet, registry
