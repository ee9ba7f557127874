"""
Helpers for end-to-end tests: a real C{twistd fmq} process and a stand-in
backend that plays on its directory from the test's reactor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.web.client import HTTPConnectionPool

#: seconds any one thing may take before an end-to-end test gives up
PATIENCE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], object], what: str, patience: float = PATIENCE):
    """
    Wait until C{check()} returns something true (it may be async), and return it.
    """
    deadline = time.monotonic() + patience
    while True:
        result = check()
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {patience}s waiting for {what}")
        await sleep(0.02)


class FmqProcess:
    """
    C{twistd -n fmq} in a subprocess, on free ports and a temporary directory.
    """

    def __init__(self, tmp: Path, **sections: dict[str, object]) -> None:
        self.tmp = tmp
        self.directory = tmp / "broker"
        self.port, self.admin_port = free_port(), free_port()
        values: dict[str, dict[str, object]] = {
            "http": {"port": self.port},
            "broker": {"directory": "broker", "poll_interval": 0.05},
            "admin": {"port": self.admin_port},
        }
        for section, keys in sections.items():
            values.setdefault(section, {}).update(keys)
        self.ini = tmp / "fmq.ini"
        self.ini.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                for section, keys in values.items()
            )
        )
        self.log = tmp / "fmq.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self, *args: str) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "fmq", "--config", str(self.ini), *args],
                cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
            )
        await eventually(self._healthy, "fmq to answer /health")

    async def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"fmq exited with {self.process.returncode}:\n{self.log_text()}")
        try:
            await self.health()
        except Exception:
            return False
        return True

    async def health(self) -> dict:
        response = await treq.get(f"http://127.0.0.1:{self.admin_port}/health", pool=self.pool)
        return json.loads(await response.content())

    async def waiting(self, count: int) -> None:
        """
        Wait until C{count} callers wait in fmq.
        """
        async def check() -> bool:
            return (await self.health())["callers_waiting"] == count

        await eventually(check, f"{count} callers waiting")

    def get(self, path: str) -> Deferred:
        return treq.get(self.url(path), pool=self.pool)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> None:
        """
        Stop the process (SIGTERM, then SIGKILL) and close the client pool.
        """
        await self.pool.closeCachedConnections()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self.process.poll() is None and time.monotonic() < deadline:
            await sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Backend:
    """
    A stand-in backend on a directory: answers each C{.req} it finds with
    C{answer(line, n)}, where C{n} counts the requests it has seen; when that
    returns C{None} the request waits for a later scan.
    """

    def __init__(self, directory: Path, answer: Callable[[bytes, int], bytes | None]) -> None:
        self.directory = directory
        self.answer = answer
        self.seen: dict[tuple[int, int], bytes] = {}
        self.answered = 0
        self._loop = LoopingCall(self._scan)

    def start(self) -> None:
        self._loop.start(0.01)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def requests(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob("*.req"))

    def _scan(self) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".req"):
                continue
            key = name[: -len(".req")]
            path = self.directory / name
            try:
                if os.path.exists(self.directory / f"{key}.resp"):
                    continue
                st = os.stat(path)
                line = path.read_bytes()
            except FileNotFoundError:
                continue
            identity = (st.st_ino, st.st_mtime_ns)
            self.seen.setdefault(identity, line)
            data = self.answer(line, len(self.seen))
            if data is None:
                continue
            temp = self.directory / f".backend-{key}"
            temp.write_bytes(data)
            os.rename(temp, self.directory / f"{key}.resp")
            self.answered += 1
