"""
Property tests of the dispatcher: under any interleaving of arrivals, answers,
malformed answers, hang-ups and the passing of time, every caller ends exactly
once, none waits past its timeout, and nothing is left behind. Some callers are
followed by a pipelined one: the same target arrives from inside the first
one's callback or errback, as HTTP pipelining does.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fmq.dispatch import Dispatcher
from fmq.keys import CallerRequest, method_and_path
from fmq.testing import MemoryBroker

TIMEOUT, TTL = 10.0, 25.0
TARGETS = [b"/a", b"/b", b"/c"]

actions = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.tuples(st.sampled_from(TARGETS), st.booleans())),
        st.tuples(st.just("answer"), st.integers(0, 20)),
        st.tuples(st.just("malformed"), st.integers(0, 20)),
        st.tuples(st.just("hang up"), st.integers(0, 200)),
        st.tuples(st.just("wait"), st.floats(0.1, 12.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(actions=actions, naive=st.booleans())
@example(  # one joins as the first times out; the second still times out on time
    actions=[
        ("arrive", (b"/a", True)),
        ("wait", 5.0),
        ("arrive", (b"/a", False)),
        ("wait", 6.0),
        ("wait", 5.0),
    ],
    naive=False,
)
def test_every_caller_ends_exactly_once(actions, naive) -> None:
    """
    Each caller's Deferred fires exactly once. A caller who got an answer got
    the one for its own target. The counts agree at every step (in naive mode
    a request whose caller left is withdrawn at once), no caller still waits
    once its timeout has passed, and once time has passed the TTL, no caller,
    group or broker request is left.
    """
    clock = Clock()
    broker = MemoryBroker(clock, request_ttl=TTL)
    broker.startService()
    dispatcher = Dispatcher(broker, clock, TIMEOUT, None if naive else method_and_path)
    callers: list[tuple[bytes, Deferred, list, float]] = []

    def arrive(target: bytes, pipelined: bool) -> None:
        outcomes: list = []

        def ended(result: object) -> None:
            outcomes.append(result)
            if pipelined:
                arrive(target, False)

        d = dispatcher.handle(CallerRequest(b"GET", target))
        callers.append((target, d, outcomes, clock.seconds()))
        d.addBoth(ended)

    for action, argument in actions:
        if action == "arrive":
            arrive(*argument)
        elif action in ("answer", "malformed") and broker.outstanding():
            request = broker.outstanding()[argument % len(broker.outstanding())]
            body = b"200\n" + request.target if action == "answer" else b"nonsense"
            broker.respond(request, body)
        elif action == "hang up" and callers:
            callers[argument % len(callers)][1].cancel()
        elif action == "wait":
            clock.advance(argument)
        waiting = sum(1 for _, _, outcomes, _ in callers if not outcomes)
        assert dispatcher.callers_waiting == waiting
        overdue = [came for _, _, outcomes, came in callers if not outcomes]
        assert all(came + TIMEOUT > clock.seconds() for came in overdue)
        if naive:  # one broker request per waiting caller, withdrawn when it leaves
            assert broker.in_flight() == waiting
        else:  # one group per broker request in flight, at most one per target
            assert len(dispatcher._groups) == broker.in_flight() <= len(TARGETS)

    clock.advance(TTL + TIMEOUT)
    clock.advance(TTL + TIMEOUT)  # for the callers pipelined during the first
    for target, _, outcomes, _ in callers:
        assert len(outcomes) == 1
        [result] = outcomes
        if hasattr(result, "body"):
            assert result.body == target
    assert dispatcher.callers_waiting == 0
    assert dispatcher._groups == {}
    assert broker.in_flight() == 0
    assert clock.getDelayedCalls() == []
