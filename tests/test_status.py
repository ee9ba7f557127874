"""
Tests for L{fmq.status} and the status page's routes in L{fmq.admin}: the
once-a-second sampler on a L{Clock}, the event ring, and C{/status.json}.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from fmq import __version__
from fmq.admin import STATIC, Admin
from fmq.dispatch import Dispatcher
from fmq.keys import CallerRequest, method_and_path
from fmq.metrics import Metrics
from fmq.settings import DictSource, load_settings, mask_password
from fmq.status import Events, Sampler, Status, cut_query, quantile
from fmq.testing import MemoryBroker

MB = 1 << 20


class FakeProcess:
    """
    What the sampler reads of a process, set by the test.
    """

    def __init__(self) -> None:
        self.threads, self.rss, self.fds = 1, 50 * MB, 12
        self.broken = False
        self.out_of_descriptors = False

    def num_threads(self) -> int:
        if self.broken:
            raise RuntimeError("a bug")
        if self.out_of_descriptors:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.threads

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=self.rss)

    def num_fds(self) -> int:
        return self.fds


class Stack:
    """
    A dispatcher over a L{MemoryBroker}, with metrics and a sampler, on a clock.
    """

    def __init__(self, size: int = 300, timeout: float = 60.0, naive: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.broker = MemoryBroker(self.clock)
        self.broker.startService()
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(
            self.broker,
            self.clock,
            timeout,
            None if naive else method_and_path,
            observer=self.metrics,
        )
        self.metrics.watch(self.dispatcher, self.broker)
        self.process = FakeProcess()
        self.sampler = Sampler(
            self.dispatcher, self.broker, self.metrics, self.clock, size, process=self.process
        )

    def call(self, target: bytes = b"/a"):
        return self.dispatcher.handle(CallerRequest(b"GET", target))


class QuantileTests(SynchronousTestCase):
    """
    L{quantile} estimates a quantile from two readings of a histogram.
    """

    def test_interpolates_within_the_bucket(self) -> None:
        """
        The rank falls in a bucket and is placed linearly inside it, counting
        only what was observed between the two readings.
        """
        before = [(0.1, 5.0), (1.0, 5.0), (float("inf"), 5.0)]
        after = [(0.1, 5.0), (1.0, 9.0), (float("inf"), 9.0)]  # 4 new, all in (0.1, 1]
        self.assertAlmostEqual(quantile(0.5, before, after), 0.1 + 0.9 * 0.5)
        self.assertAlmostEqual(quantile(1.0, before, after), 1.0)

    def test_nothing_observed(self) -> None:
        """
        With nothing observed in between there is no quantile.
        """
        reading = [(0.1, 5.0), (float("inf"), 5.0)]
        self.assertIsNone(quantile(0.5, reading, reading))

    def test_beyond_the_last_bound(self) -> None:
        """
        A rank in the infinite bucket is the last finite bound.
        """
        after = [(0.1, 0.0), (1.0, 0.0), (float("inf"), 2.0)]
        self.assertEqual(quantile(0.99, [(b, 0.0) for b, _ in after], after), 1.0)


class SamplerTests(SynchronousTestCase):
    """
    The sampler takes one sample a second from the counters that exist.
    """

    def test_rates_and_gauges(self) -> None:
        """
        A second with three callers on one key and one on another shows 4
        requests/s, 4 callers waiting, 2 broker requests in flight, 2 callers
        per broker request, and the process's threads, RSS and descriptors.
        """
        s = Stack()
        s.sampler.startService()
        self.assertEqual(list(s.sampler.samples), [])  # rates need two readings
        for target in [b"/a", b"/a", b"/a", b"/b"]:
            s.call(target)
        s.process.threads, s.process.rss, s.process.fds = 1, 60 * MB, 20
        s.clock.advance(1)
        [sample] = s.sampler.samples
        self.assertEqual(sample.time, 1001)
        self.assertEqual(
            (sample.requests, sample.callers_waiting, sample.in_flight, sample.collapse),
            (4.0, 4, 2, 2.0),
        )
        self.assertEqual((sample.threads, sample.rss, sample.fds), (1, 60 * MB, 20))
        self.assertEqual((sample.wait_p50, sample.wait_p99, sample.errors), (None, None, {}))

    def test_waits_and_errors(self) -> None:
        """
        Callers answered in a second give its p50 and p99 wait from the
        histogram's buckets; errors are counted per second by kind.
        """
        s = Stack()
        s.sampler.startService()
        ok = [s.call(b"/a") for _ in range(2)]
        bad = s.call(b"/b")
        s.clock.advance(0.03)
        [a, b] = s.broker.sent
        s.broker.respond(a, b"200\n")
        s.broker.respond(b, b"not a status\n")
        for answer in ok:
            self.successResultOf(answer)
        self.failureResultOf(bad)
        s.clock.advance(0.97)
        [sample] = s.sampler.samples
        # three callers waited 30 ms: the (25, 50] ms bucket
        assert sample.wait_p50 is not None and sample.wait_p99 is not None
        self.assertTrue(0.025 < sample.wait_p50 <= sample.wait_p99 <= 0.05)
        self.assertEqual(sample.errors, {"malformed": 1.0})
        s.clock.advance(1)
        self.assertEqual(s.sampler.samples[-1].errors, {})
        self.assertIsNone(s.sampler.samples[-1].wait_p50)

    def test_ring_is_fixed_size(self) -> None:
        """
        Only the last C{size} samples are kept, one a second.
        """
        s = Stack(size=3)
        s.sampler.startService()
        s.clock.pump([1] * 10)
        self.assertEqual([x.time for x in s.sampler.samples], [1008, 1009, 1010])
        s.sampler.stopService()
        s.clock.advance(5)
        self.assertEqual(s.sampler.samples[-1].time, 1010)

    def test_a_bug_does_not_stop_sampling(self) -> None:
        """
        A sample that raises is logged with its traceback and the next
        second is sampled again.
        """
        s = Stack()
        s.sampler.startService()
        s.process.broken = True
        s.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        s.process.broken = False
        s.clock.advance(1)
        self.assertEqual(s.sampler.samples[-1].time, 1002)

    def test_out_of_descriptors_skips_a_sample_quietly(self) -> None:
        """
        Out of file descriptors (psutil reads /proc), the sampler skips that
        second with one log line, no traceback, and samples again after.
        """
        s = Stack()
        events: list[dict] = []
        s.sampler.log = Logger(observer=events.append)
        s.sampler.startService()
        s.process.out_of_descriptors = True
        s.clock.advance(1)
        s.clock.advance(1)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e.get("log_failure") for e in events], [None])
        s.process.out_of_descriptors = False
        s.clock.advance(1)
        self.assertEqual(s.sampler.samples[-1].time, 1003)

    def test_broker_since(self) -> None:
        """
        The broker's state carries the time it last changed, as the samples
        (or a read of the state) first saw it.
        """
        s = Stack()
        s.sampler.startService()
        s.clock.advance(5)
        self.assertEqual(s.sampler.broker_state(), (True, 1000))
        s.broker.available = False
        s.clock.advance(1)
        self.assertEqual(s.sampler.broker_state(), (False, 1006))
        s.clock.advance(0.5)
        s.broker.available = True
        self.assertEqual(s.sampler.broker_state(), (True, 1006.5))


class EventsTests(SynchronousTestCase):
    """
    The event ring keeps the last notable log events, without secrets.
    """

    def test_notable(self) -> None:
        """
        fmq's events from info up and anyone's from warn up are kept; debug
        events, Twisted's own info chatter and "Starting factory" are not.
        """
        events = Events()
        Logger("fmq.x", observer=events).debug("detail")
        Logger("fmq.x", observer=events).info("kept {key}", key="k1")
        Logger("fmq.web.QuietSite", observer=events).info("Starting factory {factory}", factory=1)
        Logger("twisted.web", observer=events).info("chatter")
        Logger("twisted.web", observer=events).warn("trouble")
        self.assertEqual(
            [(e.kind, e.source, e.key, e.message) for e in events.events],
            [("info", "fmq.x", "k1", "kept k1"), ("warn", "twisted.web", None, "trouble")],
        )

    def test_query_cut_and_bytes_hidden(self) -> None:
        """
        Query strings in request fields are cut, and bytes from an answer
        never show, unless C{show_query} for the query.
        """
        for show_query, line in [(False, "GET /a?…"), (True, "GET /a?token=s3cret")]:
            events = Events(show_query)
            Logger("fmq.x", observer=events).warn(
                "malformed answer for {request}: {error}",
                request="GET /a?token=s3cret",
                error="first line is not an HTTP status: b'secret body'",
            )
            [event] = events.events
            self.assertEqual(
                event.message,
                f"malformed answer for {line}: first line is not an HTTP status: b'…'",
            )

    def test_fixed_size(self) -> None:
        """
        Only the last C{size} events are kept.
        """
        events = Events(size=50)
        log = Logger("fmq.x", observer=events)
        for n in range(60):
            log.emit(LogLevel.info, "event {n}", n=n)
        self.assertEqual(len(events.events), 50)
        self.assertEqual(events.events[0].message, "event 10")


class CutQueryTests(SynchronousTestCase):
    """
    L{cut_query} hides a target's query string.
    """

    def test_cut(self) -> None:
        """
        The query goes, and a mark shows there was one.
        """
        self.assertEqual(cut_query("/a?x=1"), "/a?…")
        self.assertEqual(cut_query("/a"), "/a")
        self.assertEqual(cut_query("/a?x=1", show_query=True), "/a?x=1")


class MaskTests(SynchronousTestCase):
    """
    Passwords in URLs never reach the log or the status page.
    """

    def test_mask(self) -> None:
        """
        The password goes; the user, host, path and query stay.
        """
        self.assertEqual(mask_password("amqp://u:pw@h:5672/%2F?x=1"), "amqp://u:***@h:5672/%2F?x=1")
        self.assertEqual(mask_password("amqp://h:5672/"), "amqp://h:5672/")

    def test_effective_settings(self) -> None:
        """
        The effective settings and the start-up summary mask the AMQP password.
        """
        settings = load_settings(
            DictSource(
                {"broker": {"type": "amqp"}, "amqp": {"url": "amqp://fmq:hunter2@mq:5672/%2F"}}
            )
        )
        self.assertEqual(settings.effective()["amqp"]["url"], "amqp://fmq:***@mq:5672/%2F")
        self.assertNotIn("hunter2", settings.summary())

    def test_admin_defaults(self) -> None:
        """
        The admin listener binds the loopback by default and hides query strings.
        """
        admin = load_settings(DictSource({})).admin
        self.assertEqual((admin.interface, admin.show_query), ("127.0.0.1", False))


class StatusPageTests(SynchronousTestCase):
    """
    C{/}, its assets and C{/status.json} on the admin app.
    """

    def make(self, show_query: bool = False, naive: bool = False) -> Stack:
        s = Stack(naive=naive)
        self.events = Events(show_query)
        s.sampler.startService()
        settings = load_settings(
            DictSource({"broker": {"type": "amqp"}, "amqp": {"url": "amqp://u:pw@mq/"}})
        )
        status = Status(
            s.dispatcher,
            s.broker,
            "memory",
            s.sampler,
            self.events,
            s.clock,
            settings.effective(),
            __version__,
            show_query,
        )
        admin = Admin(s.broker, "memory", s.dispatcher, s.clock, s.metrics, status)
        self.treq = StubTreq(admin.app.resource())
        return s

    def get(self, path: str) -> tuple[int, bytes, str]:
        response = self.successResultOf(self.treq.get(f"http://admin.test{path}"))
        body = self.successResultOf(response.content())
        return response.code, body, response.headers.getRawHeaders("content-type")[0]

    def status(self) -> dict:
        code, body, kind = self.get("/status.json")
        self.assertEqual((code, kind), (200, "application/json"))
        return json.loads(body)

    def test_page_and_assets(self) -> None:
        """
        C{/} is the page; its script and style sheet are served from the
        package; other names are 404.
        """
        self.make()
        code, body, kind = self.get("/")
        self.assertEqual((code, kind), (200, "text/html; charset=utf-8"))
        self.assertIn(b'src="static/status.js"', body)
        for name, expected in [("status.js", "text/javascript"), ("status.css", "text/css")]:
            code, body, kind = self.get(f"/static/{name}")
            self.assertEqual((code, kind.split(";")[0]), (200, expected))
            self.assertEqual(body, (STATIC / name).read_bytes())
        self.assertEqual(self.get("/static/nothing.js")[0], 404)

    def test_without_status(self) -> None:
        """
        An admin app made without a status has only health and metrics.
        """
        s = Stack()
        admin = Admin(s.broker, "memory", s.dispatcher, s.clock, s.metrics)
        self.treq = StubTreq(admin.app.resource())
        self.assertEqual(self.get("/")[0], 404)
        self.assertEqual(self.get("/status.json")[0], 404)
        self.assertEqual(self.get("/health")[0], 200)

    def test_status(self) -> None:
        """
        C{/status.json} has the version, mode, uptime, broker state, totals
        that agree with the dispatcher, gauges, masked settings and the
        samples as columns.
        """
        s = self.make()
        s.call(b"/a")
        s.call(b"/a")
        s.clock.pump([1, 1, 0.5])
        status = self.status()
        self.assertEqual(
            {k: status[k] for k in ["version", "uptime", "mode", "broker", "totals"]},
            {
                "version": __version__,
                "uptime": 2.5,
                "mode": "collapse",
                "broker": {"type": "memory", "available": True, "since": 1000, "blocked": False},
                "totals": {
                    "requests": 2,
                    "broker_requests": 1,
                    "collapsed": 1,
                    "caller_timeouts": 0,
                    "errors": {},
                },
            },
        )
        self.assertEqual(
            status["gauges"],
            {"callers_waiting": 2, "in_flight": 1, "threads": 1, "rss": 50 * MB, "fds": 12},
        )
        self.assertEqual(status["settings"]["amqp"]["url"], "amqp://u:***@mq/")
        self.assertEqual(status["settings"]["admin"]["show_query"], False)
        self.assertEqual(status["samples"]["time"], [1001, 1002])
        self.assertEqual(status["samples"]["requests"], [2.0, 0.0])
        self.assertEqual(status["samples"]["collapse"], [2.0, None])

    def test_oldest_in_flight(self) -> None:
        """
        The 20 oldest broker requests in flight, oldest first, with callers
        and age; the query string is cut unless C{show_query}.
        """
        for show_query, path in [(False, "/k0?…"), (True, "/k0?token=1")]:
            s = self.make(show_query)
            for n in range(25):
                for _ in range(n % 3 + 1):
                    s.call(b"/k%d?token=1" % n)
                s.clock.advance(1)
            oldest = self.status()["oldest"]
            self.assertEqual(len(oldest), 20)
            self.assertEqual(
                oldest[0],
                {
                    "key": s.broker.sent[0].key,
                    "method": "GET",
                    "path": path,
                    "callers": 1,
                    "age": 25,
                },
            )
            self.assertEqual([o["callers"] for o in oldest[:3]], [1, 2, 3])
            s.broker.respond(s.broker.sent[0], b"200\n")
            self.assertEqual(self.status()["oldest"][0]["age"], 24)

    def test_oldest_naive(self) -> None:
        """
        In naive mode every caller is its own broker request in the table.
        """
        s = self.make(naive=True)
        s.call(b"/a")
        s.call(b"/a")
        self.assertEqual([o["callers"] for o in self.status()["oldest"]], [1, 1])

    def test_events_newest_first(self) -> None:
        """
        The events come newest first.
        """
        self.make()
        for time, level, text in [
            (1.0, LogLevel.info, "first"),
            (2.0, LogLevel.warn, "second {key}"),
        ]:
            self.events(
                {
                    "log_time": time,
                    "log_level": level,
                    "log_namespace": "fmq.x",
                    "log_format": text,
                    "key": "k2" if time == 2.0 else None,
                }
            )
        self.assertEqual(
            self.status()["events"],
            [
                {
                    "time": 2.0,
                    "kind": "warn",
                    "source": "fmq.x",
                    "key": "k2",
                    "message": "second k2",
                },
                {"time": 1.0, "kind": "info", "source": "fmq.x", "key": None, "message": "first"},
            ],
        )


@pytest.mark.process
class PackagingTests(SynchronousTestCase):
    """
    The status page works from a plain, non-editable install.
    """

    def test_assets_in_the_wheel(self) -> None:
        """
        Every file of C{fmq/static} is in the wheel built from a clean copy
        of the tree (no C{build/} left over from earlier builds).
        """
        root = Path(__file__).resolve().parent.parent
        tmp = Path(self.mktemp())
        source = tmp / "src"
        shutil.copytree(
            root,
            source,
            ignore=shutil.ignore_patterns(
                ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "var", ".*cache"
            ),
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(source)],
            check=True,
            capture_output=True,
        )
        [wheel] = tmp.glob("fmq-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        assets = {f"fmq/static/{p.name}" for p in STATIC.iterdir()}
        self.assertEqual(assets - names, set())
        self.assertIn("fmq/static/status.js", assets)
