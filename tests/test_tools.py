"""
The shipped tools against a real fmq: C{fmq-loadtest} (and the stand-in
backend it relies on).
"""

from __future__ import annotations

import json
import os
import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from fmq.loadtest import Outcome, check, dechunk, percentile
from tests.e2e import ROOT


def test_check() -> None:
    """
    An answer is right only with status 200 and the caller's own path.
    """
    assert check("/k1?r=0", Outcome(200, b"GET /k1?r=0 #1\n", 0.1)) == ""
    assert check("/k1?r=0", Outcome(200, b"GET /k10?r=0 #1\n", 0.1)) == "another key's answer"
    assert check("/k1?r=0", Outcome(504, b"", 0.1)) == "status 504"
    assert check("/k1?r=0", Outcome(0, b"", 0.1, "TimeoutError")) == "TimeoutError"


def test_dechunk() -> None:
    """
    A chunked body is put back together.
    """
    assert dechunk(b"3\r\nabc\r\n10;x=1\r\n" + b"d" * 16 + b"\r\n0\r\n\r\n") == b"abc" + b"d" * 16


def test_percentile() -> None:
    """
    Percentiles of a sample, nearest rank.
    """
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 100.0
    assert percentile([], 99) == 0.0


@pytest_twisted.ensureDeferred
async def test_loadtest_against_fmq(make_fmq, backends, tmp_path) -> None:
    """
    The load test runs its steps against a real fmq, checks every answer,
    counts the broker requests and samples the service, and exits 0.
    """
    fmq = await make_fmq()
    backends(fmq.directory).release()
    report = tmp_path / "report.json"
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [
            "-m",
            "fmq.loadtest",
            "--port",
            str(fmq.port),
            "--admin-port",
            str(fmq.admin_port),
            "--pid",
            str(fmq.process.pid),
            "--keys",
            "3",
            "--batch",
            "5",
            "--rounds",
            "2",
            "--steps",
            "5,15",
            "--report",
            str(report),
            "--chart",
            str(tmp_path / "c.png"),
        ],  # fmt: skip
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        path=str(tmp_path),
        reactor=reactor,
    )
    assert code == 0, out.decode() + err.decode()
    steps = json.loads(report.read_text())["steps"]
    assert [s["requests"] for s in steps] == [30, 30]
    assert [s["errors"] for s in steps] == [0, 0]
    for s in steps:
        assert 1 <= s["broker_requests"] <= 2 * s["batches"]
        assert s["threads_max"] >= 1 and s["rss_mb_max"] > 10
    assert b"req_per_s" in out
