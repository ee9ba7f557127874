"""
Tests for L{fmq.brokers.file}: answer files fmq must not read, on a real
directory and a L{Clock}.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers.layout import LOCK_NAME
from fmq.errors import AnswerTooLarge, MalformedResponse, NotARegularFile, ShuttingDown
from fmq.protocol import BrokerRequest
from tests.brokers import FileBackend, file_broker

#: the cap on answers in these tests
CAP = 100


class RefusedAnswerTests(SynchronousTestCase):
    """
    A link, a file that is not regular, or an answer over the cap ends its
    request with 502, unread, and is removed like any answered request's.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.broker = file_broker(self.directory, self.clock, max_answer_bytes=CAP)
        self.broker.startService()
        self.addCleanup(self.stop)
        self.backend = FileBackend(self.directory, self.clock)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.request = BrokerRequest.of(b"GET", b"/x")
        self.answer = self.broker.submit(self.request)
        self.resp = self.directory / f"{self.request.key}.resp"

    def stop(self) -> None:
        if self.broker.running:
            self.broker.stopService()
            self.flushLoggedErrors(ShuttingDown)

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if n != LOCK_NAME)

    def refused(self, kind: type[MalformedResponse]) -> str:
        """
        Deliver; check the caller got C{kind}, both files are gone, and one
        warning names the key. @return: the reason the warning gave.
        """
        self.backend.deliver()
        failure = self.failureResultOf(self.answer, kind)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(self.names(), [])
        [warning] = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["key"], self.request.key)
        return str(warning["error"])

    def test_symlink(self) -> None:
        """
        An answer that is a symbolic link is refused: the link is removed,
        never followed, and its target left as it was.
        """
        target = Path(self.mktemp())
        target.write_bytes(b"200\nnot yours")
        os.symlink(target.resolve(), self.resp)
        self.assertIn("symbolic link", self.refused(NotARegularFile))
        self.assertEqual(target.read_bytes(), b"200\nnot yours")

    def test_dangling_symlink(self) -> None:
        """
        A link to nothing is refused and removed too.
        """
        os.symlink("/nonexistent/answer", self.resp)
        self.assertIn("symbolic link", self.refused(NotARegularFile))

    def test_fifo(self) -> None:
        """
        A FIFO is refused without blocking the reactor, and removed.
        """
        os.mkfifo(self.resp)
        self.assertIn("a FIFO", self.refused(NotARegularFile))

    def test_directory(self) -> None:
        """
        An empty directory in place of an answer is refused and removed.
        """
        self.resp.mkdir()
        self.assertIn("a directory", self.refused(NotARegularFile))

    def test_too_large(self) -> None:
        """
        An answer one byte over C{max_answer_bytes} is refused unread.
        """
        self.backend.answer(self.request, b"200\n" + b"x" * (CAP - 3))
        reason = self.refused(AnswerTooLarge)
        self.assertIn(f"{CAP + 1} bytes, more than max_answer_bytes ({CAP})", reason)

    def test_at_the_cap(self) -> None:
        """
        An answer of exactly C{max_answer_bytes} is delivered.
        """
        self.backend.answer(self.request, b"200\n" + b"x" * (CAP - 4))
        self.backend.deliver()
        self.assertEqual(self.successResultOf(self.answer).body, b"x" * (CAP - 4))
        self.assertEqual(self.names(), [])

    def test_next_request_after_a_refusal(self) -> None:
        """
        Once a refused answer's files are gone, the next identical request is
        written and answered as usual.
        """
        os.symlink("/nonexistent/answer", self.resp)
        self.refused(NotARegularFile)
        again = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        self.assertEqual(self.names(), [f"{self.request.key}.req"])
        self.backend.answer(self.request, b"200\nfine")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(again).body, b"fine")
