"""
Tests for L{fmq.protocol}: the broker key, the request line and response parsing.
"""

from __future__ import annotations

from hashlib import md5

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fmq.errors import MalformedResponse
from fmq.protocol import (
    BrokerRequest,
    BrokerResponse,
    broker_key,
    encode_request,
    parse_response,
)

# No example database: the tests leave no files behind in the checkout.
quick = settings(database=None, deadline=None)

#: what the contract calls blanks around the status.
blanks = st.text(alphabet=" \t", max_size=3).map(lambda s: s.encode("ascii"))

statuses = st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304))


class BrokerKeyTests(SynchronousTestCase):
    """
    Tests for L{broker_key}.
    """

    def test_known_value(self) -> None:
        """
        The key of C{GET /items?id=1} is the md5 of C{GET/items?id=1}, query string included.
        """
        self.assertEqual(
            broker_key(b"GET", b"/items?id=1"),
            "8641f72c2783afe90eea089f8074e842",
        )

    def test_query_string_counts(self) -> None:
        """
        Targets that differ only in their query string have different keys.
        """
        self.assertNotEqual(
            broker_key(b"GET", b"/items?id=1"),
            broker_key(b"GET", b"/items?id=2"),
        )

    def test_method_counts(self) -> None:
        """
        The same target with different methods has different keys.
        """
        self.assertNotEqual(broker_key(b"GET", b"/items"), broker_key(b"POST", b"/items"))

    def test_non_ascii_target(self) -> None:
        """
        A non-ASCII target is hashed as its UTF-8 bytes.
        """
        self.assertEqual(
            broker_key(b"GET", "/café?q=ü".encode()),
            md5("GET/café?q=ü".encode()).hexdigest(),
        )

    @quick
    @given(method=st.sampled_from(["GET", "HEAD", "POST", "DELETE"]), path=st.text())
    def test_contract_formula(self, method: str, path: str) -> None:
        """
        For any method and path the key is C{md5((METHOD + PATH).encode("utf-8")).hexdigest()}.
        """
        self.assertEqual(
            broker_key(method.encode("utf-8"), path.encode("utf-8")),
            md5((method + path).encode("utf-8")).hexdigest(),
        )


class BrokerRequestTests(SynchronousTestCase):
    """
    Tests for L{BrokerRequest} and L{encode_request}.
    """

    def test_of(self) -> None:
        """
        L{BrokerRequest.of} keeps method and target and keys the request by L{broker_key}.
        """
        request = BrokerRequest.of(b"GET", b"/items?id=1")
        self.assertEqual(
            (request.key, request.method, request.target),
            (broker_key(b"GET", b"/items?id=1"), b"GET", b"/items?id=1"),
        )

    def test_unique_ids(self) -> None:
        """
        Every broker request gets its own id, even for the same method and target.
        """
        ids = {BrokerRequest.of(b"GET", b"/same").id for _ in range(100)}
        self.assertEqual(len(ids), 100)

    def test_same_request_twice_not_equal(self) -> None:
        """
        Two broker requests for the same target are different values, because their ids differ.
        """
        self.assertNotEqual(BrokerRequest.of(b"GET", b"/a"), BrokerRequest.of(b"GET", b"/a"))

    def test_line(self) -> None:
        """
        L{BrokerRequest.line} is C{METHOD PATH} as text.
        """
        self.assertEqual(BrokerRequest.of(b"GET", b"/items?id=1").line, "GET /items?id=1")

    def test_line_undecodable(self) -> None:
        """
        Bytes that are not UTF-8 show as backslash escapes in L{BrokerRequest.line}.
        """
        self.assertEqual(BrokerRequest.of(b"GET", b"/\xff").line, "GET /\\xff")

    def test_encode_request(self) -> None:
        """
        A request is encoded as C{METHOD PATH} and a newline.
        """
        self.assertEqual(
            encode_request(BrokerRequest.of(b"GET", b"/items?id=1")),
            b"GET /items?id=1\n",
        )


class ParseResponseTests(SynchronousTestCase):
    """
    Tests for L{parse_response} on chosen examples.
    """

    def test_status_and_body(self) -> None:
        """
        The first line is the status and the rest is the body.
        """
        self.assertEqual(parse_response(b"200\nhello"), BrokerResponse(200, b"hello"))

    def test_range_ends(self) -> None:
        """
        Statuses 200 and 599 are valid.
        """
        self.assertEqual(
            [parse_response(b"200\n"), parse_response(b"599\n")],
            [BrokerResponse(200, b""), BrokerResponse(599, b"")],
        )

    def test_blanks_and_carriage_return(self) -> None:
        """
        Blanks around the status and a trailing carriage return are allowed.
        """
        self.assertEqual(
            parse_response(b"  \t404 \t\r\nnot here"), BrokerResponse(404, b"not here")
        )

    def test_status_only(self) -> None:
        """
        A response holding only the status, without a newline, has an empty body.
        """
        self.assertEqual(parse_response(b"204"), BrokerResponse(204, b""))

    def test_status_only_with_carriage_return(self) -> None:
        """
        A response holding only the status and a carriage return has an empty body.
        """
        self.assertEqual(parse_response(b"204\r"), BrokerResponse(204, b""))

    def test_body_crlf_kept(self) -> None:
        """
        Carriage returns and newlines inside the body are kept as they are.
        """
        self.assertEqual(
            parse_response(b"200\r\na\r\nb\n\r\n"),
            BrokerResponse(200, b"a\r\nb\n\r\n"),
        )

    def test_body_binary(self) -> None:
        """
        Every byte value survives in the body.
        """
        body = bytes(range(256)) * 2
        self.assertEqual(parse_response(b"200\n" + body), BrokerResponse(200, body))

    def test_body_leading_blank_lines(self) -> None:
        """
        Only the first newline ends the status line; blank lines after it belong to the body.
        """
        self.assertEqual(parse_response(b"200\n\n\nx\n"), BrokerResponse(200, b"\n\nx\n"))

    def test_large_body(self) -> None:
        """
        A 1 MiB body is returned whole.
        """
        body = bytes(range(256)) * 4096
        response = parse_response(b"201\n" + body)
        self.assertEqual((response.status, len(response.body)), (201, 1024 * 1024))
        self.assertEqual(response.body, body)

    def assert_malformed(self, data: bytes) -> None:
        """
        Assert that C{data} is not a response.
        """
        self.assertRaises(MalformedResponse, parse_response, data)

    def test_empty(self) -> None:
        """
        An empty file is malformed.
        """
        self.assert_malformed(b"")

    def test_empty_first_line(self) -> None:
        """
        A file starting with a newline is malformed, even if a status follows.
        """
        self.assert_malformed(b"\n200\n")

    def test_blank_only(self) -> None:
        """
        A first line of blanks only is malformed.
        """
        self.assert_malformed(b"  \r\nbody")

    def test_not_digits(self) -> None:
        """
        A first line that is not a number is malformed.
        """
        self.assert_malformed(b"OK\nbody")

    def test_below_range(self) -> None:
        """
        Status 99 is malformed.
        """
        self.assert_malformed(b"99\n")

    def test_below_range_three_digits(self) -> None:
        """
        Status 099 is malformed.
        """
        self.assert_malformed(b"099\n")

    def test_above_range(self) -> None:
        """
        Status 600 is malformed.
        """
        self.assert_malformed(b"600\n")

    def test_letter_o(self) -> None:
        """
        A status written with the letter O instead of zeros is malformed.
        """
        self.assert_malformed(b"2OO\n")

    def test_sign(self) -> None:
        """
        A status with a plus sign is malformed.
        """
        self.assert_malformed(b"+200\n")

    def test_inner_blank(self) -> None:
        """
        A status with a blank inside it is malformed.
        """
        self.assert_malformed(b"20 0\n")

    def test_unicode_digits(self) -> None:
        """
        A status written in non-ASCII digits is malformed.
        """
        self.assert_malformed("٢٠٠\n".encode())
        self.assert_malformed("２００\n".encode())

    def test_reason_phrase(self) -> None:
        """
        A status line with a reason phrase, as in HTTP, is the status.
        """
        self.assertEqual(parse_response(b"200 OK\nbody"), BrokerResponse(200, b"body"))

    def test_trailing_garbage(self) -> None:
        """
        A status followed by anything but blanks on its line is malformed.
        """
        self.assert_malformed(b"200;\n")

    def test_error_message_names_line(self) -> None:
        """
        The error shows the first line, so the operator's log says what was wrong.
        """
        error = self.assertRaises(MalformedResponse, parse_response, b"2OO\n")
        self.assertIn("2OO", str(error))


def _invalid_status_lines() -> st.SearchStrategy[bytes]:
    """
    First lines (without their newline) that are not a valid status, by construction.
    """
    no_newline = st.binary().map(lambda b: b.replace(b"\n", b""))
    digits = st.text(alphabet="0123456789", max_size=2).map(lambda s: s.encode("ascii"))
    # a byte that strip() keeps and that is not a digit; not the H of HTTP/
    foreign = (
        st.integers(0, 255)
        .map(lambda b: bytes([b]))
        .filter(lambda b: not b.isdigit() and b not in b" \t\n\r\x0b\x0cH")
    )
    # fewer than three digits, then something else: never a three-digit status
    short = st.tuples(digits, foreign, no_newline).map(b"".join)
    # three digits glued to something else: 2000, 200OK, 200;
    glued = st.tuples(st.integers(200, 599).map(lambda n: b"%d" % n), foreign, no_newline).map(
        b"".join
    )
    out_of_range = st.one_of(st.integers(0, 199), st.integers(600, 999)).map(lambda n: b"%03d" % n)
    reason = st.tuples(st.just(b" "), no_newline).map(b"".join)
    out_of_range_with_reason = st.tuples(out_of_range, st.one_of(st.just(b""), reason)).map(
        b"".join
    )
    control = st.integers(0, 31).filter(lambda c: c not in (9, 10)).map(lambda c: bytes([c]))
    bad_reason = st.tuples(
        st.integers(200, 599).map(lambda n: b"%d " % n), no_newline, control, st.just(b"x")
    ).map(b"".join)
    core = st.one_of(short, glued, out_of_range_with_reason, bad_reason)
    return st.tuples(blanks, core, blanks).map(b"".join)


class ParseResponsePropertyTests(SynchronousTestCase):
    """
    Properties of L{parse_response} over generated data.
    """

    @quick
    @given(status=statuses, body=st.binary())
    def test_round_trip(self, status: int, body: bytes) -> None:
        """
        Any status 200-599 (but 204 and 304, which have no body) on the first line
        and any bytes after it parse back unchanged.
        """
        self.assertEqual(parse_response(b"%d\n" % status + body), BrokerResponse(status, body))

    @quick
    @given(
        before=blanks,
        status=statuses,
        after=blanks,
        cr=st.sampled_from([b"", b"\r"]),
        body=st.binary(),
    )
    def test_round_trip_with_blanks(
        self, before: bytes, status: int, after: bytes, cr: bytes, body: bytes
    ) -> None:
        """
        Blanks around the status and a trailing carriage return never change the response.
        """
        data = before + b"%d" % status + after + cr + b"\n" + body
        self.assertEqual(parse_response(data), BrokerResponse(status, body))

    @quick
    @given(
        line=_invalid_status_lines(), rest=st.one_of(st.just(b""), st.binary().map(b"\n".__add__))
    )
    def test_invalid_first_line(self, line: bytes, rest: bytes) -> None:
        """
        Data whose first line is not a valid status is malformed, whatever follows it.
        """
        self.assertRaises(MalformedResponse, parse_response, line + rest)

    @quick
    @given(data=st.binary())
    def test_only_malformed_response(self, data: bytes) -> None:
        """
        Arbitrary bytes either parse or raise L{MalformedResponse}, never anything else.
        """
        try:
            response = parse_response(data)
        except MalformedResponse:
            return
        self.assertTrue(200 <= response.status <= 599)
        self.assertTrue(data.endswith(response.body))
