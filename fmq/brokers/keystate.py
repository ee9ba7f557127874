"""
What the file broker knows about each broker key, as a pure state machine.

One file name per key means one request per key at a time. A key is:

  - B{idle}: not in the table;
  - B{in flight}: its C{.req} is written (or adopted) and fmq waits for its
    C{.resp}; later requests for the key queue behind it;
  - B{cleaning}: its files are being deleted, C{.req} first; requests that
    come meanwhile queue until the names are free.

Each transition is a method that takes an event (submitted, written, answer
seen, answer read, answer refused, deleted, delete failed, withdrawn,
expired, adopted, directory lost) and returns the actions
(L{fmq.brokers.actions}) the I/O shell must carry out, in order. Nothing
here touches a file, a clock or a Deferred, in the spirit of h11's
C{_state.py}: the shell (L{fmq.brokers.file}) does the I/O and feeds the
outcome back in.

Requests are named by C{int} ids the shell gives them.
"""

from __future__ import annotations

from collections import deque

import attrs

from fmq.brokers.actions import Action, Delete, Deliver, End, Join, Read, RetryDelete, Write
from fmq.brokers.layout import REQUEST, RESPONSE, retry_delay

__all__ = ["KeyState", "KeyTable", "Sighting"]


@attrs.frozen
class Sighting:
    """
    An answer seen still open for writing, or where fmq cannot tell: its
    identity (inode, size, mtime) and since when it has not changed.

    @ivar leasable: whether a lease could tell when its writer is done.
    """

    identity: tuple[int, int, int]
    since: float
    leasable: bool


@attrs.define
class KeyState:
    """
    One key that is not idle.

    @ivar rid: the request in flight, or C{None}.
    @ivar written_ns: its C{.req}'s mtime, in ns (0 until written): an
        answer older than that belongs to an earlier request.
    @ivar adopted: the request in flight was left by an earlier run, and no
        caller has joined it yet.
    @ivar sighting: the answer as last seen, while it settles.
    @ivar cleaning: file names still to delete, in order; empty when not cleaning.
    @ivar attempts: failed attempts at the current deletion.
    @ivar queue: requests waiting for the key's name to be free.
    """

    rid: int | None = None
    written_ns: int = 0
    adopted: bool = False
    sighting: Sighting | None = None
    cleaning: tuple[str, ...] = ()
    attempts: int = 0
    queue: deque[int] = attrs.field(factory=deque)

    @property
    def in_flight(self) -> bool:
        return self.rid is not None

    def requests(self) -> list[int]:
        """
        Every request of this key: the one in flight, then the queue.
        """
        return ([self.rid] if self.rid is not None else []) + list(self.queue)


class KeyTable:
    """
    Every key that is not idle, and the transitions between states.
    """

    def __init__(self, delete_retry_max: float) -> None:
        self._keys: dict[str, KeyState] = {}
        self._delete_retry_max = delete_retry_max

    def get(self, key: str) -> KeyState | None:
        return self._keys.get(key)

    def keys(self) -> list[str]:
        return list(self._keys)

    def requests(self) -> int:
        """
        How many requests are in flight or queued.
        """
        return sum(len(s.queue) + (s.rid is not None) for s in self._keys.values())

    # -- a request's life

    def submit(self, key: str, rid: int, same_as_adopted: bool = False) -> list[Action]:
        """
        Request C{rid} comes for C{key}. Idle: written once no answer is
        left under the key's name. Adopted with no caller yet, and
        C{same_as_adopted} (it would write the very same file): joined, not
        written, even if others wait their turn behind it. Else: queued.
        """
        state = self._keys.get(key)
        if state is None:
            # a late answer may lie there unseen: it goes before the request comes
            self._keys[key] = KeyState(cleaning=(key + RESPONSE,), queue=deque([rid]))
            return [Delete(key)]
        if state.adopted and same_as_adopted:
            old, state.rid, state.adopted = state.rid, rid, False
            assert old is not None
            return [Join(old, rid)]
        state.queue.append(rid)
        return []

    def written(self, key: str, rid: int, mtime_ns: int) -> list[Action]:
        """
        C{rid}'s C{.req} is in place: look once for an answer already there.
        """
        state = self._keys[key]
        assert state.rid == rid
        state.written_ns = mtime_ns
        return [Read(key, rid)]

    def write_failed(self, key: str, rid: int) -> list[Action]:
        """
        C{rid}'s C{.req} could not be written: C{rid} ends, the next one tries.
        """
        state = self._keys[key]
        assert state.rid == rid
        state.rid = None
        return [End(rid), *self._next(key, state)]

    def adopt(self, key: str, rid: int, written_ns: int) -> list[Action]:
        """
        A C{.req} left by an earlier run is taken as in flight as C{rid}.
        """
        if key in self._keys:
            return []
        self._keys[key] = KeyState(rid=rid, written_ns=written_ns, adopted=True)
        return []

    def discard(self, key: str) -> list[Action]:
        """
        An answer left by an earlier run, that nobody waits for: both of
        C{key}'s files are deleted.
        """
        if key in self._keys:
            return []
        return self._clean(key, self._keys.setdefault(key, KeyState()))

    def answer_seen(self, key: str) -> list[Action]:
        """
        A C{.resp} for C{key} is there (an event or the scan saw it).

        In flight: read it. Idle: a late answer, to a request that has
        ended; it is deleted, and the key is busy until it is gone, so no
        later request can take it. Cleaning: it goes with the key's files.
        """
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = KeyState(cleaning=(key + RESPONSE,))
            return [Delete(key)]
        if state.rid is not None:
            return [Read(key, state.rid)]
        return []

    def sighted(self, key: str, rid: int, sighting: Sighting) -> None:
        """
        C{rid}'s answer was seen unfinished, or unchanged since C{sighting.since}.
        """
        state = self._keys.get(key)
        if state is not None and state.rid == rid:
            state.sighting = sighting

    def answer_read(self, key: str, rid: int) -> list[Action]:
        """
        C{rid}'s answer was read: deliver it, then delete both files.
        """
        state = self._keys.get(key)
        if state is None or state.rid != rid:
            return []
        return [Deliver(rid), *self._clean(key, state)]

    def answer_refused(self, key: str, rid: int) -> list[Action]:
        """
        C{rid}'s answer is not one fmq reads (a link, not a regular file, too
        large): C{rid} ends, and both files are deleted.
        """
        state = self._keys.get(key)
        if state is None or state.rid != rid:
            return []
        return [End(rid), *self._clean(key, state)]

    def withdraw(self, key: str, rid: int) -> list[Action]:
        """
        Nobody waits for C{rid} any more (withdrawn, cancelled, expired): it
        ends; in flight, its files are deleted; queued, it is never written.
        """
        state = self._keys.get(key)
        if state is None:
            return []
        if state.rid == rid:
            return [End(rid), *self._clean(key, state)]
        if rid in state.queue:
            state.queue.remove(rid)
            return [End(rid)]
        return []

    expire = withdraw

    # -- deleting

    def deleted(self, key: str, name: str) -> list[Action]:
        """
        The file C{name} is gone (or was never there); when the last one is,
        the next request is written.
        """
        state = self._keys.get(key)
        if state is None or not state.cleaning or state.cleaning[0] != name:
            return []
        state.cleaning = state.cleaning[1:]
        state.attempts = 0
        if state.cleaning:
            return []
        return self._next(key, state)

    def delete_failed(self, key: str) -> list[Action]:
        """
        The next file of C{key} could not be deleted: try again later.
        """
        state = self._keys.get(key)
        if state is None or not state.cleaning:
            return []
        delay = retry_delay(state.attempts, self._delete_retry_max)
        state.attempts += 1
        return [RetryDelete(key, delay)]

    # -- the directory

    def lost(self) -> list[Action]:
        """
        The directory is unusable: every request in flight or queued ends.
        Deletions go on (they retry until the directory is back).
        """
        actions: list[Action] = []
        for key, state in list(self._keys.items()):
            actions.extend(End(rid) for rid in state.requests())
            state.queue.clear()
            state.rid = None
            if not state.cleaning:
                del self._keys[key]
        return actions

    def stopped(self) -> list[Action]:
        """
        The broker stops: every request ends; deletions are abandoned (the
        next start sweeps what they left).
        """
        actions: list[Action] = [End(rid) for s in self._keys.values() for rid in s.requests()]
        self._keys.clear()
        return actions

    # -- within a key

    def _send(self, key: str, state: KeyState, rid: int) -> list[Action]:
        state.rid, state.written_ns, state.adopted, state.sighting = rid, 0, False, None
        return [Write(key, rid)]

    def _clean(self, key: str, state: KeyState) -> list[Action]:
        state.rid, state.adopted, state.sighting = None, False, None
        state.cleaning = (key + REQUEST, key + RESPONSE)
        state.attempts = 0
        return [Delete(key)]

    def _next(self, key: str, state: KeyState) -> list[Action]:
        if state.queue:
            return self._send(key, state, state.queue.popleft())
        del self._keys[key]
        return []
