"""
The broker's wire format, as pure functions on values.

A request travels in one of L{REQUEST_FORMATS}: C{line} (C{METHOD TARGET\\n}
then the body), C{http} (a whole HTTP/1.1 request message) or C{json} (one
object). An answer is in one of the forms L{parse_response} reads: a status
line then the body, or an HTTP/1.x status line, headers and the body.
L{encode_response} writes each form, for backends and tests.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from hashlib import md5
from http import HTTPStatus
from itertools import count

import attrs

from fmq.errors import MalformedResponse

_ids = count(1)

__all__ = [
    "ANSWER_FORMS",
    "BOM",
    "NO_BODY",
    "REQUEST_FORMATS",
    "BrokerRequest",
    "BrokerResponse",
    "Header",
    "Headers",
    "broker_key",
    "decode_http",
    "decode_json",
    "decode_line",
    "decode_request",
    "encode_http",
    "encode_json",
    "encode_line",
    "encode_request",
    "encode_response",
    "parse_request",
    "parse_response",
    "passed_headers",
    "request_format_of",
]

#: one header: its name and its value, as bytes.
Header = tuple[bytes, bytes]
#: headers in order, a name repeated as often as it was sent.
Headers = tuple[Header, ...]

#: what C{[broker] request_format} may be.
REQUEST_FORMATS = ("line", "http", "json")
#: the answer forms L{encode_response} writes.
ANSWER_FORMS = ("bare", "reason", "http")

#: headers that concern one connection, never passed on (RFC 9110 7.6.1), and
#: Content-Length, which whoever writes the next message sets.
_NOT_PASSED = frozenset(
    [b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"]
    + [b"content-length"]
)
#: statuses whose answers have no body.
NO_BODY = frozenset([204, 304])
BOM = b"\xef\xbb\xbf"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(rb"([0-9]{3})(?:[ \t]+(.*))?", re.DOTALL)
_HTTP_STATUS = re.compile(rb"HTTP/1\.[01][ \t]+([0-9]{3})(?:[ \t]+(.*))?", re.DOTALL)
_HTTP_REQUEST = re.compile(rb"(\S+) (\S+) HTTP/1\.[01]")
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def broker_key(method: bytes, target: bytes) -> str:
    """
    The name under which a request travels through the broker.

    @param method: the HTTP method, e.g. C{b"GET"}.
    @param target: the request target as received, query string included.
    @return: C{md5(METHOD + PATH)} as 32 lowercase hex digits.
    """
    return md5(method + target).hexdigest()


def passed_headers(headers: Iterable[Header]) -> Headers:
    """
    The headers that pass through fmq, in their order: all but the hop-by-hop
    ones (C{Connection} and the headers it names, C{Keep-Alive},
    C{Transfer-Encoding}, C{TE}, C{Trailer}, C{Upgrade}, C{Proxy-*}) and
    C{Content-Length}, which fmq sets itself.
    """
    headers = tuple(headers)
    dropped = set(_NOT_PASSED)
    for name, value in headers:
        if name.lower() == b"connection":
            dropped.update(t.strip().lower() for t in value.split(b","))
    return tuple(
        (name, value)
        for name, value in headers
        if not (name.lower() in dropped or name[:6].lower() == b"proxy-")
    )


def _in_formats(instance: object, attribute: object, value: str) -> None:
    if value not in REQUEST_FORMATS:
        raise ValueError(f"request format {value!r} is not one of {', '.join(REQUEST_FORMATS)}")


@attrs.frozen
class BrokerRequest:
    """
    One request to the backend.

    @ivar key: the broker key (see L{broker_key}); several broker requests may
        share it over time, never at once on the file broker.
    @ivar method: the HTTP method.
    @ivar target: the raw request target, query string included.
    @ivar headers: the caller's headers that pass on (see L{passed_headers}).
    @ivar body: the caller's request body.
    @ivar format: how L{encode_request} writes it, one of L{REQUEST_FORMATS}.
    @ivar id: unique within this process, for correlation and logs.
    """

    key: str
    method: bytes
    target: bytes
    headers: Headers = ()
    body: bytes = b""
    format: str = attrs.field(default="line", validator=_in_formats)
    id: int = attrs.field(factory=lambda: next(_ids))

    @property
    def line(self) -> str:
        """
        C{METHOD PATH}, for logs.
        """
        return (self.method + b" " + self.target).decode("utf-8", "backslashreplace")

    @classmethod
    def of(
        cls,
        method: bytes,
        target: bytes,
        headers: Headers = (),
        body: bytes = b"",
        format: str = "line",
    ) -> BrokerRequest:
        """
        A new broker request for C{method} and C{target}, keyed by L{broker_key}.
        """
        return cls(broker_key(method, target), method, target, headers, body, format)


@attrs.frozen
class BrokerResponse:
    """
    The backend's answer: an HTTP status, the headers for the caller (none
    hop-by-hop, no Content-Length) and the body, held once for all callers.
    """

    status: int
    body: bytes
    headers: Headers = ()


# -- requests


def encode_line(request: BrokerRequest) -> bytes:
    """
    The C{line} format: C{METHOD TARGET\\n}, then the body byte for byte.
    """
    return request.method + b" " + request.target + b"\n" + request.body


def encode_http(request: BrokerRequest) -> bytes:
    """
    The C{http} format: an HTTP/1.1 request message with the request's
    headers and a C{Content-Length} for its body.
    """
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in request.headers)
    lines.append(b"Content-Length: %d" % len(request.body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + request.body


def encode_json(request: BrokerRequest) -> bytes:
    """
    The C{json} format: one object with C{method}, C{target}, C{headers} (a
    list of C{[name, value]}) and C{body}, or C{body_base64} when the body
    is not UTF-8. Bytes that are not UTF-8 elsewhere are kept as Python's
    C{surrogateescape} does; the output is ASCII.
    """
    document: dict[str, object] = {
        "method": _text(request.method),
        "target": _text(request.target),
        "headers": [[_text(name), _text(value)] for name, value in request.headers],
    }
    try:
        document["body"] = request.body.decode("utf-8")
    except UnicodeDecodeError:
        document["body_base64"] = base64.b64encode(request.body).decode("ascii")
    return json.dumps(document).encode("ascii")


_ENCODERS: dict[str, Callable[[BrokerRequest], bytes]] = {
    "line": encode_line,
    "http": encode_http,
    "json": encode_json,
}


def encode_request(request: BrokerRequest) -> bytes:
    """
    The bytes of a request file or message, in the request's own format.
    """
    return _ENCODERS[request.format](request)


def decode_line(data: bytes) -> BrokerRequest:
    """
    Read a C{line} request (see L{encode_line}).

    @raise ValueError: the data does not start with C{METHOD TARGET\\n}.
    """
    line, newline, body = data.partition(b"\n")
    if line.endswith(b"\r"):
        line = line[:-1]
    method, space, target = line.partition(b" ")
    if not (newline and space and method and target):
        raise ValueError(f"not a request line: {data[:60]!r}")
    return BrokerRequest.of(method, target, body=body, format="line")


def decode_http(data: bytes) -> BrokerRequest:
    """
    Read an C{http} request (see L{encode_http}). The body is what its
    C{Content-Length} says, else everything after the empty line; the
    headers come back without it.

    @raise ValueError: the data is not an HTTP/1.x request message.
    """
    line, at = _line(data, 0)
    match = _HTTP_REQUEST.fullmatch(line)
    if match is None:
        raise ValueError(f"not an HTTP request line: {line[:60]!r}")
    headers, at = _header_block(data, at)
    body = data[at:]
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.isdigit():
                raise ValueError(f"Content-Length is not a number: {value[:20]!r}")
            body = body[: int(value)]
    return BrokerRequest.of(
        match.group(1),
        match.group(2),
        tuple((n, v) for n, v in headers if n.lower() != b"content-length"),
        body,
        "http",
    )


def decode_json(data: bytes) -> BrokerRequest:
    """
    Read a C{json} request (see L{encode_json}).

    @raise ValueError: the data is not such an object.
    """
    try:
        document = json.loads(data)
        method, target = _bytes(document["method"]), _bytes(document["target"])
        headers = tuple((_bytes(name), _bytes(value)) for name, value in document["headers"])
        if "body_base64" in document:
            body = base64.b64decode(document["body_base64"], validate=True)
        else:
            body = document["body"].encode("utf-8")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"not a JSON request: {e}") from None
    if not (method and target):
        raise ValueError("not a JSON request: no method or target")
    return BrokerRequest.of(method, target, headers, body, "json")


_DECODERS: dict[str, Callable[[bytes], BrokerRequest]] = {
    "line": decode_line,
    "http": decode_http,
    "json": decode_json,
}


def request_format_of(data: bytes) -> str:
    """
    Which of L{REQUEST_FORMATS} C{data} is written in, from its first bytes:
    an object is C{json}, a first line ending in C{HTTP/1.x} is C{http}.
    """
    if data.lstrip()[:1] == b"{":
        return "json"
    line, _ = _line(data, 0)
    return "http" if _HTTP_REQUEST.fullmatch(line) else "line"


def parse_request(data: bytes, format: str | None = None) -> BrokerRequest:
    """
    Read a request file or message.

    @param format: one of L{REQUEST_FORMATS}, or C{None} to tell it from the data.
    @raise ValueError: the data is not a request in that format.
    """
    return _DECODERS[format or request_format_of(data)](data)


def decode_request(data: bytes) -> tuple[bytes, bytes]:
    """
    The method and target of a request file or message, in any format.

    @raise ValueError: the data is not a request.
    """
    request = parse_request(data)
    return request.method, request.target


# -- answers


def parse_response(data: bytes) -> BrokerResponse:
    """
    Parse the backend's answer.

    A leading UTF-8 byte-order mark is skipped and any line may end in
    C{\\r\\n}. The first line is C{STATUS} or C{STATUS REASON} (blanks around
    it allowed), and everything after it is the body; or it is C{HTTP/1.0}
    or C{HTTP/1.1 STATUS REASON}, header lines follow up to an empty line
    (or the end), and the rest is the body. Of those headers, the ones
    L{passed_headers} keeps are the caller's. The status must be 200-599. A
    204 or 304 has no body, whatever follows.

    @raise MalformedResponse: the data is in none of these forms.
    """
    start = 3 if data.startswith(BOM) else 0
    head, at = _line(data, start)
    text = head.strip()
    headers: Headers = ()
    if text.startswith(b"HTTP/"):
        match = _HTTP_STATUS.fullmatch(text)
        if match is None:
            raise MalformedResponse(f"first line is not an HTTP status line: {head[:40]!r}")
        try:
            raw, at = _header_block(data, at)
        except ValueError as e:
            raise MalformedResponse(f"bad header block: {e}") from None
        headers = passed_headers(raw)
    else:
        match = _STATUS.fullmatch(text)
        if match is None:
            raise MalformedResponse(f"first line is not an HTTP status: {head[:40]!r}")
    reason = match.group(2)
    if reason and _CONTROL.search(reason):
        raise MalformedResponse(f"control characters in the reason phrase: {head[:40]!r}")
    status = int(match.group(1))
    if not 200 <= status <= 599:
        if 100 <= status < 200:
            raise MalformedResponse(f"status {status} is not a final answer (1xx)")
        raise MalformedResponse(f"status out of range 200-599: {status}")
    if status in NO_BODY:
        return BrokerResponse(status, b"", headers)
    return BrokerResponse(status, data[at:], headers)


def encode_response(response: BrokerResponse, form: str = "bare") -> bytes:
    """
    Write C{response} in one of L{ANSWER_FORMS}: C{bare} (C{200\\n} then the
    body), C{reason} (C{200 OK\\n} then the body) or C{http} (C{HTTP/1.1 200
    OK}, the headers and a Content-Length, CRLF line ends, then the body).
    L{parse_response} reads each back to C{response}; the first two carry
    no headers.

    @raise ValueError: C{form} is not one of L{ANSWER_FORMS}.
    """
    reason = _REASONS.get(response.status, b"Unknown")
    if form == "bare":
        return b"%d\n" % response.status + response.body
    if form == "reason":
        return b"%d %s\n" % (response.status, reason) + response.body
    if form != "http":
        raise ValueError(f"answer form {form!r} is not one of {', '.join(ANSWER_FORMS)}")
    lines = [b"HTTP/1.1 %d %s" % (response.status, reason)]
    lines.extend(name + b": " + value for name, value in response.headers)
    lines.append(b"Content-Length: %d" % len(response.body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + response.body


# -- shared


def _line(data: bytes, start: int) -> tuple[bytes, int]:
    """
    The line at C{start} without its line end, and where the next one starts.
    """
    end = data.find(b"\n", start)
    if end < 0:
        return data[start:], len(data)
    line = data[start:end]
    return (line[:-1] if line.endswith(b"\r") else line), end + 1


def _header_block(data: bytes, at: int) -> tuple[Headers, int]:
    """
    The header lines from C{at} up to an empty line or the end, and where
    the body starts.

    @raise ValueError: a line is not C{name: value} with a token for a name
        and no control characters in the value (a folded line included).
    """
    headers = []
    while at < len(data):
        line, at = _line(data, at)
        if not line:
            break
        name, colon, value = line.partition(b":")
        if not (colon and _TOKEN.fullmatch(name)):
            raise ValueError(f"not a header line: {line[:40]!r}")
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise ValueError(f"control characters in the value of {name[:40]!r}")
        headers.append((name, value))
    return tuple(headers), at


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _bytes(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}"[:80])
    return value.encode("utf-8", "surrogateescape")
