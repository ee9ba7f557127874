"""
Dispatch: from callers to broker requests.

Each caller gets its own Deferred. Callers are kept in groups, one group per
broker request. In collapse mode the group is found by the collapse key and
every caller that arrives while the broker request is in flight joins it; in
naive mode every caller is alone in its group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from itertools import islice
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from fmq.errors import (
    BrokerFailed,
    BrokerRequestFailed,
    CallerTimeout,
    OverCapacity,
    ShuttingDown,
)
from fmq.interfaces import IBroker
from fmq.keys import Alone, CallerRequest, CollapseKey
from fmq.logs import debugging
from fmq.protocol import BrokerRequest, BrokerResponse, passed_headers

if TYPE_CHECKING:
    from fmq.fleet import Fleet


class Observer(Protocol):
    """
    Where the dispatcher reports durations (see L{fmq.metrics.Metrics}).
    """

    def broker_request_ended(self, seconds: float) -> None:
        """
        A broker request ended, answered or not, C{seconds} after it was made.
        """

    def caller_answered(self, seconds: float) -> None:
        """
        A caller got its answer (or error) after waiting C{seconds}.
        """


class _Unobserved:
    def broker_request_ended(self, seconds: float) -> None:
        pass

    def caller_answered(self, seconds: float) -> None:
        pass


@attrs.frozen
class InFlight:
    """
    A read-only view of one broker request in flight, for the status page.

    @ivar request: the broker request.
    @ivar started: when it was made, on the dispatcher's clock.
    @ivar callers: how many callers wait for it.
    """

    request: BrokerRequest
    started: float
    callers: int


@attrs.define(eq=False)
class _Group:
    """
    The callers waiting for one broker request.

    @ivar callers: each caller's Deferred and when it came, in order of coming.
    @ivar timer: when the first caller still waiting times out; one timer per
        group, not per caller, keeps a burst's cost down.
    """

    request: BrokerRequest
    started: float
    callers: dict[Deferred[BrokerResponse], float] = attrs.field(factory=dict)
    timer: IDelayedCall | None = None


class Dispatcher:
    """
    Maps callers to broker requests and their answers back to the callers.

    @ivar requests: callers handled.
    @ivar broker_requests: broker requests made.
    @ivar collapsed: callers that joined a broker request already in flight.
    @ivar callers_waiting: callers with no answer yet.
    @ivar caller_timeouts: callers answered 504 after C{request_timeout}.
    @ivar errors: callers answered with an error, by its kind.
    """

    log = Logger()

    def __init__(
        self,
        broker: IBroker,
        clock: IReactorTime,
        request_timeout: float,
        collapse_key: CollapseKey | None,
        max_waiting: int = 0,
        observer: Observer | None = None,
        request_format: str = "line",
        fleet: Fleet | None = None,
    ) -> None:
        """
        @param collapse_key: which callers share a broker request; C{None}
            for naive mode, where each caller has its own and the broker
            request is withdrawn when its caller leaves.
        @param max_waiting: callers beyond this many waiting at once get
            L{OverCapacity} at once; 0 for no limit.
        @param request_format: how broker requests are written, one of
            L{fmq.protocol.REQUEST_FORMATS}.
        @param fleet: where a new group's broker request is shared with the
            other instances of a fleet; C{None} (the default) for none. An
            L{Alone} caller's request never goes through it.
        """
        self._broker = broker
        self._clock = clock
        self._timeout = request_timeout
        self._collapse_key = collapse_key
        self._max_waiting = max_waiting
        self._format = request_format
        self._observer: Observer = observer if observer is not None else _Unobserved()
        self._fleet = fleet
        self._groups: dict[Hashable, _Group] = {}
        self._closed = False
        self.requests = 0
        self.broker_requests = 0
        self.collapsed = 0
        self.callers_waiting = 0
        self.caller_timeouts = 0
        self.errors: Counter[str] = Counter()

    @property
    def mode(self) -> str:
        """
        C{"collapse"} or C{"naive"}.
        """
        return "naive" if self._collapse_key is None else "collapse"

    def oldest(self, count: int) -> list[InFlight]:
        """
        The C{count} oldest broker requests in flight, oldest first.

        Groups enter the map as they are made and leave it when they end, so
        the map's order is their age: this reads C{count} entries, whatever
        the load.
        """
        return [
            InFlight(group.request, group.started, len(group.callers))
            for group in islice(self._groups.values(), count)
        ]

    def handle(self, caller: CallerRequest) -> Deferred[BrokerResponse]:
        """
        Answer C{caller}.

        @return: this caller's own Deferred: it fires with the backend's
            response or fails with a L{fmq.errors.BrokerRequestFailed};
            cancelling it (the caller went away) removes only this caller.
        """
        self.requests += 1
        if self._closed:
            return self._refuse(ShuttingDown())
        if self._max_waiting and self.callers_waiting >= self._max_waiting:
            return self._refuse(OverCapacity())
        key: Hashable = Alone() if self._collapse_key is None else self._collapse_key(caller)
        group = self._groups.get(key)
        if group is not None:
            self.collapsed += 1
            return self._join(key, group)
        group = _Group(self._broker_request(caller), self._clock.seconds())
        self._groups[key] = group
        joined = self._join(key, group)
        # The caller is in the group before the broker can answer, even at once.
        if self._fleet is None or isinstance(key, Alone):
            # Nobody, in this fleet or any, can share an Alone caller's request.
            self.broker_requests += 1
            submitted = self._submit(group.request)
        else:
            submitted = self._fleet.run(key, group.request, self._submit_counted)
        submitted.addBoth(self._finish, key, group)
        return joined

    def _submit_counted(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        self.broker_requests += 1
        return self._submit(request)

    def refuse(self, error: BrokerRequestFailed) -> Deferred[BrokerResponse]:
        """
        Answer a caller with C{error} without a broker request (the front
        found its request unfit, e.g. a body over C{max_body}); it is
        counted like any caller and any error.
        """
        self.requests += 1
        return self._refuse(error)

    def _broker_request(self, caller: CallerRequest) -> BrokerRequest:
        """
        The broker request for C{caller}: its method, target, the headers
        that pass on and its body, in this dispatcher's request format.
        """
        headers = passed_headers(
            (name, value) for name, values in caller.headers.getAllRawHeaders() for value in values
        )
        return BrokerRequest.of(caller.method, caller.target, headers, caller.body, self._format)

    def _submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        """
        Give C{request} to the broker. A broker whose C{submit} raises or
        returns no Deferred has a bug: it is logged, and the request fails
        with L{BrokerFailed} so that its group ends like any other.
        """
        try:
            submitted = self._broker.submit(request)
            if not isinstance(submitted, Deferred):
                raise TypeError(f"submit returned {submitted!r}, not a Deferred")
        except Exception:
            self.log.failure(
                "broker {broker} failed to take {request}",
                broker=type(self._broker).__name__,
                request=request.line,
            )
            return fail(BrokerFailed())
        return submitted

    def close(self) -> None:
        """
        Answer every waiting caller, and every later one, with L{ShuttingDown};
        the broker requests stay with the broker.
        """
        self._closed = True
        groups = list(self._groups.values())
        self._groups.clear()
        for group in groups:
            self._hand_out(group, Failure(ShuttingDown()))

    def _refuse(self, error: BrokerRequestFailed) -> Deferred[BrokerResponse]:
        self.errors[error.kind] += 1
        return fail(error)

    def _join(self, key: Hashable, group: _Group) -> Deferred[BrokerResponse]:
        deferred: Deferred[BrokerResponse] = Deferred(lambda d: self._leave(key, group, d))
        now = self._clock.seconds()
        group.callers[deferred] = now
        if group.timer is None:
            group.timer = self._clock.callLater(self._timeout, self._time_out, key, group)
        self.callers_waiting += 1
        return deferred

    def _leave(self, key: Hashable, group: _Group, deferred: Deferred[BrokerResponse]) -> None:
        """
        Remove one caller (it timed out or went away); the group goes on.
        """
        if group.callers.pop(deferred, None) is None:
            return
        self.callers_waiting -= 1
        if not group.callers:
            self._stop_timer(group)
            if isinstance(key, Alone):  # nobody else can ever join it
                self._broker.withdraw(group.request)

    def _stop_timer(self, group: _Group) -> None:
        if group.timer is not None:
            if group.timer.active():
                group.timer.cancel()
            group.timer = None

    def _arm(self, key: Hashable, group: _Group) -> None:
        """
        Set the group's timer to when its oldest caller times out.
        """
        self._stop_timer(group)
        if group.callers:
            first = next(iter(group.callers.values()))
            delay = max(0.0, first + self._timeout - self._clock.seconds())
            group.timer = self._clock.callLater(delay, self._time_out, key, group)

    def _time_out(self, key: Hashable, group: _Group) -> None:
        """
        Answer 504 to the callers of C{group} who have waited C{request_timeout},
        then wait for the next one's turn.

        Answering a caller can run anything at once (a pipelined request on the
        same connection may join this group, another caller may leave, the
        broker may answer): the timer is set from the callers left at the end.
        """
        group.timer = None
        now = self._clock.seconds()
        expired = []
        for deferred, came in group.callers.items():
            if came + self._timeout > now:
                break
            expired.append(deferred)
        for deferred in expired:
            if deferred not in group.callers:
                continue  # answered or gone while an earlier one was answered
            self.caller_timeouts += 1
            self.errors[CallerTimeout.kind] += 1
            self.log.info(
                "caller timed out after {timeout}s waiting for {key}; {others} others still wait",
                timeout=self._timeout,
                key=group.request.key,
                others=len(group.callers) - 1,
            )
            self._leave(key, group, deferred)
            self._observer.caller_answered(self._timeout)
            deferred.errback(CallerTimeout())
        self._arm(key, group)

    def _finish(self, result: BrokerResponse | Failure, key: Hashable, group: _Group) -> None:
        """
        The broker request ended: hand its outcome to every caller of the group.
        """
        if isinstance(result, Failure) and not result.check(BrokerRequestFailed):
            self.log.failure(
                "broker request {key} for {request} failed with an error brokers must not give",
                result,
                key=group.request.key,
                request=group.request.line,
            )
            result = Failure(BrokerFailed())
        if self._groups.get(key) is group:
            del self._groups[key]
        elapsed = self._clock.seconds() - group.started
        self._observer.broker_request_ended(elapsed)
        if isinstance(result, Failure) or debugging():
            self.log.emit(
                LogLevel.info if isinstance(result, Failure) else LogLevel.debug,
                "broker request {key} for {request} ended after {ms:.1f} ms: {status} "
                "to {callers} callers",
                key=group.request.key,
                request=group.request.line,
                ms=elapsed * 1000,
                status=_status(result),
                callers=len(group.callers),
            )
        self._hand_out(group, result)

    def _hand_out(self, group: _Group, result: BrokerResponse | Failure) -> None:
        """
        Give C{result} to every caller of C{group}. The group is emptied first
        and is no longer in the map: a caller who comes while it is handed out
        (re-entrantly, from another caller's callback) makes a new group.
        """
        self._stop_timer(group)
        callers, group.callers = group.callers, {}
        self.callers_waiting -= len(callers)
        now = self._clock.seconds()
        for deferred, came in callers.items():
            if deferred.called:
                continue  # cancelled while an earlier caller was answered
            self._observer.caller_answered(now - came)
            if isinstance(result, Failure):
                self.errors[getattr(result.value, "kind", "internal")] += 1
                deferred.errback(result)
            else:
                deferred.callback(result)


def _status(result: BrokerResponse | Failure) -> int:
    if isinstance(result, Failure):
        return getattr(result.value, "status", 500)
    return result.status
