"""
Backends for tests: each plays the backend of one broker, and one contract
suite (L{BrokerContractTests}) runs against every broker.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock

from fmq.brokers.file import FileBroker
from fmq.protocol import BrokerRequest

POLL = 0.05
CHECK = 0.5
TTL = 300.0


class FileBackend:
    """
    Plays the backend of a L{FileBroker} in a directory: reads C{.req} files
    and writes C{.resp} files atomically.
    """

    def __init__(self, directory: Path, clock: Clock) -> None:
        self.directory = directory
        self.clock = clock

    def requests(self) -> list[bytes]:
        """
        The contents of the request files, sorted.
        """
        return sorted(p.read_bytes() for p in self.directory.glob("*.req"))

    def answer(self, request: BrokerRequest, data: bytes) -> None:
        temp = self.directory / f"tmp-{request.key}"
        temp.write_bytes(data)
        os.rename(temp, self.directory / f"{request.key}.resp")

    def deliver(self) -> None:
        self.clock.advance(POLL)


def file_broker(directory: Path, clock: Clock, **kwargs) -> FileBroker:
    options = dict(
        poll_interval=POLL,
        request_ttl=TTL,
        settle_time=0.2,
        delete_retry_max=5.0,
        check_interval=CHECK,
    )
    options.update(kwargs)
    return FileBroker(directory, clock, **options)
