"""
In-memory fakes shipped with fmq, for tests of fmq and of code built on it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from fmq.errors import BrokerUnavailable, RequestExpired, ShuttingDown, Withdrawn
from fmq.interfaces import IBroker, IRegistry
from fmq.protocol import BrokerRequest, BrokerResponse, parse_response

__all__ = ["MemoryBroker", "MemoryRegistry", "RegistryDown"]


@attrs.define(eq=False)
class _Outstanding:
    request: BrokerRequest
    deferred: Deferred[BrokerResponse]
    expiry: IDelayedCall


@implementer(IBroker)
class MemoryBroker(Service):
    """
    A broker in memory: the test plays the backend with L{respond}.

    @ivar sent: every request ever sent, in order.
    @ivar available: set it to C{False} to make new requests fail with 503.
    @ivar blocked: set it to C{True} (with C{available} C{False}) to play a
        broker whose server blocks publishers.
    @ivar dropped_replies: answers given with L{respond} to requests not in
        flight.
    """

    def __init__(self, clock: IReactorTime, request_ttl: float = 300.0) -> None:
        self._clock = clock
        self._ttl = request_ttl
        self._outstanding: dict[int, _Outstanding] = {}
        self.sent: list[BrokerRequest] = []
        self.available = True
        self.blocked = False
        self.dropped_replies = 0
        self.delete_retries = 0

    def submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        deferred: Deferred[BrokerResponse] = Deferred(lambda d: self._cancel(request))
        if not self.running:
            deferred.errback(ShuttingDown())
        elif not self.available:
            deferred.errback(BrokerUnavailable())
        else:
            expiry = self._clock.callLater(self._ttl, self._end, request, RequestExpired())
            self._outstanding[request.id] = _Outstanding(request, deferred, expiry)
            self.sent.append(request)
        return deferred

    def withdraw(self, request: BrokerRequest) -> None:
        self._end(request, Withdrawn())

    def in_flight(self) -> int:
        return len(self._outstanding)

    def outstanding(self) -> list[BrokerRequest]:
        """
        The requests sent and not yet answered, oldest first.
        """
        return [o.request for o in self._outstanding.values()]

    def respond(self, request: BrokerRequest, data: bytes) -> None:
        """
        Answer C{request} with C{data} in the response format, as a backend would.
        """
        outstanding = self._forget(request)
        if outstanding is None:
            self.dropped_replies += 1
        else:
            try:
                response = parse_response(data)
            except Exception as e:
                outstanding.deferred.errback(e)
            else:
                outstanding.deferred.callback(response)

    def stopService(self) -> None:
        Service.stopService(self)
        for outstanding in list(self._outstanding.values()):
            self._end(outstanding.request, ShuttingDown())

    def _cancel(self, request: BrokerRequest) -> None:
        self._forget(request)

    def _forget(self, request: BrokerRequest) -> _Outstanding | None:
        outstanding = self._outstanding.pop(request.id, None)
        if outstanding is not None and outstanding.expiry.active():
            outstanding.expiry.cancel()
        return outstanding

    def _end(self, request: BrokerRequest, error: Exception) -> None:
        outstanding = self._forget(request)
        if outstanding is not None:
            outstanding.deferred.errback(error)


class RegistryDown(ConnectionError):
    """
    The in-memory registry is switched off (L{MemoryRegistry.go_down}).
    """


@attrs.define(eq=False)
class _RegistryStore:
    """
    What the clients of one in-memory registry share: leases and channels.
    """

    clock: IReactorTime
    leases: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    channels: dict[str, list[Callable[[bytes], None]]] = attrs.field(factory=dict)
    published: list[tuple[str, bytes]] = attrs.field(factory=list)

    def holder(self, name: str) -> str | None:
        held = self.leases.get(name)
        if held is None or held[1] <= self.clock.seconds():
            self.leases.pop(name, None)
            return None
        return held[0]


@implementer(IRegistry)
class MemoryRegistry(Service):
    """
    A registry in memory with Redis's semantics (C{SET NX PX}, pub/sub), for
    one instance; L{sibling} gives another instance's client on the same
    store.

    @ivar hold_subscriptions: while true, subscriptions are not confirmed
        until L{confirm_subscriptions}, and get no messages until then.
    @ivar hang: while true, every call is taken and never answered.
    """

    def __init__(self, clock: IReactorTime, store: _RegistryStore | None = None) -> None:
        self._store = store if store is not None else _RegistryStore(clock)
        self._clock = clock
        self._watchers: list[Callable[[bool], None]] = []
        self._mine: list[tuple[str, Callable[[bytes], None]]] = []
        self._pending: list[tuple[str, Callable[[bytes], None], Deferred[None]]] = []
        self.available = True
        self.hold_subscriptions = False
        self.hang = False

    def sibling(self) -> MemoryRegistry:
        """
        Another instance's client of the same registry.
        """
        return MemoryRegistry(self._clock, self._store)

    @property
    def published(self) -> list[tuple[str, bytes]]:
        """
        Every message published by any client, in order.
        """
        return self._store.published

    def holder(self, name: str) -> str | None:
        """
        The token holding lease C{name} now, if any.
        """
        return self._store.holder(name)

    def go_down(self) -> None:
        """
        Lose the registry: subscriptions are gone, calls fail.
        """
        if self.available:
            self.available = False
            for channel, receiver in self._mine:
                self._store.channels.get(channel, []).remove(receiver)
            self._mine.clear()
            for callback in list(self._watchers):
                callback(False)

    def come_back(self) -> None:
        if not self.available:
            self.available = True
            for callback in list(self._watchers):
                callback(True)

    def watch(self, callback: Callable[[bool], None]) -> None:
        self._watchers.append(callback)

    def _call(self, answer: Callable[[], object]) -> Deferred:
        if self.hang:
            return Deferred()
        if not self.available:
            return fail(RegistryDown("registry down"))
        return succeed(answer())

    def claim(self, name: str, token: str, milliseconds: int) -> Deferred[bool]:
        def claim() -> bool:
            if self._store.holder(name) is not None:
                return False
            self._store.leases[name] = (token, self._clock.seconds() + milliseconds / 1000)
            return True

        return self._call(claim)

    def renew(self, name: str, token: str, milliseconds: int) -> Deferred[bool]:
        def renew() -> bool:
            if self._store.holder(name) != token:
                return False
            self._store.leases[name] = (token, self._clock.seconds() + milliseconds / 1000)
            return True

        return self._call(renew)

    def release(self, name: str, token: str) -> Deferred[bool]:
        def release() -> bool:
            if self._store.holder(name) != token:
                return False
            del self._store.leases[name]
            return True

        return self._call(release)

    def publish(self, channel: str, message: bytes) -> Deferred[None]:
        def publish() -> None:
            self._store.published.append((channel, message))
            for receiver in list(self._store.channels.get(channel, [])):
                receiver(message)

        return self._call(publish)

    def subscribe(self, channel: str, receiver: Callable[[bytes], None]) -> Deferred[None]:
        if self.hang:
            return Deferred()
        if not self.available:
            return fail(RegistryDown("registry down"))
        done: Deferred[None] = Deferred()
        self._pending.append((channel, receiver, done))
        if not self.hold_subscriptions:
            self.confirm_subscriptions()
        return done

    def confirm_subscriptions(self) -> None:
        """
        Put the subscriptions asked for in place, and say so.
        """
        pending, self._pending = self._pending, []
        for channel, receiver, done in pending:
            self._store.channels.setdefault(channel, []).append(receiver)
            self._mine.append((channel, receiver))
            done.callback(None)

    def unsubscribe(self, channel: str, receiver: Callable[[bytes], None]) -> None:
        if (channel, receiver) in self._mine:
            self._mine.remove((channel, receiver))
            self._store.channels[channel].remove(receiver)
