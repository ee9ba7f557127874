"""
A stand-in backend for the file broker: answers each C{.req} in a directory.

Run it beside fmq: C{./scripts/backend --dir var/broker --delay 0.5}.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="fmq.backend")


@attrs.frozen
class Behaviour:
    """
    How the stand-in backend answers.

    @ivar delay: seconds before answering, drawn uniformly from this range.
    @ivar status: the status line of good answers.
    @ivar body: a template for the body; C{{method}}, C{{path}} and C{{n}}
        (how many times this method and path were answered) are filled in.
    @ivar malformed: the share of answers that are not in the response format.
    @ivar in_place: the share of answers written in place, in two parts.
    @ivar never: the share of requests never answered.
    """

    delay: tuple[float, float] = (0.0, 0.0)
    status: int = 200
    body: str = "{method} {path} #{n}\n"
    malformed: float = 0.0
    in_place: float = 0.0
    never: float = 0.0


class _Answerer:
    """
    What both stand-in backends share: how they answer, and what they count.

    @ivar counts: what it did, by kind: seen, answered, malformed, in_place,
        ignored, withdrawn (gone before its answer was due).
    """

    def __init__(self, behaviour: Behaviour, rng: random.Random | None) -> None:
        self._behaviour = behaviour
        self._rng = rng or random.Random()
        self._answers: Counter[bytes] = Counter()
        self.counts: Counter[str] = Counter()

    def render(self, line: bytes) -> bytes:
        """
        The answer to the request C{line}, in the response format (C{{n}}
        counts how often this line was answered), or malformed at the
        C{malformed} rate.
        """
        self._answers[line] += 1
        behaviour = self._behaviour
        if self._rng.random() < behaviour.malformed:
            self.counts["malformed"] += 1
            return b"not a status\n"
        method, _, path = line.rstrip(b"\n").partition(b" ")
        body = behaviour.body.format(
            method=method.decode("utf-8", "replace"),
            path=path.decode("utf-8", "replace"),
            n=self._answers[line],
        )
        return b"%d\n" % behaviour.status + body.encode()

    def summary(self) -> str:
        """
        The counts as one line, e.g. C{answered=3 seen=4}.
        """
        return " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "no requests"


class AmqpBackend(_Answerer):
    """
    Plays the backend on RabbitMQ: takes requests from the request queue and
    replies to each one's C{reply_to} with its C{correlation_id}.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        queue: str,
        behaviour: Behaviour,
        rng: random.Random | None = None,
        prefetch: int = 200,
    ) -> None:
        super().__init__(behaviour, rng)
        self._reactor = reactor
        self._url = url
        self._queue = queue
        self._prefetch = prefetch
        self._protocol: Any = None
        self._channel: Any = None

    async def start(self) -> None:
        """
        Connect and start taking requests.
        """
        import pika
        from pika.adapters.twisted_connection import TwistedProtocolConnection
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        parameters = pika.URLParameters(self._url)
        protocol = TwistedProtocolConnection(parameters)
        ready = protocol.ready
        endpoint = TCP4ClientEndpoint(self._reactor, parameters.host, parameters.port, timeout=10)
        await connectProtocol(endpoint, protocol)
        await ready
        self._protocol = protocol
        channel = await protocol.channel()
        await channel.queue_declare(queue=self._queue, durable=True)
        await channel.basic_qos(prefetch_count=self._prefetch)
        requests, _ = await channel.basic_consume(queue=self._queue, auto_ack=False)
        self._channel = channel
        Deferred.fromCoroutine(self._take(requests))

    async def _take(self, requests: Any) -> None:
        while True:
            try:
                channel, method, properties, body = await requests.get()
            except Exception:
                return
            self.counts["seen"] += 1
            if self._rng.random() < self._behaviour.never:
                self.counts["ignored"] += 1
                channel.basic_ack(delivery_tag=method.delivery_tag)
                continue
            self.take(method, properties, body)

    def take(self, method: Any, properties: Any, body: bytes) -> None:
        """
        Reply to a new request after the delay.
        """
        low, high = self._behaviour.delay
        self._reactor.callLater(self._rng.uniform(low, high), self.reply, method, properties, body)

    def reply(self, method: Any, properties: Any, body: bytes) -> None:
        """
        Publish the answer to one request to its C{reply_to}, and ack it.
        """
        import pika

        channel = self._channel
        if channel is None:
            return
        data = self.render(body)
        try:
            channel.basic_publish(
                exchange="",
                routing_key=properties.reply_to,
                body=data,
                properties=pika.BasicProperties(correlation_id=properties.correlation_id),
            )
            channel.basic_ack(delivery_tag=method.delivery_tag)
        except Exception as e:
            log.warn("cannot reply: {error}", error=repr(e))
            return
        self.counts["answered"] += 1

    def stop(self) -> None:
        """
        Stop replying and close the connection.
        """
        self._channel = None
        if self._protocol is not None and self._protocol.is_open:
            self._protocol.close()


class DirectoryBackend(_Answerer):
    """
    Scans a directory for requests and answers them after a delay.
    """

    def __init__(
        self,
        directory: Path,
        clock: IReactorTime,
        behaviour: Behaviour,
        poll_interval: float = 0.01,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(behaviour, rng)
        self.directory = directory
        self._clock = clock
        self._poll_interval = poll_interval
        # key -> "pending" (answer scheduled), "answered" or "ignored"
        self._state: dict[str, str] = {}
        self._loop = LoopingCall(self.scan)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self._poll_interval)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def scan(self) -> None:
        """
        Take every request not yet taken.

        A key answered earlier is free again once fmq has consumed the answer
        (the C{.resp} is gone), even if a new C{.req} is already there.
        """
        try:
            names = set(os.listdir(self.directory))
        except FileNotFoundError:
            return
        for key, state in list(self._state.items()):
            if state == "answered" and f"{key}.resp" not in names:
                del self._state[key]
            elif state == "ignored" and f"{key}.req" not in names:
                del self._state[key]
        for name in names:
            if not name.endswith(".req") or name[:-4] in self._state:
                continue
            key = name[:-4]
            try:
                line = (self.directory / name).read_bytes()
            except FileNotFoundError:
                continue
            self.counts["seen"] += 1
            if self._rng.random() < self._behaviour.never:
                self._state[key] = "ignored"
                self.counts["ignored"] += 1
                continue
            self._state[key] = "pending"
            self.take(key, line)

    def take(self, key: str, line: bytes) -> None:
        """
        Answer a new request after the delay.
        """
        low, high = self._behaviour.delay
        self._clock.callLater(self._rng.uniform(low, high), self.answer, key, line)

    def answer(self, key: str, line: bytes) -> None:
        """
        Write the answer to one request, unless it was withdrawn meanwhile.
        """
        if not (self.directory / f"{key}.req").exists():
            del self._state[key]
            self.counts["withdrawn"] += 1
            return
        self._state[key] = "answered"
        behaviour = self._behaviour
        data = self.render(line)
        target = self.directory / f"{key}.resp"
        try:
            if self._rng.random() < behaviour.in_place:
                self.counts["in_place"] += 1
                self._write_in_place(target, data)
            else:
                temp = self.directory / f".backend-{key}.tmp"
                temp.write_bytes(data)
                os.rename(temp, target)
        except OSError as e:
            del self._state[key]
            log.warn("cannot answer {key}: {error}", key=key, error=e.strerror)
            return
        self.counts["answered"] += 1

    def _write_in_place(self, target: Path, data: bytes) -> None:
        half = len(data) // 2
        handle = open(target, "wb")
        handle.write(data[:half])
        handle.flush()

        def finish() -> None:
            with handle:
                handle.write(data[half:])

        self._clock.callLater(0.05, finish)


def _delay(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    """
    C{fmq-backend}: answer the requests in a directory until interrupted.
    """
    parser = argparse.ArgumentParser(prog="fmq-backend", description=__doc__)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("var/broker"),
        help="the broker directory (default: %(default)s)",
    )
    parser.add_argument(
        "--delay",
        type=_delay,
        default=(0.0, 0.0),
        help="seconds before answering, e.g. 0.5 or 0.1-2 (default: 0)",
    )
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument(
        "--body",
        default=attrs.fields(Behaviour).body.default,
        help="body template with {method}, {path}, {n} (default: %(default)r)",
    )
    parser.add_argument("--malformed", type=float, default=0.0, help="share of malformed answers")
    parser.add_argument(
        "--in-place",
        type=float,
        default=0.0,
        help="share of answers written in place, in two parts",
    )
    parser.add_argument("--never", type=float, default=0.0, help="share never answered")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between scans")
    parser.add_argument("--broker", choices=["file", "amqp"], default="file")
    parser.add_argument(
        "--url",
        default="amqp://guest:guest@127.0.0.1:5672/%2F",
        help="with --broker amqp (default: %(default)s)",
    )
    parser.add_argument(
        "--queue",
        default="fmq.requests",
        help="with --broker amqp: the request queue (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    reactor: Any = _reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    behaviour = Behaviour(
        args.delay, args.status, args.body, args.malformed, args.in_place, args.never
    )
    backend: DirectoryBackend | AmqpBackend
    if args.broker == "amqp":
        amqp_backend = backend = AmqpBackend(reactor, args.url, args.queue, behaviour)

        def connect() -> None:
            def failed(failure: Any) -> None:
                log.error(
                    "cannot connect to {url}: {error}",
                    url=args.url,
                    error=failure.getErrorMessage(),
                )
                reactor.stop()

            Deferred.fromCoroutine(amqp_backend.start()).addErrback(failed)

        reactor.callWhenRunning(connect)
        where = f"queue {args.queue} at {args.url}"
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        backend = DirectoryBackend(args.dir, reactor, behaviour, args.poll)
        backend.start()
        where = str(args.dir)
    last: dict[str, int] = {}

    def report() -> None:
        if backend.counts != last:
            last.clear()
            last.update(backend.counts)
            log.info("{counts}", counts=backend.summary())

    reporter = LoopingCall(report)
    reporter.start(5.0, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", reporter.stop)
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(reactor.stop))
    log.info("answering requests in {where}", where=where)
    reactor.run()
    log.info("stopped: {counts}", counts=backend.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
