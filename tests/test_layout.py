"""
Tests for L{fmq.brokers.layout}: the directory's names and decisions, as values.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers.layout import Leftovers, sort_leftovers, temporary_name, ttl_left
from fmq.protocol import decode_request


class SortLeftoversTests(SynchronousTestCase):
    """
    What an earlier run left is sorted into what to adopt and what to delete.
    """

    def test_sorting(self) -> None:
        """
        A request alone is adopted; an answer, with or without its request, is
        deleted; fmq's temporary files are deleted; anything else is not fmq's.
        """
        names = [
            "a.req",
            "b.req",
            "b.resp",
            "c.resp",
            temporary_name("d.req", 123),
            ".fmq.lock",
            ".backend-e.tmp",
            "notes.txt",
            ".hidden.req",
            "f.req.tmp",
        ]
        self.assertEqual(
            sort_leftovers(names),
            Leftovers(
                unanswered=("a",),
                answered=("b", "c"),
                temporaries=(".fmq-d.req.123.tmp",),
            ),
        )

    def test_empty(self) -> None:
        """
        An empty directory leaves nothing to do.
        """
        self.assertEqual(sort_leftovers([]), Leftovers())


class TtlLeftTests(SynchronousTestCase):
    """
    An adopted request's TTL counts from its file's time.
    """

    def test_ttl_left(self) -> None:
        """
        The TTL left is the TTL less the file's age, never below 0 nor above the TTL.
        """
        self.assertEqual(ttl_left(300.0, 1000.0, 1100.0), 200.0)
        self.assertEqual(ttl_left(300.0, 1000.0, 2000.0), 0.0)
        self.assertEqual(ttl_left(300.0, 1000.0, 900.0), 300.0)


class DecodeRequestTests(SynchronousTestCase):
    """
    A request file's line back into method and target.
    """

    def test_round_trip(self) -> None:
        """
        C{METHOD PATH\\n} gives the method and the raw target.
        """
        self.assertEqual(decode_request(b"GET /a?b=1 c\n"), (b"GET", b"/a?b=1 c"))

    def test_not_a_request(self) -> None:
        """
        Anything else is a L{ValueError}.
        """
        for data in [b"", b"GET\n", b"GET /a", b" /a\n", b"GET \n"]:
            self.assertRaises(ValueError, decode_request, data)
