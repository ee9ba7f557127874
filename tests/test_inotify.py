"""
The file broker with real inotify on the real reactor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from fmq.brokers.file import FileBroker
from fmq.brokers.watch import inotify_available, inotify_watcher
from fmq.protocol import BrokerRequest
from tests.e2e import eventually, sleep

pytestmark = pytest.mark.skipif(not inotify_available(), reason="no inotify on this platform")


def answer(directory: Path, request: BrokerRequest, data: bytes) -> None:
    temp = directory / f".backend-{request.key}"
    temp.write_bytes(data)
    os.rename(temp, directory / f"{request.key}.resp")


@pytest.fixture
def broker(tmp_path):
    broker = FileBroker(
        tmp_path / "broker",
        reactor,
        poll_interval=60.0,
        request_ttl=300.0,
        settle_time=0.2,
        delete_retry_max=1.0,
        check_interval=0.1,
        watcher=inotify_watcher(reactor),
    )
    broker.startService()
    yield broker
    broker.stopService()


@pytest_twisted.ensureDeferred
async def test_rename_is_seen_at_once(broker) -> None:
    """
    With the scan 60 s away, an answer renamed into place is delivered by inotify.
    """
    request = BrokerRequest.of(b"GET", b"/x")
    result = broker.submit(request)
    answer(broker.directory, request, b"200\nby inotify")
    response = await result
    assert response.body == b"by inotify"


@pytest_twisted.ensureDeferred
async def test_in_place_writer_gets_whole_body(broker) -> None:
    """
    A backend writing in place, in two parts 150 ms apart, is read only once closed.
    """
    request = BrokerRequest.of(b"GET", b"/x")
    result = broker.submit(request)
    with open(broker.directory / f"{request.key}.resp", "wb") as writer:
        writer.write(b"200\nfirst part, ")
        writer.flush()
        await sleep(0.15)
        assert not result.called
        writer.write(b"second part")
    response = await result
    assert response.body == b"first part, second part"


@pytest_twisted.ensureDeferred
async def test_watch_rearmed_after_directory_deleted(broker) -> None:
    """
    After the directory is deleted and made again, answers are seen at once again.
    """
    shutil.rmtree(broker.directory)
    await eventually(lambda: not broker.available, "the broker to notice", patience=10)
    broker.directory.mkdir()
    await eventually(lambda: broker.available, "the broker to come back", patience=10)
    request = BrokerRequest.of(b"GET", b"/again")
    result = broker.submit(request)
    answer(broker.directory, request, b"200\nre-armed")
    response = await result
    assert response.body == b"re-armed"
