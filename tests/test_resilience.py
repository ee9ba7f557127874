"""
End to end: the real C{twistd fmq} process when things go wrong: kill -9 and
restart, the directory pulled away, undeletable files, a second instance,
SIGTERM.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted

from fmq.protocol import broker_key
from tests.e2e import PATIENCE, SlowReader, answers, eventually


async def codes(deferreds) -> list[int | str]:
    """
    Each call's status, or the name of the error that ended it.
    """
    results: list[int | str] = []
    for d in deferreds:
        try:
            response = await d
            await response.content()
            results.append(response.code)
        except Exception as e:
            results.append(type(e).__name__)
    return results


def request_file(fmq, target: bytes) -> Path:
    return fmq.directory / f"{broker_key(b'GET', target)}.req"


@pytest_twisted.ensureDeferred
async def test_kill_9_and_restart_adopts(make_fmq, backends) -> None:
    """
    After kill -9 with requests in flight, the next start adopts the request
    files: a new identical caller joins one without writing it again, and the
    answer nobody waits for is cleaned up.
    """
    fmq = await make_fmq()
    backend = backends(fmq.directory, body="answer for {path}")
    calls = [fmq.get("/a") for _ in range(5)] + [fmq.get("/b") for _ in range(3)]
    await fmq.waiting(8)
    inode = request_file(fmq, b"/a").stat().st_ino
    fmq.process.kill()
    assert set(await codes(calls)) <= {"ResponseFailed", "ResponseNeverReceived"}
    await eventually(lambda: len(backend.taken) == 2, "the backend to take both requests")

    await fmq.start()
    health = await fmq.health()
    assert health["broker"]["in_flight"] == 2, fmq.log_text()
    joined = [fmq.get("/a") for _ in range(3)]
    await fmq.waiting(3)
    assert request_file(fmq, b"/a").stat().st_ino == inode
    assert len(backend.taken) == 2
    backend.release()
    assert await answers(joined) == [(200, b"answer for /a")] * 3
    await eventually(lambda: fmq.files() == [], "the directory to be empty")
    assert "adopted" in fmq.log_text()


@pytest_twisted.ensureDeferred
async def test_directory_removed_under_load(make_fmq, backends) -> None:
    """
    When the directory is removed, waiting callers get 503 within about a
    second and new ones at once; fmq recovers by itself when it is back.
    """
    fmq = await make_fmq(broker={"poll_interval": 5})
    backend = backends(fmq.directory, body="back")
    calls = [fmq.get(f"/k{n % 3}") for n in range(30)]
    await fmq.waiting(30)
    removed = time.monotonic()
    shutil.rmtree(fmq.directory)
    assert await codes(calls) == [503] * 30
    assert time.monotonic() - removed < 10  # ~0.5 s here; generous for slow machines
    [late] = await codes([fmq.get("/k0")])
    assert late == 503
    response = await fmq.get("/k1")
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    await response.content()

    fmq.directory.mkdir()
    await eventually(lambda: fmq.health_status(), "health to be ok again")
    backend.release()
    assert await answers([fmq.get("/k0")]) == [(200, b"back")]
    log = fmq.log_text()
    assert log.count("is unavailable") == 1
    assert log.count("usable again") == 1
    await eventually(lambda: fmq.files() == [], "the directory to be empty")


def can_chattr(tmp: Path) -> str | None:
    probe = tmp / "chattr-probe"
    probe.mkdir()
    try:
        result = subprocess.run(["chattr", "+a", str(probe)], capture_output=True, text=True)
    except FileNotFoundError:
        return "chattr is not installed"
    if result.returncode != 0:
        return f"chattr +a does not work here: {result.stderr.strip()}"
    subprocess.run(["chattr", "-a", str(probe)], check=True)
    return None


@pytest_twisted.ensureDeferred
async def test_undeletable_files(make_fmq, backends, tmp_path) -> None:
    """
    With the directory append-only (chattr +a), the answer is delivered once,
    deletion is retried, and an identical caller is held until the files are
    gone, then gets a fresh answer.
    """
    reason = can_chattr(tmp_path)
    if reason:
        pytest.skip(reason)
    fmq = await make_fmq(broker={"delete_retry_max": 0.5}, logging={"level": "debug"})
    backend = backends(fmq.directory, body="fresh")
    first = fmq.get("/locked")
    await fmq.waiting(1)
    request = request_file(fmq, b"/locked")
    # the backend skips a request already answered: let it see this one first
    await eventually(lambda: len(backend.taken) == 1, "the backend to take the request")
    subprocess.run(["chattr", "+a", str(fmq.directory)], check=True)
    try:
        # an append-only folder takes new files but no renames: answer in place
        request.with_suffix(".resp").write_bytes(b"200\nfirst")
        assert await answers([first]) == [(200, b"first")]
        await eventually(lambda: "cannot delete" in fmq.log_text(), "a delete retry")
        second = fmq.get("/locked")
        await fmq.waiting(1)
        assert request.read_bytes() == b"GET /locked\n"
        assert len(backend.taken) == 1
    finally:
        subprocess.run(["chattr", "-a", str(fmq.directory)], check=True)
    written = f"wrote {request.name}"
    await eventually(lambda: fmq.log_text().count(written) == 2, "the held request to be written")
    backend.release()
    assert await answers([second]) == [(200, b"fresh")]
    await eventually(lambda: fmq.files() == [], "the directory to be empty")


@pytest_twisted.ensureDeferred
async def test_second_instance_refused(make_fmq, tmp_path) -> None:
    """
    A second instance on the same directory exits non-zero with one line
    naming the lock file and the first one's pid.
    """
    first = await make_fmq()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    ini = second_dir / "fmq.ini"
    ini.write_text(
        f"[broker]\ndirectory = {first.directory}\n[http]\nport = 0\n[admin]\nport = 0\n"
    )
    twistd = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "twistd"
    if not twistd.exists():
        twistd = Path(subprocess.os.sys.executable).with_name("twistd")
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "fmq", "--config", str(ini)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    assert result.returncode != 0
    lock = first.directory / ".fmq.lock"
    output = result.stdout + result.stderr
    assert f"fmq: cannot take the lock {lock}: held by pid {first.process.pid}" in output
    assert "Traceback" not in output
    assert (await first.health())["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_sigterm_with_callers_waiting(make_fmq, backends) -> None:
    """
    SIGTERM answers waiting callers 503, leaves the request files and exits
    with status 0; the next start adopts them.
    """
    fmq = await make_fmq()
    backend = backends(fmq.directory, body="after restart")
    calls = [fmq.get("/t1") for _ in range(4)] + [fmq.get("/t2") for _ in range(2)]
    await fmq.waiting(6)
    fmq.process.send_signal(signal.SIGTERM)
    assert await codes(calls) == [503] * 6
    assert await fmq.exited() == 0
    assert fmq.files() == sorted([request_file(fmq, b"/t1").name, request_file(fmq, b"/t2").name])
    await fmq.start()
    assert (await fmq.health())["broker"]["in_flight"] == 2
    backend.release()
    assert await answers([fmq.get("/t1")]) == [(200, b"after restart")]


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_slow_reader_have_its_whole_answer(make_fmq) -> None:
    """
    SIGTERM while a 20 MB answer is being written to a slow reader: the
    reader gets every byte its Content-Length promised, then fmq exits 0.
    """
    fmq = await make_fmq(http={"drain_timeout": PATIENCE})
    body = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    reader = SlowReader(fmq.port, b"/big")
    request = request_file(fmq, b"/big")
    await eventually(request.exists, "the request file")
    written = request.with_name("answer.tmp")
    written.write_bytes(b"200\n" + body)
    written.rename(request.with_suffix(".resp"))
    await eventually(lambda: reader.received >= 1 << 20, "the first megabyte")

    fmq.process.send_signal(signal.SIGTERM)
    await eventually(lambda: "stopping: answered" in fmq.log_text(), "the drain to begin")
    reader.go.set()
    assert await fmq.exited() == 0
    await eventually(lambda: reader.done, "the reader to finish")
    assert reader.error is None
    head, _, got = reader.data.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head.lower()
    assert len(got) == len(body)
    assert got == body


@pytest_twisted.ensureDeferred
async def test_raises_open_files_limit(make_fmq) -> None:
    """
    Started from a shell with C{ulimit -Sn 1024}, fmq raises its soft limit of
    open files to the hard limit and logs both.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    fmq = await make_fmq(shell="ulimit -Sn 1024")
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert f"open files limit raised from 1024 to {expected}" in fmq.log_text()
    with open(f"/proc/{fmq.process.pid}/limits") as limits:
        [line] = [line for line in limits if line.startswith("Max open files")]
    assert line.split()[3] == expected
