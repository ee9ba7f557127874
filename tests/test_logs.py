"""
Tests for L{fmq.logs} and the events fmq logs.
"""

from __future__ import annotations

import io
import json

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.components import Componentized
from twisted.trial.unittest import SynchronousTestCase

from fmq import logs
from fmq.dispatch import Dispatcher
from fmq.keys import CallerRequest, method_and_path
from fmq.logs import make_observer
from fmq.service import FmqService
from fmq.settings import DictSource, load_settings
from fmq.testing import MemoryBroker


class ObserverTests(SynchronousTestCase):
    """
    The log observer writes one line per event, as text or JSON, from a level up.
    """

    def setUp(self) -> None:
        self.addCleanup(make_observer, "info")  # leave debugging() as it was

    def test_text(self) -> None:
        """
        Text lines carry the formatted message; events below the level are dropped.
        """
        out = io.StringIO()
        log = Logger(namespace="fmq.test", observer=make_observer("info", "text", out))
        log.info("answered {key} to {callers} callers", key="k1", callers=3)
        log.debug("not shown")
        [line] = out.getvalue().splitlines()
        self.assertIn("[fmq.test#info] answered k1 to 3 callers", line)

    def test_json(self) -> None:
        """
        JSON lines are one object each, with the event's fields.
        """
        out = io.StringIO()
        log = Logger(namespace="fmq.test", observer=make_observer("warn", "json", out))
        log.info("dropped")
        log.warn("cannot delete {name}; retry {attempt}", name="k.req", attempt=2)
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["message"], "cannot delete k.req; retry 2")
        self.assertEqual((record["name"], record["attempt"]), ("k.req", 2))

    def test_debugging_switch(self) -> None:
        """
        L{logs.debugging} follows the level, so hot paths skip debug events.
        """
        make_observer("debug")
        self.assertTrue(logs.debugging())
        make_observer("info")
        self.assertFalse(logs.debugging())

    def test_application_gets_observer(self) -> None:
        """
        The root service hands its observer to the application twistd puts
        it in, where twistd looks for it.
        """
        observer = make_observer("info")
        application = Componentized()
        application.setComponent(IServiceCollection, MultiService())
        FmqService(observer).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)


class EventTests(SynchronousTestCase):
    """
    The events of a broker request's life carry stable fields.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = Clock()
        self.broker = MemoryBroker(self.clock)
        self.broker.startService()
        self.dispatcher = Dispatcher(self.broker, self.clock, 60.0, method_and_path)

    def test_caller_timeout_event(self) -> None:
        """
        A caller's timeout is logged with the broker key and how many others wait.
        """
        for _ in range(3):
            self.dispatcher.handle(CallerRequest(b"GET", b"/x")).addErrback(lambda f: None)
        self.clock.advance(60)
        timeouts = [e for e in self.events if "timed out" in e.get("log_format", "")]
        self.assertEqual(len(timeouts), 3)
        self.assertEqual(timeouts[0]["key"], self.broker.sent[0].key)
        self.assertEqual([e["others"] for e in timeouts], [2, 1, 0])

    def test_failed_request_event(self) -> None:
        """
        A broker request that ends in an error is logged at info with its
        status, duration and group size, even when debug is off.
        """
        make_observer("info")
        for _ in range(2):
            self.dispatcher.handle(CallerRequest(b"GET", b"/x")).addErrback(lambda f: None)
        self.clock.advance(0.25)
        self.broker.respond(self.broker.sent[0], b"bad")
        [ended] = [e for e in self.events if "ended after" in e.get("log_format", "")]
        self.assertEqual((ended["status"], ended["callers"]), (502, 2))
        self.assertAlmostEqual(ended["ms"], 250.0)
        self.assertEqual(ended["request"], "GET /x")


class SummaryTests(SynchronousTestCase):
    """
    The start-up line sums up the effective settings.
    """

    def test_summary(self) -> None:
        """
        Every section but an unused [amqp] appears with its values.
        """
        summary = load_settings(DictSource({"http": {"port": "9000"}})).summary()
        self.assertIn("[http] interface=127.0.0.1 port=9000 request_timeout=60.0", summary)
        self.assertIn("[service] mode=collapse", summary)
        self.assertIn("[logging] level=info format=text", summary)
        self.assertNotIn("[amqp]", summary)
