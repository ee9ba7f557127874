"""
C{scripts/bench}: start fmq, the stand-in backend and a bare Klein app on
temporary directories, measure them side by side, and print the tables that
C{docs/BENCHMARKS.md} records. With C{--interpreters cpython,pypy3} (or
C{--python pypy3}) fmq and the bare Klein app run on each interpreter, from its
own virtualenv; the stand-in backend and the load always run on this one.

1. Throughput against the ceiling: C{wrk} with 500 connections on 10 hot keys,
   against fmq (collapse mode, backend answering in about 5 ms), a bare Klein
   app (L{fmq.tools.ceiling}), and the same app holding its answers 30 ms; medians
   of alternating runs, the ratios, and each one's CPU per request; each one
   warmed up first (C{--warmup} seconds), and how long it took to come within
   10% of its plateau; fmq's RSS idle and under load; fmq on each interpreter
   against fmq on the first.
2. Naive against collapse on the same burst (20 keys x 50 identical callers).
3. A burst of 20,000 (50 keys x 100 x 4 rounds, 2,000 at a time), five times
   in a row: every answer checked, broker requests per batch, threads, RSS
   after each burst against RSS after a warm-up.
4. Added latency from the backend's rename to the caller's answer, polling
   against inotify, one request at a time.
5. One scan's cost with 100 requests in flight, with and without 20,000
   unrelated files in the directory.
6. Over RabbitMQ: throughput with one fmq instance and with two sharing one
   request queue.
7. What waiting costs: fmq's CPU share with 1,000 and 10,000 distinct
   requests waiting and no backend answering, with inotify and polling; and
   its RSS per waiting caller with 10,000 waiting on 100 keys (C{fmq-loadtest
   --hold}).
8. A fleet: three instances on RabbitMQ, a backend answering in 0.2 s, a
   burst of 50 keys x 100 callers x 4 rounds (each round's 5,000 at once)
   spread over all three, with C{[fleet] registry} off and on (Redis),
   alternating: broker requests per batch, throughput, p50/p99, and how much
   later a follower gets an answer than the holder's callers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil

from fmq.tools.loadtest import Call, Sampler, Shape, call, raise_own_limit, step

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/hot" .. (counter %% %(keys)d) .. "?x=1")
end
"""


#: the project's folder: the processes started import its C{fmq} package,
#: and its virtualenvs are there (C{scripts/bench} names it, as this file
#: may be an installed copy)
SOURCE = Path(os.environ.get("FMQ_ROOT") or Path(__file__).resolve().parent.parent.parent)

#: PyPy's young generation when the environment sets none, as C{scripts/run}
PYPY_GC_NURSERY = "16MB"


@attrs.frozen
class Interpreter:
    """
    A Python that fmq and the bare Klein app run on, through its own
    virtualenv: C{.venv} for C{cpython}, C{.venv-pypy3} for C{pypy3}, as
    C{FMQ_PYTHON=pypy3 ./scripts/run} makes them.

    @ivar name: C{cpython}, or the command C{FMQ_PYTHON} would name.
    @ivar bin: the virtualenv's C{bin} folder.
    @ivar pypy: whether it is PyPy.
    @ivar env: what the processes started on it get in their environment.
    """

    name: str
    bin: Path
    pypy: bool
    env: dict[str, str] = attrs.field(eq=False)

    @classmethod
    def named(cls, name: str) -> Interpreter:
        """
        The interpreter C{name}, its virtualenv made and the project
        installed into it if it has none yet (through C{scripts/_venv.sh}).
        """
        venv = SOURCE / (".venv" if name == "cpython" else f".venv-{Path(name).name}")
        if not (venv / "bin" / "twistd").exists():
            print(f"bench: making {venv} for {name}", file=sys.stderr)
            env = dict(os.environ)
            env.pop("FMQ_PYTHON", None)
            if name != "cpython":
                env["FMQ_PYTHON"] = name
            subprocess.run(
                ["bash", "-c", 'source scripts/_venv.sh && install_project ""'],
                cwd=SOURCE, env=env, check=True,
            )  # fmt: skip
        pypy = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import platform; print(platform.python_implementation())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip() == "PyPy"  # fmt: skip
        env = {}
        if pypy:
            env["PYPY_GC_NURSERY"] = os.environ.get("PYPY_GC_NURSERY", PYPY_GC_NURSERY)
            for name_ in ("PYPY_GC_MAX", "PYPY_GC_MAJOR_COLLECT", "PYPY_GC_GROWTH"):
                if name_ in os.environ:
                    env[name_] = os.environ[name_]
        return cls(name, venv / "bin", pypy, env)


def free_port() -> int:
    """
    A TCP port free on 127.0.0.1 now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """
    Processes started for one measurement, all stopped at the end.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, command: list[str], interpreter: Interpreter | None = None
    ) -> subprocess.Popen[bytes]:
        """
        Start C{command}, its output in C{<name>.log} in the work folder;
        with C{interpreter}'s environment (its GC settings) if given.
        """
        log = open(self.workdir / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(SOURCE))
        if interpreter is not None:
            env.update(interpreter.env)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.processes.append(process)
        return process

    def fmq(
        self,
        mode: str,
        directory: Path,
        interpreter: Interpreter | None = None,
        **extra: dict[str, object],
    ) -> tuple[int, int, int]:
        """
        Start fmq (on C{interpreter}, else on this Python); return its port,
        admin port and pid once it answers.
        """
        port, admin = free_port(), free_port()
        sections: dict[str, dict[str, object]] = {
            "http": {"port": port},
            "broker": {"directory": directory},
            "service": {"mode": mode},
            "admin": {"port": admin},
        }
        for section, values in extra.items():
            sections.setdefault(section, {}).update(values)
        ini = self.workdir / f"fmq-{port}.ini"
        ini.write_text(
            "".join(
                f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                for s, values in sections.items()
            )
        )
        bin = interpreter.bin if interpreter is not None else Path(sys.executable).parent
        process = self.spawn(
            "fmq",
            [str(bin / "twistd"), "-n", "--pidfile=", "fmq", "--config", str(ini)],
            interpreter,
        )
        wait_for_port(admin, process)
        return port, admin, process.pid

    def backend(self, directory: Path, delay: float) -> None:
        """
        Start the stand-in backend on C{directory}, answering after C{delay}.
        """
        self.spawn(
            "backend",
            [sys.executable, "-m", "fmq.tools.backend", "--dir", str(directory),
             "--delay", str(delay), "--poll", "0.002"],
        )  # fmt: skip

    def ceiling(self, defer: float = 0.0, interpreter: Interpreter | None = None) -> int:
        """
        Start the bare Klein app (holding answers C{defer} seconds, on
        C{interpreter}, else on this Python); return its port.
        """
        port = free_port()
        python = interpreter.bin / "python" if interpreter is not None else Path(sys.executable)
        process = self.spawn(
            "ceiling",
            [str(python), "-m", "fmq.tools.ceiling", "--port", str(port), "--defer", str(defer)],
            interpreter,
        )
        wait_for_port(port, process)
        return port

    def stop(self) -> None:
        """
        Stop every process started, killing those that do not stop.
        """
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextlib.contextmanager
def stack(root: Path) -> Iterator[Stack]:
    """
    A L{Stack} in a fresh folder under C{root}, stopped on the way out.
    """
    workdir = Path(tempfile.mkdtemp(dir=root))
    started = Stack(workdir)
    try:
        yield started
    finally:
        started.stop()


def wait_for_port(port: int, process: subprocess.Popen[bytes], patience: float = 30) -> None:
    """
    Wait until something listens on C{port}, or fail if C{process} exits.
    """
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {process.args!r} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port} after {patience}s")


def wrk(
    port: int, seconds: float, connections: int, keys: int, workdir: Path, pid: int | None = None
) -> tuple[float, float, float]:
    """
    Requests per second that C{wrk} got from C{port}; the CPU time the
    process C{pid} spent per request, in microseconds, and its largest RSS
    meanwhile, in MB (sampled every 0.25 s).
    """
    import threading

    process = psutil.Process(pid) if pid else None
    cpu_before = sum(process.cpu_times()[:2]) if process else 0.0
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while process is not None and not done.wait(0.25):
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    script = workdir / "hot.lua"
    script.write_text(WRK_SCRIPT % {"keys": keys})
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
             f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        done.set()
        sampler.join()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  wrk saw {errors.group(1)} non-2xx answers", file=sys.stderr)
    cpu = sum(process.cpu_times()[:2]) - cpu_before if process else 0.0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    return (
        float(rate.group(1)),
        round(cpu / max(1, int(count.group(1))) * 1e6, 1),
        round(peak[0], 1),
    )


@contextlib.contextmanager
def alone(running: list[int], others: list[int]) -> Iterator[None]:
    """
    Stop (C{SIGSTOP}) the processes C{others} but those in C{running} while in
    the block, so that idle targets (a backend polling its directory, another
    interpreter's fmq) take no CPU from the one measured.
    """
    stopped = []
    for pid in others:
        if pid not in running:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).suspend()
                stopped.append(pid)
    try:
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).resume()


def warm_up(args: argparse.Namespace, port: int, workdir: Path, pid: int) -> dict[str, Any]:
    """
    Load C{port} for C{--warmup} seconds, one second at a time, and say when
    its throughput came within 10% of its plateau (the median of the last
    three seconds): PyPy's JIT needs seconds of load before full speed.
    """
    rates = []
    for _ in range(args.warmup):
        rate, _, _ = wrk(port, 1, args.connections, args.hot_keys, workdir, pid)
        rates.append(rate)
    plateau = statistics.median(rates[-3:])
    reached = next(n for n, rate in enumerate(rates) if rate >= 0.9 * plateau)
    return {"per_second": rates, "plateau": plateau, "seconds_to_plateau": reached + 1}


def ceiling_ratio(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    fmq (collapse) against the bare Klein app on each interpreter,
    alternating, medians; each one warmed up first, and the time it took.
    """
    names = ["fmq", *(["polled"] if args.status_poll else []), "klein", "held"]
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    targets: dict[tuple[str, str], tuple[int, int, list[int]]] = {}
    result: dict[str, Any] = {"interpreters": {}}
    with stack(root) as s:
        for interpreter in args.interpreters:
            i = interpreter.name
            directory = s.workdir / f"broker-{i}"
            port, admin, pid = s.fmq("collapse", directory, interpreter)
            s.backend(directory, 0.005)
            time.sleep(1)
            result["interpreters"][i] = {
                "rss_mb_idle": round(psutil.Process(pid).memory_info().rss / 2**20, 1),
                "gc": interpreter.env,
                "admin": admin,
            }
            group = [pid, s.processes[-1].pid]
            targets[i, "fmq"] = (port, pid, group)
            if args.status_poll:
                targets[i, "polled"] = (port, pid, group)
            for name, defer in [("klein", 0.0), ("held", 0.03)]:
                p = s.ceiling(defer, interpreter)
                targets[i, name] = (p, s.processes[-1].pid, [s.processes[-1].pid])
        everyone = [p.pid for p in s.processes]
        for (i, name), (port, pid, group) in targets.items():
            runs[i, name] = []
            if name == "polled":
                continue
            with alone(group, everyone):
                result["interpreters"][i][f"{name}_warmup"] = w = warm_up(
                    args, port, s.workdir, pid
                )
            print(f"  {i} {name}: within 10% of its plateau ({w['plateau']:.0f} req/s) "
                  f"after {w['seconds_to_plateau']} s of load")  # fmt: skip
        for _ in range(args.repeats):
            for (i, name), (port, pid, group) in targets.items():
                admin = result["interpreters"][i]["admin"]
                with alone(group, everyone), poll_status(admin if name == "polled" else None):
                    runs[i, name].append(
                        wrk(port, args.seconds, args.connections, args.hot_keys, s.workdir, pid)
                    )
            print(
                "  "
                + ", ".join(
                    f"{i} {name} {rate:.0f} req/s ({cpu} µs CPU/request)"
                    for (i, name), [*_, (rate, cpu, _)] in runs.items()
                )
            )
    for i, r in result["interpreters"].items():
        del r["admin"]
        for name in names:
            rows = runs[i, name]
            r[f"{name}_req_per_s"] = [rate for rate, _, _ in rows]
            r[f"{name}_cpu_us"] = [cpu for _, cpu, _ in rows]
            r[f"{name}_median"] = statistics.median(r[f"{name}_req_per_s"])
            r[f"{name}_cpu_us_median"] = statistics.median(r[f"{name}_cpu_us"])
        r["rss_mb_load"] = max(rss for _, _, rss in runs[i, "fmq"])
        if args.status_poll:
            r["ratio_polled_klein"] = round(r["polled_median"] / r["klein_median"], 3)
        for name in ("klein", "held"):
            r[f"ratio_{name}"] = round(r["fmq_median"] / r[f"{name}_median"], 3)
            r[f"cpu_ratio_{name}"] = round(r[f"{name}_cpu_us_median"] / r["fmq_cpu_us_median"], 3)
    names_run = [interpreter.name for interpreter in args.interpreters]
    if len(names_run) > 1:
        first = names_run[0]
        for other in names_run[1:]:
            # each run against the run of the first interpreter in the same round
            pairs = zip(runs[other, "fmq"], runs[first, "fmq"])
            result[f"fmq_{other}_over_{first}"] = {
                "each": [round(a[0] / b[0], 2) for a, b in pairs],
                "of_medians": round(
                    result["interpreters"][other]["fmq_median"]
                    / result["interpreters"][first]["fmq_median"],
                    2,
                ),
            }
    return result


@contextlib.contextmanager
def poll_status(admin: int | None) -> Iterator[None]:
    """
    While in the block, fetch C{/status.json} from C{admin} once a second,
    as the status page does; nothing if C{admin} is None.
    """
    if admin is None:
        yield
        return
    import threading
    import urllib.request

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status.json") as response:
                response.read()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def burst_args(port: int, admin: int, keys: int, batch: int) -> argparse.Namespace:
    """
    The arguments L{fmq.tools.loadtest.step} wants, for a burst of C{keys} x C{batch}.
    """
    return argparse.Namespace(
        host="127.0.0.1",
        port=port,
        admin_port=admin,
        keys=keys,
        batch=batch,
        timeout=120.0,
        shape=Shape(),
    )


def naive_vs_collapse(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    The same burst (20 keys x 50 identical callers, all at once) in both modes.
    """
    rows = {}
    for mode in ("naive", "collapse"):
        with stack(root) as s:
            directory = s.workdir / "broker"
            port, admin, pid = s.fmq(mode, directory)
            s.backend(directory, 0.005)
            sampler = Sampler(pid)
            rows[mode] = asyncio.run(step(burst_args(port, admin, 20, 50), sampler, 1000, [0]))
            print(f"  {mode}: {rows[mode]['seconds']} s, {rows[mode]['broker_requests']} "
                  f"broker requests, {rows[mode]['errors']} errors")  # fmt: skip
    return {
        "rows": rows,
        "wall_ratio": round(rows["naive"]["seconds"] / rows["collapse"]["seconds"], 2),
        "broker_request_ratio": round(
            rows["naive"]["broker_requests"] / max(1, rows["collapse"]["broker_requests"]), 2
        ),
    }


def bursts(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    On each interpreter: a warm-up, then five bursts of 20,000 (50 keys x 100
    x 4 rounds, 2,000 at a time) on one fmq; RSS after each burst against
    RSS after the warm-up.
    """
    results = {}
    for interpreter in args.interpreters:
        with stack(root) as s:
            directory = s.workdir / "broker"
            port, admin, pid = s.fmq("collapse", directory, interpreter)
            s.backend(directory, 0.005)
            sampler = Sampler(pid)
            time.sleep(1)
            idle = sampler.sample("idle")["rss_mb"]
            asyncio.run(step(burst_args(port, admin, 50, 40), sampler, 2000, [1000]))
            time.sleep(1)
            warm = sampler.sample("warm")["rss_mb"]
            rows = []
            for n in range(args.bursts):
                rounds = list(range(n * 4, n * 4 + 4))
                row = asyncio.run(step(burst_args(port, admin, 50, 100), sampler, 2000, rounds))
                time.sleep(1)
                row["rss_mb_settled"] = round(sampler.sample()["rss_mb"], 1)
                rows.append(row)
                print(f"  {interpreter.name} burst {n + 1}: {row['requests']} requests, "
                      f"{row['errors']} errors, {row['broker_requests']} broker requests for "
                      f"{row['batches']} batches, {row['req_per_s']} req/s, "
                      f"RSS {row['rss_mb_settled']} MB")  # fmt: skip
        results[interpreter.name] = {
            "rss_mb_idle": round(idle, 1),
            "rss_mb_after_warmup": round(warm, 1),
            "bursts": rows,
        }
    return results


async def _added_latency(port: int, directory: Path, count: int, jitter: float) -> list[float]:
    """
    Seconds from the backend's rename of each answer to the caller's answer,
    one request at a time, the bench playing the backend.
    """
    from fmq.protocol import broker_key

    added = []
    for n in range(count):
        target = f"/latency{n}"
        request = directory / f"{broker_key(b'GET', target.encode())}.req"
        caller = asyncio.ensure_future(call("127.0.0.1", port, Call("GET", target), 30.0))
        while not request.exists():
            await asyncio.sleep(0.0005)
        if jitter:  # a backend's answer comes at any moment, not in step with fmq's scans
            await asyncio.sleep(random.uniform(0, jitter))
        temp = directory / f".bench-{n}"
        temp.write_bytes(b"200\nfast")
        renamed = time.monotonic()
        os.rename(temp, request.with_suffix(".resp"))
        outcome = await caller
        if outcome.status != 200:
            raise SystemExit(f"bench: latency probe got {outcome.status} {outcome.error}")
        added.append(time.monotonic() - renamed)
    return added


def latency(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    Added latency, poll against inotify, with the service otherwise idle.
    """
    results = {}
    for name, broker, jitter in [
        ("poll, poll_interval 0.05, answer 0–60 ms after the request",
         {"watch": "poll", "poll_interval": 0.05}, 0.06),
        ("inotify, poll_interval 0.05, answer 0–60 ms after the request",
         {"watch": "inotify", "poll_interval": 0.05}, 0.06),
        ("inotify, poll_interval 0.05, answer at once",
         {"watch": "inotify", "poll_interval": 0.05}, 0.0),
        ("inotify, poll_interval 2, answer at once",
         {"watch": "inotify", "poll_interval": 2}, 0.0),
    ]:  # fmt: skip
        with stack(root) as s:
            directory = s.workdir / "broker"
            port, _, _ = s.fmq("collapse", directory, broker=broker)
            added = asyncio.run(_added_latency(port, directory, args.probes, jitter))
        ms = sorted(a * 1000 for a in added)
        results[name] = {
            "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "max_ms": round(ms[-1], 2),
        }
        print(f"  {name}: {results[name]}")
    return results


def scan_cost(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    One scan's cost with 100 requests in flight, with and without 20,000
    unrelated files in the directory.
    """
    from twisted.internet.task import Clock

    from fmq.brokers.file import FileBroker
    from fmq.protocol import BrokerRequest

    results = {}
    for unrelated in (0, 20_000):
        directory = Path(tempfile.mkdtemp(dir=root))
        for n in range(unrelated):
            (directory / f"unrelated-{n}.dat").write_bytes(b"x")
        broker = FileBroker(directory, Clock(), poll_interval=1, request_ttl=300,
                            settle_time=0.2, delete_retry_max=1)  # fmt: skip
        broker.startService()
        for n in range(100):
            broker.submit(BrokerRequest.of(b"GET", b"/inflight%d" % n)).addErrback(lambda f: None)
        started = time.perf_counter()
        for _ in range(100):
            broker._scan_safely()
        results[f"{unrelated} unrelated files"] = round(
            (time.perf_counter() - started) / 100 * 1000, 3
        )
        broker.stopService()
        shutil.rmtree(directory)
    print(f"  one scan with 100 requests in flight, ms: {results}")
    return results


async def _cpu_while_waiting(
    port: int, admin: int, pid: int, count: int, seconds: float
) -> dict[str, Any]:
    """
    Hold C{count} callers of distinct targets, each on its own connection,
    until fmq reports them all waiting; then fmq's CPU share over C{seconds}.
    """
    from fmq.tools.loadtest import metrics_of

    writers: list[asyncio.StreamWriter] = []

    async def one(n: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /waiting/{n} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        writers.append(writer)

    try:
        for start in range(0, count, 500):
            await asyncio.gather(*(one(n) for n in range(start, min(count, start + 500))))
        deadline = time.monotonic() + 120
        while (await metrics_of("127.0.0.1", admin)).get("fmq_callers_waiting", 0) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {count} callers never all waited")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # let the burst of arrivals pass
        process = psutil.Process(pid)
        cpu, started = sum(process.cpu_times()[:2]), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, elapsed = sum(process.cpu_times()[:2]) - cpu, time.monotonic() - started
    finally:
        for writer in writers:
            writer.close()
    return {"callers": count, "seconds": round(elapsed, 1), "cpu_share": round(cpu / elapsed, 4)}


def waiting_cost(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    On each interpreter, fmq's CPU share, as a fraction of one core, while
    distinct requests wait and nothing answers them: with 1,000 and 10,000
    waiting, with inotify (the default) and polling only. Then its memory
    per waiting caller: C{fmq-loadtest --hold 10000 --keys 100}, the backend
    answering after 20 s.
    """
    from fmq.tools.loadtest import hold

    results: dict[str, Any] = {}
    for interpreter in args.interpreters:
        rows: dict[str, Any] = {}
        for watch, count in [("inotify", 1_000), ("inotify", 10_000), ("poll", 10_000)]:
            with stack(root) as s:
                port, admin, pid = s.fmq(
                    "collapse",
                    s.workdir / "broker",
                    interpreter,
                    http={"request_timeout": 3600},
                    broker={"request_ttl": 3600, "watch": watch},
                )
                row = asyncio.run(_cpu_while_waiting(port, admin, pid, count, args.idle_seconds))
            name = f"{count} waiting, {watch}"
            rows[name] = row
            print(f"  {interpreter.name} {name}: {row['cpu_share'] * 100:.1f}% of a core "
                  f"over {row['seconds']} s")  # fmt: skip
        with stack(root) as s:
            directory = s.workdir / "broker"
            port, admin, pid = s.fmq("collapse", directory, interpreter)
            s.backend(directory, 20.0)
            time.sleep(1)
            held = asyncio.run(
                hold(
                    argparse.Namespace(
                        host="127.0.0.1", port=port, admin_port=admin, hold=10_000, keys=100,
                        timeout=120.0, shape=Shape(),
                    ),
                    Sampler(pid),
                )
            )  # fmt: skip
        rows["hold"] = {
            "rss_mb_idle": round(held["idle"].get("rss_mb", 0), 1),
            "rss_mb_waiting": round(held["peak"].get("rss_mb", 0), 1),
            "rss_mb_after": round(held["after"].get("rss_mb", 0), 1),
            "kb_per_waiting_caller": held["kb_per_waiting_caller"],
            "errors": held["errors"],
        }
        print(f"  {interpreter.name} 10,000 waiting on 100 keys: {rows['hold']}")
        results[interpreter.name] = rows
    return results


def scale_out(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    Throughput over RabbitMQ with one fmq instance, and with two on one queue
    (each loaded by its own C{wrk}, half the connections each), one backend.
    """
    import pika

    queue = f"fmq.bench.{os.getpid()}"
    amqp = {"broker": {"type": "amqp"}, "amqp": {"url": args.amqp_url, "request_queue": queue}}
    results: dict[str, Any] = {"one": [], "two": []}
    try:
        with stack(root) as s:
            first = args.interpreters[0]
            ports = [
                s.fmq("collapse", s.workdir / f"unused{n}", first, **amqp)[0] for n in range(2)
            ]
            backend = ["--broker", "amqp", "--url", args.amqp_url, "--queue", queue]
            s.spawn(
                "backend", [sys.executable, "-m", "fmq.tools.backend", *backend, "--delay", "0.005"]
            )
            time.sleep(2)
            wrk(ports[0], 2, args.connections, args.hot_keys, s.workdir)  # warm-up
            for _ in range(args.repeats):
                rate, _, _ = wrk(ports[0], args.seconds, args.connections, args.hot_keys, s.workdir)
                results["one"].append(rate)
                both = [
                    subprocess.Popen(
                        ["wrk", "-t1", f"-c{args.connections // 2}", f"-d{args.seconds}s",
                         "-s", str(s.workdir / "hot.lua"), f"http://127.0.0.1:{port}/"],
                        stdout=subprocess.PIPE, text=True,
                    )
                    for port in ports
                ]  # fmt: skip
                total = 0.0
                for process in both:
                    out, _ = process.communicate()
                    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
                    total += float(match.group(1)) if match else 0.0
                results["two"].append(round(total, 1))
                print(f"  one instance {rate:.0f} req/s, two instances {total:.0f} req/s")
    finally:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
            connection.channel().queue_delete(queue=queue)
            connection.close()
        except Exception as e:
            print(f"  could not delete queue {queue}: {e}", file=sys.stderr)
    results["one_median"] = statistics.median(results["one"])
    results["two_median"] = statistics.median(results["two"])
    results["ratio"] = round(results["two_median"] / results["one_median"], 2)
    return results


def fleet(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    Three instances on one request queue, fleet collapse off and on
    (C{--redis-url}), one backend each answering after C{--fleet-delay};
    alternating bursts, medians.
    """
    import pika

    queues = {mode: f"fmq.bench.fleet.{os.getpid()}.{mode}" for mode in ("off", "on")}
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    extra: list[float] = []
    shared = 0
    try:
        with stack(root) as s:
            fleets: dict[str, Any] = {}
            for mode, queue in queues.items():
                sections: dict[str, dict[str, object]] = {
                    "broker": {"type": "amqp"},
                    "amqp": {"url": args.amqp_url, "request_queue": queue},
                }
                if mode == "on":
                    sections["fleet"] = {"registry": args.redis_url}
                started = [
                    s.fmq("collapse", s.workdir / f"unused-{mode}{n}", None, **sections)
                    for n in range(3)
                ]
                s.spawn(
                    f"backend-{mode}",
                    [sys.executable, "-m", "fmq.tools.backend", "--broker", "amqp",
                     "--url", args.amqp_url, "--queue", queue,
                     "--delay", str(args.fleet_delay)],
                )  # fmt: skip
                fleets[mode] = argparse.Namespace(
                    host="127.0.0.1",
                    port=started[0][0],
                    admin_port=started[0][1],
                    targets=[("127.0.0.1", port) for port, _, _ in started],
                    admins=[("127.0.0.1", admin) for _, admin, _ in started],
                    keys=50,
                    batch=100,
                    timeout=120.0,
                    shape=Shape(),
                )
            time.sleep(2)
            sampler = Sampler(None)
            for mode in runs:  # warm-up
                asyncio.run(step(fleets[mode], sampler, 5000, [10_000]))
            for n in range(args.repeats):
                for mode in runs:
                    rounds = list(range(4 * n, 4 * n + 4))
                    row = asyncio.run(step(fleets[mode], sampler, 5000, rounds))
                    runs[mode].append(row)
                    print(
                        f"  fleet {mode}: {row['broker_requests_per_batch']} broker requests "
                        f"per batch, {row['req_per_s']} req/s, p50 {row['p50_ms']} ms, "
                        f"p99 {row['p99_ms']} ms, {row['errors']} errors"
                    )
            on = fleets["on"].targets
            extra, shared = asyncio.run(_follower_extra(on[0], on[1], args.probes))
    finally:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
            for queue in queues.values():
                connection.channel().queue_delete(queue=queue)
            connection.close()
        except Exception as e:
            print(f"  could not delete the bench queues: {e}", file=sys.stderr)
    result: dict[str, Any] = {"runs": runs, "delay_s": args.fleet_delay}
    for mode, rows in runs.items():
        for key in ("broker_requests_per_batch", "req_per_s", "p50_ms", "p99_ms", "errors"):
            result[f"{mode}_{key}"] = statistics.median(r[key] for r in rows)
    result["throughput_ratio"] = round(result["on_req_per_s"] / result["off_req_per_s"], 3)
    result["follower_extra_ms"] = {
        "p50": round(statistics.median(extra) * 1000, 2) if extra else None,
        "p99": round(_percentile(extra, 99) * 1000, 2) if extra else None,
        "probes": len(extra),
        "shared": shared,
    }
    print(f"  follower's extra latency: {result['follower_extra_ms']}")
    return result


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _follower_extra(
    holder: tuple[str, int], follower: tuple[str, int], probes: int
) -> tuple[list[float], int]:
    """
    For each probe, one caller on C{holder}, then 5 ms later one on
    C{follower} for the same new key: how much later the follower's answer
    comes than the holder's, for the probes it shared.
    """
    extra = []
    shared = 0
    for n in range(probes):
        target = f"/probe{n}?t={time.time_ns()}"

        async def timed(where: tuple[str, int], target: str = target) -> tuple[float, bytes]:
            outcome = await call(where[0], where[1], Call("GET", target), 30.0)
            return time.monotonic(), outcome.body

        first = asyncio.ensure_future(timed(holder))
        await asyncio.sleep(0.005)
        (done_first, body_first), (done_second, body_second) = await asyncio.gather(
            first, timed(follower)
        )
        if body_first == body_second and body_first:
            shared += 1
            extra.append(done_second - done_first)
    return extra, shared


def markdown(results: dict[str, Any]) -> str:
    """
    The tables of C{docs/BENCHMARKS.md}.
    """
    lines = []
    c = results.get("ceiling")
    for i, r in (c or {}).get("interpreters", {}).items():
        lines += [
            f"On {i} ({', '.join(f'{k}={v}' for k, v in r['gc'].items()) or 'default GC'}):",
            "",
            "| | req/s, each run | median req/s | CPU µs per request, each run | median |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, label in [
            ("fmq", "fmq, collapse"),
            *([("polled", "fmq, /status.json polled 1/s")] if "polled_median" in r else []),
            ("klein", "bare Klein (the ceiling)"),
            ("held", "bare Klein holding answers 30 ms"),
        ]:
            lines.append(
                f"| {label} | {', '.join(f'{x:.0f}' for x in r[f'{name}_req_per_s'])} "
                f"| {r[f'{name}_median']:.0f} | {', '.join(str(u) for u in r[f'{name}_cpu_us'])} "
                f"| {r[f'{name}_cpu_us_median']} |"
            )
        lines += [
            f"| **fmq / bare Klein** | | **{r['ratio_klein']}** | | **{r['cpu_ratio_klein']}** |",
            f"| fmq / Klein holding answers | | {r['ratio_held']} | | {r['cpu_ratio_held']} |",
            *(
                [f"| fmq polled / bare Klein | | {r['ratio_polled_klein']} | | |"]
                if "ratio_polled_klein" in r
                else []
            ),
            "",
            "(CPU ratios: the other's CPU per request divided by fmq's.)",
            "",
            f"fmq's RSS: {r['rss_mb_idle']} MB idle, {r['rss_mb_load']} MB at most under load. "
            "Seconds of load until within 10% of the plateau: "
            + ", ".join(
                f"{name} {r[f'{name}_warmup']['seconds_to_plateau']} s "
                f"({r[f'{name}_warmup']['plateau']:.0f} req/s)"
                for name in ("fmq", "klein", "held")
            )
            + ".",
            "",
        ]
    for key, value in (c or {}).items():
        if key.startswith("fmq_") and "_over_" in key:
            lines += [
                f"{key}: {value['of_medians']} (medians), each round: "
                f"{', '.join(str(x) for x in value['each'])}",
                "",
            ]
    n = results.get("naive_vs_collapse")
    if n:
        keys = ["seconds", "req_per_s", "p50_ms", "p99_ms", "broker_requests", "errors",
                "threads_max", "rss_mb_max", "rss_mb_after"]  # fmt: skip
        lines += ["| | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
        for mode, row in n["rows"].items():
            lines.append(f"| {mode} | " + " | ".join(str(row[k]) for k in keys) + " |")
        lines += [
            f"| naive / collapse | {n['wall_ratio']} (wall) | | | "
            f"| {n['broker_request_ratio']} | | | | |",
            "",
        ]
    lat = results.get("latency")
    if lat:
        lines += [
            "| added latency, backend's rename to caller's answer | p50 ms | p99 ms | max ms |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |" for name, r in lat.items()
        ]
        lines.append("")
    sc = results.get("scan_cost")
    if sc:
        lines += ["| one scan, 100 requests in flight | ms |", "| --- | --- |"]
        lines += [f"| {name} | {ms} |" for name, ms in sc.items()]
        lines.append("")
    so = results.get("scale_out")
    if so:
        lines += [
            "| over RabbitMQ | req/s, each run | median |",
            "| --- | --- | --- |",
            f"| one fmq | {', '.join(f'{r:.0f}' for r in so['one'])} | {so['one_median']:.0f} |",
            f"| two fmq, one queue | {', '.join(f'{r:.0f}' for r in so['two'])} "
            f"| {so['two_median']:.0f} |",
            f"| two / one | | {so['ratio']} |",
            "",
        ]
    for i, w in results.get("waiting_cost", {}).items():
        lines += [
            f"| {i}: distinct requests waiting, nothing answered | fmq's CPU, % of one core |",
            "| --- | --- |",
        ]
        lines += [
            f"| {name} | {r['cpu_share'] * 100:.1f} |" for name, r in w.items() if name != "hold"
        ]
        h = w["hold"]
        lines += [
            "",
            f"{i}, 10,000 callers waiting on 100 keys: RSS {h['rss_mb_idle']} MB idle, "
            f"{h['rss_mb_waiting']} MB waiting, {h['rss_mb_after']} MB after; "
            f"{h['kb_per_waiting_caller']} KB per waiting caller, {h['errors']} errors.",
            "",
        ]
    f = results.get("fleet")
    if f:
        lines += [
            "| fleet of three | broker requests per batch | req/s | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for mode in ("off", "on"):
            lines.append(
                f"| {mode} | {f[mode + '_broker_requests_per_batch']} "
                f"| {f[mode + '_req_per_s']:.0f} | {f[mode + '_p50_ms']} "
                f"| {f[mode + '_p99_ms']} | {f[mode + '_errors']} |"
            )
        x = f["follower_extra_ms"]
        lines += [
            f"| on / off throughput | | {f['throughput_ratio']} | | | |",
            "",
            f"A follower's answer comes {x['p50']} ms (p50) and {x['p99']} ms (p99) after "
            f"the holder's ({x['shared']} of {x['probes']} probes shared).",
            "",
        ]
    for i, b in results.get("bursts", {}).items():
        keys = ["requests", "seconds", "req_per_s", "p50_ms", "p99_ms", "errors",
                "broker_requests", "batches", "threads_max", "rss_mb_max",
                "rss_mb_settled"]  # fmt: skip
        lines += [
            f"{i}: RSS idle {b['rss_mb_idle']} MB, after warm-up {b['rss_mb_after_warmup']} MB",
            "",
            "| burst | " + " | ".join(keys) + " |",
            "| --- |" + " --- |" * len(keys),
        ]
        for n, row in enumerate(b["bursts"], 1):
            lines.append(f"| {n} | " + " | ".join(str(row[k]) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


#: each part of the bench: its --only name, its key in the results, its title
PARTS = [
    ("ceiling", "ceiling", "throughput against the bare Klein ceiling", ceiling_ratio),
    ("naive", "naive_vs_collapse", "naive against collapse", naive_vs_collapse),
    ("bursts", "bursts", "bursts of 20,000", bursts),
    ("latency", "latency", "added latency: poll against inotify", latency),
    ("scan", "scan_cost", "scan cost", scan_cost),
    ("amqp", "scale_out", "scale-out over RabbitMQ: one instance, two", scale_out),
    ("waiting", "waiting_cost", "what waiting costs: CPU with requests waiting", waiting_cost),
    ("fleet", "fleet", "a fleet of three: collapsing across instances off and on", fleet),
]


def main(argv: list[str] | None = None) -> int:
    """
    C{scripts/bench}: run the parts asked for, print their tables, save the JSON.
    """
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        choices=[part for part, *_ in PARTS],
        action="append",
        help="run only these parts (default: all)",
    )
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run")
    parser.add_argument("--repeats", type=int, default=5, help="wrk runs of each, alternating")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--hot-keys", type=int, default=10)
    parser.add_argument(
        "--status-poll",
        action="store_true",
        help="ceiling: also run fmq with /status.json fetched once a second, alternating",
    )
    parser.add_argument(
        "--interpreters",
        default="cpython",
        help="comma-separated: run fmq and the bare Klein app on each, e.g. cpython,pypy3 "
        "(each from its own virtualenv, .venv or .venv-pypy3, made if missing; PyPy with "
        f"PYPY_GC_NURSERY={PYPY_GC_NURSERY} unless the environment sets it) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--python", help="the same as --interpreters with one name, e.g. --python pypy3"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=12,
        help="ceiling: seconds of load (in 1 s runs) before measuring, to find the plateau",
    )
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--probes", type=int, default=200, help="latency probes of each")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="CPU sampled this long while waiting"
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="fleet: registry")
    parser.add_argument(
        "--fleet-delay", type=float, default=0.2, help="fleet: the backend's delay, seconds"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm"),
        help="where the temporary directories go (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    names = [args.python] if args.python else args.interpreters.split(",")
    args.interpreters = [Interpreter.named(name.strip()) for name in names if name.strip()]
    if shutil.which("wrk") is None and (not args.only or "ceiling" in args.only):
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    raise_own_limit()
    parts = args.only or [part for part, *_ in PARTS]
    root = Path(tempfile.mkdtemp(prefix="fmq-bench-", dir=args.dir))
    results: dict[str, Any] = {"machine": machine(args.interpreters)}
    try:
        for part, key, title, measure in PARTS:
            if part in parts:
                print(title)
                results[key] = measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))
    return 0


def machine(interpreters: list[Interpreter]) -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    import platform

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "interpreters": {
            i.name: {
                "version": subprocess.run(
                    [str(i.bin / "python"), "-c", "import sys; print(sys.version)"],
                    capture_output=True,
                    text=True,
                ).stdout.strip(),
                "env": i.env,
            }
            for i in interpreters
        },
    }


if __name__ == "__main__":
    sys.exit(main())
