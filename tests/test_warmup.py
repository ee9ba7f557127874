"""
Tests for L{fmq.warmup}: once the service is built, serving a request needs
no new file descriptor.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from klein import Klein
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fmq.settings import Settings
from fmq.testing import MemoryBroker
from fmq.warmup import ADMIN, FRONT, warm_up
from tests.e2e import PATIENCE, ROOT


def memory_broker(settings: Settings, reactor: Any) -> MemoryBroker:
    """
    A broker factory for C{[broker] type}: a L{MemoryBroker}.
    """
    return MemoryBroker(reactor, settings.broker.request_ttl)


#: builds fmq's service in a fresh interpreter, takes every free file
#: descriptor, then serves one caller on each listener and prints each
#: answer's status line
FIRST_REQUESTS = """
import os, resource
from klein import Klein
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from fmq.settings import DictSource, load_settings
from fmq.tap import build_service
from fmq.testing import MemoryBroker

settings = load_settings(
    DictSource({"broker": {"type": "tests.test_warmup.memory_broker", "directory": "."}})
)
root = build_service(settings, Clock())
[broker] = [s for s in root if isinstance(s, MemoryBroker)]
broker.startService()
front, admin = [s.factory for s in root if hasattr(s, "factory")]

hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
held = []
while True:
    try:
        held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break

for site, request in [
    (front, b"GET /first HTTP/1.1\\r\\nHost: localhost:8080\\r\\n\\r\\n"),
    (admin, b"GET /health HTTP/1.1\\r\\nHost: localhost:8081\\r\\n\\r\\n"),
]:
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(request)
    if broker.outstanding():
        broker.respond(broker.outstanding()[0], b"200\\nfirst answer")
    print(transport.value().partition(b"\\r\\n")[0].decode(), flush=True)
"""


@pytest.mark.process
class WarmUpTests(SynchronousTestCase):
    """
    The warm-up serves real requests through the real HTTP stack.
    """

    def test_first_requests_need_no_descriptor(self) -> None:
        """
        In a fresh process, once the service is built, the first callers of
        the front and of the admin listener are answered normally even with
        no file descriptor left to open.
        """
        result = subprocess.run(
            [sys.executable, "-c", FIRST_REQUESTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines(), ["HTTP/1.1 200 OK"] * 2, result.stderr)

    def test_every_request_answered(self) -> None:
        """
        Every warm-up request gets an answer, none of them a 500.
        """
        sent = warm_up(Klein().resource(), Clock())
        self.assertEqual(len(sent), len(FRONT) + len(ADMIN))
        for answer in sent:
            status = answer.partition(b"\r\n")[0]
            self.assertRegex(status, rb"^HTTP/1\.[01] [2345]\d\d ")
            self.assertNotIn(b" 500 ", status)
