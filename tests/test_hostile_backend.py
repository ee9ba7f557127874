"""
End to end: the real C{twistd fmq} process against a backend that does what
it should not to its answer files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.e2e import PATIENCE, ROOT, answers, eventually


def code_of(call: Deferred) -> Deferred[int | str]:
    """
    The status of a call, or the name of the error that ended it.
    """

    async def code() -> int | str:
        try:
            response = await call
            await response.content()
        except Exception as e:
            return type(e).__name__
        return response.code

    return Deferred.fromCoroutine(code())


def exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """
    How C{process} ended, waiting a little for it; C{None} if it still runs.
    """
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


@pytest_twisted.ensureDeferred
async def test_reopening_an_answer_never_kills_fmq(make_fmq) -> None:
    """
    A separate process that answers in two opens and then reopens each answer
    for writing, hundreds of times while fmq may hold a read lease on it,
    neither stops fmq nor holds its own opens up for long.
    """
    fmq = await make_fmq(broker={"poll_interval": 0.01, "settle_time": 0.01})
    count, body_bytes = 400, 256 * 1024
    rewriter = subprocess.Popen(
        [sys.executable, "-m", "tests.rewriter", str(fmq.directory), str(count), str(body_bytes)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        for batch in range(0, count, 20):
            calls = [fmq.get(f"/r{n}") for n in range(batch, batch + 20)]
            codes = await gatherResults([code_of(call) for call in calls])
            assert set(codes) <= {200, 502}, (codes, exit_status(fmq.process))
        await eventually(lambda: rewriter.poll() is not None, "the rewriter to finish")
        stats = json.loads(rewriter.stdout.read())
    finally:
        if rewriter.poll() is None:
            rewriter.kill()
        rewriter.wait(timeout=PATIENCE)
        rewriter.stdout.close()
    assert stats["answered"] == count
    assert stats["slowest_open"] < 20  # a lease not released would hold it 45 s
    assert fmq.process.poll() is None, fmq.log_text()
    assert (await fmq.health())["status"] == "ok"
    calls = [fmq.get("/after")]
    await fmq.waiting(1)
    [request] = [p for p in fmq.directory.glob("*.req")]
    (fmq.directory / "done.tmp").write_bytes(b"200\nstill here")
    os.rename(fmq.directory / "done.tmp", request.with_suffix(".resp"))
    assert await answers(calls) == [(200, b"still here")]


@pytest_twisted.ensureDeferred
async def test_symlinked_answer_is_502(make_fmq, tmp_path) -> None:
    """
    An answer that is a symbolic link gives 502 at once, not a wait for the
    timeout; the link is removed and its target left as it was.
    """
    fmq = await make_fmq(http={"request_timeout": 30})
    target = tmp_path / "elsewhere"
    target.write_bytes(b"200\nnot for callers")
    os.utime(target, (1, 1))  # older than the request, as a link's target may be
    calls = [fmq.get("/linked")]
    await fmq.waiting(1)
    [request] = list(fmq.directory.glob("*.req"))
    os.symlink(target, request.with_suffix(".resp"))
    assert [code for code, _ in await answers(calls)] == [502]
    await eventually(lambda: fmq.files() == [], "the link and the request to go")
    assert target.read_bytes() == b"200\nnot for callers"
    assert "symbolic link" in fmq.log_text()


@pytest_twisted.ensureDeferred
async def test_oversized_answer_is_502(make_fmq) -> None:
    """
    An answer over C{max_answer_bytes} gives 502, its files are removed, and
    one warning names its key and why.
    """
    fmq = await make_fmq(broker={"max_answer_bytes": 1000})
    calls = [fmq.get("/big")]
    await fmq.waiting(1)
    [request] = list(fmq.directory.glob("*.req"))
    temp = fmq.directory / "big.tmp"
    temp.write_bytes(b"200\n" + b"x" * 5000)
    os.rename(temp, request.with_suffix(".resp"))
    assert [code for code, _ in await answers(calls)] == [502]
    await eventually(lambda: fmq.files() == [], "the files to go")
    [line] = [line for line in fmq.log_text().splitlines() if "#warn]" in line]
    assert request.stem in line
    assert "5004 bytes, more than max_answer_bytes (1000)" in line
