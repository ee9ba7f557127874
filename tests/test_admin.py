"""
Tests for L{fmq.admin} and L{fmq.metrics}: C{/health} and C{/metrics} as an
operator reads them.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fmq.admin import Admin
from fmq.dispatch import Dispatcher
from fmq.keys import CallerRequest, method_and_path
from fmq.metrics import Metrics
from fmq.protocol import BrokerRequest
from fmq.testing import MemoryBroker


class AdminTests(SynchronousTestCase):
    """
    The admin app over a dispatcher and a L{MemoryBroker}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.broker = MemoryBroker(self.clock, request_ttl=300.0)
        self.broker.startService()
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(
            self.broker, self.clock, 60.0, method_and_path, max_waiting=5, observer=self.metrics
        )
        self.metrics.watch(self.dispatcher, self.broker)
        admin = Admin(self.broker, "memory", self.dispatcher, self.clock, self.metrics)
        self.treq = StubTreq(admin.app.resource())

    def get(self, path: str) -> tuple[int, bytes]:
        response = self.successResultOf(self.treq.get(f"http://admin.test{path}"))
        return response.code, self.successResultOf(response.content())

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, body = self.get("/metrics")
        self.assertEqual(code, 200)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples()[(name, tuple(sorted(labels.items())))]

    def call(self, target: bytes = b"/a"):
        return self.dispatcher.handle(CallerRequest(b"GET", target))

    def test_fleet(self) -> None:
        """
        With a fleet, C{/health} says whether its registry is reachable (still
        200: each instance then collapses alone), and the metrics count its
        groups.
        """
        from fmq.fleet import Fleet
        from fmq.testing import MemoryRegistry

        registry = MemoryRegistry(self.clock)
        fleet = Fleet(registry, self.clock, "space", "i0", 5.0, 300.0, 1 << 20)
        self.metrics.watch_fleet(fleet)
        admin = Admin(self.broker, "memory", self.dispatcher, self.clock, self.metrics)
        admin.fleet = fleet
        self.treq = StubTreq(admin.app.resource())
        self.assertEqual(json.loads(self.get("/health")[1])["fleet"], "ok")
        self.assertEqual(self.value("fmq_fleet_degraded"), 0)
        registry.go_down()
        code, body = self.get("/health")
        self.assertEqual((code, json.loads(body)["fleet"]), (200, "degraded"))
        self.assertEqual(self.value("fmq_fleet_degraded"), 1)
        fleet.run(("k",), BrokerRequest.of(b"GET", b"/k"), self.broker.submit)
        self.assertEqual(self.value("fmq_fleet_groups_local_total"), 1)

    def test_health_ok(self) -> None:
        """
        While the broker is usable, C{/health} is 200 with the broker's state,
        callers waiting, broker requests in flight and uptime.
        """
        self.call()
        self.call()
        self.clock.advance(2.5)
        code, body = self.get("/health")
        self.assertEqual(code, 200)
        self.assertEqual(
            json.loads(body),
            {
                "status": "ok",
                "broker": {"type": "memory", "available": True, "blocked": False, "in_flight": 1},
                "mode": "collapse",
                "fleet": "off",
                "callers_waiting": 2,
                "uptime": 2.5,
            },
        )

    def test_health_unavailable(self) -> None:
        """
        While the broker is not usable, C{/health} is 503.
        """
        self.broker.available = False
        code, body = self.get("/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["status"], "unavailable")

    def test_health_blocked(self) -> None:
        """
        A broker that tells whether it is blocked (AMQP: RabbitMQ blocks
        publishers) shows it in C{/health} and C{fmq_broker_blocked}.
        """
        self.assertEqual(self.value("fmq_broker_blocked"), 0)
        self.broker.blocked = False  # type: ignore[attr-defined]
        code, body = self.get("/health")
        self.assertEqual((code, json.loads(body)["broker"]["blocked"]), (200, False))
        self.broker.blocked = True  # type: ignore[attr-defined]
        self.broker.available = False
        code, body = self.get("/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["broker"]["blocked"], True)
        self.assertEqual(self.value("fmq_broker_blocked"), 1)

    def test_counters_and_gauges_move(self) -> None:
        """
        Requests, broker requests, collapsed callers, callers waiting and
        requests in flight count what happened.
        """
        self.assertEqual(self.value("fmq_requests_total"), 0)
        answers = [self.call() for _ in range(3)] + [self.call(b"/b")]
        self.assertEqual(self.value("fmq_requests_total"), 4)
        self.assertEqual(self.value("fmq_broker_requests_total"), 2)
        self.assertEqual(self.value("fmq_collapsed_total"), 2)
        self.assertEqual(self.value("fmq_callers_waiting"), 4)
        self.assertEqual(self.value("fmq_broker_requests_in_flight"), 2)
        self.clock.advance(0.2)
        self.broker.respond(self.broker.sent[0], b"200\n")
        for answer in answers[:3]:
            self.successResultOf(answer)
        self.assertEqual(self.value("fmq_callers_waiting"), 1)
        self.assertEqual(self.value("fmq_broker_requests_in_flight"), 1)
        self.assertEqual(self.value("fmq_caller_wait_seconds_count"), 3)
        self.assertEqual(self.value("fmq_caller_wait_seconds_bucket", le="0.25"), 3)
        self.assertEqual(self.value("fmq_caller_wait_seconds_bucket", le="0.1"), 0)
        self.assertEqual(self.value("fmq_broker_round_trip_seconds_count"), 1)
        answers[3].addErrback(lambda f: None)

    def test_timeouts_and_errors_by_kind(self) -> None:
        """
        Caller timeouts, malformed answers and refused callers are counted by kind.
        """
        timed_out = self.call(b"/slow")
        self.clock.advance(60)
        self.failureResultOf(timed_out)
        bad = self.call(b"/bad")
        self.broker.respond(self.broker.sent[-1], b"nonsense")
        self.failureResultOf(bad)
        self.broker.available = False
        self.failureResultOf(self.call(b"/down"))
        self.assertEqual(self.value("fmq_caller_timeouts_total"), 1)
        self.assertEqual(self.value("fmq_errors_total", kind="timeout"), 1)
        self.assertEqual(self.value("fmq_errors_total", kind="malformed"), 1)
        self.assertEqual(self.value("fmq_errors_total", kind="unavailable"), 1)
        self.assertEqual(self.value("fmq_broker_available"), 0)

    def test_over_capacity(self) -> None:
        """
        Callers beyond max_waiting are refused and counted.
        """
        answers = [self.call(b"/%d" % n) for n in range(6)]
        self.failureResultOf(answers[5])
        self.assertEqual(self.value("fmq_errors_total", kind="over_capacity"), 1)
        for answer in answers[:5]:
            self.assertNoResult(answer)
            answer.addErrback(lambda f: None)

    def test_delete_retries_and_process(self) -> None:
        """
        The broker's delete retries, the thread count and the process's
        resident memory and open files are exported.
        """
        self.broker.delete_retries = 7
        self.assertEqual(self.value("fmq_delete_retries_total"), 7)
        self.assertGreaterEqual(self.value("fmq_threads"), 1)
        self.assertGreater(self.value("process_resident_memory_bytes"), 10_000_000)
        self.assertGreater(self.value("process_open_fds"), 0)
