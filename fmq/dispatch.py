"""
Dispatch: from callers to broker requests.

Each caller gets its own Deferred. Callers are kept in groups, one group per
broker request. In collapse mode the group is found by the collapse key and
every caller that arrives while the broker request is in flight joins it; in
naive mode every caller is alone in its group.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from fmq.errors import CallerTimeout, ShuttingDown
from fmq.interfaces import IBroker
from fmq.keys import CallerRequest, CollapseKey
from fmq.protocol import BrokerRequest, BrokerResponse


@attrs.define(eq=False)
class _Group:
    """
    The callers waiting for one broker request.

    @ivar callers: each caller's Deferred, with its timeout.
    """

    request: BrokerRequest
    started: float
    callers: dict[Deferred[BrokerResponse], IDelayedCall] = attrs.field(factory=dict)


class Dispatcher:
    """
    Maps callers to broker requests and their answers back to the callers.

    @ivar callers_waiting: callers with no answer yet.
    @ivar collapsed: callers that joined a broker request already in flight.
    @ivar caller_timeouts: callers answered 504 after C{request_timeout}.
    """

    log = Logger()

    def __init__(
        self,
        broker: IBroker,
        clock: IReactorTime,
        request_timeout: float,
        collapse_key: CollapseKey | None,
    ) -> None:
        """
        @param collapse_key: which callers share a broker request; C{None}
            for naive mode, where each caller has its own and the broker
            request is withdrawn when its caller leaves.
        """
        self._broker = broker
        self._clock = clock
        self._timeout = request_timeout
        self._collapse_key = collapse_key
        self._groups: dict[Hashable, _Group] = {}
        self._closed = False
        self.callers_waiting = 0
        self.collapsed = 0
        self.caller_timeouts = 0

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
        if self._closed:
            return fail(ShuttingDown())
        key: Hashable = object() if self._collapse_key is None else self._collapse_key(caller)
        group = self._groups.get(key)
        if group is not None:
            self.collapsed += 1
            return self._join(key, group)
        group = _Group(BrokerRequest.of(caller.method, caller.target), self._clock.seconds())
        self._groups[key] = group
        joined = self._join(key, group)
        # The caller is in the group before the broker can answer, even at once.
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
        self.log.info(
            "caller timed out after {timeout}s waiting for {key}; {others} others still wait",
            timeout=self._timeout,
            key=group.request.key,
            others=len(group.callers) - 1,
        )
        self._leave(key, group, deferred)
        deferred.errback(CallerTimeout())

    def _finish(self, result: BrokerResponse | Failure, key: Hashable, group: _Group) -> None:
        """
        The broker request ended: hand its outcome to every caller of the group.
        """
        if self._groups.get(key) is group:
            del self._groups[key]
        self.log.debug(
            "broker request {key} ended after {ms:.1f} ms; {callers} callers",
            key=group.request.key,
            callers=len(group.callers),
            ms=(self._clock.seconds() - group.started) * 1000,
        )
        self._hand_out(group, result)

    def _hand_out(self, group: _Group, result: BrokerResponse | Failure) -> None:
        """
        Give C{result} to every caller of C{group}.
        """
        callers, group.callers = group.callers, {}
        self.callers_waiting -= len(callers)
        for deferred, timeout in callers.items():
            timeout.cancel()
            if isinstance(result, Failure):
                deferred.errback(result)
            else:
                deferred.callback(result)
