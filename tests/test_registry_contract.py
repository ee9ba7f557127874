"""
The registry contract (L{fmq.interfaces.IRegistry}), one suite run against
the in-memory registry (on a L{Clock}) and the Redis registry (on the Redis at
127.0.0.1:6379, each test in a namespace of its own). Without Redis the Redis
half skips loudly, and fails under C{CI=true}.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from fmq.interfaces import IRegistry
from fmq.registry import RedisRegistry
from fmq.testing import MemoryRegistry
from tests.e2e import eventually, free_port, sleep
from tests.test_fleet_e2e import REDIS, skip_without_redis

Check = Callable[[], Awaitable[object]]


class MemoryDriver:
    """
    In-memory registry clients on one store and one L{Clock}.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryRegistry(self.clock)
        self.prefix = "fmq:contract"

    async def client(self) -> Any:
        registry = self.store.sibling()
        registry.startService()
        return registry

    async def unreachable(self) -> Any:
        registry = await self.client()
        registry.go_down()
        return registry

    async def until(self, check: Check, what: str) -> None:
        for _ in range(10_000):
            if await check():
                return
            self.clock.advance(0.1)
        raise AssertionError(f"never came: {what}")

    async def stop(self) -> None:
        pass


class RedisDriver:
    """
    Redis registry clients on the machine's Redis, in a namespace of their own.
    """

    def __init__(self) -> None:
        self.prefix = f"fmq:contract-{uuid.uuid4().hex[:12]}"
        self.clients: list[RedisRegistry] = []

    def _make(self, url: str) -> RedisRegistry:
        registry = RedisRegistry(url, reactor, connect_timeout=5.0, channels=f"{self.prefix}:*")
        self.clients.append(registry)
        registry.startService()
        return registry

    async def client(self) -> Any:
        registry = self._make(REDIS)
        await eventually(lambda: registry.available, "the Redis registry to connect")
        return registry

    async def unreachable(self) -> Any:
        return self._make(f"redis://127.0.0.1:{free_port()}/0")

    async def until(self, check: Check, what: str) -> None:
        await eventually(check, what, patience=60.0)

    async def stop(self) -> None:
        for registry in self.clients:
            registry.stopService()
        await sleep(0.05)  # the connections close


@pytest.fixture(params=["memory", "redis"])
def driver(request):
    if request.param == "redis":
        skip_without_redis()
        made: Any = RedisDriver()
    else:
        made = MemoryDriver()
    yield made
    pytest_twisted.blockon(Deferred.fromCoroutine(made.stop()))


async def failure_of(deferred: Deferred[Any]) -> Exception | None:
    """
    The exception C{deferred} fails with, or C{None} if it succeeds.
    """
    try:
        await deferred
    except Exception as e:
        return e
    return None


@pytest_twisted.ensureDeferred
async def test_provides_iregistry(driver) -> None:
    """
    A registry provides L{IRegistry} and is available once connected.
    """
    registry = await driver.client()
    assert verifyObject(IRegistry, registry)
    assert registry.available


@pytest_twisted.ensureDeferred
async def test_claim_and_release(driver) -> None:
    """
    A lease is one token's at a time; only its holder releases it, and then
    another token may take it.
    """
    a, b = await driver.client(), await driver.client()
    name = f"{driver.prefix}:k:lease"
    assert await a.claim(name, "a", 30_000) is True
    assert await b.claim(name, "b", 30_000) is False
    assert await a.claim(name, "a2", 30_000) is False
    assert await b.release(name, "b") is False
    assert await b.claim(name, "b", 30_000) is False
    assert await a.release(name, "a") is True
    assert await a.release(name, "a") is False
    assert await b.claim(name, "b", 30_000) is True
    assert await b.release(name, "b") is True


@pytest_twisted.ensureDeferred
async def test_lease_expires_unless_renewed(driver) -> None:
    """
    A lease nobody renews expires and another token takes it; a renewed one
    outlives its first term; only the holder renews.
    """
    a, b = await driver.client(), await driver.client()
    renewed, left = f"{driver.prefix}:renewed:lease", f"{driver.prefix}:left:lease"
    assert await a.claim(renewed, "a", 4_000) is True
    assert await a.renew(renewed, "a", 120_000) is True
    assert await b.renew(renewed, "b", 120_000) is False
    assert await b.renew(f"{driver.prefix}:nobody:lease", "b", 1_000) is False
    # Claimed after the renewal, this one expires after the first term would have.
    assert await a.claim(left, "a", 4_000) is True

    async def taken() -> bool:
        return bool(await b.claim(left, "b", 30_000))

    await driver.until(taken, "the lease left alone to expire")
    assert await b.claim(renewed, "b", 30_000) is False
    assert await a.renew(left, "a", 30_000) is False
    for registry, name, token in [(a, renewed, "a"), (b, left, "b")]:
        assert await registry.release(name, token) is True


@pytest_twisted.ensureDeferred
async def test_publish_and_subscribe(driver) -> None:
    """
    A message published by one client reaches every receiver another client
    subscribed to its channel, byte for byte, and no other channel's; after
    unsubscribing, a receiver gets nothing more.
    """
    a, b = await driver.client(), await driver.client()
    channel, other = f"{driver.prefix}:k:answer", f"{driver.prefix}:other:answer"
    first: list[bytes] = []
    second: list[bytes] = []
    elsewhere: list[bytes] = []
    await a.subscribe(channel, first.append)
    await a.subscribe(channel, second.append)
    await a.subscribe(other, elsewhere.append)
    message = b"fmq1 {}\n\x00\r\n\xff" + bytes(range(256))
    await b.publish(channel, message)

    async def both() -> bool:
        return bool(first and second)

    await driver.until(both, "the message to reach both receivers")
    assert first == second == [message]
    assert elsewhere == []

    a.unsubscribe(channel, first.append)
    a.unsubscribe(channel, [].append)  # unknown: ignored
    a.unsubscribe(f"{driver.prefix}:never:answer", first.append)
    await b.publish(channel, b"again")

    async def again() -> bool:
        return len(second) == 2

    await driver.until(again, "the second message to reach the receiver left")
    assert second == [message, b"again"]
    assert first == [message]


@pytest_twisted.ensureDeferred
async def test_unreachable(driver) -> None:
    """
    A registry that cannot be reached says so, and every call but
    C{unsubscribe} and C{watch} fails.
    """
    registry = await driver.unreachable()
    assert verifyObject(IRegistry, registry)
    assert not registry.available
    name = f"{driver.prefix}:k"
    for deferred in [
        registry.claim(name + ":lease", "t", 1_000),
        registry.renew(name + ":lease", "t", 1_000),
        registry.release(name + ":lease", "t"),
        registry.publish(name + ":answer", b"x"),
        registry.subscribe(name + ":answer", lambda message: None),
    ]:
        assert isinstance(await failure_of(deferred), Exception)
    registry.unsubscribe(name + ":answer", lambda message: None)
    registry.watch(lambda available: None)
