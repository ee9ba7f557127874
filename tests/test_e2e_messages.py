"""
End to end, contract §3c: bodies and headers both ways through the real
C{twistd fmq}, a directory and a backend process that reads requests with the
standard library only (L{tests.echo_backend}, and the README's example).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.e2e import ROOT, answers, eventually

BODY = b'{"n": 1}\r\n\x00\xff'


@pytest.fixture
def backend_process():
    """
    Start backend processes; every one is killed at the end.
    """
    running: list[subprocess.Popen[bytes]] = []

    def start(*command: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, *command])
        running.append(process)
        return process

    yield start
    for process in running:
        process.kill()
        process.wait()


async def call(fmq, method: str, path: str, body: bytes = b"", **headers: str):
    """
    One request to fmq; its response and body.
    """
    response = await treq.request(
        method, fmq.url(path), data=body or None, headers=headers or None, pool=fmq.pool
    )
    return response, await response.content()


@pytest.mark.parametrize("format", ["line", "http", "json"])
@pytest_twisted.ensureDeferred
async def test_request_formats_and_answer_forms(make_fmq, backend_process, format) -> None:
    """
    In each request format the backend reads the caller's method, target and
    body (and, but for C{line}, its end-to-end headers); in each answer form
    the caller gets the status and body, and in HTTP form the backend's
    headers, less hop-by-hop ones, with fmq's own Content-Length.
    """
    fmq = await make_fmq(broker={"request_format": format})
    backend_process(str(Path(__file__).with_name("echo_backend.py")), str(fmq.directory), format)
    for form in ["bare", "reason", "http", "bom"]:
        response, content = await call(
            fmq,
            "POST",
            f"/echo?form={form}",
            BODY,
            **{"X-Trace": "7", "Content-Type": "application/octet-stream", "Keep-Alive": "5"},
        )
        echo = json.loads(content)
        assert (echo["method"], echo["target"]) == ("POST", f"/echo?form={form}")
        assert echo["body"].encode("latin-1") == BODY
        sent = {name.lower(): value for name, value in echo["headers"]}
        if format == "line":
            assert sent == {}
        else:
            assert sent["x-trace"] == "7"
            assert sent["content-type"] == "application/octet-stream"
            assert "keep-alive" not in sent and "connection" not in sent
            assert sent.get("content-length") == (str(len(BODY)) if format == "http" else None)
        headers = response.headers
        assert response.length == len(content)  # fmq's Content-Length, not the backend's
        if form in ("bare", "reason"):
            assert response.code == 200
            assert headers.getRawHeaders(b"content-type") is None
        else:
            assert response.code == 201
            assert headers.getRawHeaders(b"content-type") == [b"application/json"]
            assert headers.getRawHeaders(b"location") == [b"/made/1"]
            assert headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    response, content = await call(fmq, "GET", "/echo")
    assert json.loads(content)["body"] == ""


@pytest_twisted.ensureDeferred
async def test_answers_without_body_and_interim(make_fmq, backend_process) -> None:
    """
    A 204 or 304 written with a body reaches the caller with none; a 1xx is 502.
    """
    fmq = await make_fmq()
    backend_process(str(Path(__file__).with_name("echo_backend.py")), str(fmq.directory), "line")
    for status in [204, 304]:
        response, content = await call(fmq, "GET", f"/status/{status}")
        assert (response.code, content) == (status, b"")
    response, content = await call(fmq, "GET", "/status/100")
    assert response.code == 502
    await eventually(lambda: "not a final answer" in fmq.log_text(), "the 1xx to be logged")


@pytest_twisted.ensureDeferred
async def test_body_over_max_body(make_fmq, backend_process) -> None:
    """
    A body over C{max_body} is 413 and never reaches the backend; one at the limit does.
    """
    fmq = await make_fmq(http={"max_body": 16})
    response, content = await call(fmq, "POST", "/up", b"x" * 17)
    assert (response.code, content) == (413, b"413 request body too large\n")
    assert fmq.files() == []
    backend_process(str(Path(__file__).with_name("echo_backend.py")), str(fmq.directory), "line")
    response, content = await call(fmq, "POST", "/up", b"x" * 16)
    assert response.code == 200
    assert json.loads(content)["body"] == "x" * 16


@pytest_twisted.ensureDeferred
async def test_default_key_never_shares_across_users(make_fmq, backends) -> None:
    """
    By default two POSTs to one target make two broker requests, taking turns;
    GETs collapse only with equal Authorization; the access log shows them.
    """
    fmq = await make_fmq()
    backend = backends(fmq.directory, body="{method} {path} #{n}")
    posts = [treq.post(fmq.url("/orders"), data=body, pool=fmq.pool) for body in [b"a", b"b"]]
    await fmq.waiting(2)
    backend.release()
    results = await answers(posts)
    assert [status for status, _ in results] == [200, 200]
    assert results[0] != results[1]

    backend.holding = True
    gets = [
        treq.get(fmq.url("/me"), headers={"Authorization": who}, pool=fmq.pool)
        for who in ["Bearer a", "Bearer b", "Bearer a"]
    ]
    await fmq.waiting(3)
    backend.release()
    results = await answers(gets)
    assert results[0] == results[2] != results[1]
    assert backend.counts["answered"] == 4  # 2 POSTs, 2 users' GETs
    await eventually(
        lambda: fmq.log_text().count('[fmq.access] 127.0.0.1 "GET /me HTTP/1.1" 200') == 3,
        "three access log lines",
    )


def readme_backend() -> str:
    """
    The example backend in README.md, between its markers.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        r"<!-- example backend -->\s*```python\n(.*?)```\s*<!-- end of example backend -->",
        readme,
        re.DOTALL,
    )
    assert match, "the README's example backend is not between its markers"
    return match.group(1)


def test_readme_backend_is_short() -> None:
    """
    The README's example backend is about fifteen lines of standard-library Python.
    """
    code = readme_backend()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 20, len(lines)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for names in re.findall(r"^(?:import|from) ([\w., ]+?)(?: import .*)?$", code, re.MULTILINE):
        for name in names.split(","):
            spec = importlib.util.find_spec(name.strip().split(".")[0])
            assert spec is not None and spec.origin is not None, name
            assert spec.origin in ("built-in", "frozen") or stdlib in Path(spec.origin).parents, (
                spec.origin
            )


@pytest_twisted.ensureDeferred
async def test_readme_backend(make_fmq, backend_process, tmp_path) -> None:
    """
    The README's example backend, run as it is against C{request_format = http},
    answers a GET and a JSON POST in HTTP form with a Content-Type.
    """
    fmq = await make_fmq(broker={"request_format": "http"})
    script = tmp_path / "backend.py"
    script.write_text(readme_backend(), encoding="utf-8")
    backend_process(str(script), str(fmq.directory))
    response, content = await call(fmq, "GET", "/hello?x=1")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(content) == {"method": "GET", "target": "/hello?x=1"}
    for n in range(3):
        order = json.dumps({"sku": n}).encode()
        response, content = await call(
            fmq, "POST", "/orders", order, **{"Content-Type": "application/json"}
        )
        assert response.code == 201
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert json.loads(content) == {"created": {"sku": n}}
