"""
The broker contract, one suite run against every broker: the file broker, the
in-memory broker and the AMQP broker (on the RabbitMQ at 127.0.0.1:5672).
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from zope.interface.verify import verifyObject

from fmq.errors import MalformedResponse, RequestExpired, ShuttingDown, Withdrawn
from fmq.interfaces import IBroker
from fmq.protocol import BrokerRequest, BrokerResponse, encode_request, parse_request
from tests.contract import AmqpDriver, FileDriver, MemoryDriver, rabbitmq_reachable


def skip_without_rabbitmq() -> None:
    """
    Skip loudly where RabbitMQ cannot be reached, but fail under CI, where it must be.
    """
    reason = rabbitmq_reachable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: RabbitMQ must be there)")
        pytest.skip(f"SKIPPED, NOT TESTED: {reason}")


@pytest.fixture(params=[FileDriver, MemoryDriver, AmqpDriver], ids=["file", "memory", "amqp"])
def driver(request, tmp_path):
    if request.param is AmqpDriver:
        skip_without_rabbitmq()
    driver = request.param(tmp_path)
    pytest_twisted.blockon(_start(driver))
    yield driver
    pytest_twisted.blockon(_stop(driver))


def _start(driver):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(driver.start())


def _stop(driver):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(driver.stop())


async def outcome(d, seconds: float = 30.0):
    """
    What C{d} fires with, or the exception it fails with.
    """
    d.addTimeout(seconds, reactor)
    try:
        return await d
    except Exception as e:
        return e


@pytest_twisted.ensureDeferred
async def test_provides_ibroker(driver) -> None:
    """
    The broker provides L{IBroker} and is available once started.
    """
    assert verifyObject(IBroker, driver.broker)
    assert driver.broker.available


@pytest_twisted.ensureDeferred
async def test_round_trip(driver) -> None:
    """
    A request reaches the backend as C{METHOD PATH\\n}; its answer fires the
    Deferred with the parsed response.
    """
    request = BrokerRequest.of(b"GET", b"/items?id=1")
    answer = driver.broker.submit(request)
    assert await driver.requests(1) == [b"GET /items?id=1\n"]
    assert driver.broker.in_flight() == 1
    assert not answer.called
    await driver.answer(request, b"201\r\nbody\r\nmore")
    assert await outcome(answer) == BrokerResponse(201, b"body\r\nmore")
    assert driver.broker.in_flight() == 0


@pytest_twisted.ensureDeferred
async def test_requests_are_independent(driver) -> None:
    """
    Requests with different keys are answered each with its own answer.
    """
    a, b = BrokerRequest.of(b"GET", b"/a"), BrokerRequest.of(b"GET", b"/b")
    answer_a, answer_b = driver.broker.submit(a), driver.broker.submit(b)
    await driver.requests(2)
    await driver.answer(b, b"200\nb")
    assert (await outcome(answer_b)).body == b"b"
    assert not answer_a.called
    await driver.answer(a, b"200\na")
    assert (await outcome(answer_a)).body == b"a"


@pytest_twisted.ensureDeferred
async def test_same_key_both_answered(driver) -> None:
    """
    Two requests with one key are both answered, first come first served.
    """
    first, second = BrokerRequest.of(b"GET", b"/x"), BrokerRequest.of(b"GET", b"/x")
    answers = [driver.broker.submit(first), driver.broker.submit(second)]
    assert driver.broker.in_flight() == 2
    for n, request in enumerate([first, second]):
        await driver.requests(1 if driver.name == "file" else 2 - n)
        await driver.answer(request, b"200\n%d" % n)
    assert [(await outcome(a)).body for a in answers] == [b"0", b"1"]


@pytest.mark.parametrize("format", ["line", "http", "json"])
@pytest_twisted.ensureDeferred
async def test_body_and_headers_reach_backend(driver, format) -> None:
    """
    A request's body, and its headers where the format has them, reach the
    backend in the request's format; the answer's headers come back.
    """
    headers = ((b"Content-Type", b"application/json"), (b"Authorization", b"Bearer a"))
    body = b'{"sku": 7}\n\x00\xff'
    request = BrokerRequest.of(b"POST", b"/orders?x=1", headers, body, format)
    answer = driver.broker.submit(request)
    [data] = await driver.requests(1)
    assert data == encode_request(request)
    read = parse_request(data)
    assert (read.format, read.method, read.target, read.body) == (
        format,
        b"POST",
        b"/orders?x=1",
        body,
    )
    assert read.headers == (headers if format != "line" else ())
    await driver.answer(
        request,
        b"HTTP/1.1 201 Created\r\nLocation: /orders/7\r\nConnection: close\r\n\r\nmade",
    )
    assert await outcome(answer) == BrokerResponse(201, b"made", ((b"Location", b"/orders/7"),))


ANSWER_FORMS = [
    (b"200\nbare", BrokerResponse(200, b"bare")),
    (b"404 Not Found\r\nreason", BrokerResponse(404, b"reason")),
    (
        b"HTTP/1.0 200 OK\nContent-Type: text/plain\nContent-Length: 9\n\nhttp\r\nform",
        BrokerResponse(200, b"http\r\nform", ((b"Content-Type", b"text/plain"),)),
    ),
    (b"\xef\xbb\xbf200 OK\r\nbom", BrokerResponse(200, b"bom")),
    (b"204\nleftover", BrokerResponse(204, b"")),
]


@pytest_twisted.ensureDeferred
async def test_answer_forms(driver) -> None:
    """
    Every answer form of contract §3c is read the same by every broker.
    """
    for n, (data, expected) in enumerate(ANSWER_FORMS):
        request = BrokerRequest.of(b"GET", b"/form/%d" % n)
        answer = driver.broker.submit(request)
        await driver.requests(1)
        await driver.answer(request, data)
        assert await outcome(answer) == expected


@pytest_twisted.ensureDeferred
async def test_interim_status_malformed(driver) -> None:
    """
    A 1xx answer is not final: it fails with L{MalformedResponse}.
    """
    request = BrokerRequest.of(b"GET", b"/interim")
    answer = driver.broker.submit(request)
    await driver.requests(1)
    await driver.answer(request, b"100\nhello")
    assert isinstance(await outcome(answer), MalformedResponse)


@pytest_twisted.ensureDeferred
async def test_malformed(driver) -> None:
    """
    An answer that is not a status line fails with L{MalformedResponse}.
    """
    request = BrokerRequest.of(b"GET", b"/bad")
    answer = driver.broker.submit(request)
    await driver.requests(1)
    await driver.answer(request, b"")
    assert isinstance(await outcome(answer), MalformedResponse)


@pytest_twisted.ensureDeferred
async def test_ttl(driver) -> None:
    """
    A request unanswered for the TTL fails with L{RequestExpired}.
    """
    answer = driver.broker.submit(BrokerRequest.of(b"GET", b"/slow"))
    await driver.requests(1)
    await driver.elapse(driver.ttl * 0.5)
    assert not answer.called
    await driver.elapse(driver.ttl * 0.5 + 0.1)
    assert isinstance(await outcome(answer), RequestExpired)
    assert driver.broker.in_flight() == 0
    if driver.takes_back:
        await driver.requests(0)


@pytest_twisted.ensureDeferred
async def test_withdraw(driver) -> None:
    """
    A withdrawn request fails with L{Withdrawn}; a late answer to it is dropped.
    """
    request = BrokerRequest.of(b"GET", b"/w")
    answer = driver.broker.submit(request)
    await driver.requests(1)
    driver.broker.withdraw(request)
    assert isinstance(await outcome(answer), Withdrawn)
    driver.broker.withdraw(request)  # twice is harmless
    if driver.takes_back:
        await driver.requests(0)
    else:
        await driver.answer(request, b"200\nlate")
    assert driver.broker.in_flight() == 0


@pytest_twisted.ensureDeferred
async def test_cancel_withdraws(driver) -> None:
    """
    Cancelling the Deferred withdraws the request.
    """
    answer = driver.broker.submit(BrokerRequest.of(b"GET", b"/c"))
    answer.cancel()
    assert isinstance(await outcome(answer), CancelledError)
    assert driver.broker.in_flight() == 0


@pytest_twisted.ensureDeferred
async def test_stop_fails_unanswered(driver) -> None:
    """
    Stopping fails unanswered requests with L{ShuttingDown}; new ones too.
    """
    answer = driver.broker.submit(BrokerRequest.of(b"GET", b"/s"))
    await driver.stop()
    assert isinstance(await outcome(answer), ShuttingDown)
    late = driver.broker.submit(BrokerRequest.of(b"GET", b"/t"))
    assert isinstance(await outcome(late), ShuttingDown)
