"""
The shipped tools against a real fmq: C{fmq-loadtest} (and the stand-in
backend it relies on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from fmq.tools.loadtest import Outcome, check, dechunk, percentile
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
async def test_loadtest_against_fmq(make_fmq, tmp_path) -> None:
    """
    A smoke run: the load test runs its steps against a real fmq and the
    stand-in backend process, checks every answer, counts the broker
    requests, samples the service, and exits 0.
    """
    fmq = await make_fmq()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    backend = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmq.tools.backend",
            "--dir",
            str(fmq.directory),
            "--delay",
            "0.01-0.05",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, err, code = await run_loadtest(fmq, tmp_path, env)
    finally:
        backend.terminate()
        backend.wait(timeout=30)
    assert code == 0, out.decode() + err.decode()
    steps = json.loads((tmp_path / "report.json").read_text())["steps"]
    assert [s["requests"] for s in steps] == [30, 30]
    assert [s["errors"] for s in steps] == [0, 0]
    for s in steps:
        assert 1 <= s["broker_requests"] <= 2 * s["batches"]
        assert s["threads_max"] >= 1 and s["rss_mb_max"] > 10
    assert b"req_per_s" in out


async def run_loadtest(fmq, tmp_path, env):
    """
    Run C{fmq-loadtest} against C{fmq}: 3 keys x 5 callers x 4 rounds, in two steps.
    """
    arguments = {
        "--port": fmq.port,
        "--admin-port": fmq.admin_port,
        "--pid": fmq.process.pid,
        "--keys": 3,
        "--batch": 5,
        "--rounds": 4,
        "--steps": "5,15",
        "--report": tmp_path / "report.json",
        "--chart": tmp_path / "c.png",
    }
    return await getProcessOutputAndValue(
        sys.executable,
        ["-m", "fmq.tools.loadtest"] + [str(x) for pair in arguments.items() for x in pair],
        env=env,
        path=str(tmp_path),
        reactor=reactor,
    )


def test_loadtest_targets() -> None:
    """
    C{--targets} and C{--admin-targets} name several instances; without them
    the one of C{--host}, C{--port} and C{--admin-port} is used.
    """
    from fmq.tools.loadtest import parse

    args = parse(["--targets", "127.0.0.1:8080,h:8090", "--admin-targets", "127.0.0.1:8081"])
    assert args.targets == [("127.0.0.1", 8080), ("h", 8090)]
    assert args.admins == [("127.0.0.1", 8081)]
    args = parse(["--port", "9000", "--admin-port", "9001"])
    assert (args.targets, args.admins) == ([("127.0.0.1", 9000)], [("127.0.0.1", 9001)])


@pytest_twisted.ensureDeferred
async def test_loadtest_round_robin(make_fmq, tmp_path) -> None:
    """
    The load tester spreads its callers over the targets, one connection
    each in turn, and sums the broker requests over their admin ports.
    """
    from tests.e2e import HeldBackend

    first = await make_fmq(broker={"directory": "one"})
    second = await make_fmq(broker={"directory": "two"})
    backends = [HeldBackend(tmp_path / name) for name in ("one", "two")]
    for backend in backends:
        backend.holding = False
        backend.start()
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "fmq.tools.loadtest",
             "--targets", f"127.0.0.1:{first.port},127.0.0.1:{second.port}",
             "--admin-targets", f"127.0.0.1:{first.admin_port},127.0.0.1:{second.admin_port}",
             "--keys", "2", "--batch", "4", "--steps", "8", "--rounds", "1",
             "--report", "load.json", "--chart", "load.png"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            reactor=reactor,
        )  # fmt: skip
    finally:
        for backend in backends:
            backend.stop()
    assert code == 0, (out, err)
    [row] = json.loads((tmp_path / "load.json").read_text())["steps"]
    assert row["errors"] == 0
    assert [len(b.taken) > 0 for b in backends] == [True, True]
    assert row["broker_requests"] == sum(len(b.taken) for b in backends)
