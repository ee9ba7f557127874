"""
End to end: a real C{twistd fmq} that runs out of file descriptors at its
very first traffic.
"""

from __future__ import annotations

import resource
from collections import Counter

import pytest
import pytest_twisted

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
    callers answers each 200 or 503, never 500, logs no traceback (the
    fixture checks), and answers normally once the burst is over.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CALLERS + 200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        fmq = await make_fmq(shell=f"ulimit -n {LIMIT}", untouched=True)
        backends(fmq.directory).release()
        calls = [fmq.get(f"/burst/{n % 350}") for n in range(CALLERS)]
        results = Counter([await outcome(d) for d in calls])
        assert 500 not in results, results
        assert set(results) <= {200, 503, "ResponseNeverReceived"}, results
        assert results[200] > 0, results
        response = await fmq.get("/after")
        assert response.code == 200
        assert (await response.content()).startswith(b"GET /after #")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
