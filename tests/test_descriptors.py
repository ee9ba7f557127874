"""
End to end: a real C{twistd fmq} that runs out of file descriptors at its
very first traffic.
"""

from __future__ import annotations

import resource
from collections import Counter

import pytest
import pytest_twisted

from tests.e2e import eventually

#: fmq's open-files limit, soft and hard, in this test
LIMIT = 512
#: concurrent callers: more than fmq may open files
CALLERS = 700


async def outcome(d) -> int | str:
    """
    The call's status (with a 503 checked for Retry-After), or the name of
    the error that ended it.
    """
    try:
        response = await d
        await response.content()
    except Exception as e:
        return type(e).__name__
    if response.code == 503:
        assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    return response.code


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_at_first_traffic(make_fmq, backends) -> None:
    """
    fmq limited to 512 open files whose first traffic is 700 concurrent
    callers answers every one of them 200 or 503 (none is dropped without a
    status, none gets 500), logs no traceback (the fixture checks) and
    nothing from Twisted's own recovery at C{accept}, keeps answering
    C{/health} while callers wait in the backlog, and answers normally once
    the burst is over.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CALLERS + 200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        fmq = await make_fmq(shell=f"ulimit -n {LIMIT}", untouched=True)
        backend = backends(fmq.directory)
        calls = [fmq.get(f"/burst/{n % 350}") for n in range(CALLERS)]
        await eventually(lambda: "out of descriptors" in fmq.log_text(), "fmq to stop accepting")
        assert await fmq.health_status()
        backend.release()
        results = Counter([await outcome(d) for d in calls])
        assert set(results) <= {200, 503}, results
        assert results[200] > 0, results
        log = fmq.log_text()
        assert "EMFILE" not in log, log
        await eventually(lambda: "new connections are accepted again" in fmq.log_text(), "resume")
        response = await fmq.get("/after")
        assert response.code == 200
        assert (await response.content()).startswith(b"GET /after #")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
