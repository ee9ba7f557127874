"""
Property tests of the file broker's state machine (L{fmq.brokers.keystate}),
on its own: no reactor, no files. A model directory and a model backend carry
the machine's actions out, and hypothesis plays every interleaving of
requests, answers (late ones included, and refused ones: links), events,
withdrawals, expiries, undeletable files, failed writes, adoption and the
directory coming and going.

The default run takes a few seconds. For a long run (at least 5,000
examples per property)::

    FMQ_HYPOTHESIS=extended .venv/bin/python -m pytest tests/test_keystate_properties.py
"""

from __future__ import annotations

import os
from collections import Counter

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from fmq.brokers.actions import Action, Delete, Deliver, End, Join, Read, RetryDelete, Write
from fmq.brokers.keystate import KeyTable

EXAMPLES = 5_000 if os.environ.get("FMQ_HYPOTHESIS") == "extended" else 300
KEYS = ["a", "a", "a", "b"]  # mostly one key: the turn-taking is per key


@attrs.frozen(eq=False)
class Answer:
    """
    An answer the model backend made for request C{rid}, at C{mtime}.
    """

    rid: int
    mtime: int


#: a C{.resp} that the reader refuses whatever its age (a link, a FIFO, too large)
LINK = "link"


class Model:
    """
    A directory, a backend and a shell around one L{KeyTable}.
    """

    def __init__(self) -> None:
        self.table = KeyTable(delete_retry_max=1.0)
        self.files: dict[str, object] = {}
        self.clock = 0
        self.rids: dict[int, str] = {}
        self.ended: Counter[int] = Counter()
        self.delivered: list[tuple[int, Answer]] = []
        self.refused: list[int] = []
        self.prepared: list[tuple[str, Answer]] = []
        self.undeletable = 0
        self.write_fails = 0
        self.retries: set[str] = set()
        self.joined: dict[int, int] = {}  # adopted request -> the caller's that took it over

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                req, resp = f"{action.key}.req", f"{action.key}.resp"
                assert req not in self.files and resp not in self.files, "written over old files"
                if self.write_fails:
                    self.write_fails -= 1
                    self.run(self.table.write_failed(action.key, action.rid))
                else:
                    self.files[req] = action.rid
                    self.run(self.table.written(action.key, action.rid, self.tick()))
            elif isinstance(action, Read):
                self.read(action.key, action.rid)
            elif isinstance(action, End):
                self.ended[action.rid] += 1
            elif isinstance(action, Join):
                self.ended[action.old] += 1  # the adopted request ends; its file is the new one's
                self.files[f"{self.rids[action.new]}.req"] = action.new
                self.joined[action.old] = action.new
            elif isinstance(action, Delete):
                self.sweep(action.key)
            elif isinstance(action, RetryDelete):
                assert action.delay > 0
                self.retries.add(action.key)
            else:
                raise AssertionError(action)

    def read(self, key: str, rid: int) -> None:
        answer = self.files.get(f"{key}.resp")
        state = self.table.get(key)
        assert state is not None and state.rid == rid
        if answer == LINK:
            for action in self.table.answer_refused(key, rid):
                if isinstance(action, End):
                    self.refused.append(action.rid)
                self.run([action])
            state = self.table.get(key)
            assert f"{key}.resp" not in self.files or (state and state.cleaning), "a link kept"
            return
        if not isinstance(answer, Answer) or answer.mtime < state.written_ns:
            return  # none, or older than the request: the reader's rule
        for action in self.table.answer_read(key, rid):
            if isinstance(action, Deliver):
                self.ended[action.rid] += 1
                self.delivered.append((action.rid, answer))
            else:
                self.run([action])

    def sweep(self, key: str) -> None:
        self.retries.discard(key)
        while True:
            state = self.table.get(key)
            if state is None or not state.cleaning:
                return
            if self.undeletable:
                self.undeletable -= 1
                self.run(self.table.delete_failed(key))
                return
            name = state.cleaning[0]
            self.files.pop(name, None)
            self.run(self.table.deleted(key, name))

    def submit(self, key: str, same_as_adopted: bool = True) -> None:
        rid = len(self.rids)
        self.rids[rid] = key
        self.run(self.table.submit(key, rid, same_as_adopted))

    def adopt_leftovers(self) -> None:
        """
        What the shell does when the directory is (back) in its hands.
        """
        for name in sorted(self.files):
            key, _, kind = name.partition(".")
            if self.table.get(key) is not None:
                continue
            if f"{key}.resp" in self.files:
                self.run(self.table.discard(key))
            elif kind == "req":
                rid = len(self.rids)
                self.rids[rid] = key
                self.files[name] = rid  # the same request, now known by a new id
                self.run(self.table.adopt(key, rid, self.tick()))

    def step(self, event: str, argument: int) -> None:
        key = KEYS[argument % len(KEYS)]
        if event == "submit":  # the same request as an adopted one, or another
            self.submit(key, same_as_adopted=(argument // len(KEYS)) % 2 == 0)
        elif event == "prepare":  # the backend reads the request and starts its answer
            rid = self.files.get(f"{key}.req")
            if isinstance(rid, int):
                self.prepared.append((key, Answer(rid, self.tick())))
        elif event == "rename" and self.prepared:  # renamed into place, maybe late
            key, answer = self.prepared.pop(argument % len(self.prepared))
            self.files[f"{key}.resp"] = answer
        elif event == "link":  # the backend puts a link where the answer goes
            self.files[f"{key}.resp"] = LINK
        elif event == "seen":  # an event, or the scan, sees the key's answer
            if f"{key}.resp" in self.files:
                self.run(self.table.answer_seen(key))
        elif event in ("withdraw", "expire") and self.rids:
            rid = argument % len(self.rids)
            transition = self.table.withdraw if event == "withdraw" else self.table.expire
            self.run(transition(self.rids[rid], rid))
        elif event == "undeletable":
            self.undeletable = argument % 4
        elif event == "write_fails":
            self.write_fails = argument % 3
        elif event == "retry" and self.retries:
            self.sweep(sorted(self.retries)[argument % len(self.retries)])
        elif event == "lost":
            self.run(self.table.lost())
            self.adopt_leftovers()

    def check(self) -> None:
        """
        What holds after every step.
        """
        for key in self.table.keys():
            state = self.table.get(key)
            assert state is not None
            assert not (state.in_flight and state.cleaning)
            assert state.in_flight or state.cleaning, "an idle key is not in the table"
            assert not state.queue or state.in_flight or state.cleaning
            if state.in_flight and state.written_ns:
                assert f"{key}.req" in self.files, "a request in flight lost its file"
        assert all(count == 1 for count in self.ended.values()), "a request ended twice"
        answers = [id(answer) for _, answer in self.delivered]
        assert len(answers) == len(set(answers)), "an answer delivered twice"
        delivered = {rid for rid, _ in self.delivered}
        assert not delivered & set(self.refused), "a refused request got an answer"
        for rid, answer in self.delivered:
            owner = answer.rid
            while owner in self.joined:
                owner = self.joined[owner]
            assert owner == rid, "an answer handed to another request"

    def finish(self) -> None:
        """
        Faults stop, late answers arrive and are seen, every request still
        waiting is withdrawn: nothing is left behind.
        """
        self.undeletable = self.write_fails = 0
        while self.prepared:
            key, answer = self.prepared.pop()
            self.files[f"{key}.resp"] = answer
            self.run(self.table.answer_seen(key))
        for rid, key in self.rids.items():
            if not self.ended[rid]:
                self.run(self.table.withdraw(key, rid))
        while self.retries:
            self.sweep(sorted(self.retries)[0])
        for key in {name.partition(".")[0] for name in self.files}:
            self.run(self.table.answer_seen(key))
        self.check()
        assert self.table.keys() == []
        assert self.files == {}
        assert set(self.ended) == set(self.rids), "a request never ended"


events = st.lists(
    st.tuples(
        st.sampled_from(
            ["submit", "submit", "prepare", "rename", "rename", "link", "seen", "seen",
             "withdraw", "expire", "undeletable", "write_fails", "retry", "retry", "lost"]
        ),
        st.integers(0, 50),
    ),
    max_size=60,
)  # fmt: skip


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(events=events)
def test_every_request_ends_once_and_nothing_is_left(events) -> None:
    """
    Whatever happens: a request in flight always has its file, a key's next
    request is written only after its old files are gone, every answer goes
    to its own request and at most once, every request ends exactly once,
    and once everything is withdrawn the directory is empty.
    """
    model = Model()
    for event, argument in events:
        model.step(event, argument)
        model.check()
    model.finish()


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(events=events, late=st.integers(0, 50))
def test_late_answer_never_reaches_a_later_request(events, late) -> None:
    """
    An answer made for a request that then ended, renamed into place at any
    later moment, is never delivered to another request.
    """
    model = Model()
    model.submit("a")
    model.step("prepare", 0)
    model.run(model.table.withdraw("a", 0))
    for n, (event, argument) in enumerate(events):
        if n == late % (len(events) + 1):
            model.step("rename", 0)
        model.step(event, argument)
        model.check()
    model.finish()
