"""
Tests for L{fmq.tools.backend}, the stand-in backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fmq.protocol import BrokerRequest, encode_request
from fmq.tools.backend import Behaviour, DirectoryBackend


class DirectoryBackendTests(SynchronousTestCase):
    """
    The stand-in backend answers request files as a real backend would.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def backend(self, **behaviour) -> DirectoryBackend:
        backend = DirectoryBackend(
            self.directory, self.clock, Behaviour(**behaviour), poll_interval=0.01
        )
        backend.start()
        self.addCleanup(backend.stop)
        return backend

    def request(self, target: bytes = b"/a?b=1") -> BrokerRequest:
        request = BrokerRequest.of(b"GET", target)
        (self.directory / f"{request.key}.req").write_bytes(encode_request(request))
        return request

    def response(self, request: BrokerRequest) -> bytes:
        return (self.directory / f"{request.key}.resp").read_bytes()

    def consume(self, request: BrokerRequest) -> None:
        """
        Do what fmq does after reading the answer.
        """
        os.unlink(self.directory / f"{request.key}.req")
        os.unlink(self.directory / f"{request.key}.resp")

    def test_answers_after_delay(self) -> None:
        """
        A request is answered with the status and the filled-in template after the delay.
        """
        backend = self.backend(delay=(1.0, 1.0), status=201, body="{method} {path} #{n}")
        request = self.request()
        self.clock.advance(0.01)
        self.assertFalse((self.directory / f"{request.key}.resp").exists())
        self.clock.advance(1.0)
        self.assertEqual(self.response(request), b"201\nGET /a?b=1 #1")
        self.assertEqual(backend.counts["answered"], 1)
        self.assertEqual(
            sorted(os.listdir(self.directory)), [f"{request.key}.req", f"{request.key}.resp"]
        )

    def test_answers_once_until_consumed(self) -> None:
        """
        A request is answered once; after fmq consumes the answer, a new request
        with the same key is answered again, with the counter moved on, even if
        it appeared before the next scan.
        """
        backend = self.backend()
        request = self.request()
        for _ in range(3):
            self.clock.advance(0.01)
        self.assertEqual(backend.counts["answered"], 1)
        self.consume(request)
        self.request()
        self.clock.advance(0.01)
        self.clock.advance(0)
        self.assertEqual(self.response(request), b"200\nGET /a?b=1 #2\n")
        self.assertEqual(backend.counts["seen"], 2)

    def test_malformed(self) -> None:
        """
        With malformed=1 every answer is not in the response format.
        """
        self.backend(malformed=1.0)
        request = self.request()
        self.clock.advance(0.01)
        self.assertEqual(self.response(request), b"not a status\n")

    def test_never(self) -> None:
        """
        With never=1 no request is answered.
        """
        backend = self.backend(never=1.0)
        request = self.request()
        for _ in range(5):
            self.clock.advance(0.01)
        self.assertFalse((self.directory / f"{request.key}.resp").exists())
        self.assertEqual(backend.counts["ignored"], 1)

    def test_in_place(self) -> None:
        """
        With in_place=1 the answer is written in place in two parts, the
        file staying open in between.
        """
        self.backend(in_place=1.0, body="0123456789")
        request = self.request()
        self.clock.advance(0.01)
        self.assertEqual(self.response(request), b"200\n012")
        self.clock.advance(0.05)
        self.assertEqual(self.response(request), b"200\n0123456789")

    def test_withdrawn_before_answer(self) -> None:
        """
        A request withdrawn before its answer is due is not answered.
        """
        backend = self.backend(delay=(1.0, 1.0))
        request = self.request()
        self.clock.advance(0.01)
        os.unlink(self.directory / f"{request.key}.req")
        self.clock.advance(1.0)
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(backend.counts["withdrawn"], 1)
