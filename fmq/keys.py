"""
Collapse keys: which callers may share one broker request.

A collapse key function takes a L{CallerRequest} and returns any hashable
value; callers whose keys are equal while a broker request is in flight share
it, and an L{Alone} key (equal to no other) gives the caller a broker request
of its own, withdrawn when that caller leaves. It is named in the configuration by its dotted path
(C{[service] collapse_key}). Do not confuse it with the broker key
(L{fmq.protocol.broker_key}), which names the request in the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import attrs
from twisted.web.http_headers import Headers

from fmq._importing import import_dotted

__all__ = [
    "READS",
    "Alone",
    "CallerRequest",
    "CollapseKey",
    "load_collapse_key",
    "method_and_path",
    "method_and_path_without_query",
    "reads_per_credentials",
]


@attrs.frozen
class CallerRequest:
    """
    What a collapse key may look at in an incoming HTTP request.

    @ivar method: the HTTP method, e.g. C{b"GET"}.
    @ivar target: the raw request target, query string included.
    @ivar headers: the request headers.
    @ivar body: the request body.
    """

    method: bytes
    target: bytes
    headers: Headers = attrs.field(factory=Headers, eq=False)
    body: bytes = b""


CollapseKey = Callable[[CallerRequest], Hashable]


class Alone:
    """
    The collapse key of a caller who shares with nobody: it equals no other
    key, so the caller has a broker request of its own, and since nobody can
    join it, the request is withdrawn as soon as its caller leaves.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<alone>"


#: the methods L{reads_per_credentials} collapses: they only read (RFC 9110 9.2.1).
READS = frozenset([b"GET", b"HEAD"])


def reads_per_credentials(request: CallerRequest) -> Hashable:
    """
    The default collapse key: C{GET} and C{HEAD} requests collapse when their
    method, target, C{Authorization} and C{Cookie} are all equal, so two
    users never share an answer. Every other method gets a broker request of
    its own: two C{POST}s may differ in their bodies, and each must act.
    """
    if request.method not in READS:
        return Alone()
    headers = request.headers
    authorization = headers.getRawHeaders(b"authorization")
    cookie = headers.getRawHeaders(b"cookie")
    return (
        request.method,
        request.target,
        None if authorization is None else tuple(authorization),
        None if cookie is None else tuple(cookie),
    )


def method_and_path(request: CallerRequest) -> Hashable:
    """
    The seed's key: requests with the same method and target collapse,
    whatever their method, headers and body.
    """
    return (request.method, request.target)


def method_and_path_without_query(request: CallerRequest) -> Hashable:
    """
    Requests with the same method and path collapse, whatever their query string.

    All callers in a group get the answer to the first caller's target.
    """
    return (request.method, request.target.partition(b"?")[0])


def load_collapse_key(dotted: str) -> CollapseKey:
    """
    Import the collapse key function named by C{dotted}.

    @raise ValueError: the name cannot be imported or is not callable.
    """
    return import_dotted(dotted)  # type: ignore[return-value]
