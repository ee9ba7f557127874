"""
C{scripts/bench}: start fmq, the stand-in backend and a bare Klein app on
temporary directories, measure them side by side, and print the tables that
C{docs/BENCHMARKS.md} records.

1. Throughput against the ceiling: C{wrk} with 500 connections on 10 hot keys,
   against fmq (collapse mode, backend answering in about 5 ms) and against a
   bare Klein app (L{fmq.ceiling}); medians of alternating runs, and the ratio.
2. Naive against collapse on the same burst (20 keys x 50 identical callers).
3. A burst of 20,000 (50 keys x 100 x 4 rounds, 2,000 at a time), five times
   in a row: every answer checked, broker requests per batch, threads, RSS
   after each burst against RSS after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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

from fmq.loadtest import Sampler, raise_own_limit, step

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/hot" .. (counter %% %(keys)d) .. "?x=1")
end
"""


def free_port() -> int:
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
        self.spawn(
            "backend",
            [sys.executable, "-m", "fmq.backend", "--dir", str(directory), "--delay", str(delay),
             "--poll", "0.002"],
        )  # fmt: skip

    def ceiling(self) -> int:
        port = free_port()
        process = self.spawn("ceiling", [sys.executable, "-m", "fmq.ceiling", "--port", str(port)])
        wait_for_port(port, process)
        return port

    def stop(self) -> None:
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
    workdir = Path(tempfile.mkdtemp(dir=root))
    started = Stack(workdir)
    try:
        yield started
    finally:
        started.stop()


def wait_for_port(port: int, process: subprocess.Popen[bytes], patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {process.args[0]} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port} after {patience}s")


def wrk(port: int, seconds: int, connections: int, keys: int, workdir: Path) -> float:
    """
    Requests per second that C{wrk} got from C{port}.
    """
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
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    return float(match.group(1))


def ceiling_ratio(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """
    fmq (collapse) against the bare Klein app, alternating, medians.
    """
    fmq_rates, klein_rates = [], []
    with stack(root) as s:
        directory = s.workdir / "broker"
        port, _, _ = s.fmq("collapse", directory)
        s.backend(directory, 0.005)
        klein = s.ceiling()
        wrk(port, 2, args.connections, args.hot_keys, s.workdir)  # warm-up
        wrk(klein, 2, args.connections, args.hot_keys, s.workdir)
        for _ in range(args.repeats):
            fmq_rates.append(wrk(port, args.seconds, args.connections, args.hot_keys, s.workdir))
            klein_rates.append(wrk(klein, args.seconds, args.connections, args.hot_keys, s.workdir))
            print(f"  fmq {fmq_rates[-1]:.0f} req/s, bare Klein {klein_rates[-1]:.0f} req/s")
    fmq_median, klein_median = statistics.median(fmq_rates), statistics.median(klein_rates)
    return {
        "fmq_req_per_s": fmq_rates,
        "klein_req_per_s": klein_rates,
        "fmq_median": fmq_median,
        "klein_median": klein_median,
        "ratio": round(fmq_median / klein_median, 3),
    }


def burst_args(port: int, admin: int, keys: int, batch: int) -> argparse.Namespace:
    return argparse.Namespace(
        host="127.0.0.1", port=port, admin_port=admin, keys=keys, batch=batch, timeout=120.0
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


def markdown(results: dict[str, Any]) -> str:
    """
    The tables of C{docs/BENCHMARKS.md}.
    """
    lines = []
    c = results.get("ceiling")
    if c:
        lines += [
            "| | runs (req/s) | median |",
            "| --- | --- | --- |",
            f"| fmq, collapse | {', '.join(f'{r:.0f}' for r in c['fmq_req_per_s'])} "
            f"| {c['fmq_median']:.0f} |",
            f"| bare Klein | {', '.join(f'{r:.0f}' for r in c['klein_req_per_s'])} "
            f"| {c['klein_median']:.0f} |",
            f"| **ratio** | | **{c['ratio']}** |",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        choices=["ceiling", "naive", "bursts"],
        action="append",
        help="run only these parts (default: all)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs of each")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--hot-keys", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=5)
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
    parts = args.only or ["ceiling", "naive", "bursts"]
    root = Path(tempfile.mkdtemp(prefix="fmq-bench-", dir=args.dir))
    results: dict[str, Any] = {"machine": machine()}
    try:
        if "ceiling" in parts:
            print("throughput against the bare Klein ceiling")
            results["ceiling"] = ceiling_ratio(args, root)
        if "naive" in parts:
            print("naive against collapse")
            results["naive_vs_collapse"] = naive_vs_collapse(args, root)
        if "bursts" in parts:
            print("bursts of 20,000")
            results["bursts"] = bursts(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))
    return 0


def machine() -> dict[str, Any]:
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


if __name__ == "__main__":
    sys.exit(main())
