"""
End to end: a real C{twistd fmq} holds a collapsed answer once, however many
slow callers read it.
"""

from __future__ import annotations

import os
import socket
import threading

import psutil
import pytest_twisted

from fmq.protocol import broker_key
from tests.e2e import PATIENCE, eventually, sleep

#: bytes in the answer
SIZE = 20 * 1024 * 1024
#: slow callers of it
CALLERS = 20
#: bytes fmq may grow by; twenty copies would be 400 MB and more
BOUND = 150 * 1024 * 1024


class PeakRss:
    """
    The highest resident memory of a process, sampled in a thread so the
    test may block on sockets meanwhile.
    """

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        """
        Stop sampling; return the growth in bytes.
        """
        self._done.set()
        self._thread.join()
        return self.peak - self.start


def slow_caller(port: int, target: bytes) -> socket.socket:
    """
    A connection with a small receive buffer that has sent its request and
    reads nothing yet.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(PATIENCE)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: fmq.test\r\nConnection: close\r\n\r\n" % target)
    return s


def read_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """
    The head and body of the answer, read to the end of the connection.
    """
    chunks = []
    with s:
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body


@pytest_twisted.ensureDeferred
async def test_slow_callers_of_one_large_answer(make_fmq) -> None:
    """
    Twenty slow callers of one collapsed 20 MB answer grow fmq's resident
    memory by well under twenty copies of it, and each gets it intact.
    """
    fmq = await make_fmq()
    body = os.urandom(SIZE)
    callers = [slow_caller(fmq.port, b"/big") for _ in range(CALLERS)]
    try:
        await fmq.waiting(CALLERS)
        rss = PeakRss(fmq.process.pid)
        key = broker_key(b"GET", b"/big")
        temp = fmq.directory / f".answer-{key}.tmp"
        temp.write_bytes(b"200\n" + body)
        os.rename(temp, fmq.directory / f"{key}.resp")
        await eventually(lambda: not fmq.files(), "fmq to take the answer")
        await sleep(1.0)  # let fmq send each caller what its connection takes
        answers = [read_answer(s) for s in callers]
        growth = rss.stop()
    finally:
        for s in callers:
            s.close()
    print(f"\nfmq's resident memory grew by {growth / 2**20:.0f} MiB")
    for head, received in answers:
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nContent-Length: %d\r\n" % SIZE in head + b"\r\n"
        assert received == body
    assert growth < BOUND, f"grew by {growth / 2**20:.0f} MiB"
