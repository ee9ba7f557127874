"""
Shared fixtures.
"""

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from tests.contract import AMQP_URL, connect
from tests.e2e import FmqProcess, HeldBackend


def pytest_collection_modifyitems(config, items) -> None:
    """
    Tests that start processes (C{twistd fmq}, backends, a browser) are
    marked C{process} and run after the fast ones, so a broken unit shows
    first; C{-m "not process"} runs the fast set alone.
    """
    for item in items:
        if "make_fmq" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.process)
    items.sort(key=lambda item: item.get_closest_marker("process") is not None)


@pytest.fixture(autouse=True)
def _no_unhandled_errors():
    """
    Fail a test that leaves a failed Deferred unhandled. Garbage is
    collected at its end, so CPython and PyPy (whose GC runs later) report
    it at the same test, not at whichever test runs when PyPy collects.
    """
    unhandled: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_format") == "Unhandled error in Deferred:":
            unhandled.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not unhandled, f"{len(unhandled)} Deferred(s) failed with nobody handling the error"


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """
    Run each test in its own temporary folder, so C{mktemp()} and relative
    paths never write into the checkout.
    """
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_fmq(tmp_path: Path):
    """
    Start fmq processes; every one is stopped at the end, even on failure.
    """
    started: list[FmqProcess] = []

    async def make(*args: str, shell: str = "", untouched: bool = False, **sections) -> FmqProcess:
        fmq = FmqProcess(tmp_path, shell, **sections)
        started.append(fmq)
        await fmq.start(*args, untouched=untouched)
        return fmq

    yield make
    for fmq in started:
        pytest_twisted.blockon(Deferred.fromCoroutine(fmq.stop()))
        assert "Traceback" not in fmq.log_text(), fmq.log_text()


@pytest.fixture
def backends():
    """
    Start stand-in backends; every one is stopped at the end.
    """
    running: list[HeldBackend] = []

    def make(directory: Path, **kwargs) -> HeldBackend:
        backend = HeldBackend(directory, **kwargs)
        running.append(backend)
        backend.start()
        return backend

    yield make
    for backend in running:
        backend.stop()


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    """
    A request queue of this test's own on RabbitMQ, deleted afterwards.
    """
    from tests.test_broker_contract import skip_without_rabbitmq

    skip_without_rabbitmq()
    name = f"fmq.test.{uuid.uuid4().hex[:12]}"
    yield name

    async def delete() -> None:
        connection = await connect(AMQP_URL)
        channel = await connection.channel()
        await channel.queue_delete(queue=name)
        closed = connection.closed
        connection.close()
        await closed

    pytest_twisted.blockon(Deferred.fromCoroutine(delete()))
