"""
Tests for the request formats and answer forms of L{fmq.protocol} (contract §3c).
"""

from __future__ import annotations

import json

import attrs
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fmq.errors import MalformedResponse
from fmq.protocol import (
    ANSWER_FORMS,
    BOM,
    REQUEST_FORMATS,
    BrokerRequest,
    BrokerResponse,
    broker_key,
    decode_http,
    decode_json,
    decode_line,
    decode_request,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
    passed_headers,
    request_format_of,
)

quick = settings(database=None, deadline=None)

HEADERS = ((b"Host", b"127.0.0.1:8080"), (b"Content-Type", b"application/json"))


def post(format: str = "line", body: bytes = b'{"n": 1}') -> BrokerRequest:
    """
    A C{POST /orders?x=1} with two headers and C{body}, in C{format}.
    """
    return BrokerRequest.of(b"POST", b"/orders?x=1", HEADERS, body, format)


class RequestFormatTests(SynchronousTestCase):
    """
    Tests for the three request formats on chosen examples.
    """

    def test_line(self) -> None:
        """
        C{line} is the request line, a newline, then the body byte for byte.
        """
        self.assertEqual(encode_request(post()), b'POST /orders?x=1\n{"n": 1}')

    def test_line_without_body(self) -> None:
        """
        C{line} without a body is the seed's C{METHOD TARGET\\n}, nothing after it.
        """
        self.assertEqual(encode_request(BrokerRequest.of(b"GET", b"/a")), b"GET /a\n")

    def test_http(self) -> None:
        """
        C{http} is an HTTP/1.1 message: request line, headers, Content-Length, body.
        """
        self.assertEqual(
            encode_request(post("http")),
            b"POST /orders?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b'Content-Type: application/json\r\nContent-Length: 8\r\n\r\n{"n": 1}',
        )

    def test_json(self) -> None:
        """
        C{json} is one object with method, target, headers as pairs and body.
        """
        self.assertEqual(
            json.loads(encode_request(post("json"))),
            {
                "method": "POST",
                "target": "/orders?x=1",
                "headers": [["Host", "127.0.0.1:8080"], ["Content-Type", "application/json"]],
                "body": '{"n": 1}',
            },
        )

    def test_json_binary_body(self) -> None:
        """
        A body that is not UTF-8 travels as C{body_base64}, and no C{body}.
        """
        document = json.loads(encode_request(post("json", b"\xff\x00")))
        self.assertEqual((document["body_base64"], "body" in document), ("/wA=", False))

    def test_unknown_format(self) -> None:
        """
        A request format that is not one of the three is refused when the request is made.
        """
        self.assertRaises(ValueError, BrokerRequest.of, b"GET", b"/", format="xml")

    def test_key_is_method_and_target(self) -> None:
        """
        Headers, body and format do not change the broker key (contract §3).
        """
        self.assertEqual(post("json").key, broker_key(b"POST", b"/orders?x=1"))

    def test_decode_each(self) -> None:
        """
        Each format's decoder gives back method, target, headers and body.
        """
        for format, decode in [("line", decode_line), ("http", decode_http), ("json", decode_json)]:
            request = post(format)
            decoded = decode(encode_request(request))
            headers = HEADERS if format != "line" else ()
            self.assertEqual(
                (decoded.key, decoded.method, decoded.target, decoded.headers, decoded.body),
                (request.key, b"POST", b"/orders?x=1", headers, b'{"n": 1}'),
            )

    def test_format_told_from_data(self) -> None:
        """
        L{parse_request} and L{decode_request} tell the format from the data.
        """
        for format in REQUEST_FORMATS:
            data = encode_request(post(format))
            self.assertEqual(request_format_of(data), format)
            self.assertEqual(parse_request(data).format, format)
            self.assertEqual(decode_request(data), (b"POST", b"/orders?x=1"))

    def test_http_by_hand(self) -> None:
        """
        An C{http} request written with bare newlines and no Content-Length is read too.
        """
        request = decode_http(b"PUT /a HTTP/1.0\nX-A:  1 \n\nbody")
        self.assertEqual(
            (request.method, request.headers, request.body), (b"PUT", ((b"X-A", b"1"),), b"body")
        )

    def test_http_content_length_bounds_body(self) -> None:
        """
        An C{http} request's body is what its Content-Length says.
        """
        self.assertEqual(
            decode_http(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabcd").body, b"ab"
        )

    def test_not_requests(self) -> None:
        """
        Data in no format is refused with L{ValueError}.
        """
        for data in [
            b"",
            b"GET\n",
            b"{}",
            b'{"method": "GET", "target": "/", "headers": [], "body": 1}',
            b"{not json",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ]:
            self.assertRaises(ValueError, parse_request, data)


class PassedHeadersTests(SynchronousTestCase):
    """
    Tests for L{passed_headers}.
    """

    def test_hop_by_hop_removed(self) -> None:
        """
        Hop-by-hop headers, those named in Connection, Proxy-* and Content-Length go.
        """
        headers = (
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"proxy-connection", b"close"),
            (b"Content-Length", b"3"),
            (b"x-secret", b"1"),
            (b"Authorization", b"Bearer a"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        )
        self.assertEqual(
            passed_headers(headers),
            ((b"Authorization", b"Bearer a"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")),
        )


class AnswerFormTests(SynchronousTestCase):
    """
    Tests for L{parse_response} on every answer form of contract §3c.
    """

    def test_bare(self) -> None:
        """
        C{STATUS} then the body: the seed's form.
        """
        self.assertEqual(parse_response(b"201\nmade"), BrokerResponse(201, b"made"))

    def test_reason(self) -> None:
        """
        C{STATUS REASON} then the body.
        """
        self.assertEqual(parse_response(b"404 Not Found\nno"), BrokerResponse(404, b"no"))

    def test_http(self) -> None:
        """
        An HTTP/1.1 status line, headers, an empty line and the body.
        """
        self.assertEqual(
            parse_response(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                b"Location: /orders/7\r\n\r\n{}"
            ),
            BrokerResponse(
                201, b"{}", ((b"Content-Type", b"application/json"), (b"Location", b"/orders/7"))
            ),
        )

    def test_http_1_0_bare_newlines(self) -> None:
        """
        HTTP/1.0 with bare newlines is read the same way; a blank line in the body stays.
        """
        self.assertEqual(
            parse_response(b"HTTP/1.0 200 OK\nCache-Control: no-store\n\nA: b\n\nc"),
            BrokerResponse(200, b"A: b\n\nc", ((b"Cache-Control", b"no-store"),)),
        )

    def test_http_without_reason_or_headers(self) -> None:
        """
        An HTTP status line without a reason, and with nothing after it, is an empty answer.
        """
        self.assertEqual(parse_response(b"HTTP/1.1 200\r\n"), BrokerResponse(200, b""))

    def test_http_headers_to_the_end(self) -> None:
        """
        Headers that run to the end of the data, with no empty line, leave an empty body.
        """
        self.assertEqual(
            parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1"),
            BrokerResponse(200, b"", ((b"X-A", b"1"),)),
        )

    def test_http_drops_hop_by_hop_and_length(self) -> None:
        """
        Hop-by-hop headers and the backend's Content-Length do not reach the caller.
        """
        response = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
            b'Content-Length: 99\r\nETag: "x"\r\n\r\nbody'
        )
        self.assertEqual(response, BrokerResponse(200, b"body", ((b"ETag", b'"x"'),)))

    def test_bom(self) -> None:
        """
        A leading UTF-8 byte-order mark is ignored, in every form.
        """
        for data in [b"200\nok", b"200 OK\r\nok", b"HTTP/1.1 200 OK\r\n\r\nok"]:
            self.assertEqual(parse_response(BOM + data), BrokerResponse(200, b"ok"))

    def test_crlf(self) -> None:
        """
        Lines ending in CRLF read like lines ending in LF; the body keeps its CRs.
        """
        self.assertEqual(
            parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\na\r\n"),
            parse_response(b"HTTP/1.1 200 OK\nX-A: 1\n\na\r\n"),
        )

    def test_1xx_is_not_an_answer(self) -> None:
        """
        A 1xx status in any form is malformed (502), named as not final.
        """
        for data in [
            b"100\nhello",
            b"101 Switching Protocols\n",
            b"HTTP/1.1 103 Early Hints\r\n\r\n",
        ]:
            error = self.assertRaises(MalformedResponse, parse_response, data)
            self.assertIn("not a final answer", str(error))

    def test_no_body_statuses(self) -> None:
        """
        A 204 or a 304 has no body, whatever the backend wrote after it.
        """
        self.assertEqual(parse_response(b"204\nleftover"), BrokerResponse(204, b""))
        self.assertEqual(
            parse_response(b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\nold'),
            BrokerResponse(304, b"", ((b"ETag", b'"a"'),)),
        )

    def test_bad_header_block(self) -> None:
        """
        A header block that cannot be parsed is malformed.
        """
        for block in [
            b"no colon",
            b"Bad Name: x",
            b": no name",
            b"X-A: 1\r\n folded",
            b"X-A: a\x00b",
            b"X-A: a\rb",
        ]:
            self.assertRaises(
                MalformedResponse, parse_response, b"HTTP/1.1 200 OK\r\n" + block + b"\r\n\r\nx"
            )

    def test_bad_status_lines(self) -> None:
        """
        Other protocol versions and broken HTTP status lines are malformed.
        """
        for line in [b"HTTP/2 200", b"HTTP/1.1 2000 OK", b"HTTP/1.1", b"HTTP/1.1 OK", b"200\x01"]:
            self.assertRaises(MalformedResponse, parse_response, line + b"\r\n\r\nx")

    def test_encode_each_form(self) -> None:
        """
        L{encode_response} writes the three forms a backend may use.
        """
        response = BrokerResponse(200, b"hi", ((b"Content-Type", b"text/plain"),))
        self.assertEqual(
            [encode_response(response, form) for form in ANSWER_FORMS],
            [
                b"200\nhi",
                b"200 OK\nhi",
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            ],
        )
        self.assertRaises(ValueError, encode_response, response, "xml")


# -- properties

token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
).map(lambda s: s.encode("ascii"))
header_name = token.filter(
    lambda n: passed_headers([(n, b"x")]) != () and n.lower() != b"connection"
)
# field-value: visible bytes and obs-text, blanks only inside
visible = (
    st.binary(min_size=1).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F)).filter(bool)
)
header_value = st.one_of(
    st.just(b""),
    visible,
    st.tuples(visible, st.sampled_from([b" ", b"\t", b" \t "]), visible).map(b"".join),
)
headers = st.lists(st.tuples(header_name, header_value), max_size=6).map(tuple)
methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
# what Twisted hands fmq as a target: no whitespace
targets = st.tuples(st.just(b"/"), st.binary(max_size=40)).map(
    lambda t: t[0] + bytes(c for c in t[1] if not bytes([c]).isspace())
)


@st.composite
def responses(draw: st.DrawFn) -> BrokerResponse:
    """
    An answer fmq may hold: a final status, headers that pass, a body (none for 204/304).
    """
    status = draw(st.integers(200, 599))
    body = b"" if status in (204, 304) else draw(st.binary())
    return BrokerResponse(status, body, draw(headers))


class PropertyTests(SynchronousTestCase):
    """
    Round trips of the request formats and the answer forms.
    """

    @quick
    @given(
        method=methods,
        target=targets,
        headers=headers,
        body=st.binary(),
        format=st.sampled_from(REQUEST_FORMATS),
    )
    def test_request_round_trip(
        self, method: bytes, target: bytes, headers: tuple, body: bytes, format: str
    ) -> None:
        """
        Any request decodes from its encoding to the same method, target, body and
        format, and the same headers where the format carries them.
        """
        request = BrokerRequest.of(method, target, headers, body, format)
        decoded = parse_request(encode_request(request))
        expected = attrs.evolve(request, id=decoded.id)
        if format == "line":
            expected = attrs.evolve(expected, headers=())
        self.assertEqual(decoded, expected)

    @quick
    @given(response=responses())
    def test_answer_round_trip(self, response: BrokerResponse) -> None:
        """
        Any answer fmq holds, written in HTTP form, parses back to the same status,
        headers and body; without headers, the bare and reason forms do too.
        """
        self.assertEqual(parse_response(encode_response(response, "http")), response)
        plain = attrs.evolve(response, headers=())
        for form in ["bare", "reason"]:
            self.assertEqual(parse_response(encode_response(plain, form)), plain)

    @quick
    @given(response=responses(), form=st.sampled_from(ANSWER_FORMS))
    @example(response=BrokerResponse(200, b"\r\n\r\n"), form="bare")
    def test_bom_and_crlf_change_nothing(self, response: BrokerResponse, form: str) -> None:
        """
        A byte-order mark in front, and CRLF or LF line ends in the head, change nothing.
        """
        if form != "http":
            response = attrs.evolve(response, headers=())
        data = encode_response(response, form)
        parsed = parse_response(data)
        self.assertEqual(parse_response(BOM + data), parsed)
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and form == "http":  # only the http form has a head of CRLF lines
            self.assertEqual(parse_response(head.replace(b"\r\n", b"\n") + b"\n\n" + body), parsed)

    @quick
    @given(data=st.binary())
    def test_only_malformed_after_http_line(self, data: bytes) -> None:
        """
        Whatever follows an HTTP status line, the answer parses or is malformed.
        """
        try:
            parse_response(b"HTTP/1.1 200 OK\r\n" + data)
        except MalformedResponse:
            pass
