"""
Tests for L{fmq.dispatch}: collapse and naive modes over a L{MemoryBroker}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fmq.dispatch import Dispatcher
from fmq.errors import (
    BrokerFailed,
    BrokerUnavailable,
    CallerTimeout,
    MalformedResponse,
    RequestExpired,
    Withdrawn,
)
from fmq.keys import (
    CallerRequest,
    method_and_path,
    method_and_path_without_query,
    reads_per_credentials,
)
from fmq.protocol import BrokerResponse, broker_key
from fmq.testing import MemoryBroker

TIMEOUT = 60.0
TTL = 300.0


def caller(target: bytes = b"/items?id=1", method: bytes = b"GET") -> CallerRequest:
    return CallerRequest(method, target)


class DispatcherMixin:
    """
    A started L{MemoryBroker} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock, request_ttl=TTL)
        self.broker.startService()

    def dispatcher(self, collapse_key=method_and_path) -> Dispatcher:
        return Dispatcher(self.broker, self.clock, TIMEOUT, collapse_key)


class CollapseTests(DispatcherMixin, SynchronousTestCase):
    """
    Collapse mode: callers with one collapse key share one broker request.
    """

    def test_identical_callers_share_one_request(self) -> None:
        """
        100 identical callers make one broker request and all get its answer.
        """
        dispatcher = self.dispatcher()
        answers = [dispatcher.handle(caller()) for _ in range(100)]
        self.assertEqual(len(self.broker.sent), 1)
        request = self.broker.sent[0]
        self.assertEqual((request.method, request.target), (b"GET", b"/items?id=1"))
        self.assertEqual(request.key, broker_key(b"GET", b"/items?id=1"))
        self.assertEqual(dispatcher.callers_waiting, 100)
        self.assertEqual(dispatcher.collapsed, 99)
        for answer in answers:
            self.assertNoResult(answer)
        self.broker.respond(request, b"200\nhello")
        for answer in answers:
            self.assertEqual(self.successResultOf(answer), BrokerResponse(200, b"hello"))
        self.assertEqual(dispatcher.callers_waiting, 0)

    def test_different_keys_do_not_collapse(self) -> None:
        """
        Callers with different methods or targets make their own broker requests.
        """
        dispatcher = self.dispatcher()
        dispatcher.handle(caller(b"/a"))
        dispatcher.handle(caller(b"/b"))
        dispatcher.handle(caller(b"/a", method=b"POST"))
        dispatcher.handle(caller(b"/a?x=1"))
        self.assertEqual(len(self.broker.sent), 4)

    def test_collapse_key_is_pluggable(self) -> None:
        """
        The collapse key decides who shares: without the query, /a?x=1 joins /a?x=2.
        """
        dispatcher = self.dispatcher(method_and_path_without_query)
        first = dispatcher.handle(caller(b"/a?x=1"))
        second = dispatcher.handle(caller(b"/a?x=2"))
        self.assertEqual([r.target for r in self.broker.sent], [b"/a?x=1"])
        self.broker.respond(self.broker.sent[0], b"200\none")
        self.assertEqual(self.successResultOf(second), self.successResultOf(first))

    def test_next_batch_makes_new_request(self) -> None:
        """
        Once a broker request is answered, the next identical caller makes a new one.
        """
        dispatcher = self.dispatcher()
        first = dispatcher.handle(caller())
        self.broker.respond(self.broker.sent[0], b"200\nfirst")
        self.successResultOf(first)
        second = dispatcher.handle(caller())
        self.assertEqual(len(self.broker.sent), 2)
        self.assertNoResult(second)
        self.broker.respond(self.broker.sent[1], b"200\nsecond")
        self.assertEqual(self.successResultOf(second).body, b"second")

    def test_caller_arriving_during_delivery_makes_new_request(self) -> None:
        """
        A caller arriving while an answer is being handed out is not lost: it
        starts the next broker request instead of joining the finished one.
        """
        dispatcher = self.dispatcher()
        late: list[Deferred[BrokerResponse]] = []
        first = dispatcher.handle(caller())
        first.addCallback(lambda r: late.append(dispatcher.handle(caller())))
        self.broker.respond(self.broker.sent[0], b"200\nfirst")
        self.assertEqual(len(self.broker.sent), 2)
        self.assertNoResult(late[0])
        self.broker.respond(self.broker.sent[1], b"200\nsecond")
        self.assertEqual(self.successResultOf(late[0]).body, b"second")

    def test_two_callers_timeout_scenario(self) -> None:
        """
        Caller A at 0 s and caller B at 60 s wait 60 s each; the answer comes at
        90 s. A gets 504 at 60 s, B joins A's broker request and gets the answer.
        """
        dispatcher = self.dispatcher()
        a = dispatcher.handle(caller())
        self.clock.advance(60)
        self.failureResultOf(a, CallerTimeout)
        b = dispatcher.handle(caller())
        self.assertEqual(len(self.broker.sent), 1)
        self.clock.advance(30)
        self.broker.respond(self.broker.sent[0], b"200\nanswer")
        self.assertEqual(self.successResultOf(b).body, b"answer")
        self.assertEqual(dispatcher.caller_timeouts, 1)

    def test_timeout_is_per_caller(self) -> None:
        """
        Each caller's timeout counts from its own arrival.
        """
        dispatcher = self.dispatcher()
        a = dispatcher.handle(caller())
        self.clock.advance(30)
        b = dispatcher.handle(caller())
        self.clock.advance(30)
        self.failureResultOf(a, CallerTimeout)
        self.assertNoResult(b)
        self.clock.advance(30)
        self.failureResultOf(b, CallerTimeout)
        self.assertEqual(dispatcher.callers_waiting, 0)

    def test_group_with_no_callers_stays_in_flight(self) -> None:
        """
        When every caller has timed out, the broker request is neither
        withdrawn nor repeated: a new caller joins it.
        """
        dispatcher = self.dispatcher()
        self.failureResultOf(self._timed_out(dispatcher), CallerTimeout)
        self.assertEqual(self.broker.in_flight(), 1)
        again = dispatcher.handle(caller())
        self.assertEqual(len(self.broker.sent), 1)
        self.broker.respond(self.broker.sent[0], b"200\nlate")
        self.assertEqual(self.successResultOf(again).body, b"late")

    def _timed_out(self, dispatcher: Dispatcher) -> Deferred[BrokerResponse]:
        answer = dispatcher.handle(caller())
        self.clock.advance(TIMEOUT)
        return answer

    def test_ttl_answers_everyone_504(self) -> None:
        """
        After the request TTL, every caller still waiting gets RequestExpired
        (504), and the next caller makes a new broker request.
        """
        dispatcher = Dispatcher(self.broker, self.clock, TTL * 2, method_and_path)
        answers = [dispatcher.handle(caller()) for _ in range(3)]
        self.clock.advance(TTL)
        for answer in answers:
            self.failureResultOf(answer, RequestExpired)
        self.assertEqual(self.broker.in_flight(), 0)
        dispatcher.handle(caller())
        self.assertEqual(len(self.broker.sent), 2)

    def test_disconnect_removes_only_that_caller(self) -> None:
        """
        Cancelling one caller's Deferred (the client went away) leaves the
        others and the broker request untouched.
        """
        dispatcher = self.dispatcher()
        gone = dispatcher.handle(caller())
        stays = dispatcher.handle(caller())
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual(dispatcher.callers_waiting, 1)
        self.assertEqual(self.broker.in_flight(), 1)
        self.broker.respond(self.broker.sent[0], b"200\nstill")
        self.assertEqual(self.successResultOf(stays).body, b"still")

    def test_disconnect_cancels_its_timeout(self) -> None:
        """
        A caller that went away does not time out later.
        """
        dispatcher = self.dispatcher()
        dispatcher.handle(caller()).addErrback(lambda f: None).cancel()
        self.clock.advance(TIMEOUT)
        self.assertEqual(dispatcher.caller_timeouts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [self._expiry()])

    def _expiry(self):
        [call] = [c for c in self.clock.getDelayedCalls() if c.getTime() == TTL]
        return call

    def test_answer_cancels_timeouts(self) -> None:
        """
        Answered callers leave no timeout behind.
        """
        dispatcher = self.dispatcher()
        dispatcher.handle(caller())
        self.broker.respond(self.broker.sent[0], b"204")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_malformed_answer_fails_every_caller(self) -> None:
        """
        A malformed response fails every caller with MalformedResponse (502),
        and the next caller makes a new broker request.
        """
        dispatcher = self.dispatcher()
        answers = [dispatcher.handle(caller()) for _ in range(2)]
        self.broker.respond(self.broker.sent[0], b"OK\n")
        for answer in answers:
            self.failureResultOf(answer, MalformedResponse)
        dispatcher.handle(caller())
        self.assertEqual(len(self.broker.sent), 2)

    def test_unavailable_broker_fails_at_once(self) -> None:
        """
        A broker that cannot take the request fails the caller at once, and the
        group does not outlive it.
        """
        self.broker.available = False
        dispatcher = self.dispatcher()
        self.failureResultOf(dispatcher.handle(caller()), BrokerUnavailable)
        self.assertEqual(dispatcher.callers_waiting, 0)
        self.broker.available = True
        self.assertNoResult(dispatcher.handle(caller()))


class NaiveTests(DispatcherMixin, SynchronousTestCase):
    """
    Naive mode: every caller makes its own broker request.
    """

    def test_every_caller_has_its_own_request(self) -> None:
        """
        20 identical callers make 20 broker requests, each answered on its own.
        """
        dispatcher = self.dispatcher(None)
        self.assertEqual(dispatcher.mode, "naive")
        answers = [dispatcher.handle(caller()) for _ in range(20)]
        self.assertEqual(len(self.broker.sent), 20)
        self.assertEqual(len({r.id for r in self.broker.sent}), 20)
        for n, request in enumerate(self.broker.sent):
            self.broker.respond(request, b"200\n%d" % n)
        self.assertEqual(
            [self.successResultOf(a).body for a in answers], [b"%d" % n for n in range(20)]
        )
        self.assertEqual(dispatcher.collapsed, 0)

    def test_timeout_withdraws_the_request(self) -> None:
        """
        When its only caller times out, a naive broker request is withdrawn.
        """
        dispatcher = self.dispatcher(None)
        answer = dispatcher.handle(caller())
        request = self.broker.sent[0]
        self.clock.advance(TIMEOUT)
        self.failureResultOf(answer, CallerTimeout)
        self.assertEqual(self.broker.in_flight(), 0)
        self.assertNotIn(request, self.broker.outstanding())

    def test_disconnect_withdraws_the_request(self) -> None:
        """
        When its caller goes away, a naive broker request is withdrawn.
        """
        dispatcher = self.dispatcher(None)
        answer = dispatcher.handle(caller())
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        self.assertEqual(self.broker.in_flight(), 0)
        self.assertEqual(dispatcher.callers_waiting, 0)

    def test_a_caller_alone_in_collapse_mode_is_withdrawn_too(self) -> None:
        """
        In collapse mode, a caller whose key shares with nobody (a POST under
        the default key) has its broker request withdrawn when it times out
        or leaves: nobody else can ever use it.
        """
        dispatcher = self.dispatcher(reads_per_credentials)
        timed_out = dispatcher.handle(caller(b"/orders", b"POST"))
        left = dispatcher.handle(caller(b"/orders", b"POST"))
        read = dispatcher.handle(caller(b"/orders"))
        self.assertEqual(self.broker.in_flight(), 3)
        left.cancel()
        self.failureResultOf(left, CancelledError)
        self.assertEqual(self.broker.in_flight(), 2)
        self.clock.advance(TIMEOUT)
        self.failureResultOf(timed_out, CallerTimeout)
        self.failureResultOf(read, CallerTimeout)
        self.assertEqual(
            [r.method for r in self.broker.outstanding()], [b"GET"]
        )  # a GET stays for those still to come

    def test_withdrawn_elsewhere_fails_the_caller(self) -> None:
        """
        A request withdrawn by someone else fails its caller with Withdrawn.
        """
        dispatcher = self.dispatcher(None)
        answer = dispatcher.handle(caller())
        self.broker.withdraw(self.broker.sent[0])
        self.failureResultOf(answer, Withdrawn)


class BrokenBroker(MemoryBroker):
    """
    A L{MemoryBroker} whose first C{submit} calls misbehave as told, then
    behave.

    @ivar faults: for each coming call, an exception to raise or a value to
        return instead of submitting.
    """

    def __init__(self, clock: Clock, faults: list[object]) -> None:
        super().__init__(clock, request_ttl=TTL)
        self.faults = faults

    def submit(self, request):
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, Exception):
                raise fault
            return fault
        return super().submit(request)


class BrokenBrokerTests(SynchronousTestCase):
    """
    A broker with a bug (its C{submit} raises, returns no Deferred, or fails
    with an error brokers must not give) ends that group with 502, logged
    once with its traceback; the next identical caller makes a new request.
    """

    def check(self, fault: object, logged: type[Exception]) -> None:
        clock = Clock()
        broker = BrokenBroker(clock, [fault])
        broker.startService()
        dispatcher = Dispatcher(broker, clock, TIMEOUT, method_and_path)
        failed = dispatcher.handle(caller())
        self.failureResultOf(failed, BrokerFailed)
        self.assertEqual(len(self.flushLoggedErrors(logged)), 1)
        self.assertEqual(dispatcher.callers_waiting, 0)
        self.assertEqual(dispatcher.errors["broker_failed"], 1)
        again = dispatcher.handle(caller())
        self.assertEqual(len(broker.sent), 1)
        broker.respond(broker.sent[0], b"200\nfine")
        self.assertEqual(self.successResultOf(again).body, b"fine")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_submit_raises(self) -> None:
        """
        C{submit} raising ends the group with L{BrokerFailed} (502).
        """
        self.check(ZeroDivisionError("bug"), ZeroDivisionError)

    def test_submit_returns_no_deferred(self) -> None:
        """
        C{submit} returning something other than a Deferred is taken as a bug.
        """
        self.check(None, TypeError)

    def test_submit_fails_with_a_stranger(self) -> None:
        """
        A Deferred failing with an error that is not a L{BrokerRequestFailed}
        gives L{BrokerFailed}, not a 500.
        """
        self.check(fail(KeyError("bug")), KeyError)


class ReentrancyTests(DispatcherMixin, SynchronousTestCase):
    """
    Answering a caller can synchronously run code that joins or leaves the
    same group (HTTP pipelining: the next request on that connection is
    parsed at once); the dispatcher's bookkeeping survives it.
    """

    def test_join_while_timing_out_keeps_the_oldest_callers_timer(self) -> None:
        """
        A caller joining from a timed-out caller's errback does not delay
        the timeout of those who waited longer.
        """
        dispatcher = self.dispatcher()
        pipelined: list[Deferred[BrokerResponse]] = []
        first = dispatcher.handle(caller())
        first.addErrback(lambda f: pipelined.append(dispatcher.handle(caller())))
        self.clock.advance(30)
        second = dispatcher.handle(caller())
        self.clock.advance(30)
        self.assertEqual(len(pipelined), 1)
        self.assertNoResult(second)
        self.clock.advance(30)
        self.failureResultOf(second, CallerTimeout)
        self.assertNoResult(pipelined[0])
        self.clock.advance(30)
        self.failureResultOf(pipelined[0], CallerTimeout)
        self.assertEqual(len(self.broker.sent), 1)
        self.assertEqual(dispatcher.callers_waiting, 0)

    def test_leave_while_timing_out(self) -> None:
        """
        A caller cancelled from another's timeout errback, when both time out
        together, ends once (cancelled), and the counts stay right.
        """
        dispatcher = self.dispatcher()
        first = dispatcher.handle(caller())
        second = dispatcher.handle(caller())
        ended: list[Failure] = []
        first.addErrback(lambda f: (ended.append(f), second.cancel()))
        self.clock.advance(TIMEOUT)
        self.assertEqual([f.type for f in ended], [CallerTimeout])
        self.failureResultOf(second, CancelledError)
        self.assertEqual(dispatcher.callers_waiting, 0)
        self.assertEqual(dispatcher.caller_timeouts, 1)

    def test_leave_while_answered(self) -> None:
        """
        A caller cancelled from another's errback while an error is handed
        out ends once (cancelled) and is not counted as answered with it.
        """
        dispatcher = self.dispatcher()
        first = dispatcher.handle(caller())
        second = dispatcher.handle(caller())
        ended: list[Failure] = []
        first.addErrback(lambda f: (ended.append(f), second.cancel()))
        self.broker.respond(self.broker.sent[0], b"nonsense")
        self.assertEqual([f.type for f in ended], [MalformedResponse])
        self.failureResultOf(second, CancelledError)
        self.assertEqual(dispatcher.callers_waiting, 0)
        self.assertEqual(dict(dispatcher.errors), {"malformed": 1})
