"""
In-memory fakes shipped with fmq, for tests of fmq and of code built on it.
"""

from __future__ import annotations

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from fmq.errors import BrokerUnavailable, RequestExpired, ShuttingDown, Withdrawn
from fmq.interfaces import IBroker
from fmq.protocol import BrokerRequest, BrokerResponse, parse_response

__all__ = ["MemoryBroker"]


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
