"""
C{scripts/bench}: start fmq, the stand-in backend and a bare Klein app on
temporary directories, measure them side by side, and print the tables that
C{docs/BENCHMARKS.md} records.

1. Throughput against the ceiling: C{wrk} with 500 connections on 10 hot keys,
   against fmq (collapse mode, backend answering in about 5 ms), a bare Klein
   app (L{fmq.tools.ceiling}), and the same app holding its answers 30 ms; medians
   of alternating runs, the ratios, and each one's CPU per request.
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
   requests waiting and no backend answering, with inotify and polling.
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

import psutil

from fmq.tools.loadtest import Call, Sampler, Shape, call, raise_own_limit, step

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/hot" .. (counter %% %(keys)d) .. "?x=1")
end
"""


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

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """
        Start C{command}, its output in C{<name>.log} in the work folder.
        """
        log = open(self.workdir / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.processes.append(process)
        return process

    def fmq(self, mode: str, directory: Path, **extra: dict[str, object]) -> tuple[int, int, int]:
        """
        Start fmq; return its port, admin port and pid once it answers.
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
        twistd = Path(sys.executable).with_name("twistd")
        process = self.spawn("fmq", [str(twistd), "-n", "--pidfile=", "fmq", "--config", str(ini)])
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

    def ceiling(self, defer: float = 0.0) -> int:
        """
        Start the bare Klein app (holding answers C{defer} seconds); return its port.
        """
        port = free_port()
        process = self.spawn(
            "ceiling",
            [sys.executable, "-m", "fmq.tools.ceiling", "--port", str(port), "--defer", str(defer)],
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
    port: int, seconds: int, connections: int, keys: int, workdir: Path, pid: int | None = None
) -> tuple[float, float]:
    """
    Requests per second that C{wrk} got from C{port}, and the CPU time the
    process C{pid} spent per request, in microseconds.
    """
    process = psutil.Process(pid) if pid else None
    cpu_before = sum(process.cpu_times()[:2]) if process else 0.0
    script = workdir / "hot.lua"
    script.write_text(WRK_SCRIPT % {"keys": keys})
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  wrk saw {errors.group(1)} non-2xx answers", file=sys.stderr)
    cpu = sum(process.cpu_times()[:2]) - cpu_before if process else 0.0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    return float(rate.group(1)), round(cpu / max(1, int(count.group(1))) * 1e6, 1)


def ceiling_ratio(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    fmq (collapse) against the bare Klein app, alternating, medians.
    """
    runs: dict[str, list[tuple[float, float]]] = {"fmq": [], "klein": [], "held": []}
    if args.status_poll:
        runs["polled"] = []
    with stack(root) as s:
        directory = s.workdir / "broker"
        port, admin, pid = s.fmq("collapse", directory)
        s.backend(directory, 0.005)
        targets = {"fmq": (port, pid)}
        if args.status_poll:
            targets["polled"] = (port, pid)
        for name, defer in [("klein", 0.0), ("held", 0.03)]:
            targets[name] = (s.ceiling(defer), s.processes[-1].pid)
        for p, _ in targets.values():
            wrk(p, 2, args.connections, args.hot_keys, s.workdir)  # warm-up
        for _ in range(args.repeats):
            for name, (p, process) in targets.items():
                with poll_status(admin if name == "polled" else None):
                    runs[name].append(
                        wrk(p, args.seconds, args.connections, args.hot_keys, s.workdir, process)
                    )
            print(
                "  "
                + ", ".join(
                    f"{name} {rate:.0f} req/s ({cpu} µs CPU/request)"
                    for name, [*_, (rate, cpu)] in runs.items()
                )
            )
    result: dict[str, Any] = {}
    for name in runs:
        result[f"{name}_req_per_s"] = [r for r, _ in runs[name]]
        result[f"{name}_cpu_us"] = [c for _, c in runs[name]]
        result[f"{name}_median"] = statistics.median(result[f"{name}_req_per_s"])
        result[f"{name}_cpu_us_median"] = statistics.median(result[f"{name}_cpu_us"])
    if args.status_poll:
        result["ratio_polled_klein"] = round(result["polled_median"] / result["klein_median"], 3)
    for name in ("klein", "held"):
        result[f"ratio_{name}"] = round(result["fmq_median"] / result[f"{name}_median"], 3)
        result[f"cpu_ratio_{name}"] = round(
            result[f"{name}_cpu_us_median"] / result["fmq_cpu_us_median"], 3
        )
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
    A warm-up, then five bursts of 20,000 (50 keys x 100 x 4 rounds, 2,000 at
    a time) on one fmq; RSS after each burst against RSS after the warm-up.
    """
    with stack(root) as s:
        directory = s.workdir / "broker"
        port, admin, pid = s.fmq("collapse", directory)
        s.backend(directory, 0.005)
        sampler = Sampler(pid)
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
            print(f"  burst {n + 1}: {row['requests']} requests, {row['errors']} errors, "
                  f"{row['broker_requests']} broker requests for {row['batches']} batches, "
                  f"{row['req_per_s']} req/s, RSS {row['rss_mb_settled']} MB")  # fmt: skip
    return {"rss_mb_after_warmup": round(warm, 1), "bursts": rows}


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
    from fmq.loadtest import metrics_of

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
    fmq's CPU share, as a fraction of one core, while distinct requests wait
    and nothing answers them: with 1,000 and 10,000 waiting, with inotify
    (the default) and polling only.
    """
    results = {}
    for watch, count in [("inotify", 1_000), ("inotify", 10_000), ("poll", 10_000)]:
        with stack(root) as s:
            port, admin, pid = s.fmq(
                "collapse",
                s.workdir / "broker",
                http={"request_timeout": 3600},
                broker={"request_ttl": 3600, "watch": watch},
            )
            row = asyncio.run(_cpu_while_waiting(port, admin, pid, count, args.idle_seconds))
        name = f"{count} waiting, {watch}"
        results[name] = row
        print(f"  {name}: {row['cpu_share'] * 100:.1f}% of a core over {row['seconds']} s")
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
            ports = [s.fmq("collapse", s.workdir / f"unused{n}", **amqp)[0] for n in range(2)]
            backend = ["--broker", "amqp", "--url", args.amqp_url, "--queue", queue]
            s.spawn(
                "backend", [sys.executable, "-m", "fmq.tools.backend", *backend, "--delay", "0.005"]
            )
            time.sleep(2)
            wrk(ports[0], 2, args.connections, args.hot_keys, s.workdir)  # warm-up
            for _ in range(args.repeats):
                rate, _ = wrk(ports[0], args.seconds, args.connections, args.hot_keys, s.workdir)
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
                    s.fmq("collapse", s.workdir / f"unused-{mode}{n}", **sections) for n in range(3)
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
    if c:
        lines += [
            "| | req/s, each run | median req/s | CPU µs per request, each run | median |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, label in [
            ("fmq", "fmq, collapse"),
            *([("polled", "fmq, /status.json polled 1/s")] if "polled_median" in c else []),
            ("klein", "bare Klein (the ceiling)"),
            ("held", "bare Klein holding answers 30 ms"),
        ]:
            lines.append(
                f"| {label} | {', '.join(f'{r:.0f}' for r in c[f'{name}_req_per_s'])} "
                f"| {c[f'{name}_median']:.0f} | {', '.join(str(u) for u in c[f'{name}_cpu_us'])} "
                f"| {c[f'{name}_cpu_us_median']} |"
            )
        lines += [
            f"| **fmq / bare Klein** | | **{c['ratio_klein']}** | | **{c['cpu_ratio_klein']}** |",
            f"| fmq / Klein holding answers | | {c['ratio_held']} | | {c['cpu_ratio_held']} |",
            *(
                [f"| fmq polled / bare Klein | | {c['ratio_polled_klein']} | | |"]
                if "ratio_polled_klein" in c
                else []
            ),
            "",
            "(CPU ratios: the other's CPU per request divided by fmq's.)",
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
    w = results.get("waiting_cost")
    if w:
        lines += ["| distinct requests waiting, nothing answered | fmq's CPU, % of one core |",
                  "| --- | --- |"]  # fmt: skip
        lines += [f"| {name} | {r['cpu_share'] * 100:.1f} |" for name, r in w.items()]
        lines.append("")
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
    b = results.get("bursts")
    if b:
        keys = ["requests", "seconds", "req_per_s", "p50_ms", "p99_ms", "errors",
                "broker_requests", "batches", "threads_max", "rss_mb_max",
                "rss_mb_settled"]  # fmt: skip
        lines += [
            f"RSS after warm-up: {b['rss_mb_after_warmup']} MB",
            "",
            "| burst | " + " | ".join(keys) + " |",
            "| --- |" + " --- |" * len(keys),
        ]
        for i, row in enumerate(b["bursts"], 1):
            lines.append(f"| {i} | " + " | ".join(str(row[k]) for k in keys) + " |")
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
    if shutil.which("wrk") is None and (not args.only or "ceiling" in args.only):
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    raise_own_limit()
    parts = args.only or [part for part, *_ in PARTS]
    root = Path(tempfile.mkdtemp(prefix="fmq-bench-", dir=args.dir))
    results: dict[str, Any] = {"machine": machine()}
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


def machine() -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    import platform

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


if __name__ == "__main__":
    sys.exit(main())
