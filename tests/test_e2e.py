"""
End to end: the real C{twistd fmq} process, a directory, a stand-in backend
and real HTTP callers.
"""

from __future__ import annotations

import time

import pytest_twisted

from tests.e2e import answers, eventually


@pytest_twisted.ensureDeferred
async def test_burst_collapses_to_one_request(make_fmq, backends) -> None:
    """
    200 identical concurrent callers make exactly one request file and all
    get the same body; the next batch makes a new one.
    """
    fmq = await make_fmq()
    backend = backends(fmq.directory, body="batch {n} of {method} {path}")
    for batch, size in [(1, 200), (2, 50)]:
        calls = [fmq.get("/burst?x=1") for _ in range(size)]
        await fmq.waiting(size)
        assert len(backend.requests()) == 1
        expected = [b"GET /burst?x=1\n"] * batch
        await eventually(lambda e=expected: backend.taken == e, "the backend to take the request")
        backend.release(hold_again=True)
        results = await answers(calls)
        assert results == [(200, b"batch %d of GET /burst?x=1" % batch)] * size
        await eventually(lambda: backend.requests() == [], "the request file to go")
    await eventually(lambda: fmq.files() == [], "the directory to be empty")
    assert backend.counts["answered"] == 2


@pytest_twisted.ensureDeferred
async def test_naive_every_caller_its_own_round_trip(make_fmq, backends) -> None:
    """
    In naive mode, 20 identical callers make 20 round trips, each caller
    getting its own answer.
    """
    fmq = await make_fmq("--mode", "naive")
    backend = backends(fmq.directory, body="answer {n}")
    backend.release()
    results = await answers([fmq.get("/same") for _ in range(20)])
    assert sorted(results) == sorted((200, b"answer %d" % n) for n in range(1, 21))
    assert backend.counts["answered"] == 20
    await eventually(lambda: fmq.files() == [], "the directory to be empty")


@pytest_twisted.ensureDeferred
async def test_two_callers_timeout_scenario(make_fmq, backends) -> None:
    """
    Caller A times out with 504; caller B, arriving when A gives up, joins
    A's broker request and gets the answer that comes after A's timeout.
    """
    fmq = await make_fmq(http={"request_timeout": 5})
    backend = backends(fmq.directory, body="late")
    [a] = await answers([fmq.get("/slow")])
    assert a[0] == 504
    b = fmq.get("/slow")
    await fmq.waiting(1)
    assert len(backend.taken) == 1
    backend.release()
    assert await answers([b]) == [(200, b"late")]
    assert backend.counts["answered"] == 1


@pytest_twisted.ensureDeferred
async def test_disconnect_drops_only_that_caller(make_fmq, backends) -> None:
    """
    A caller that hangs up is dropped quietly; the others still get the answer.
    """
    fmq = await make_fmq()
    backend = backends(fmq.directory, body="still here")
    leaving = fmq.get("/shared")
    staying = [fmq.get("/shared") for _ in range(3)]
    await fmq.waiting(4)
    leaving.cancel()
    leaving.addErrback(lambda f: None)
    await fmq.waiting(3)
    backend.release()
    assert await answers(staying) == [(200, b"still here")] * 3


@pytest_twisted.ensureDeferred
async def test_malformed_answer_is_502(make_fmq, backends) -> None:
    """
    A malformed answer gives 502 and both files are deleted.
    """
    fmq = await make_fmq()
    backends(fmq.directory, malformed=1.0).release()
    assert [code for code, _ in await answers([fmq.get("/bad")])] == [502]
    await eventually(lambda: fmq.files() == [], "the directory to be empty")
    assert "malformed response" in fmq.log_text()


@pytest_twisted.ensureDeferred
async def test_answer_seen_without_waiting_for_a_scan(make_fmq, backends) -> None:
    """
    With the scan 30 s away, answers still come within seconds: fmq is told
    of them (inotify, the default where it exists) and does not poll for them.
    """
    fmq = await make_fmq(broker={"poll_interval": 30})
    backends(fmq.directory, body="told").release()
    started = time.monotonic()
    for n in range(3):
        assert await answers([fmq.get(f"/told{n}")]) == [(200, b"told")]
    assert time.monotonic() - started < 20  # polling alone would take 30 s or more
