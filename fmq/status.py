"""
What the status page shows: a once-a-second sample of the counters that
already exist, kept in a fixed-size ring, and the last notable log events.

Nothing here runs per caller: the sampler reads the dispatcher's and the
broker's counters, the caller-wait histogram's buckets and the process's
threads, memory and descriptors once a second, and the event ring sees only
log events, which are rare (errors, timeouts, the directory going away).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import psutil
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from zope.interface import implementer

from fmq.dispatch import Dispatcher
from fmq.errors import OVERLOAD_ERRNOS
from fmq.interfaces import IBroker

#: samples kept: five minutes at one a second
RING_SIZE = 300
#: log events kept
EVENTS_SIZE = 50
#: broker requests in flight shown
OLDEST = 20

#: log event fields that may hold a request target
_TARGET_FIELDS = ("request", "target", "path")
#: a bytes repr in a message, e.g. the first line of a malformed answer
_BYTES_REPR = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")


def cut_query(target: str, show_query: bool = False) -> str:
    """
    C{target} without its query string (C{"/a?x=1"} becomes C{"/a?…"}),
    unless C{show_query}; the query may carry tokens.
    """
    if show_query:
        return target
    path, mark, _ = target.partition("?")
    return path + "?…" if mark else path


def quantile(
    q: float, before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> float | None:
    """
    The C{q} quantile of what a histogram observed between two readings, as
    Prometheus's C{histogram_quantile} estimates it: linear within the bucket.

    @param before: (upper bound, cumulative count) per bucket, the last bound
        infinite, as L{fmq.metrics.Metrics.caller_wait_buckets} gives it.
    @param after: the same, read later.
    @return: seconds, or C{None} if nothing was observed in between.
    """
    counts = [(bound, a - b) for (bound, b), (_, a) in zip(before, after)]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: its lower edge
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


class Process(Protocol):
    """
    The parts of C{psutil.Process} the sampler reads.
    """

    def num_threads(self) -> int: ...

    def memory_info(self) -> Any: ...

    def num_fds(self) -> int: ...


class WaitHistogram(Protocol):
    """
    Where the caller wait histogram is read (L{fmq.metrics.Metrics}).
    """

    def caller_wait_buckets(self) -> list[tuple[float, float]]: ...


@attrs.frozen
class Sample:
    """
    One second of the service.

    @ivar time: when it was taken, on the clock.
    @ivar requests: callers per second.
    @ivar collapse: callers per broker request made in that second; C{None}
        if none was made.
    @ivar wait_p50: seconds, median caller wait in that second; C{None} if no
        caller was answered.
    @ivar errors: callers answered with an error per second, by kind; only
        kinds that happened.
    @ivar rss: resident memory, bytes.
    """

    time: float
    requests: float
    callers_waiting: int
    in_flight: int
    collapse: float | None
    wait_p50: float | None
    wait_p99: float | None
    errors: dict[str, float]
    threads: int
    rss: int
    fds: int


@attrs.frozen
class _Reading:
    time: float
    requests: int
    broker_requests: int
    collapsed: int
    errors: dict[str, int]
    buckets: list[tuple[float, float]]


class Sampler(Service):
    """
    Takes a L{Sample} every C{interval} seconds into a ring of C{size}, and
    notes when the broker became available or unavailable.

    @ivar broker_since: when the broker's availability last changed (or the
        sampler started), as far as the samples (or L{broker_state}) saw it.
    """

    log = Logger()

    def __init__(
        self,
        dispatcher: Dispatcher,
        broker: IBroker,
        histogram: WaitHistogram,
        clock: IReactorTime,
        size: int = RING_SIZE,
        interval: float = 1.0,
        process: Process | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._broker = broker
        self._histogram = histogram
        self._clock = clock
        self._interval = interval
        self.process: Process = process if process is not None else psutil.Process()
        self.samples: deque[Sample] = deque(maxlen=size)
        self._last: _Reading | None = None
        self._short_of_descriptors = False
        self._available = bool(broker.available)
        self.broker_since = clock.seconds()
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    def startService(self) -> None:
        Service.startService(self)
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()

    def broker_state(self) -> tuple[bool, float]:
        """
        Whether the broker is available now, and since when.
        """
        available = bool(self._broker.available)
        if available != self._available:
            self._available = available
            self.broker_since = self._clock.seconds()
        return available, self.broker_since

    def sample(self) -> None:
        """
        Take one sample. A bug here is logged and the loop goes on.
        """
        try:
            self._take()
        except OSError as e:
            if e.errno not in OVERLOAD_ERRNOS:
                self.log.failure("cannot take a status sample")
            elif not self._short_of_descriptors:
                self._short_of_descriptors = True
                self.log.warn("out of file descriptors: status samples skipped until some free up")
        except Exception:
            self.log.failure("cannot take a status sample")
        else:
            self._short_of_descriptors = False

    def _take(self) -> None:
        self.broker_state()
        d = self._dispatcher
        now = self._clock.seconds()
        reading = _Reading(
            now,
            d.requests,
            d.broker_requests,
            d.collapsed,
            dict(d.errors),
            self._histogram.caller_wait_buckets(),
        )
        last, self._last = self._last, reading
        if last is None:
            return  # rates need two readings
        seconds = max(now - last.time, 1e-9)
        made = reading.broker_requests - last.broker_requests
        joined = reading.collapsed - last.collapsed
        errors = {
            kind: (count - last.errors.get(kind, 0)) / seconds
            for kind, count in reading.errors.items()
            if count != last.errors.get(kind, 0)
        }
        self.samples.append(
            Sample(
                time=now,
                requests=(reading.requests - last.requests) / seconds,
                callers_waiting=d.callers_waiting,
                in_flight=self._broker.in_flight(),
                collapse=(made + joined) / made if made else None,
                wait_p50=quantile(0.5, last.buckets, reading.buckets),
                wait_p99=quantile(0.99, last.buckets, reading.buckets),
                errors=errors,
                threads=self.process.num_threads(),
                rss=self.process.memory_info().rss,
                fds=self.process.num_fds(),
            )
        )


@attrs.frozen
class Event:
    """
    One notable log event as the status page shows it.

    @ivar kind: the event's level: info, warn, error or critical.
    @ivar source: the log namespace, e.g. C{fmq.dispatch.Dispatcher}.
    @ivar key: the broker key it is about, if any.
    @ivar message: what happened, query strings cut and answer bytes hidden.
    """

    time: float
    kind: str
    source: str
    key: str | None
    message: str


@implementer(ILogObserver)
class Events:
    """
    A log observer keeping the last C{size} notable events: fmq's own from
    C{info} up, and anything at C{warn} or above, whatever level the log is
    written at.

    What it keeps never shows an answer's bytes (a malformed first line is
    shown as C{b'…'}), and cuts query strings from targets unless
    C{show_query}.
    """

    def __init__(self, show_query: bool = False, size: int = EVENTS_SIZE) -> None:
        self._show_query = show_query
        self.events: deque[Event] = deque(maxlen=size)

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.info:
            return
        namespace = str(event.get("log_namespace", "-"))
        if level < LogLevel.warn and (not namespace.startswith("fmq") or "factory" in event):
            return  # Twisted's own chatter: reactor, plugins, "Starting factory"
        if not self._show_query:
            event = dict(event)
            for field in _TARGET_FIELDS:
                value = event.get(field)
                if isinstance(value, str):
                    event[field] = " ".join(cut_query(part) for part in value.split(" "))
        message = _BYTES_REPR.sub("b'…'", formatEvent(event))
        key = event.get("key")
        self.events.append(
            Event(
                time=float(event.get("log_time") or 0.0),
                kind=level.name,
                source=namespace,
                key=key if isinstance(key, str) else None,
                message=message,
            )
        )


class Status:
    """
    The status page's data, as C{/status.json} serves it (fields in
    C{docs/STATUS.md}).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        broker: IBroker,
        broker_type: str,
        sampler: Sampler,
        events: Events,
        clock: IReactorTime,
        settings: dict[str, dict[str, Any]],
        version: str,
        show_query: bool = False,
    ) -> None:
        self._dispatcher = dispatcher
        self._broker = broker
        self._broker_type = broker_type
        self._sampler = sampler
        self._events = events
        self._clock = clock
        self._settings = {
            section: {k: _plain(v) for k, v in values.items()}
            for section, values in settings.items()
        }
        self._version = version
        self._show_query = show_query
        self._started = clock.seconds()

    def snapshot(self) -> dict[str, Any]:
        """
        Everything the page shows, read now.
        """
        now = self._clock.seconds()
        d = self._dispatcher
        available, since = self._sampler.broker_state()
        broker: dict[str, Any] = {
            "type": self._broker_type,
            "available": available,
            "since": since,
            "blocked": bool(self._broker.blocked),
        }
        process = self._sampler.process
        return {
            "version": self._version,
            "time": now,
            "started": self._started,
            "uptime": round(now - self._started, 3),
            "mode": d.mode,
            "broker": broker,
            "totals": {
                "requests": d.requests,
                "broker_requests": d.broker_requests,
                "collapsed": d.collapsed,
                "caller_timeouts": d.caller_timeouts,
                "errors": dict(sorted(d.errors.items())),
            },
            "gauges": {
                "callers_waiting": d.callers_waiting,
                "in_flight": self._broker.in_flight(),
                "threads": process.num_threads(),
                "rss": process.memory_info().rss,
                "fds": process.num_fds(),
            },
            "settings": self._settings,
            "samples": _columns(self._sampler.samples),
            "oldest": [
                {
                    "key": view.request.key,
                    "method": view.request.method.decode("ascii", "replace"),
                    "path": cut_query(
                        view.request.target.decode("utf-8", "backslashreplace"), self._show_query
                    ),
                    "callers": view.callers,
                    "age": round(now - view.started, 3),
                }
                for view in d.oldest(OLDEST)
            ],
            "events": [attrs.asdict(e) for e in reversed(self._events.events)],
        }


def _columns(samples: Sequence[Sample]) -> dict[str, Any]:
    """
    The samples as one list per field (and per error kind), oldest first.
    """
    columns: dict[str, Any] = {
        "time": [s.time for s in samples],
        "requests": [round(s.requests, 1) for s in samples],
        "callers_waiting": [s.callers_waiting for s in samples],
        "in_flight": [s.in_flight for s in samples],
        "collapse": [_round(s.collapse, 2) for s in samples],
        "wait_p50": [_round(s.wait_p50, 4) for s in samples],
        "wait_p99": [_round(s.wait_p99, 4) for s in samples],
        "threads": [s.threads for s in samples],
        "rss": [s.rss for s in samples],
        "fds": [s.fds for s in samples],
    }
    kinds = sorted({kind for s in samples for kind in s.errors})
    columns["errors"] = {
        kind: [round(s.errors.get(kind, 0.0), 1) for s in samples] for kind in kinds
    }
    return columns


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _plain(value: object) -> object:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
