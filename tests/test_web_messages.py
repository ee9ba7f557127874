"""
Tests for what L{fmq.web} carries besides status and body: the caller's body
and headers to the broker, the backend's headers back, C{max_body}, and
answers without a body (contract §3c).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from fmq.dispatch import Dispatcher
from fmq.keys import CollapseKey, method_and_path, reads_per_credentials
from fmq.testing import MemoryBroker
from fmq.web import FmqRequest, Front, QuietSite


class Wire:
    """
    fmq's front on a L{MemoryBroker}, spoken to in raw HTTP over
    L{StringTransport}s, with L{FmqRequest} as the sites of C{twistd fmq} have it.
    """

    def __init__(
        self,
        max_body: int = 1 << 20,
        collapse_key: CollapseKey = reads_per_credentials,
        request_format: str = "line",
    ) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock, request_ttl=300.0)
        self.broker.startService()
        self.dispatcher = Dispatcher(
            self.broker, self.clock, 60.0, collapse_key, request_format=request_format
        )
        self.site = QuietSite(Front(self.dispatcher).app.resource(), reactor=self.clock)
        self.site.requestFactory = FmqRequest.limited(max_body)

    def send(self, data: bytes) -> StringTransport:
        """
        Open a connection and send C{data} on it.
        """
        transport = StringTransport()
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport

    def answer(self, data: bytes, n: int = -1) -> None:
        """
        The backend answers the C{n}th broker request with C{data}.
        """
        self.broker.respond(self.broker.sent[n], data)


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    """
    A raw HTTP/1.1 C{POST} with C{body} and C{headers}.
    """
    head = b"".join(h + b"\r\n" for h in headers)
    return (
        b"POST %s HTTP/1.1\r\nHost: fmq.test\r\n%sContent-Length: %d\r\n\r\n"
        % (target, head, len(body))
        + body
    )


def get(target: bytes, *headers: bytes) -> bytes:
    """
    A raw HTTP/1.1 C{GET} with C{headers}.
    """
    head = b"".join(h + b"\r\n" for h in headers)
    return b"GET %s HTTP/1.1\r\nHost: fmq.test\r\n%s\r\n" % (target, head)


def response(transport: StringTransport) -> tuple[bytes, list[bytes], bytes]:
    """
    The status line, the header lines and the body a caller got.
    """
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    return status, headers, body


class RequestContentTests(SynchronousTestCase):
    """
    The caller's body and end-to-end headers reach the broker request.
    """

    def test_body_and_headers(self) -> None:
        """
        A POST's body reaches the broker byte for byte with the caller's
        headers, less hop-by-hop ones and Content-Length.
        """
        wire = Wire()
        body = b'{"sku": 7}\r\n\x00\xff'
        wire.send(
            post(
                b"/orders?x=1",
                body,
                b"Content-Type: application/json",
                b"Authorization: Bearer a",
                b"Connection: keep-alive, X-Hop",
                b"X-Hop: 1",
                b"Keep-Alive: timeout=5",
                b"Proxy-Authorization: Basic eA==",
            )
        )
        [request] = wire.broker.sent
        self.assertEqual(
            (request.method, request.target, request.body), (b"POST", b"/orders?x=1", body)
        )
        self.assertEqual(
            sorted(request.headers),
            [
                (b"Authorization", b"Bearer a"),
                (b"Content-Type", b"application/json"),
                (b"Host", b"fmq.test"),
            ],
        )

    def test_no_body(self) -> None:
        """
        A GET makes a broker request with an empty body.
        """
        wire = Wire()
        wire.send(get(b"/a"))
        self.assertEqual(wire.broker.sent[0].body, b"")

    def test_request_format(self) -> None:
        """
        Broker requests are made in the dispatcher's request format.
        """
        for format in ["line", "http", "json"]:
            wire = Wire(request_format=format)
            wire.send(get(b"/a"))
            self.assertEqual(wire.broker.sent[0].format, format)

    def test_form_body_passed_not_parsed(self) -> None:
        """
        A form POST, even one Twisted could not parse, goes to the backend as it is.
        """
        wire = Wire()
        body = b"--x\r\nnot really multipart"
        wire.send(post(b"/form", body, b"Content-Type: multipart/form-data; boundary=x"))
        [request] = wire.broker.sent
        self.assertEqual(request.body, body)


class MaxBodyTests(SynchronousTestCase):
    """
    A request body over C{max_body} is 413 and makes no broker request.
    """

    def test_declared_too_large(self) -> None:
        """
        A Content-Length over C{max_body} is 413 with no broker request, counted as an error.
        """
        wire = Wire(max_body=10)
        transport = wire.send(post(b"/up", b"x" * 11))
        status, headers, body = response(transport)
        self.assertTrue(status.startswith(b"HTTP/1.1 413 "), status)
        self.assertEqual(body, b"413 request body too large\n")
        self.assertEqual(wire.broker.sent, [])
        self.assertEqual(wire.dispatcher.errors["body_too_large"], 1)
        self.assertEqual(wire.dispatcher.requests, 1)

    def test_chunked_too_large(self) -> None:
        """
        A chunked body found larger than C{max_body} as it comes is 413 too.
        """
        wire = Wire(max_body=10)
        data = (
            b"PUT /up HTTP/1.1\r\nHost: fmq.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"
        )
        status, _, _ = response(wire.send(data))
        self.assertTrue(status.startswith(b"HTTP/1.1 413 "), status)
        self.assertEqual(wire.broker.sent, [])

    def test_at_the_limit(self) -> None:
        """
        A body of exactly C{max_body} bytes, declared or chunked, is passed on.
        """
        wire = Wire(max_body=10)
        wire.send(post(b"/up", b"x" * 10))
        wire.send(
            b"PUT /up HTTP/1.1\r\nHost: fmq.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"
        )
        self.assertEqual([r.body for r in wire.broker.sent], [b"x" * 10, b"abcdefghij"])
        wire.answer(b"200\n", 0)
        wire.answer(b"200\n", 1)  # the request ends and closes its temporary file

    def test_connection_goes_on(self) -> None:
        """
        After a 413 the connection serves the next request.
        """
        wire = Wire(max_body=4)
        transport = wire.send(post(b"/up", b"x" * 5) + get(b"/next"))
        [request] = wire.broker.sent
        self.assertEqual(request.target, b"/next")
        wire.answer(b"200\nnext")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nnext"), transport.value()[-80:])


class AnswerHeadersTests(SynchronousTestCase):
    """
    The backend's headers reach every caller; answers with no body have none.
    """

    def test_headers_reach_every_caller(self) -> None:
        """
        Every caller of a collapsed group gets the backend's end-to-end headers,
        repeated ones included, and fmq's own Content-Length.
        """
        wire = Wire()
        transports = [wire.send(get(b"/a")) for _ in range(3)]
        self.assertEqual(len(wire.broker.sent), 1)
        wire.answer(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /a/1\r\n"
            b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n"
            b"Content-Length: 999\r\n\r\n{}"
        )
        for transport in transports:
            status, headers, body = response(transport)
            self.assertTrue(status.startswith(b"HTTP/1.1 201 "), status)
            self.assertEqual(body, b"{}")
            for line in [
                b"Content-Type: application/json",
                b"Location: /a/1",
                b"Set-Cookie: a=1",
                b"Set-Cookie: b=2",
                b"Content-Length: 2",
            ]:
                self.assertIn(line, headers)
            self.assertNotIn(b"Connection: close", headers)
            self.assertNotIn(b"Content-Length: 999", headers)

    def test_backend_date_replaces_twisted(self) -> None:
        """
        A header Twisted sets itself (Date, Server) is the backend's when it sends one.
        """
        wire = Wire()
        transport = wire.send(get(b"/a"))
        wire.answer(b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\r\n")
        _, headers, _ = response(transport)
        self.assertEqual(
            [h for h in headers if h.lower().startswith(b"date:")],
            [b"Date: Tue, 01 Jan 2030 00:00:00 GMT"],
        )

    def test_no_content_type_invented(self) -> None:
        """
        Without a Content-Type from the backend, the caller gets none.
        """
        wire = Wire()
        transport = wire.send(get(b"/a"))
        wire.answer(b"200 OK\nplain")
        _, headers, body = response(transport)
        self.assertEqual(body, b"plain")
        self.assertEqual([h for h in headers if h.lower().startswith(b"content-type")], [])

    def test_no_body_statuses(self) -> None:
        """
        A 204 or 304 written with a body goes out with no body and no
        Content-Length, and the connection serves the next request.
        """
        for status in [b"204", b"304"]:
            wire = Wire()
            transport = wire.send(get(b"/a"))
            wire.answer(status + b"\nleftover")
            channel_data = transport.value()
            head, _, rest = channel_data.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 " + status), head)
            self.assertNotIn(b"content-length", head.lower())
            self.assertEqual(rest, b"")

    def test_safe_default_keeps_posts_apart(self) -> None:
        """
        With the default key, two POSTs to one target make two broker requests;
        with L{method_and_path} they share one.
        """
        for key, count in [(reads_per_credentials, 2), (method_and_path, 1)]:
            wire = Wire(collapse_key=key)
            wire.send(post(b"/orders", b"a"))
            wire.send(post(b"/orders", b"b"))
            self.assertEqual(len(wire.broker.sent), count)
