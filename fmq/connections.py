"""
The callers' connections, known from accept to close, so that a stop can let
each one finish the answer it is writing before it is closed.

The reactor cannot tell this: C{loseConnection} takes a transport out of its
readers at once, while megabytes may still wait in its buffer, and a transport
paused by back-pressure is in neither its readers nor its writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

__all__ = ["Connections", "TrackedChannel"]


class Connections:
    """
    The open connections of the sites it L{track}s.
    """

    def __init__(self) -> None:
        self._open: set[HTTPChannel] = set()

    def track(self, site: Site) -> None:
        """
        Make C{site} build channels that report to this from the moment
        their connection is made until it is lost.
        """
        # A factory's protocol is any callable that builds one (Twisted's own
        # default is a function); HTTP/2's ALPN switch, which needs TLS, is
        # all that the plain channel lacks.
        site.protocol = partial(TrackedChannel, self)  # type: ignore[method-assign,assignment]

    def opened(self, channel: HTTPChannel) -> None:
        """
        C{channel}'s connection is made.
        """
        self._open.add(channel)

    def closed(self, channel: HTTPChannel) -> None:
        """
        C{channel}'s connection is lost: its transport is closed.
        """
        self._open.discard(channel)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[HTTPChannel]:
        return iter(list(self._open))

    def close_idle(self) -> int:
        """
        Close every connection that is not answering a request (idle between
        keep-alive requests, or its answer finished): it closes once its
        transport has sent all it holds. A connection still answering (a
        request received and not finished, e.g. written slice by slice by a
        producer) is left alone; call again once it may have finished.

        @return: how many connections are still open, closing or answering.
        """
        for channel in self:
            if not channel.requests and not getattr(channel.transport, "disconnecting", False):
                channel.loseConnection()
        return len(self._open)


class TrackedChannel(HTTPChannel):
    """
    An L{HTTPChannel} that its L{Connections} knows of while it is connected.
    """

    def __init__(self, connections: Connections) -> None:
        HTTPChannel.__init__(self)
        self._connections = connections

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self._connections.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connections.closed(self)
        HTTPChannel.connectionLost(self, reason)
