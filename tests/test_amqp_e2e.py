"""
End to end on RabbitMQ: real C{twistd fmq} processes with C{[broker] type =
amqp}, the stand-in backend on the request queue, real HTTP callers.

Where RabbitMQ is unreachable these tests skip with a loud reason, except under
CI (C{CI=true}), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from fmq.tools.backend import AmqpBackend, Behaviour
from tests.contract import AMQP_URL, connect, queued
from tests.e2e import answers, eventually
from tests.test_resilience import codes


class HeldAmqpBackend(AmqpBackend):
    """
    The stand-in AMQP backend, holding every request until the test releases it.
    """

    def __init__(self, queue: str, body: str = "{method} {path} #{n}", **kw) -> None:
        super().__init__(reactor, AMQP_URL, queue, Behaviour(body=body, **kw))
        self.held: list[tuple] = []
        self.taken: list[bytes] = []
        self.holding = True

    def take(self, method, properties, body) -> None:
        self.taken.append(body)
        if self.holding:
            self.held.append((method, properties, body))
        else:
            self.reply(method, properties, body)

    def release(self, hold_again: bool = False) -> None:
        held, self.held = self.held, []
        self.holding = hold_again
        for message in held:
            self.reply(*message)


@pytest.fixture
def queue(amqp_queue: str) -> str:
    """
    A request queue of this test's own, deleted afterwards.
    """
    return amqp_queue


@pytest.fixture
def amqp_backend(queue):
    """
    Start stand-in AMQP backends on the test's queue; stopped at the end.
    """
    started: list[HeldAmqpBackend] = []

    async def make(**kwargs) -> HeldAmqpBackend:
        backend = HeldAmqpBackend(queue, **kwargs)
        started.append(backend)
        await backend.start()
        return backend

    yield make
    for backend in started:
        backend.stop()


def amqp(queue: str, **http) -> dict:
    return {
        "broker": {"type": "amqp", "request_ttl": 60},
        "amqp": {"request_queue": queue, "reconnect_max": 1},
        "http": http,
    }


@pytest_twisted.ensureDeferred
async def test_pass_through(make_fmq, amqp_backend, queue) -> None:
    """
    A caller's request travels over RabbitMQ to the backend and its answer back.
    """
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend()
    backend.release()
    assert await answers([fmq.get("/items?id=1")]) == [(200, b"GET /items?id=1 #1")]
    assert (await fmq.health())["broker"] == {
        "type": "amqp",
        "available": True,
        "in_flight": 0,
        "blocked": False,
    }


@pytest_twisted.ensureDeferred
async def test_identical_callers_make_one_message(make_fmq, amqp_backend, queue) -> None:
    """
    100 identical callers make one message; the next batch makes a new one.
    """
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend(body="batch {n}")
    for batch, size in [(1, 100), (2, 20)]:
        calls = [fmq.get("/same") for _ in range(size)]
        await fmq.waiting(size)
        await eventually(lambda b=batch: len(backend.taken) == b, f"message {batch}")
        backend.release(hold_again=True)
        assert await answers(calls) == [(200, b"batch %d" % batch)] * size
    assert backend.taken == [b"GET /same\n"] * 2


@pytest_twisted.ensureDeferred
async def test_two_callers_timeout_scenario(make_fmq, amqp_backend, queue) -> None:
    """
    Caller A times out with 504; caller B joins A's request and gets the answer
    (the scenario of CONTRACT §5, scaled to a 5 s timeout).
    """
    fmq = await make_fmq(**amqp(queue, request_timeout=5))
    backend = await amqp_backend(body="late")
    [a] = await answers([fmq.get("/slow")])
    assert a[0] == 504
    b = fmq.get("/slow")
    await fmq.waiting(1)
    assert len(backend.taken) == 1
    backend.release()
    assert await answers([b]) == [(200, b"late")]


@pytest_twisted.ensureDeferred
async def test_malformed_reply_is_502(make_fmq, amqp_backend, queue) -> None:
    """
    A reply that is not in the response format gives 502.
    """
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend(malformed=1.0)
    backend.release()
    assert [code for code, _ in await answers([fmq.get("/bad")])] == [502]


def require_rabbitmqctl() -> None:
    """
    Skip loudly where C{rabbitmqctl} cannot act on the server (missing, or
    not root), but fail under CI, where it must.
    """
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        reason = "rabbitmqctl is not usable here (missing, or not root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: it must be)")
        pytest.skip(f"SKIPPED, NOT TESTED: {reason}")


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def fmq_channels(pid: int) -> str:
    """
    An Erlang expression: the channels of the connection of fmq process C{pid}.
    """
    return (
        f'[P || P <- rabbit_channel:list(), lists:keymember(<<"fmq pid {pid}">>, 3,'
        " proplists:get_value(client_properties, rabbit_reader:info("
        "proplists:get_value(connection, rabbit_channel:info(P, [connection])),"
        " [client_properties])))]"
    )


@pytest_twisted.ensureDeferred
async def test_connection_loss(make_fmq, amqp_backend, queue) -> None:
    """
    When RabbitMQ closes fmq's connection, waiting callers get 503 at once,
    health says so, and fmq reconnects by itself and serves again.
    """
    require_rabbitmqctl()
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend(body="after")
    calls = [fmq.get("/wait") for _ in range(5)]
    await fmq.waiting(5)
    name = f"fmq pid {fmq.process.pid}"
    listing = rabbitmqctl("list_connections", "--quiet", "--no-table-headers", "pid",
                          "client_properties")  # fmt: skip
    [line] = [line for line in listing.splitlines() if f'"{name}"' in line]
    closed_at = time.monotonic()
    rabbitmqctl("close_connection", line.split("\t")[0], "fmq test: closed by the server")
    assert await codes(calls) == [503] * 5
    assert time.monotonic() - closed_at < 30  # ~immediately here; generous for slow machines
    await eventually(fmq.health_status, "fmq to reconnect")
    assert "320" in fmq.log_text() or "CONNECTION_FORCED" in fmq.log_text()
    backend.release()
    assert await answers([fmq.get("/wait")]) == [(200, b"after")]


@pytest_twisted.ensureDeferred
async def test_channel_closed_by_server(make_fmq, amqp_backend, queue) -> None:
    """
    When RabbitMQ closes fmq's channel but not its connection, waiting callers
    get 503 at once, health says so, and fmq opens a new one and serves again.
    """
    require_rabbitmqctl()
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend(body="after")
    calls = [fmq.get("/wait") for _ in range(5)]
    await fmq.waiting(5)
    # the channel fails a passive declare of a queue that does not exist: 404
    declare = (
        "{'queue.declare', 0, <<\"fmq.test.no-such-queue\">>, true, false, false, false, false, []}"
    )
    channels = fmq_channels(fmq.process.pid)
    closed = rabbitmqctl("eval", f"[rabbit_channel:do(P, {declare}) || P <- {channels}].")
    assert closed.strip() == "[ok]", closed
    assert await codes(calls) == [503] * 5
    assert "channel closed: 404 NOT_FOUND" in fmq.log_text()
    await eventually(fmq.health_status, "fmq to open a new channel")
    backend.release()
    assert await answers([fmq.get("/wait")]) == [(200, b"after")]


@pytest_twisted.ensureDeferred
async def test_deleted_request_queue_comes_back(make_fmq, amqp_backend, queue) -> None:
    """
    When the request queue is deleted, the next caller gets 503 (its request
    comes back unroutable), fmq declares the queue again, and later callers
    are served.
    """
    fmq = await make_fmq(**amqp(queue))
    connection = await connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue=queue)
        assert await codes([fmq.get("/lost")]) == [503]

        async def queue_is_back() -> bool:
            return await queued(connection, queue) is not None

        await eventually(queue_is_back, "fmq to declare the request queue again")
    finally:
        closed = connection.closed
        connection.close()
        await closed
    # the line may reach fmq's log file after RabbitMQ has the queue again
    missing = f"queue {queue} is missing; declaring it again"
    await eventually(lambda: missing in fmq.log_text(), "the log line about the queue")
    backend = await amqp_backend(body="found")
    backend.release()
    assert await answers([fmq.get("/found")]) == [(200, b"found")]
    assert await fmq.health_status()


def memory_watermark() -> list[str]:
    """
    RabbitMQ's memory high watermark, as C{rabbitmqctl set_vm_memory_high_watermark}
    arguments: C{["0.4"]}, or C{["absolute", "1073741824"]}.
    """
    value = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    if value.startswith("{absolute,"):
        return ["absolute", value[len("{absolute,") : -1]]
    float(value)  # anything else would not be restored faithfully: fail before the alarm
    return [value]


async def blocked_gauge(fmq) -> str:
    response = await treq.get(f"http://127.0.0.1:{fmq.admin_port}/metrics", pool=fmq.pool)
    lines = (await response.content()).decode().splitlines()
    [line] = [line for line in lines if line.startswith("fmq_broker_blocked ")]
    return line.split()[1]


@pytest_twisted.ensureDeferred
async def test_memory_alarm_blocks_publishers(make_fmq, amqp_backend, queue) -> None:
    """
    Under a real memory alarm RabbitMQ blocks fmq's connection at its next
    publish: from then on callers get 503 at once with Retry-After, /health
    and the metrics say blocked, and the request already published waits on.
    When the alarm ends, fmq takes requests again and that request is answered.

    Other tests share this RabbitMQ: the alarm lasts a few seconds, and the
    watermark is always restored.
    """
    require_rabbitmqctl()
    fmq = await make_fmq(**amqp(queue))
    backend = await amqp_backend(body="{path}")
    watermark = memory_watermark()
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        first = fmq.get("/first")  # RabbitMQ blocks the connection at this publish

        async def blocked() -> bool:
            return (await fmq.health())["broker"].get("blocked") is True

        await eventually(blocked, "fmq to be blocked", patience=10)
        refused = await fmq.get("/second")
        assert refused.code == 503
        assert refused.headers.getRawHeaders(b"retry-after")
        await refused.content()
        assert not await fmq.health_status()
        assert await blocked_gauge(fmq) == "1.0"
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *watermark)
    await eventually(fmq.health_status, "fmq to be unblocked")
    assert await blocked_gauge(fmq) == "0.0"
    await eventually(lambda: len(backend.taken) == 1, "the blocked request to reach the backend")
    backend.release()
    assert await answers([first, fmq.get("/third")]) == [(200, b"/first"), (200, b"/third")]
    log = fmq.log_text()
    assert log.count("RabbitMQ blocks publishers") == 1
    assert log.count("RabbitMQ unblocked publishers") == 1


@pytest_twisted.ensureDeferred
async def test_two_instances_share_one_queue(make_fmq, amqp_backend, queue, tmp_path) -> None:
    """
    Two fmq instances on one queue, with one backend: each collapses its own
    callers, every answer is correct and none crosses between instances.
    """
    first = await make_fmq(**amqp(queue))
    second = await make_fmq(**amqp(queue))
    backend = await amqp_backend()
    calls_first = [first.get("/shared") for _ in range(30)] + [first.get("/one") for _ in range(5)]
    calls_second = [second.get("/shared") for _ in range(30)] + [second.get("/two")]
    await first.waiting(35)
    await second.waiting(31)
    await eventually(lambda: len(backend.taken) == 4, "one message per instance and path")
    assert sorted(backend.taken) == sorted(
        [b"GET /shared\n", b"GET /shared\n", b"GET /one\n", b"GET /two\n"]
    )
    backend.release()
    results_first = await answers(calls_first)
    results_second = await answers(calls_second)
    assert {body.rsplit(b" #", 1)[0] for _, body in results_first[:30]} == {b"GET /shared"}
    assert len({body for _, body in results_first[:30]}) == 1
    assert len({body for _, body in results_second[:30]}) == 1
    assert set(results_first[30:]) == {(200, b"GET /one #1")}
    assert results_second[30:] == [(200, b"GET /two #1")]
    assert all(code == 200 for code, _ in results_first + results_second)
