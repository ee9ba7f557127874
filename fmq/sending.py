"""
Sending one answer to many callers while holding it once.

C{request.write(body)} hands the whole body to the transport, which joins it
with whatever it still holds into a new buffer: a copy of the body for every
caller that has not read it yet. L{SharedBody} instead hands a caller the
shared body a slice at a time, each slice only when the caller's connection
has sent the one before, so a caller costs at most a few slices.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

__all__ = ["SLICE", "SharedBody", "SliceProducer"]

#: bytes handed to a caller's transport at a time; also the largest body
#: written the plain way (a copy of up to this much per caller is fine).
SLICE = 64 * 1024


@implementer(IPushProducer)
class SliceProducer:
    """
    Writes a body to one request in slices of a shared buffer, as fast as
    the caller reads, then finishes the request.

    Until the last slice is written, C{request.finished} is false and
    C{request.notifyFinish()} has not fired: the answer is still being sent.
    If the caller goes away first, nothing more is written and the request
    is not finished.
    """

    def __init__(self, request: Request, body: memoryview, slice_size: int = SLICE) -> None:
        self._request = request
        self._body = body
        self._slice = slice_size
        self._offset = 0
        self._paused = False
        self._writing = False
        self._done = False

    def start(self) -> None:
        """
        Register with the request and write until its transport is full.
        """
        if getattr(self._request, "_disconnected", False):
            self._stop()
            return
        self._request.notifyFinish().addErrback(self._lost)
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._writing:
            return
        self._writing = True
        try:
            while not (self._paused or self._done):
                end = self._offset + self._slice
                # Twisted's transports take bytes only: the copy is one slice.
                self._request.write(bytes(self._body[self._offset : end]))
                self._offset = end
                if self._offset >= len(self._body):
                    self._finish()
        finally:
            self._writing = False

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._stop()

    def _finish(self) -> None:
        self._stop()
        self._request.unregisterProducer()
        self._request.finish()

    def _lost(self, reason: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._body = memoryview(b"")


@implementer(IResource)
class SharedBody:
    """
    A body shared by many callers, as a resource Klein renders: each caller
    gets its own L{SliceProducer} over the same bytes.

    The status and headers (C{Content-Length} included) are set on the
    request before it is rendered.
    """

    isLeaf = True

    def __init__(self, body: bytes, slice_size: int = SLICE) -> None:
        self._body = body
        self._slice = slice_size

    def render(self, request: Any) -> object:
        if request.method == b"HEAD":
            return b""
        SliceProducer(request, memoryview(self._body), self._slice).start()
        return NOT_DONE_YET

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("a shared body has no children")
