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
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from fmq.errors import BrokerRequestFailed, CallerTimeout, OverCapacity, ShuttingDown
from fmq.interfaces import IBroker
from fmq.keys import CallerRequest, CollapseKey
from fmq.logs import debugging
from fmq.protocol import BrokerRequest, BrokerResponse


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


@attrs.define(eq=False)
class _Group:
    """
    The callers waiting for one broker request.

    @ivar callers: each caller's Deferred, with its timeout (whose time, less
        the request timeout, is when the caller came).
    """

    request: BrokerRequest
    started: float
    callers: dict[Deferred[BrokerResponse], IDelayedCall] = attrs.field(factory=dict)


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
    ) -> None:
        """
        @param collapse_key: which callers share a broker request; C{None}
            for naive mode, where each caller has its own and the broker
            request is withdrawn when its caller leaves.
        @param max_waiting: callers beyond this many waiting at once get
            L{OverCapacity} at once; 0 for no limit.
        """
        self._broker = broker
        self._clock = clock
        self._timeout = request_timeout
        self._collapse_key = collapse_key
        self._max_waiting = max_waiting
        self._observer: Observer = observer if observer is not None else _Unobserved()
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
        key: Hashable = object() if self._collapse_key is None else self._collapse_key(caller)
        group = self._groups.get(key)
        if group is not None:
            self.collapsed += 1
            return self._join(key, group)
        group = _Group(BrokerRequest.of(caller.method, caller.target), self._clock.seconds())
        self._groups[key] = group
        joined = self._join(key, group)
        # The caller is in the group before the broker can answer, even at once.
        self.broker_requests += 1
        self._broker.submit(group.request).addBoth(self._finish, key, group)
        return joined

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
        group.callers[deferred] = self._clock.callLater(
            self._timeout, self._time_out, key, group, deferred
        )
        self.callers_waiting += 1
        return deferred

    def _leave(self, key: Hashable, group: _Group, deferred: Deferred[BrokerResponse]) -> None:
        """
        Remove one caller (it timed out or went away); the group goes on.
        """
        timeout = group.callers.pop(deferred, None)
        if timeout is None:
            return
        self.callers_waiting -= 1
        if timeout.active():
            timeout.cancel()
        if self._collapse_key is None and not group.callers:
            self._broker.withdraw(group.request)

    def _time_out(self, key: Hashable, group: _Group, deferred: Deferred[BrokerResponse]) -> None:
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

    def _finish(self, result: BrokerResponse | Failure, key: Hashable, group: _Group) -> None:
        """
        The broker request ended: hand its outcome to every caller of the group.
        """
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
        Give C{result} to every caller of C{group}.
        """
        callers, group.callers = group.callers, {}
        self.callers_waiting -= len(callers)
        if isinstance(result, Failure) and callers:
            self.errors[getattr(result.value, "kind", "internal")] += len(callers)
        now = self._clock.seconds()
        for deferred, timeout in callers.items():
            self._observer.caller_answered(now - (timeout.getTime() - self._timeout))
            timeout.cancel()
            if isinstance(result, Failure):
                deferred.errback(result)
            else:
                deferred.callback(result)


def _status(result: BrokerResponse | Failure) -> int:
    if isinstance(result, Failure):
        return getattr(result.value, "status", 500)
    return result.status
