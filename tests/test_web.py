"""
Tests for L{fmq.web} through the Klein app, with L{StubTreq}.
"""

from __future__ import annotations

import errno
import io
import os

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from fmq.dispatch import Dispatcher
from fmq.keys import method_and_path
from fmq.testing import MemoryBroker
from fmq.web import AccessLogSite, Front, QuietSite

TIMEOUT = 60.0


class FrontTests(SynchronousTestCase):
    """
    Every method and path reaches the dispatcher; its outcome reaches the caller.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock, request_ttl=300.0)
        self.broker.startService()
        self.dispatcher = Dispatcher(self.broker, self.clock, TIMEOUT, method_and_path)
        self.treq = StubTreq(Front(self.dispatcher).app.resource())

    def answer(self, data: bytes, n: int = -1) -> None:
        self.broker.respond(self.broker.sent[n], data)
        self.treq.flush()

    def test_passes_status_and_body(self) -> None:
        """
        The backend's status and body reach the caller unchanged, with
        Content-Length and no invented Content-Type.
        """
        d = self.treq.get("http://fmq.test/items?id=1")
        self.assertNoResult(d)
        body = bytes(range(256)) * 4 + b"\r\n\n"
        self.answer(b"418\n" + body)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 418)
        self.assertEqual(self.successResultOf(response.content()), body)
        self.assertEqual(response.length, len(body))  # Content-Length, not chunked
        self.assertIsNone(response.headers.getRawHeaders(b"content-type"))

    def test_raw_target_and_method(self) -> None:
        """
        The broker request carries the method and the raw target, query
        string and odd slashes included.
        """
        for method, url, target in [
            ("GET", "http://fmq.test/a//b/?q=1&r=%20x", b"/a//b/?q=1&r=%20x"),
            ("POST", "http://fmq.test/", b"/"),
            ("DELETE", "http://fmq.test/items/7", b"/items/7"),
            ("PATCH", "http://fmq.test/x?a=%C3%A9", b"/x?a=%C3%A9"),
        ]:
            d = self.treq.request(method, url)
            request = self.broker.sent[-1]
            self.assertEqual((request.method, request.target), (method.encode(), target))
            self.answer(b"200\n")
            self.assertEqual(self.successResultOf(d).code, 200)

    def test_empty_body(self) -> None:
        """
        A status-only answer gives an empty body with Content-Length 0.
        """
        d = self.treq.get("http://fmq.test/empty")
        self.answer(b"200")
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(response.content()), b"")
        self.assertEqual(response.length, 0)

    def test_collapsed_callers_get_same_answer(self) -> None:
        """
        Ten identical callers make one broker request and all get its answer.
        """
        ds = [self.treq.get("http://fmq.test/same") for _ in range(10)]
        self.assertEqual(len(self.broker.sent), 1)
        self.answer(b"200\nshared")
        for d in ds:
            self.assertEqual(self.successResultOf(self.successResultOf(d).content()), b"shared")

    def assertRefused(self, d, status: int, words: bytes) -> None:
        response = self.successResultOf(d)
        self.assertEqual(response.code, status)
        body = self.successResultOf(response.content())
        self.assertIn(words, body)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(response.length, len(body))
        return response

    def test_malformed_is_502(self) -> None:
        """
        A malformed answer gives 502.
        """
        d = self.treq.get("http://fmq.test/bad")
        self.answer(b"OK\n")
        self.assertRefused(d, 502, b"malformed")

    def test_caller_timeout_is_504(self) -> None:
        """
        A caller that waited request_timeout gets 504.
        """
        d = self.treq.get("http://fmq.test/slow")
        self.clock.advance(TIMEOUT)
        self.treq.flush()
        self.assertRefused(d, 504, b"timeout")

    def test_ttl_is_504(self) -> None:
        """
        A broker request unanswered for its TTL gives 504.
        """
        self.dispatcher = Dispatcher(self.broker, self.clock, 1000.0, method_and_path)
        self.treq = StubTreq(Front(self.dispatcher).app.resource())
        d = self.treq.get("http://fmq.test/slow")
        self.clock.advance(300.0)
        self.treq.flush()
        self.assertRefused(d, 504, b"TTL")

    def test_unavailable_is_503_with_retry_after(self) -> None:
        """
        An unavailable broker gives 503 at once, with Retry-After.
        """
        self.broker.available = False
        response = self.assertRefused(self.treq.get("http://fmq.test/x"), 503, b"unavailable")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])

    def test_over_capacity_is_503(self) -> None:
        """
        A caller beyond max_waiting gets 503 at once, with Retry-After.
        """
        dispatcher = Dispatcher(self.broker, self.clock, TIMEOUT, method_and_path, max_waiting=1)
        self.treq = StubTreq(Front(dispatcher).app.resource())
        first = self.treq.get("http://fmq.test/a")
        response = self.assertRefused(self.treq.get("http://fmq.test/b"), 503, b"too many")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertNoResult(first)
        self.answer(b"200\n", 0)
        self.assertEqual(self.successResultOf(first).code, 200)


class AccessLogTests(SynchronousTestCase):
    """
    The access log collects lines and writes them together.
    """

    def test_lines_written_together(self) -> None:
        """
        Each answered request makes one line; lines reach the output at the
        next flush, and at stop.
        """
        clock = Clock()
        clock.advance(1795838400)
        out = io.BytesIO()
        site = AccessLogSite(Resource(), clock, out, flush_every=0.2)
        site.startFactory()
        for target, code in [(b"/a?x=1", 200), (b"/b", 504)]:
            request = DummyRequest([b""])
            request.method, request.uri, request.clientproto = b"GET", target, b"HTTP/1.1"
            request.code, request.sentLength = code, 17
            site.log(request)
        self.assertEqual(out.getvalue(), b"")
        clock.advance(0.2)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].endswith(b'[fmq.access] - "GET /a?x=1 HTTP/1.1" 200 17'))
        self.assertIn(b'"GET /b HTTP/1.1" 504 17', lines[1])
        site.log(request)
        site.stopFactory()
        self.assertEqual(len(out.getvalue().splitlines()), 3)

    def test_output_broken(self) -> None:
        """
        An output that cannot be written (a closed pipe, a full disk) loses
        those lines with one log line; the flusher goes on and keeps no
        backlog.
        """

        class Broken(io.BytesIO):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                raise BrokenPipeError(32, "Broken pipe")

        clock = Clock()
        site = AccessLogSite(Resource(), clock, Broken(), flush_every=0.2)
        site.startFactory()
        for _ in range(3):
            request = DummyRequest([b""])
            request.method, request.uri, request.clientproto = b"GET", b"/", b"HTTP/1.1"
            request.code, request.sentLength = 200, 1
            site.log(request)
            clock.advance(0.2)
        self.assertEqual(site._lines, [])
        self.assertTrue(site._flusher.running)
        site.stopFactory()

    def test_lines_after_the_listener_stops(self) -> None:
        """
        Lines of requests that finish after the listener stopped (during the
        drain) are still written: at the next flush, and at L{close}, after
        which each is written at once.
        """
        clock = Clock()
        out = io.BytesIO()
        site = AccessLogSite(Resource(), clock, out, flush_every=0.2)
        site.startFactory()
        site.stopFactory()
        request = DummyRequest([b""])
        request.method, request.uri, request.clientproto = b"GET", b"/late", b"HTTP/1.1"
        request.code, request.sentLength = 503, 4
        site.log(request)
        clock.advance(0.2)
        self.assertEqual(len(out.getvalue().splitlines()), 1)
        site.log(request)
        site.close()
        self.assertEqual(len(out.getvalue().splitlines()), 2)
        self.assertEqual(clock.getDelayedCalls(), [])
        site.log(request)
        self.assertEqual(len(out.getvalue().splitlines()), 3)
        self.assertIn(b'"GET /late HTTP/1.1" 503 4', out.getvalue())


class _Raises(Resource):
    """
    A resource whose rendering fails with an C{OSError}.
    """

    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def render(self, request):
        raise OSError(self.code, os.strerror(self.code))


class _Echo(Resource):
    """
    A resource that answers with the length of the request body.
    """

    isLeaf = True

    def render(self, request):
        return b"%d" % len(request.content.read())


def serve(resource: Resource, data: bytes) -> bytes:
    """
    What a L{QuietSite} over C{resource} answers to C{data} on a new connection.
    """
    transport = StringTransport()
    channel = QuietSite(resource, reactor=Clock()).buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value()


class OutOfDescriptorsTests(SynchronousTestCase):
    """
    Running out of file descriptors while serving a caller is 503, not 500.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_emfile_is_503(self) -> None:
        """
        C{EMFILE} or C{ENFILE} anywhere in handling a request (here while
        rendering, where Klein's routing imports lazily) answers 503 with
        Retry-After and logs one warning, no traceback.
        """
        for code in [errno.EMFILE, errno.ENFILE]:
            del self.events[:]
            answer = serve(_Raises(code), b"GET /x HTTP/1.1\r\nHost: fmq.test\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
            self.assertIn(b"\r\nRetry-After: 1", head)
            self.assertEqual(body, b"503 service overloaded\n")
            [event] = [e for e in self.events if e["log_level"] >= LogLevel.warn]
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertNotIn("log_failure", event)
            self.assertIn("GET /x", formatEvent(event))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_emfile_in_a_handler_is_503(self) -> None:
        """
        C{EMFILE} raised by a Klein handler is 503 too.
        """
        app = Klein()

        @app.route("/", branch=True)
        def handler(request):
            raise OSError(errno.EMFILE, "Too many open files")

        answer = serve(app.resource(), b"GET /y HTTP/1.1\r\nHost: fmq.test\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer[:60])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_other_errors_are_500(self) -> None:
        """
        Any other C{OSError} is still a bug: 500, with its traceback logged.
        """
        answer = serve(_Raises(errno.EACCES), b"GET /x HTTP/1.1\r\nHost: fmq.test\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 500 "), answer[:60])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_large_body_without_descriptors(self) -> None:
        """
        A request body Twisted would keep in a temporary file is kept in
        memory when no descriptor is left for that file.
        """

        def no_descriptor() -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        self.patch(http.tempfile, "TemporaryFile", no_descriptor)
        body = b"x" * 200_000
        request = b"PUT /x HTTP/1.1\r\nHost: fmq.test\r\nContent-Length: %d\r\n\r\n" % len(body)
        answer = serve(_Echo(), request + body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        self.assertTrue(answer.endswith(b"\r\n\r\n200000"), answer[-60:])
