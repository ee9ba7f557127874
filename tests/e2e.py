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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from fmq.brokers.layout import LOCK_NAME
from fmq.tools.backend import Behaviour, DirectoryBackend

#: seconds any one thing may take before an end-to-end test gives up
PATIENCE = 60.0
ROOT = Path(__file__).resolve().parent.parent


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


async def answers(deferreds) -> list[tuple[int, bytes]]:
    """
    The status and body of each response, in order.
    """
    responses = await gatherResults(deferreds)
    bodies = await gatherResults([r.content() for r in responses])
    return [(r.code, body) for r, body in zip(responses, bodies)]


class FmqProcess:
    """
    C{twistd -n fmq} in a subprocess, on free ports and a temporary directory.
    """

    def __init__(self, tmp: Path, shell: str = "", **sections: dict[str, object]) -> None:
        """
        @param shell: a shell command run before fmq, e.g. C{ulimit -Sn 1024}.
        """
        self.shell = shell
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
        self.ini = tmp / f"fmq-{self.port}.ini"
        self.ini.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                for section, keys in values.items()
            )
        )
        self.log = tmp / f"fmq-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """
        Start C{twistd -n fmq} on this tree's code (the installed plugin
        imports C{fmq.tap} from C{PYTHONPATH} first).
        """
        if self.process is not None:
            self.process.wait(timeout=PATIENCE)  # a previous run, ended
        twistd = Path(sys.executable).with_name("twistd")
        command = [str(twistd), "-n", "--pidfile=", "fmq", "--config", str(self.ini), *args]
        if self.shell:
            command = ["bash", "-c", f'{self.shell} && exec "$@"', "fmq", *command]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        return self.process

    async def start(self, *args: str, untouched: bool = False) -> None:
        """
        Start fmq and wait until it answers C{/health}.

        @param untouched: wait only until its HTTP port accepts connections,
            so that the test's own traffic is the first fmq serves.
        """
        self.spawn(*args)
        if untouched:
            await eventually(self._listening, "fmq to listen")
        else:
            await eventually(self._healthy, "fmq to answer /health")

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"fmq exited with {self.process.returncode}:\n{self.log_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE).close()
        except OSError:
            return False
        return True

    async def exited(self) -> int:
        """
        Wait for the process to end by itself and return its status.
        """
        assert self.process is not None
        process = self.process
        await eventually(lambda: process.poll() is not None, "fmq to exit")
        return process.returncode

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

    async def health_status(self) -> bool:
        """
        Whether C{/health} says 200.
        """
        response = await treq.get(f"http://127.0.0.1:{self.admin_port}/health", pool=self.pool)
        await response.content()
        return response.code == 200

    async def waiting(self, count: int) -> None:
        """
        Wait until C{count} callers wait in fmq.
        """

        async def check() -> bool:
            return (await self.health())["callers_waiting"] == count

        await eventually(check, f"{count} callers waiting")

    def get(self, path: str) -> Deferred:
        return treq.get(self.url(path), pool=self.pool)

    def files(self) -> list[str]:
        """
        The names in the broker directory, but for the lock file.
        """
        return sorted(n for n in os.listdir(self.directory) if n != LOCK_NAME)

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


class HeldBackend(DirectoryBackend):
    """
    The stand-in backend, holding every request until the test releases it.

    @ivar taken: every request line it has taken, in order.
    """

    def __init__(
        self, directory: Path, body: str = "{method} {path} #{n}", malformed: float = 0.0
    ) -> None:
        super().__init__(directory, reactor, Behaviour(body=body, malformed=malformed))
        self.held: list[tuple[str, bytes]] = []
        self.taken: list[bytes] = []
        self.holding = True

    def take(self, key: str, line: bytes) -> None:
        self.taken.append(line)
        if self.holding:
            self.held.append((key, line))
        else:
            self.answer(key, line)

    def release(self, hold_again: bool = False) -> None:
        """
        Answer what is held; later requests are answered at once unless
        C{hold_again}.
        """
        held, self.held = self.held, []
        self.holding = hold_again
        for key, line in held:
            self.answer(key, line)

    def requests(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob("*.req"))


class SlowReader:
    """
    A raw HTTP/1.1 caller on a small receive buffer, in a thread: it reads the
    first C{head_start} bytes of its answer, waits until told to go on, then
    reads the rest in small pieces until the server closes.
    """

    def __init__(self, port: int, target: bytes, head_start: int = 1 << 20) -> None:
        self.received = 0
        self.data = b""
        self.error: BaseException | None = None
        self.go = threading.Event()
        self._port, self._target, self._head_start = port, target, head_start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        chunks = []
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                s.settimeout(PATIENCE)
                s.connect(("127.0.0.1", self._port))
                s.sendall(b"GET %s HTTP/1.1\r\nHost: fmq\r\n\r\n" % self._target)
                while True:
                    if self.received >= self._head_start and not self.go.wait(PATIENCE):
                        raise AssertionError("never told to go on")
                    chunk = s.recv(16384)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    self.received += len(chunk)
                    if self.go.is_set():
                        time.sleep(0.001)
        except BaseException as e:
            self.error = e
        self.data = b"".join(chunks)
