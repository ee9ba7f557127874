"""
The HTTP front: every method and path goes to the dispatcher.
"""

from __future__ import annotations

import sys
import time
from io import BytesIO
from typing import IO, Any, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import NO_BODY_CODES
from twisted.web.server import Request, Site

from fmq.dispatch import Dispatcher
from fmq.errors import OVERLOAD_ERRNOS, BrokerRequestFailed, Overloaded
from fmq.keys import CallerRequest
from fmq.protocol import BrokerResponse
from fmq.sending import SLICE, SharedBody

log = Logger(namespace="fmq.web")

#: seconds a caller answered 503 is told to wait before trying again.
RETRY_AFTER = b"1"


class Front:
    """
    The Klein app callers talk to; no path is reserved, all go to the backend.
    """

    app = Klein()
    log = Logger()

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    @app.route("/", branch=True, strict_slashes=False, merge_slashes=False)
    def proxy(self, request: Request) -> Deferred[bytes | SharedBody]:
        """
        Answer with the backend's status and body, unchanged.
        """
        caller = CallerRequest(request.method, request.uri, request.requestHeaders)
        answer = self._dispatcher.handle(caller)
        answered = answer.addCallbacks(
            _reply, _refuse, callbackArgs=(request,), errbackArgs=(request,)
        )
        return cast("Deferred[bytes | SharedBody]", answered)


def _reply(response: BrokerResponse, request: Request) -> bytes | SharedBody:
    request.setResponseCode(response.status)
    # The file protocol carries no content type; better none than a wrong one.
    request.defaultContentType = None
    body = response.body
    request.setHeader(b"content-length", b"%d" % len(body))
    # Twisted sends no body for these, so it copies none either.
    if len(body) <= SLICE or request.method == b"HEAD" or response.status in NO_BODY_CODES:
        return body
    return SharedBody(body)


def _refuse(failure: Failure, request: Request) -> bytes:
    failure.trap(BrokerRequestFailed)
    return _refusal(request, cast(BrokerRequestFailed, failure.value))


def _refusal(request: Request, error: BrokerRequestFailed) -> bytes:
    body = f"{error.status} {error.reason}\n".encode()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    if error.status == 503:
        request.setHeader(b"retry-after", RETRY_AFTER)
    return body


class FmqRequest(Request):
    """
    A request that answers 503, not 500, when this process runs out of file
    descriptors while handling it (C{EMFILE}, C{ENFILE}), wherever that
    happens: Klein's routing, a lazy import, a handler.
    """

    def gotLength(self, length: int | None) -> None:
        try:
            Request.gotLength(self, length)
        except OSError as e:
            if e.errno not in OVERLOAD_ERRNOS:
                raise
            # No descriptor for the temporary file Twisted keeps large bodies in.
            cast(Any, self).content = BytesIO()  # typed None before gotLength

    def processingFailed(self, reason: Failure) -> Failure:
        error = reason.value
        if not (isinstance(error, OSError) and error.errno in OVERLOAD_ERRNOS):
            return Request.processingFailed(self, reason)
        log.warn(
            "out of file descriptors: 503 to {method} {target}: {error}",
            method=self.method.decode("ascii", "replace"),
            target=self.uri.decode("ascii", "replace"),
            error=error.strerror,
        )
        if self._disconnected:
            pass
        elif self.startedWriting:
            self.loseConnection()
        else:
            self.write(_refusal(self, Overloaded()))
            self.finish()
        return reason


def _stdout() -> IO[bytes]:
    """
    The process's own stdout (twistd replaces C{sys.stdout} with its log).
    """
    stream = sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
    return stream.buffer


class QuietSite(Site):
    """
    A L{Site} that writes no access log line per request.
    """

    requestFactory = FmqRequest

    def log(self, request: http.Request) -> None:
        pass


class AccessLogSite(Site):
    """
    A L{Site} whose access log is cheap enough to leave on under load: lines
    are collected and written together every C{flush_every} seconds, not one
    write and flush per request through the logging system.
    """

    requestFactory = FmqRequest

    def __init__(
        self,
        resource: Any,
        clock: IReactorTime,
        out: IO[bytes] | None = None,
        flush_every: float = 0.2,
    ) -> None:
        Site.__init__(self, resource, reactor=clock)
        self._clock = clock
        self._out = out
        self._lines: list[bytes] = []
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flush_every = flush_every
        self._stamp_second = -1
        self._stamp = b""

    def startFactory(self) -> None:
        Site.startFactory(self)
        if not self._flusher.running:
            self._flusher.start(self._flush_every, now=False)

    def stopFactory(self) -> None:
        Site.stopFactory(self)
        if self._flusher.running:
            self._flusher.stop()
        self.flush()

    def log(self, request: http.Request) -> None:
        now = int(self._clock.seconds())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)).encode()
        self._lines.append(
            b'%s [fmq.access] %s "%s %s %s" %d %d\n'
            % (
                self._stamp,
                getattr(request.getClientAddress(), "host", "-").encode(),
                request.method,
                request.uri,
                request.clientproto,
                request.code,
                request.sentLength,
            )
        )

    def flush(self) -> None:
        """
        Write the lines collected since the last flush.
        """
        if self._lines:
            out = self._out if self._out is not None else _stdout()
            lines, self._lines = self._lines, []
            out.write(b"".join(lines))
            out.flush()
