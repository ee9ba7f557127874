"""
The broker's wire format, as pure functions on values.

A request is C{METHOD PATH\\n}; a response is an HTTP status on the first line
followed by the body, byte for byte.
"""

from __future__ import annotations

from hashlib import md5
from itertools import count

import attrs

from fmq.errors import MalformedResponse

_ids = count(1)


def broker_key(method: bytes, target: bytes) -> str:
    """
    The name under which a request travels through the broker.

    @param method: the HTTP method, e.g. C{b"GET"}.
    @param target: the request target as received, query string included.
    @return: C{md5(METHOD + PATH)} as 32 lowercase hex digits.
    """
    return md5(method + target).hexdigest()


@attrs.frozen
class BrokerRequest:
    """
    One request to the backend.

    @ivar key: the broker key (see L{broker_key}); several broker requests may
        share it over time, never at once on the file broker.
    @ivar method: the HTTP method.
    @ivar target: the raw request target, query string included.
    @ivar id: unique within this process, for correlation and logs.
    """

    key: str
    method: bytes
    target: bytes
    id: int = attrs.field(factory=lambda: next(_ids))

    @property
    def line(self) -> str:
        """
        C{METHOD PATH}, for logs.
        """
        return (self.method + b" " + self.target).decode("utf-8", "backslashreplace")

    @classmethod
    def of(cls, method: bytes, target: bytes) -> BrokerRequest:
        """
        A new broker request for C{method} and C{target}, keyed by L{broker_key}.
        """
        return cls(broker_key(method, target), method, target)


@attrs.frozen
class BrokerResponse:
    """
    The backend's answer: an HTTP status and the body for the caller.
    """

    status: int
    body: bytes


def encode_request(request: BrokerRequest) -> bytes:
    """
    The bytes of a request file or message: C{METHOD PATH\\n}.
    """
    return request.method + b" " + request.target + b"\n"


def decode_request(data: bytes) -> tuple[bytes, bytes]:
    """
    The method and target of a request file or message (see L{encode_request}).

    @raise ValueError: the data is not C{METHOD PATH\\n}.
    """
    line, newline, _ = data.partition(b"\n")
    method, space, target = line.partition(b" ")
    if not (newline and space and method and target):
        raise ValueError(f"not a request line: {data[:60]!r}")
    return method, target


def parse_response(data: bytes) -> BrokerResponse:
    """
    Parse the backend's answer.

    The first line is the status, an integer 100-599; blanks around it and a
    trailing carriage return are allowed. Everything after the first newline
    is the body, unchanged. A file holding only the status has an empty body.

    @raise MalformedResponse: the data does not start with a valid status.
    """
    head, newline, body = data.partition(b"\n")
    text = head.strip()
    if not (text.isdigit() and text.isascii() and len(text) == 3):
        raise MalformedResponse(f"first line is not an HTTP status: {head[:40]!r}")
    status = int(text)
    if not 100 <= status <= 599:
        raise MalformedResponse(f"status out of range 100-599: {status}")
    return BrokerResponse(status, body)
