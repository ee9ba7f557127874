"""
Serve a few requests in memory at start, before any caller.

Python imports some modules only when first used, and some libraries open a
file the first time they need it: werkzeug's routing imports the C{idna}
codec on the first request, for one. Under a first burst of traffic this
process may have no file descriptor left for that, and the caller would get
an error. Pushing real requests through the real HTTP stack at start does all
of it while descriptors are plentiful, and stays right when the code changes.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from fmq.dispatch import Dispatcher
from fmq.errors import BrokerUnavailable
from fmq.keys import CallerRequest
from fmq.protocol import BrokerResponse
from fmq.sending import SLICE
from fmq.web import Front, QuietSite

__all__ = ["warm_up"]

_MULTIPART = b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b--\r\n"
_LARGE = b"a=" + b"1" * 100_000  # Twisted keeps a body this large in a temporary file

#: requests for the front: small and large answers, HEAD, a refusal, and
#: bodies in each form Twisted parses
FRONT = [
    b"GET /warm-up/small HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    b"GET /warm-up/large HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    b"HEAD /warm-up/large HTTP/1.0\r\nHost: localhost\r\n\r\n",
    b"GET /warm-up/refused HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"POST /warm-up/small HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1",
    b"POST /warm-up/small HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_MULTIPART), _MULTIPART),
    b"POST /warm-up/small HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_LARGE), _LARGE),
    b"PUT /warm-up/small HTTP/1.1\r\nHost: localhost\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]
#: requests for the admin listener
ADMIN = [
    b"GET /health HTTP/1.1\r\nHost: localhost:8081\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: localhost:8081\r\n\r\n",
]


class _Canned:
    """
    A stand-in dispatcher: answers at once, and never reaches a broker.
    """

    mode = "collapse"

    def handle(self, caller: CallerRequest) -> Deferred[BrokerResponse]:
        if caller.target.endswith(b"/refused"):
            return fail(BrokerUnavailable())
        size = 2 * SLICE + 1 if caller.target.endswith(b"/large") else 16
        return succeed(BrokerResponse(200, b"w" * size))


def warm_up(admin: IResource, clock: IReactorTime) -> list[bytes]:
    """
    Serve L{FRONT} through a L{Front} over a stand-in dispatcher, and
    L{ADMIN} through C{admin}, on in-memory connections.

    @param admin: the admin listener's resource (its requests only read).
    @return: what each connection was sent, for tests.
    """
    front = Front(cast(Dispatcher, _Canned())).app.resource()
    sent = []
    for resource, requests in [(front, FRONT), (admin, ADMIN)]:
        site = QuietSite(resource, reactor=clock)
        for request in requests:
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
            channel = site.buildProtocol(transport.getPeer())
            channel.makeConnection(transport)
            channel.dataReceived(request)
            channel.connectionLost(Failure(ConnectionDone()))
            sent.append(transport.value())
    return sent
