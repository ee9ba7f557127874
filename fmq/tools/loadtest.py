"""
C{fmq-loadtest}: load a running fmq with batches of identical requests, check
every answer, and sample the service's threads and memory as the load grows.

It sends keys x batch x rounds requests (20,000 by default), the rounds shared
among the steps of callers at once. Every request goes to C{/k<key>?r=<round>}:
the callers of one key and round are identical and should collapse into one
broker request. The stand-in backend (C{fmq-backend}) answers C{GET <path> #<n>};
an answer whose path is not the caller's own is counted as an error.

With C{--method POST --body-bytes 512} each caller sends a body of its own
(beginning C{#<caller>}), and the answer must end with that very body, as the
stand-in backend's default answer does. C{--header} adds headers, in which
C{{n}} is the caller's number (unique in the run) and C{{key}} the key's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import sys
import time
from itertools import cycle
from pathlib import Path
from typing import Any

import attrs
import psutil


@attrs.frozen
class Outcome:
    """
    One caller's result: HTTP status (0 if the call failed), body, seconds.
    """

    status: int
    body: bytes
    seconds: float
    error: str = ""


#: the methods it sends.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@attrs.frozen
class Call:
    """
    One caller's request.

    @ivar headers: C{(name, value)} pairs, sent in order after C{Host}.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def encode(self, host: str) -> bytes:
        """
        The request as sent, on a connection of its own. A C{GET} without a
        body has no C{Content-Length}; any other request has one.
        """
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if self.body or self.method != "GET":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@attrs.frozen
class Shape:
    """
    What every caller sends, but for its target: the method, header
    templates and the size of its body.

    @ivar headers: C{(name, template)} pairs; C{{n}} in a template is the
        caller's number, C{{key}} the key's.
    @ivar body_bytes: the size of each caller's body; 0 for none.
    """

    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body_bytes: int = 0

    def call(self, target: str, key: int, n: int) -> Call:
        """
        The request of caller C{n}, one of the callers of C{key}, to C{target}.
        """
        return Call(
            self.method,
            target,
            tuple((name, value.format(n=n, key=key)) for name, value in self.headers),
            body_of(n, self.body_bytes),
        )


def body_of(n: int, size: int) -> bytes:
    """
    Caller C{n}'s body of C{size} bytes: C{#<n> } then C{x} to fill it, so
    no two callers' bodies are alike when C{size} holds the number.
    """
    return (f"#{n} ".encode() + b"x" * size)[:size]


def header_of(text: str) -> tuple[str, str]:
    """
    C{Name: value} from the command line, as a pair; the value may hold
    C{{n}} and C{{key}}.

    @raise argparse.ArgumentTypeError: it is not such a header.
    """
    name, colon, value = text.partition(":")
    if not (colon and _TOKEN.fullmatch(name)):
        raise argparse.ArgumentTypeError(f"not a header 'Name: value': {text!r}")
    try:
        value.format(n=0, key=0)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise argparse.ArgumentTypeError(
            f"{text!r}: only {{n}} and {{key}} may be filled in ({type(e).__name__} {e})"
        ) from None
    return name, value.strip()


async def call(host: str, port: int, request: Call, timeout: float) -> Outcome:
    """
    One request over its own connection, read to the end.
    """
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(request.encode(host))
        data = await asyncio.wait_for(reader.read(), timeout)
    except (TimeoutError, OSError) as e:
        return Outcome(0, b"", time.monotonic() - started, type(e).__name__)
    finally:
        if writer is not None:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Outcome(0, data, time.monotonic() - started, "bad response")
    return Outcome(status, body, time.monotonic() - started)


def dechunk(data: bytes) -> bytes:
    """
    The body of a chunked HTTP/1.1 response.
    """
    body = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(body)


async def metrics_of(host: str, port: int) -> dict[str, float]:
    """
    fmq's own metrics, C{name{labels} -> value}, from its admin port.
    """
    outcome = await call(host, port, Call("GET", "/metrics"), 10.0)
    values = {}
    for line in outcome.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def endpoints(text: str) -> list[tuple[str, int]]:
    """
    C{host:port,host:port,...} as a list of pairs.
    """
    pairs = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        pairs.append((host or "127.0.0.1", int(port)))
    return pairs


async def fleet_metrics(admins: list[tuple[str, int]]) -> dict[str, float]:
    """
    The metrics of every instance in C{admins}, summed by name.
    """
    total: dict[str, float] = {}
    for host, port in admins:
        for name, value in (await metrics_of(host, port)).items():
            total[name] = total.get(name, 0.0) + value
    return total


class Sampler:
    """
    Samples a process's threads, resident memory and open files.
    """

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.samples: list[dict[str, Any]] = []

    def sample(self, label: str = "") -> dict[str, Any]:
        """
        Take one sample now (labelled, if C{label}).
        """
        if self.process is None:
            return {}
        with self.process.oneshot():
            sample: dict[str, Any] = {
                "t": time.time(),
                "threads": self.process.num_threads(),
                "rss_mb": self.process.memory_info().rss / 2**20,
                "fds": self.process.num_fds(),
            }
        if label:
            sample["label"] = label
        self.samples.append(sample)
        return sample

    async def run(self, every: float = 0.25) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every)


def percentile(values: list[float], p: float) -> float:
    """
    The C{p}th percentile of C{values} (nearest rank); 0 for none.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def check(request: Call, outcome: Outcome) -> str:
    """
    What is wrong with C{outcome} as the answer to C{request}, or C{""}: it
    must be a 200 beginning with the request's method and target, and end
    with the request's body, if it had one.
    """
    if outcome.status != 200:
        return outcome.error or f"status {outcome.status}"
    if not outcome.body.startswith(f"{request.method} {request.target} ".encode()):
        return "another key's answer"
    if not outcome.body.endswith(request.body):
        return "not its own body"
    return ""


async def step(
    args: argparse.Namespace, sampler: Sampler, concurrency: int, rounds: list[int]
) -> dict[str, Any]:
    """
    Send C{keys x batch} callers per round, C{concurrency} at a time, for each
    round in C{rounds}; return the step's figures.
    """
    admins = getattr(args, "admins", None)
    if admins is None:
        admins = [(args.host, args.admin_port)] if args.admin_port else []
    before = await fleet_metrics(admins)
    gate = asyncio.Semaphore(concurrency)
    # Round-robin per connection over the targets (each call is one).
    targets_cycle = cycle(getattr(args, "targets", None) or [(args.host, args.port)])
    latencies: list[float] = []
    errors: dict[str, int] = {}
    peak = {"threads": 0.0, "rss_mb": 0.0, "fds": 0.0}

    async def one(request: Call) -> None:
        async with gate:
            host, port = next(targets_cycle)
            outcome = await call(host, port, request, args.timeout)
        latencies.append(outcome.seconds)
        problem = check(request, outcome)
        if problem:
            errors[problem] = errors.get(problem, 0) + 1

    started = time.monotonic()
    watcher = asyncio.ensure_future(_watch(sampler, peak))
    for r in rounds:
        await asyncio.gather(*(one(c) for c in round_calls(args.shape, args.keys, args.batch, r)))
    wall = time.monotonic() - started
    watcher.cancel()
    after = await fleet_metrics(admins)
    last = sampler.sample()
    written = after.get("fmq_broker_requests_total", 0) - before.get("fmq_broker_requests_total", 0)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": round(wall, 3),
        "req_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else 0.0,
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies, default=0) * 1000, 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "broker_requests": int(written),
        "batches": args.keys * len(rounds),
        "broker_requests_per_batch": round(written / (args.keys * len(rounds)), 3),
        "threads_max": peak["threads"],
        "rss_mb_max": round(peak["rss_mb"], 1),
        "rss_mb_after": round(last.get("rss_mb", 0.0), 1),
        "fds_max": peak["fds"],
    }


def round_calls(shape: Shape, keys: int, batch: int, r: int) -> list[Call]:
    """
    The requests of round C{r}: C{batch} callers for each of C{keys} keys,
    to C{/k<key>?r=<r>}, each caller numbered apart from every other of the run.
    """
    return [
        shape.call(f"/k{k}?r={r}", k, (r * keys + k) * batch + b)
        for k in range(keys)
        for b in range(batch)
    ]


async def _watch(sampler: Sampler, peak: dict[str, float]) -> None:
    while True:
        sample = sampler.sample()
        for key in peak:
            peak[key] = max(peak[key], sample.get(key, 0.0))
        await asyncio.sleep(0.2)


async def hold(args: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    """
    Keep C{--hold} callers waiting at once on C{--keys} keys, sample the
    service at idle, at the peak, and after the answers.
    """
    idle = sampler.sample("idle")
    requests = [
        args.shape.call(f"/k{n % args.keys}?hold=1", n % args.keys, n) for n in range(args.hold)
    ]
    tasks = [asyncio.ensure_future(call(args.host, args.port, c, args.timeout)) for c in requests]
    peak: dict[str, Any] = {}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        metrics = await metrics_of(args.host, args.admin_port)
        waiting = metrics.get("fmq_callers_waiting", 0)
        if waiting >= args.hold:
            peak = sampler.sample("peak")
            peak["waiting"] = waiting
            break
        await asyncio.sleep(0.2)
    outcomes = await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    after = sampler.sample("after")
    problems = [check(c, o) for c, o in zip(requests, outcomes)]
    return {
        "callers": args.hold,
        "keys": args.keys,
        "idle": idle,
        "peak": peak,
        "after": after,
        "errors": sum(1 for p in problems if p),
        "kb_per_waiting_caller": round(
            (peak.get("rss_mb", 0) - idle.get("rss_mb", 0)) * 1024 / args.hold, 2
        )
        if peak
        else None,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """
    Print the steps as a table.
    """
    columns = [
        "concurrency", "requests", "req_per_s", "p50_ms", "p99_ms", "max_ms", "errors",
        "broker_requests", "batches", "threads_max", "rss_mb_max", "rss_mb_after",
    ]  # fmt: skip
    print(" ".join(f"{c:>15}" for c in columns))
    for row in rows:
        print(" ".join(f"{row[c]!s:>15}" for c in columns))


def chart(rows: list[dict[str, Any]], samples: list[dict[str, float]], path: Path) -> None:
    """
    A PNG of threads, RSS and latency against load, if matplotlib is there.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    if samples:
        t0 = samples[0]["t"]
        times = [s["t"] - t0 for s in samples]
        top.plot(times, [s["rss_mb"] for s in samples], label="RSS (MB)")
        top.plot(times, [s["threads"] for s in samples], label="threads")
        top.set_xlabel("seconds")
        top.legend()
    loads = [r["concurrency"] for r in rows]
    bottom.plot(loads, [r["p50_ms"] for r in rows], marker="o", label="p50 ms")
    bottom.plot(loads, [r["p99_ms"] for r in rows], marker="o", label="p99 ms")
    bottom.set_xscale("log")
    bottom.set_xlabel("callers at once")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path)


def raise_own_limit() -> None:
    """
    Raise this process's open-files soft limit to the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse(argv: list[str] | None) -> argparse.Namespace:
    """
    The command line of C{fmq-loadtest}.
    """
    parser = argparse.ArgumentParser(prog="fmq-loadtest", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=8081, help="0: no metrics")
    parser.add_argument(
        "--targets",
        help="several instances, host:port,host:port,...: callers go round-robin, "
        "one connection each (default: --host and --port)",
    )
    parser.add_argument(
        "--admin-targets",
        help="their admin listeners, host:port,...: broker requests are summed over "
        "them (default: --host and --admin-port)",
    )
    parser.add_argument("--pid", type=int, help="fmq's pid, to sample threads and memory")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100, help="identical callers per key")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds in all, shared among the steps (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        default="100,500,2000,10000",
        help="callers at once, one step each (default: %(default)s)",
    )
    parser.add_argument(
        "--hold",
        type=int,
        default=0,
        help="instead: keep this many callers waiting at once, then report",
    )
    parser.add_argument("--method", choices=METHODS, default="GET")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=0,
        help="send each caller's own body of this size, '#<caller> xxx...' (not with "
        "GET); every answer must end with it, as the stand-in backend's answers do "
        "(default: none)",
    )
    parser.add_argument(
        "--header",
        type=header_of,
        action="append",
        default=[],
        help="a header to send, e.g. 'Authorization: Bearer {n}': {n} is the caller's "
        "number, unique in the run, {key} the key's, shared by its batch; repeatable",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--report", type=Path, default=Path("loadtest.json"))
    parser.add_argument("--chart", type=Path, default=Path("loadtest.png"))
    args = parser.parse_args(argv)
    args.targets = endpoints(args.targets) if args.targets else [(args.host, args.port)]
    if args.admin_targets:
        args.admins = endpoints(args.admin_targets)
    else:
        args.admins = [(args.host, args.admin_port)] if args.admin_port else []
    if args.body_bytes < 0:
        parser.error("--body-bytes must not be negative")
    if args.body_bytes and args.method == "GET":
        # fmq collapses GETs whatever their bodies: callers could not each get their own
        parser.error("--body-bytes needs a --method other than GET")
    args.shape = Shape(args.method, tuple(args.header), args.body_bytes)
    return args


async def run(args: argparse.Namespace) -> int:
    raise_own_limit()
    sampler = Sampler(args.pid)
    if args.hold:
        result = await hold(args, sampler)
        print(json.dumps(result, indent=2))
        args.report.write_text(json.dumps(result, indent=2))
        return 1 if result["errors"] or not result["peak"] else 0
    steps = [int(s) for s in args.steps.split(",")]
    per_step = max(1, args.rounds // len(steps))
    rows = []
    for n, concurrency in enumerate(steps):
        rounds = list(range(n * per_step, (n + 1) * per_step))
        rows.append(await step(args, sampler, concurrency, rounds))
        print_table(rows[-1:] if n else rows)
    print()
    print_table(rows)
    args.report.write_text(json.dumps({"steps": rows, "samples": sampler.samples}, indent=2))
    chart(rows, sampler.samples, args.chart)
    print(f"report: {args.report}  chart: {args.chart}")
    return 1 if any(r["errors"] for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """
    C{fmq-loadtest}.
    """
    return asyncio.run(run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
