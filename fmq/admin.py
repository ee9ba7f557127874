"""
The operator's listener: the status page (C{/}, C{/status.json}), C{/health}
and C{/metrics}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from fmq.dispatch import Dispatcher
from fmq.interfaces import IBroker
from fmq.metrics import Metrics
from fmq.status import Status

#: the status page's files, served from the installed package
STATIC = Path(__file__).with_name("static")
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}


class Admin:
    """
    Health of the service, on its own port, away from the proxied namespace.
    """

    app = Klein()
    #: the fleet (L{fmq.fleet.Fleet}), if C{[fleet] registry} is set
    fleet: Any = None

    def __init__(
        self,
        broker: IBroker,
        broker_type: str,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        metrics: Metrics,
        status: Status | None = None,
    ) -> None:
        """
        @param status: the status page's data; without it C{/} is 404.
        """
        self._metrics = metrics
        self._status = status
        self._static = {
            path.name: path.read_bytes()
            for path in STATIC.iterdir()
            if path.suffix in _TYPES and status is not None
        }
        self._broker = broker
        self._broker_type = broker_type
        self._dispatcher = dispatcher
        self._clock = clock
        self._started = clock.seconds()

    def health(self) -> dict[str, object]:
        """
        The service's state, as C{/health} shows it.
        """
        available = bool(self._broker.available)
        broker: dict[str, object] = {
            "type": self._broker_type,
            "available": available,
            "blocked": bool(self._broker.blocked),
            "in_flight": self._broker.in_flight(),
        }
        return {
            "status": "ok" if available else "unavailable",
            "broker": broker,
            "mode": self._dispatcher.mode,
            "fleet": "off" if self.fleet is None else self.fleet.state,
            "callers_waiting": self._dispatcher.callers_waiting,
            "uptime": round(self._clock.seconds() - self._started, 3),
        }

    @app.route("/health", methods=["GET"])
    def render_health(self, request: IRequest) -> bytes:
        """
        200 with JSON while the broker is usable, 503 while it is not.
        """
        state = self.health()
        request.setResponseCode(200 if state["status"] == "ok" else 503)
        body = json.dumps(state).encode() + b"\n"
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @app.route("/metrics", methods=["GET"])
    def render_metrics(self, request: IRequest) -> bytes:
        """
        The metrics in the Prometheus text format.
        """
        body = self._metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @app.route("/", methods=["GET"])
    def render_page(self, request: IRequest) -> bytes:
        """
        The status page; its script polls C{/status.json} once a second.
        """
        return self._file(request, "status.html")

    @app.route("/static/<name>", methods=["GET"])
    def render_static(self, request: IRequest, name: str) -> bytes:
        """
        The status page's script and style sheet.
        """
        return self._file(request, name)

    @app.route("/status.json", methods=["GET"])
    def render_status(self, request: IRequest) -> bytes:
        """
        What the status page shows, as JSON (see C{docs/STATUS.md}).
        """
        if self._status is None:
            return self._not_found(request)
        body = json.dumps(self._status.snapshot(), separators=(",", ":")).encode()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _file(self, request: IRequest, name: str) -> bytes:
        body = self._static.get(name)
        if body is None:
            return self._not_found(request)
        request.setHeader(b"content-type", _TYPES[Path(name).suffix])
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _not_found(self, request: IRequest) -> bytes:
        body = b"404 Not Found\n"
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
