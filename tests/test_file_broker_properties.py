"""
Property tests of the whole file broker, on real files and a L{Clock} (the
state machine alone is driven in L{tests.test_keystate_properties}): any
interleaving of requests, answers, undeletable files and time keeps one
request file per key, answers each request with its own answer once, and
leaves the directory clean.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from fmq.brokers.layout import LOCK_NAME
from fmq.protocol import BrokerRequest
from tests.brokers import FileBackend, file_broker
from tests.test_file_broker import FaultyFileSystem

TARGETS = [b"/a", b"/a", b"/a", b"/b"]  # mostly one key: the batch boundary is per key

actions = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(TARGETS)),
        st.tuples(st.just("answer"), st.sampled_from(TARGETS)),
        st.tuples(st.just("undeletable"), st.integers(1, 3)),
        st.tuples(st.just("wait"), st.sampled_from([0.05, 0.3, 2.0])),
        st.tuples(st.just("withdraw"), st.integers(0, 50)),
    ),
    max_size=50,
)


@settings(max_examples=400, deadline=None, database=None)
@given(actions=actions)
def test_one_file_per_key_and_every_request_ends(actions) -> None:
    """
    A request in flight always has its file (none is deleted under it); a
    request is only ever
    answered with its own target's answer, at most once; once the faults stop
    and time passes the TTL, every request has ended and the directory is clean.
    """
    directory = Path(tempfile.mkdtemp()) / "broker"
    try:
        clock = Clock()
        fs = FaultyFileSystem()
        broker = file_broker(directory, clock, fs=fs, request_ttl=30.0, delete_retry_max=1.0)
        broker.startService()
        backend = FileBackend(directory, clock)
        submitted: list[tuple[BrokerRequest, list]] = []
        counter = {t: 0 for t in set(TARGETS)}

        for action, argument in actions:
            if action == "submit":
                request = BrokerRequest.of(b"GET", argument)
                outcomes: list = []
                broker.submit(request).addBoth(outcomes.append)
                submitted.append((request, outcomes))
            elif action == "answer":
                key = BrokerRequest.of(b"GET", argument).key
                req = directory / f"{key}.req"
                if req.exists() and not (directory / f"{key}.resp").exists():
                    counter[argument] += 1
                    body = b"200\n" + argument + b" %d" % counter[argument]
                    backend.answer(BrokerRequest.of(b"GET", argument), body)
            elif action == "undeletable":
                fs.faults["unlink"] = [errno.EPERM] * argument
            elif action == "wait":
                clock.advance(argument)
            elif action == "withdraw" and submitted:
                broker.withdraw(submitted[argument % len(submitted)][0])
            for key in broker._keys.keys():  # a request in flight has its file
                state = broker._keys.get(key)
                if state is not None and state.in_flight:
                    assert (directory / f"{key}.req").exists(), key
            for request, outcomes in submitted:
                assert len(outcomes) <= 1
                if outcomes and hasattr(outcomes[0], "body"):
                    assert outcomes[0].body.startswith(request.target + b" ")

        fs.faults.clear()
        clock.advance(31.0)
        for _ in range(10):
            clock.advance(1.0)
        for request, outcomes in submitted:
            assert len(outcomes) == 1, request
        answers = [o[0].body for _, o in submitted if hasattr(o[0], "body")]
        assert len(answers) == len(set(answers))  # no answer delivered twice
        assert broker.in_flight() == 0
        assert sorted(os.listdir(directory)) == [LOCK_NAME]
        broker.stopService()
    finally:
        shutil.rmtree(directory.parent, ignore_errors=True)
