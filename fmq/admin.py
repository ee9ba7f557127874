"""
The operator's listener: C{/health} and C{/metrics}.
"""

from __future__ import annotations

import json

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from fmq.dispatch import Dispatcher
from fmq.interfaces import IBroker
from fmq.metrics import Metrics


class Admin:
    """
    Health of the service, on its own port, away from the proxied namespace.
    """

    app = Klein()

    def __init__(
        self,
        broker: IBroker,
        broker_type: str,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
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
            "in_flight": self._broker.in_flight(),
        }
        blocked = getattr(self._broker, "blocked", None)  # AMQP: RabbitMQ blocks publishers
        if blocked is not None:
            broker["blocked"] = bool(blocked)
        return {
            "status": "ok" if available else "unavailable",
            "broker": broker,
            "mode": self._dispatcher.mode,
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
