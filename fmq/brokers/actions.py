"""
What the file broker's state machine asks its shell to do.

Each transition of L{fmq.brokers.keystate.KeyTable} returns a list of these,
in order; the shell (L{fmq.brokers.file}, L{fmq.brokers.janitor}) carries
them out and reports the outcome back as the next event. They are values
only, like h11's C{_events.py} beside its C{_state.py}.
"""

from __future__ import annotations

from typing import Union

import attrs

__all__ = ["Action", "Delete", "Deliver", "End", "Join", "Read", "RetryDelete", "Write"]


@attrs.frozen
class Write:
    """
    Write request C{rid}'s C{.req} for C{key}; report C{KeyTable.written}
    or C{KeyTable.write_failed}.
    """

    key: str
    rid: int


@attrs.frozen
class Read:
    """
    Look at C{key}'s answer for the request in flight, C{rid}.
    """

    key: str
    rid: int


@attrs.frozen
class Deliver:
    """
    Hand the answer just read to request C{rid}'s caller; C{rid} has ended.
    """

    rid: int


@attrs.frozen
class End:
    """
    Request C{rid} has ended without an answer (the shell knows why).
    """

    rid: int


@attrs.frozen
class Join:
    """
    Request C{new} takes over the adopted request C{old}: nothing is written,
    and C{old}'s TTL is C{new}'s.
    """

    old: int
    new: int


@attrs.frozen
class Delete:
    """
    Delete C{key}'s files named in C{KeyState.cleaning}, in order; report
    each with C{KeyTable.deleted}, a failure with C{KeyTable.delete_failed}.
    """

    key: str


@attrs.frozen
class RetryDelete:
    """
    Try C{key}'s deletion again in C{delay} seconds.
    """

    key: str
    delay: float


#: what a transition asks the shell to do (C{Union}: Python 3.9 runs this line)
Action = Union[Write, Read, Deliver, End, Join, Delete, RetryDelete]  # noqa: UP007
