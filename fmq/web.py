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
from fmq.errors import OVERLOAD_ERRNOS, BodyTooLarge, BrokerRequestFailed, Overloaded
from fmq.keys import CallerRequest
from fmq.protocol import BrokerResponse, Headers
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
        Answer with the backend's status, headers and body; a request whose
        body is over C{max_body} (see L{FmqRequest}) gets 413 at once.
        """
        if getattr(request, "body_too_large", False):
            answer = self._dispatcher.refuse(BodyTooLarge())
        else:
            content = cast("IO[bytes] | None", request.content)
            body = b""
            if content is not None:
                content.seek(0)
                body = content.read()
            caller = CallerRequest(request.method, request.uri, request.requestHeaders, body)
            answer = self._dispatcher.handle(caller)
        answered = answer.addCallbacks(
            _reply, _refuse, callbackArgs=(request,), errbackArgs=(request,)
        )
        return cast("Deferred[bytes | SharedBody]", answered)


def _reply(response: BrokerResponse, request: Request) -> bytes | SharedBody:
    request.setResponseCode(response.status)
    # Without the backend's Content-Type, better none than a wrong one.
    request.defaultContentType = None
    if response.headers:
        _set_headers(request, response.headers)
    if response.status in NO_BODY_CODES:
        return b""  # no body, so no Content-Length either
    body = response.body
    request.setHeader(b"content-length", b"%d" % len(body))
    # Twisted sends no body for HEAD, so it copies none either.
    if len(body) <= SLICE or request.method == b"HEAD":
        return body
    return SharedBody(body)


def _set_headers(request: Request, headers: Headers) -> None:
    """
    Give the caller the backend's headers; they replace Twisted's own
    (C{Date}, C{Server}) of the same name.
    """
    out = request.responseHeaders
    named = set()
    for name, value in headers:
        lower = name.lower()
        if lower in named:
            out.addRawHeader(name, value)
        else:
            out.setRawHeaders(name, [value])
            named.add(lower)


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

    It keeps at most C{max_body} bytes of the body: past that, from the
    Content-Length as soon as the headers are in or from the bytes as they
    come, it keeps nothing more and sets C{body_too_large}; the body is
    still read to its end, so the caller can read the 413.

    @cvar max_body: bytes of body kept; C{None} for no limit (see L{limited}).
    """

    max_body: int | None = None
    body_too_large = False
    _received = 0
    # fmq passes bodies on; Twisted need not parse forms in them.
    _parsePOSTFormSubmission = False

    @classmethod
    def limited(cls, max_body: int) -> type[FmqRequest]:
        """
        This request class with C{max_body} set, for a site's C{requestFactory}.
        """
        return type(cls.__name__, (cls,), {"max_body": max_body})

    def gotLength(self, length: int | None) -> None:
        if self.max_body is not None and length is not None and length > self.max_body:
            self._refuse_body()
            return
        try:
            Request.gotLength(self, length)
        except OSError as e:
            if e.errno not in OVERLOAD_ERRNOS:
                raise
            # No descriptor for the temporary file Twisted keeps large bodies in.
            cast(Any, self).content = BytesIO()  # typed None before gotLength

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self.max_body is not None and self._received > self.max_body:
            self._refuse_body()
            return
        Request.handleContentChunk(self, data)

    def _refuse_body(self) -> None:
        self.body_too_large = True
        if self.content is not None:
            self.content.close()
        cast(Any, self).content = BytesIO()

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
        self._write_failed = False
        self._stamp_second = -1
        self._stamp = b""
        self._closed = False

    def startFactory(self) -> None:
        Site.startFactory(self)
        self._closed = False
        if not self._flusher.running:
            self._flusher.start(self._flush_every, now=False)

    def stopFactory(self) -> None:
        # The listener stops before the drain ends: requests still finish
        # after this, so lines are still collected and flushed until close.
        Site.stopFactory(self)
        self.flush()

    def close(self) -> None:
        """
        Write what is collected and stop the periodic flush: once no request
        can still finish, at the end of the drain. Any later line is written
        at once.
        """
        self._closed = True
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
        if self._closed:
            self.flush()

    def flush(self) -> None:
        """
        Write the lines collected since the last flush.
        """
        if self._lines:
            out = self._out if self._out is not None else _stdout()
            lines, self._lines = self._lines, []
            try:
                out.write(b"".join(lines))
                out.flush()
            except OSError as e:  # a closed pipe, a full disk: those lines are lost
                if not self._write_failed:
                    self._write_failed = True
                    log.error(
                        "cannot write the access log: {error}; lines are dropped until it can",
                        error=e.strerror or str(e),
                    )
            else:
                self._write_failed = False
