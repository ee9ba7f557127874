"""
Metrics in the Prometheus text format, read from the dispatcher and the broker
when scraped, so counting costs the hot path nothing but integer additions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fmq.dispatch import Dispatcher
from fmq.interfaces import IBroker

#: seconds: from a few milliseconds (a local backend) to the default TTL
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """
    fmq's metrics registry; it also observes the dispatcher's durations
    (L{fmq.dispatch.Observer}).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._round_trip = Histogram(
            "fmq_broker_round_trip_seconds",
            "Time from making a broker request to its end (answer, error or TTL).",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._caller_wait = Histogram(
            "fmq_caller_wait_seconds",
            "Time a caller waited for its answer or error.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def broker_request_ended(self, seconds: float) -> None:
        self._round_trip.observe(seconds)

    def caller_answered(self, seconds: float) -> None:
        self._caller_wait.observe(seconds)

    def caller_wait_buckets(self) -> list[tuple[float, float]]:
        """
        The caller wait histogram now: each bucket's upper bound in seconds
        and how many callers waited at most that long (cumulative, the last
        bound infinite).
        """
        return [
            (float(s.labels["le"]), s.value)
            for family in self._caller_wait.collect()
            for s in family.samples
            if s.name.endswith("_bucket")
        ]

    def watch(self, dispatcher: Dispatcher, broker: IBroker) -> None:
        """
        Export the counters and gauges of C{dispatcher} and C{broker}.
        """
        self.registry.register(_StateCollector(dispatcher, broker))

    def watch_fleet(self, fleet: Any) -> None:
        """
        Export the state and counters of C{fleet} (an L{fmq.fleet.Fleet}).
        """
        self.registry.register(_FleetCollector(fleet))

    def render(self) -> bytes:
        """
        The metrics in the Prometheus text format.
        """
        return generate_latest(self.registry)


class _StateCollector:
    """
    Reads fmq's counters and gauges at scrape time.
    """

    def __init__(self, dispatcher: Dispatcher, broker: IBroker) -> None:
        self._dispatcher = dispatcher
        self._broker = broker
        self._process = psutil.Process()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        d = self._dispatcher
        for name, text, value in [
            ("fmq_requests", "Callers handled.", d.requests),
            ("fmq_broker_requests", "Broker requests made.", d.broker_requests),
            ("fmq_collapsed", "Callers that joined a broker request in flight.", d.collapsed),
            (
                "fmq_caller_timeouts",
                "Callers answered 504 after request_timeout.",
                d.caller_timeouts,
            ),
            (
                "fmq_dropped_replies",
                "Replies dropped: unknown or already answered id.",
                self._broker.dropped_replies,
            ),
            (
                "fmq_delete_retries",
                "Attempts to delete a broker file that were retried.",
                self._broker.delete_retries,
            ),
        ]:
            yield CounterMetricFamily(name, text, value=value)
        errors = CounterMetricFamily(
            "fmq_errors", "Callers answered with an error, by kind.", labels=["kind"]
        )
        for kind, count in sorted(d.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        for name, text, value in [
            ("fmq_callers_waiting", "Callers waiting for an answer.", d.callers_waiting),
            (
                "fmq_broker_requests_in_flight",
                "Broker requests sent or queued, unanswered.",
                self._broker.in_flight(),
            ),
            (
                "fmq_broker_available",
                "1 while the broker can take requests.",
                int(bool(self._broker.available)),
            ),
            (
                "fmq_broker_blocked",
                "1 while the broker blocks publishers (RabbitMQ's memory or disk alarm).",
                int(bool(self._broker.blocked)),
            ),
            ("fmq_threads", "Threads of the fmq process.", self._process.num_threads()),
        ]:
            yield GaugeMetricFamily(name, text, value=value)


class _FleetCollector:
    """
    Reads the fleet's state and counters at scrape time.
    """

    def __init__(self, fleet: Any) -> None:
        self._fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        f = self._fleet
        yield GaugeMetricFamily(
            "fmq_fleet_degraded",
            "1 while the fleet's registry is unreachable (each instance collapses alone).",
            value=int(f.state == "degraded"),
        )
        for name, text, value in [
            (
                "fmq_fleet_groups_led",
                "Groups whose broker request this instance made for the fleet.",
                f.led,
            ),
            (
                "fmq_fleet_groups_followed",
                "Groups answered by another instance's broker request.",
                f.followed,
            ),
            ("fmq_fleet_groups_taken_over", "Groups taken over from a holder gone.", f.taken_over),
            ("fmq_fleet_groups_local", "Groups collapsed on this instance alone.", f.local),
        ]:
            yield CounterMetricFamily(name, text, value=value)
