"""
End to end, a fleet: three real C{twistd fmq} processes on RabbitMQ with
C{[fleet] registry} on Redis, the stand-in backend on the request queue, real
HTTP callers spread over the three.

Where Redis or RabbitMQ is unreachable these tests skip with a loud reason,
except under CI (C{CI=true}), where that is a failure. Each test has its own
request queue, and so its own fleet namespace (the queue is part of it): runs
in parallel never share keys. The tests that take Redis away run a throwaway
C{redis-server} of their own; the machine's Redis is never stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import gatherResults, succeed

from tests.e2e import answers, eventually, free_port, sleep
from tests.test_amqp_e2e import amqp, amqp_backend, queue  # noqa: F401 (fixtures)

REDIS = "redis://127.0.0.1:6379/0"


def skip_without_redis() -> None:
    """
    Skip loudly where Redis cannot be reached, but fail under CI, where it must be.
    """
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3):
            return
    except OSError as e:
        reason = f"Redis is not reachable at 127.0.0.1:6379: {e}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Redis must be there)")
    pytest.skip(f"SKIPPED, NOT TESTED: {reason}")


@pytest.fixture
def fleet(make_fmq, queue):  # noqa: F811
    """
    Start fmq instances of one fleet on the test's queue.
    """
    skip_without_redis()

    async def make(registry: str = REDIS, lease: float = 2.0, **sections):
        values = amqp(queue, request_timeout=30)
        values["fleet"] = {"registry": registry, "lease": lease}
        for section, keys in sections.items():
            values.setdefault(section, {}).update(keys)
        return await make_fmq(**values)

    return make


class ThrowawayRedis:
    """
    A C{redis-server} of the test's own on a free port, to stop and start.
    """

    def __init__(self, tmp) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await eventually(self._up, "the throwaway redis-server to listen")

    def _up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path):
    """
    A throwaway Redis, killed at the end.
    """
    skip_without_redis()
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI=true: it must be)")
        pytest.skip("SKIPPED, NOT TESTED: redis-server is not installed")
    redis = ThrowawayRedis(tmp_path)
    yield redis
    redis.kill()


async def metric(fmq, name: str) -> float:
    response = await treq.get(f"http://127.0.0.1:{fmq.admin_port}/metrics", pool=fmq.pool)
    for line in (await response.content()).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def settled(backend, count: int, what: str) -> None:
    """
    Wait until the backend has taken C{count} requests, and a while longer
    to make sure no more come.
    """
    await eventually(lambda: len(backend.taken) >= count, what)
    await sleep(0.5)
    assert len(backend.taken) == count, backend.taken


@pytest_twisted.ensureDeferred
async def test_three_instances_one_broker_request(fleet, amqp_backend) -> None:  # noqa: F811
    """
    300 identical callers spread over three instances make one broker request,
    and every caller gets its answer, headers too; the next batch makes a new one.
    """
    instances = [await fleet() for _ in range(3)]
    backend = await amqp_backend(body="batch {n}", answer_form="http", content_type="text/x-fleet")
    for instance in instances:
        assert (await instance.health())["fleet"] == "ok"
    for batch, per_instance in [(1, 100), (2, 10)]:
        calls = [i.get("/same?x=1") for _ in range(per_instance) for i in instances]
        for instance in instances:
            await instance.waiting(per_instance)
        await settled(backend, batch, f"the broker request of batch {batch}")
        backend.release(hold_again=True)
        responses = await gatherResults(calls)
        kinds = {tuple(r.headers.getRawHeaders(b"content-type", [])) for r in responses}
        assert kinds == {(b"text/x-fleet",)}
        expected = [(200, b"batch %d" % batch)] * (3 * per_instance)
        assert await answers([succeed(r) for r in responses]) == expected
    assert backend.taken == [b"GET /same?x=1\n"] * 2
    requests = [await metric(i, "fmq_broker_requests_total") for i in instances]
    assert sum(requests) == 2
    followed = [await metric(i, "fmq_fleet_groups_followed_total") for i in instances]
    assert sum(followed) == 4


@pytest_twisted.ensureDeferred
async def test_holder_killed(fleet, amqp_backend) -> None:  # noqa: F811
    """
    When the holder is killed (kill -9) with its request in flight, another
    instance takes over within about two lease periods and makes the request;
    every caller of the living instances gets an answer made after the kill.
    """
    lease = 2.0
    instances = [await fleet(lease=lease) for _ in range(3)]
    backend = await amqp_backend(body="answer {n}")
    first = instances[0].get("/held")
    first.addErrback(lambda failure: None)  # its instance is killed
    await settled(backend, 1, "the holder's broker request")
    calls = [i.get("/held") for i in instances[1:] for _ in range(20)]
    for instance in instances[1:]:
        await instance.waiting(20)
    assert instances[0].process is not None
    instances[0].process.kill()
    killed = time.monotonic()
    await eventually(lambda: len(backend.taken) >= 2, "another instance to take over")
    took = time.monotonic() - killed
    assert took <= 2 * lease + 10, took  # generous for a slow machine
    backend.release()
    # The dead holder's request is answered too (to nobody): it is "answer 1".
    # Normally all 40 get "answer 2". On a machine so loaded that an instance
    # misses its lease renewals or Redis's PINGs, a living instance may make a
    # request of its own as well (as documented): its callers then get that.
    got = await answers(calls)
    for mine in [got[:20], got[20:]]:
        assert len(set(mine)) == 1, mine
        status, body = mine[0]
        assert status == 200 and body.startswith(b"answer ") and body != b"answer 1", mine
    carried_on = [
        await metric(i, name)
        for i in instances[1:]
        for name in ["fmq_fleet_groups_taken_over_total", "fmq_fleet_groups_local_total"]
    ]
    assert sum(carried_on) >= 1


@pytest_twisted.ensureDeferred
async def test_registry_lost_and_back(fleet, amqp_backend, own_redis) -> None:  # noqa: F811
    """
    With the registry gone, each instance collapses its own callers (no 503),
    C{/health} says the fleet is degraded, and the change is logged once;
    once it is back, the fleet collapses as one again by itself.
    """
    await own_redis.start()
    instances = [await fleet(registry=own_redis.url, lease=1.0) for _ in range(2)]
    backend = await amqp_backend(body="answer {n}")
    own_redis.kill()
    for instance in instances:

        async def degraded(instance=instance) -> bool:
            return (await instance.health())["fleet"] == "degraded"

        await eventually(degraded, "the fleet to be degraded")
        assert await instance.health_status()
        assert await metric(instance, "fmq_fleet_degraded") == 1
    calls = [i.get("/k") for i in instances for _ in range(10)]
    for instance in instances:
        await instance.waiting(10)
    await settled(backend, 2, "one broker request per instance")
    backend.release(hold_again=True)
    assert {code for code, _ in await answers(calls)} == {200}
    await own_redis.start()
    for instance in instances:

        async def ok(instance=instance) -> bool:
            return (await instance.health())["fleet"] == "ok"

        await eventually(ok, "the fleet to be back")
    calls = [i.get("/k") for i in instances for _ in range(10)]
    for instance in instances:
        await instance.waiting(10)
    await settled(backend, 3, "one broker request for the fleet")
    backend.release()
    assert {code for code, _ in await answers(calls)} == {200}
    for instance in instances:
        text = instance.log_text()
        assert text.count("unreachable") == 1, text
        assert text.count("collapsing across the fleet") == 2, text


@pytest_twisted.ensureDeferred
async def test_unreachable_from_the_start(fleet, amqp_backend) -> None:  # noqa: F811
    """
    An instance whose registry is unreachable from the start serves its
    callers all the same, collapsed on its own.
    """
    instance = await fleet(registry=f"redis://127.0.0.1:{free_port()}/0")
    backend = await amqp_backend(body="alone")
    assert (await instance.health())["fleet"] == "degraded"
    calls = [instance.get("/a") for _ in range(10)]
    await instance.waiting(10)
    await settled(backend, 1, "its own broker request")
    backend.release()
    assert await answers(calls) == [(200, b"alone")] * 10


@pytest_twisted.ensureDeferred
async def test_mixed_collapse_keys(fleet, amqp_backend) -> None:  # noqa: F811
    """
    Instances with different collapse keys never share answers, even for a
    request both keys map to the same value.
    """
    same = await fleet()
    other = await fleet(service={"collapse_key": "fmq.keys.method_and_path_without_query"})
    backend = await amqp_backend(body="{path}")
    calls = [same.get("/p") for _ in range(5)] + [other.get("/p") for _ in range(5)]
    await same.waiting(5)
    await other.waiting(5)
    await settled(backend, 2, "a broker request for each")
    backend.release()
    assert await answers(calls) == [(200, b"/p")] * 10


@pytest_twisted.ensureDeferred
async def test_answer_over_max_answer_bytes(fleet, amqp_backend) -> None:  # noqa: F811
    """
    An answer over C{max_answer_bytes} is 502 for every caller of the fleet,
    for one broker request: it never crosses the registry.
    """
    instances = [await fleet(broker={"max_answer_bytes": 1000}) for _ in range(3)]
    backend = await amqp_backend(body="x" * 2000)
    calls = [i.get("/big") for i in instances for _ in range(5)]
    for instance in instances:
        await instance.waiting(5)
    await settled(backend, 1, "one broker request")
    backend.release()
    assert {code for code, _ in await answers(calls)} == {502}
