"""
The shipped tools: C{fmq-loadtest}'s pure parts, and both tools against a
real fmq, the stand-in backend (C{fmq-backend}) running as its own process in
every request format and answer form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from fmq.protocol import ANSWER_FORMS, REQUEST_FORMATS
from fmq.tools.loadtest import (
    Call,
    Outcome,
    Shape,
    body_of,
    check,
    dechunk,
    parse,
    percentile,
    round_calls,
)
from tests.contract import AMQP_URL
from tests.e2e import ROOT, eventually

#: the environment of the tools' processes: this tree's code first.
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_check() -> None:
    """
    An answer is right only with status 200 and the caller's own path.
    """
    get = Call("GET", "/k1?r=0")
    assert check(get, Outcome(200, b"GET /k1?r=0 #1\n", 0.1)) == ""
    assert check(get, Outcome(200, b"GET /k10?r=0 #1\n", 0.1)) == "another key's answer"
    assert check(get, Outcome(504, b"", 0.1)) == "status 504"
    assert check(get, Outcome(0, b"", 0.1, "TimeoutError")) == "TimeoutError"


def test_check_body() -> None:
    """
    An answer to a request with a body is right only if it begins with the
    request's method and target and ends with that very body.
    """
    post = Call("POST", "/k1?r=0", body=b"#7 xxxx")
    assert check(post, Outcome(200, b"POST /k1?r=0 #3\n#7 xxxx", 0.1)) == ""
    assert check(post, Outcome(200, b"POST /k1?r=0 #3\n#8 xxxx", 0.1)) == "not its own body"
    assert check(post, Outcome(200, b"POST /k1?r=0 #3\n", 0.1)) == "not its own body"
    assert check(post, Outcome(200, b"GET /k1?r=0 #3\n#7 xxxx", 0.1)) == "another key's answer"


def test_get_request_unchanged() -> None:
    """
    A plain GET is sent as it always was: no Content-Length, no other header.
    """
    assert Call("GET", "/k1?r=0").encode("127.0.0.1") == (
        b"GET /k1?r=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )


def test_post_request() -> None:
    """
    A caller's request carries its headers, filled in with its own number and
    its key's, and its own body with a Content-Length.
    """
    shape = Shape("POST", (("Authorization", "Bearer {n}"), ("X-Key", "k{key}")), 12)
    assert shape.call("/k2?r=1", 2, 17).encode("h") == (
        b"POST /k2?r=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
        b"Authorization: Bearer 17\r\nX-Key: k2\r\nContent-Length: 12\r\n\r\n#17 xxxxxxxx"
    )
    assert Call("DELETE", "/k").encode("h").endswith(b"Content-Length: 0\r\n\r\n")


def test_bodies() -> None:
    """
    Each caller's body has the size asked for and is its own.
    """
    bodies = [body_of(n, 16) for n in range(10000)]
    assert {len(b) for b in bodies} == {16}
    assert len(set(bodies)) == 10000
    assert body_of(3, 0) == b""


def test_round_calls() -> None:
    """
    The callers of one key and round send identical requests unless a
    header names the caller; every caller of the run has its own number.
    """
    plain = round_calls(Shape(), keys=2, batch=3, r=1)
    assert [c.target for c in plain] == ["/k0?r=1"] * 3 + ["/k1?r=1"] * 3
    assert len(set(plain)) == 2
    by_key = round_calls(Shape(headers=(("A", "{key}"),)), keys=2, batch=3, r=1)
    assert len(set(by_key)) == 2
    numbers = [
        c.headers[0][1]
        for r in range(3)
        for c in round_calls(Shape(headers=(("A", "{n}"),)), keys=2, batch=3, r=r)
    ]
    assert len(set(numbers)) == len(numbers) == 18


def test_command_line() -> None:
    """
    C{--method}, C{--body-bytes} and C{--header} make the callers' shape;
    by default it is a plain GET.
    """
    assert parse([]).shape == Shape()
    args = parse(
        ["--method", "POST", "--body-bytes", "512", "--header", "Authorization: Bearer {n}"]
    )
    assert args.shape == Shape("POST", (("Authorization", "Bearer {n}"),), 512)


@pytest.mark.parametrize(
    "argv",
    [
        ["--header", "no colon"],
        ["--header", "Bad Name: x"],
        ["--header", "A: {caller}"],
        ["--method", "BREW"],
        ["--body-bytes", "-1"],
        ["--body-bytes", "16"],
    ],
)
def test_command_line_refused(argv) -> None:
    """
    A header that is not C{Name: value}, names a field other than C{{n}}
    and C{{key}}, an unknown method, a negative size, or a body on a GET
    (fmq collapses GETs whatever their bodies) is refused.
    """
    with pytest.raises(SystemExit):
        parse(argv)


def test_dechunk() -> None:
    """
    A chunked body is put back together.
    """
    assert dechunk(b"3\r\nabc\r\n10;x=1\r\n" + b"d" * 16 + b"\r\n0\r\n\r\n") == b"abc" + b"d" * 16


def test_percentile() -> None:
    """
    Percentiles of a sample, nearest rank.
    """
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 100.0
    assert percentile([], 99) == 0.0


@contextmanager
def backend_process(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """
    Run C{python -m fmq.tools.backend ARGS}, its output in C{log}; stop it
    (SIGTERM) at the end and check it logged no traceback.
    """
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmq.tools.backend", *args],
            env=ENV,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


#: a POST body, not UTF-8 at the end, so the C{json} format must carry it in base64.
ORDER = b'{"item": 42, "note": "caf\xc3\xa9"}\xff'
#: what the backend answers: the request line, one request header, the body.
TEMPLATE = "{method} {path} token={header[x-token]}\n{body}"


async def post_and_get(fmq) -> tuple[list[tuple[int, bytes]], list[list[bytes] | None]]:
    """
    A POST with a body and an C{X-Token} header, and a GET, at once: their
    statuses and bodies, and the Content-Type headers of their answers.
    """
    requests = [
        treq.post(
            fmq.url("/orders?x=1"),
            data=ORDER,
            headers={"X-Token": ["t-7"], "Content-Type": ["application/json"]},
            pool=fmq.pool,
        ),
        fmq.get("/items"),
    ]
    responses = [await r for r in requests]
    bodies = [await r.content() for r in responses]
    return (
        [(r.code, body) for r, body in zip(responses, bodies)],
        [r.headers.getRawHeaders(b"content-type") for r in responses],
    )


@pytest.mark.parametrize("form", ANSWER_FORMS)
@pytest.mark.parametrize("request_format", REQUEST_FORMATS)
@pytest_twisted.ensureDeferred
async def test_backend_formats_and_forms(make_fmq, tmp_path, request_format, form) -> None:
    """
    Through a real fmq set to each request format, the stand-in backend
    process reads the caller's body byte for byte (and, in C{http} and
    C{json}, its headers), and its answer in each form reaches the caller
    with its status and body, and in C{http} form with its Content-Type.
    """
    fmq = await make_fmq(broker={"request_format": request_format})
    with backend_process(
        tmp_path / "backend.log",
        "--dir",
        str(fmq.directory),
        "--request-format",
        request_format,
        "--answer-form",
        form,
        "--status",
        "201",
        "--content-type",
        "application/x-fmq-test",
        "--body",
        TEMPLATE,
    ):
        answers, content_types = await post_and_get(fmq)
    token = b"" if request_format == "line" else b"t-7"
    assert answers == [
        (201, b"POST /orders?x=1 token=%s\n%s" % (token, ORDER)),
        (201, b"GET /items token=\n"),
    ]
    for content_type in content_types:
        if form == "http":
            assert content_type == [b"application/x-fmq-test"]
        else:
            assert content_type != [b"application/x-fmq-test"]


@pytest_twisted.ensureDeferred
async def test_backend_formats_and_forms_over_amqp(make_fmq, tmp_path, amqp_queue) -> None:
    """
    The same over RabbitMQ: the stand-in backend process on the request
    queue reads C{json} and C{http} requests, body and headers, and its
    C{http}-form answer reaches the caller with its Content-Type.
    """
    for request_format in ("json", "http"):
        fmq = await make_fmq(
            broker={"type": "amqp", "request_format": request_format},
            amqp={"request_queue": amqp_queue, "url": AMQP_URL},
        )
        try:
            await eventually(fmq.health_status, "fmq to connect to RabbitMQ")
            with backend_process(
                tmp_path / "backend.log",
                "--broker",
                "amqp",
                "--url",
                AMQP_URL,
                "--queue",
                amqp_queue,
                "--answer-form",
                "http",
                "--content-type",
                "application/x-fmq-test",
                "--body",
                TEMPLATE,
            ):
                answers, content_types = await post_and_get(fmq)
        finally:
            await fmq.stop()
        assert answers == [
            (200, b"POST /orders?x=1 token=t-7\n" + ORDER),
            (200, b"GET /items token=\n"),
        ], request_format
        assert content_types == [[b"application/x-fmq-test"]] * 2


@pytest_twisted.ensureDeferred
async def test_loadtest_against_fmq(make_fmq, tmp_path) -> None:
    """
    A smoke run: the load test runs its steps against a real fmq and the
    stand-in backend process, checks every answer, counts the broker
    requests, samples the service, and exits 0.
    """
    fmq = await make_fmq()
    with backend_process(
        tmp_path / "backend.log", "--dir", str(fmq.directory), "--delay", "0.01-0.05"
    ):
        out, err, code = await run_loadtest(fmq, tmp_path)
    assert code == 0, out.decode() + err.decode()
    steps = json.loads((tmp_path / "report.json").read_text())["steps"]
    assert [s["requests"] for s in steps] == [30, 30]
    assert [s["errors"] for s in steps] == [0, 0]
    for s in steps:
        assert 1 <= s["broker_requests"] <= 2 * s["batches"]
        assert s["threads_max"] >= 1 and s["rss_mb_max"] > 10
    assert b"req_per_s" in out


@pytest_twisted.ensureDeferred
async def test_loadtest_posts_against_fmq(make_fmq, tmp_path) -> None:
    """
    A smoke run with POST bodies and a header: every caller gets the answer
    to its own body (the backend echoes it), and, POSTs never collapsing,
    every caller makes its own broker request.
    """
    fmq = await make_fmq()
    with backend_process(
        tmp_path / "backend.log", "--dir", str(fmq.directory), "--delay", "0.01-0.05"
    ):
        out, err, code = await run_loadtest(
            fmq,
            tmp_path,
            "--method",
            "POST",
            "--body-bytes",
            "512",
            "--header",
            "Authorization: Bearer {n}",
        )
    assert code == 0, out.decode() + err.decode()
    steps = json.loads((tmp_path / "report.json").read_text())["steps"]
    assert [s["requests"] for s in steps] == [30, 30]
    assert [s["errors"] for s in steps] == [0, 0]
    assert [s["broker_requests"] for s in steps] == [30, 30]


async def run_loadtest(fmq, tmp_path, *extra: str):
    """
    Run C{fmq-loadtest} against C{fmq}: 3 keys x 5 callers x 4 rounds, in two steps.
    """
    arguments = {
        "--port": fmq.port,
        "--admin-port": fmq.admin_port,
        "--pid": fmq.process.pid,
        "--keys": 3,
        "--batch": 5,
        "--rounds": 4,
        "--steps": "5,15",
        "--report": tmp_path / "report.json",
        "--chart": tmp_path / "c.png",
    }
    return await getProcessOutputAndValue(
        sys.executable,
        ["-m", "fmq.tools.loadtest"]
        + [str(x) for pair in arguments.items() for x in pair]
        + list(extra),
        env=ENV,
        path=str(tmp_path),
        reactor=reactor,
    )


def test_loadtest_targets() -> None:
    """
    C{--targets} and C{--admin-targets} name several instances; without them
    the one of C{--host}, C{--port} and C{--admin-port} is used.
    """
    from fmq.tools.loadtest import parse

    args = parse(["--targets", "127.0.0.1:8080,h:8090", "--admin-targets", "127.0.0.1:8081"])
    assert args.targets == [("127.0.0.1", 8080), ("h", 8090)]
    assert args.admins == [("127.0.0.1", 8081)]
    args = parse(["--port", "9000", "--admin-port", "9001"])
    assert (args.targets, args.admins) == ([("127.0.0.1", 9000)], [("127.0.0.1", 9001)])


@pytest_twisted.ensureDeferred
async def test_loadtest_round_robin(make_fmq, tmp_path) -> None:
    """
    The load tester spreads its callers over the targets, one connection
    each in turn, and sums the broker requests over their admin ports.
    """
    from tests.e2e import HeldBackend

    first = await make_fmq(broker={"directory": "one"})
    second = await make_fmq(broker={"directory": "two"})
    backends = [HeldBackend(tmp_path / name) for name in ("one", "two")]
    for backend in backends:
        backend.holding = False
        backend.start()
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "fmq.tools.loadtest",
             "--targets", f"127.0.0.1:{first.port},127.0.0.1:{second.port}",
             "--admin-targets", f"127.0.0.1:{first.admin_port},127.0.0.1:{second.admin_port}",
             "--keys", "2", "--batch", "4", "--steps", "8", "--rounds", "1",
             "--report", "load.json", "--chart", "load.png"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            reactor=reactor,
        )  # fmt: skip
    finally:
        for backend in backends:
            backend.stop()
    assert code == 0, (out, err)
    [row] = json.loads((tmp_path / "load.json").read_text())["steps"]
    assert row["errors"] == 0
    assert [len(b.taken) > 0 for b in backends] == [True, True]
    assert row["broker_requests"] == sum(len(b.taken) for b in backends)
