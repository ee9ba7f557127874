"""
The file broker's requests by id: each one's caller's Deferred and its TTL.

The key table (L{fmq.brokers.keystate}) knows requests by C{int} ids. What
goes with an id lives here, outside the pure core: the L{BrokerRequest}, the
Deferred its caller waits on (none for a request adopted from an earlier run
that no caller has joined), and the timer of its TTL. Ending, answering and
joining a request settle them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from fmq.brokers.answerfile import ResponseFile
from fmq.errors import BrokerRequestFailed, MalformedResponse
from fmq.logs import debugging
from fmq.protocol import BrokerRequest, BrokerResponse

__all__ = ["PendingRequests"]


@attrs.define(eq=False)
class _Pending:
    """
    One request, its caller's Deferred, and its TTL's timer.
    """

    request: BrokerRequest
    deferred: Deferred[BrokerResponse] | None
    expiry: IDelayedCall | None = None

    def stop_ttl(self) -> float | None:
        """
        Cancel the TTL timer. @return: when it would have run out, if running.
        """
        expiry, self.expiry = self.expiry, None
        if expiry is None or not expiry.active():
            return None
        expiry.cancel()
        return expiry.getTime()


class PendingRequests:
    """
    Every broker request that has not ended, by id.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, on_expired: Callable[[int], None]) -> None:
        """
        @param on_expired: called with a request's id when its TTL runs out.
        """
        self._clock = clock
        self._on_expired = on_expired
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._pending)

    def request(self, rid: int) -> BrokerRequest:
        return self._pending[rid].request

    def wait(
        self, request: BrokerRequest, ttl: float, on_cancel: Callable[[str, int], None]
    ) -> tuple[int, Deferred[BrokerResponse]]:
        """
        A caller's request: a new id, and the Deferred it waits on.

        @param on_cancel: called with its key and id if the caller cancels.
        """
        rid = next(self._ids)
        deferred: Deferred[BrokerResponse] = Deferred(lambda d: on_cancel(request.key, rid))
        self._add(rid, request, deferred, ttl)
        return rid, deferred

    def adopt(self, request: BrokerRequest, ttl: float) -> int:
        """
        A request left by an earlier run, that no caller waits on yet.
        """
        rid = next(self._ids)
        self._add(rid, request, None, ttl)
        return rid

    def end(self, rid: int, error: BrokerRequestFailed | None) -> None:
        """
        Request C{rid} has ended without an answer: its caller gets C{error}
        (C{None}: its Deferred is being cancelled and fails by itself).
        """
        pending = self._pending.pop(rid, None)
        if pending is None:
            return
        pending.stop_ttl()
        if pending.deferred is not None and error is not None:
            pending.deferred.errback(error)

    def join(self, old: int, new: int) -> None:
        """
        The first caller for the adopted request C{old} takes it over as
        C{new}, with what was left of its TTL.
        """
        adopted, joining = self._pending.pop(old), self._pending[new]
        joining.stop_ttl()
        runs_out = adopted.stop_ttl()
        if runs_out is not None:
            joining.expiry = self._expire_in(runs_out - self._clock.seconds(), new)
        self.log.info("a caller joined the adopted request {key}", key=joining.request.key)

    def deliver(self, rid: int, found: ResponseFile) -> None:
        """
        Hand C{found}, read for request C{rid}, to its caller; C{rid} has ended.
        """
        pending = self._pending.pop(rid)
        pending.stop_ttl()
        request = pending.request
        try:
            response = found.response()
        except MalformedResponse as e:
            self.log.warn(
                "malformed response in {key}.resp for {request}: {error}",
                key=request.key,
                request=request.line,
                error=str(e),
            )
            if pending.deferred is not None:
                pending.deferred.errback(e)
            return
        if pending.deferred is None:
            self.log.info(
                "answered the adopted {key}.req ({request}): {status}; nobody was waiting",
                key=request.key,
                request=request.line,
                status=response.status,
            )
            return
        if debugging():
            self.log.debug(
                "answered {key}: {status}, {size} bytes",
                key=request.key,
                status=response.status,
                size=len(response.body),
            )
        pending.deferred.callback(response)

    def _add(
        self,
        rid: int,
        request: BrokerRequest,
        deferred: Deferred[BrokerResponse] | None,
        ttl: float,
    ) -> None:
        self._pending[rid] = _Pending(request, deferred, self._expire_in(ttl, rid))

    def _expire_in(self, seconds: float, rid: int) -> IDelayedCall:
        return self._clock.callLater(seconds, self._expire, rid)

    def _expire(self, rid: int) -> None:
        self._pending[rid].expiry = None
        self._on_expired(rid)
