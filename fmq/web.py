"""
The HTTP front: every method and path goes to the dispatcher.
"""

from __future__ import annotations

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from fmq.dispatch import Dispatcher
from fmq.errors import BrokerRequestFailed
from fmq.keys import CallerRequest
from fmq.protocol import BrokerResponse

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
    def proxy(self, request: IRequest) -> Deferred[bytes]:
        """
        Answer with the backend's status and body, unchanged.
        """
        caller = CallerRequest(request.method, request.uri, request.requestHeaders)
        answer = self._dispatcher.handle(caller)
        answer.addCallbacks(_reply, _refuse, callbackArgs=(request,), errbackArgs=(request,))
        return answer


def _reply(response: BrokerResponse, request: IRequest) -> bytes:
    request.setResponseCode(response.status)
    # The file protocol carries no content type; better none than a wrong one.
    request.defaultContentType = None
    request.setHeader(b"content-length", b"%d" % len(response.body))
    return response.body


def _refuse(failure: Failure, request: IRequest) -> bytes:
    failure.trap(BrokerRequestFailed)
    error = failure.value
    body = f"{error.status} {error.reason}\n".encode()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    if error.status == 503:
        request.setHeader(b"retry-after", RETRY_AFTER)
    return body


class QuietSite(Site):
    """
    A L{Site} that writes no access log line per request.
    """

    def log(self, request: IRequest) -> None:
        pass
