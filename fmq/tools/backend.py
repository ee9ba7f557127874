"""
A stand-in backend for fmq: answers each C{.req} in a directory, or each
message on an AMQP request queue.

It reads requests in any of fmq's request formats and answers in any of the
answer forms (contract section 3c). Run it beside fmq:
C{./scripts/backend --dir var/broker --delay 0.5}.
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

from fmq.protocol import (
    ANSWER_FORMS,
    REQUEST_FORMATS,
    BrokerRequest,
    BrokerResponse,
    encode_response,
    parse_request,
)

log = Logger(namespace="fmq.backend")


#: the body template's default: the request line, how often it was
#: answered, then the request body (nothing for a request without one).
DEFAULT_BODY = "{method} {path} #{n}\n{body}"
#: the Content-Type of answers in C{http} form, unless told otherwise.
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"


@attrs.frozen
class Behaviour:
    """
    How the stand-in backend answers.

    @ivar delay: seconds before answering, drawn uniformly from this range.
    @ivar status: the status of good answers.
    @ivar body: a template for the body (see L{fill}).
    @ivar malformed: the share of answers that are not in the response format.
    @ivar in_place: the share of answers written in place, in two parts.
    @ivar never: the share of requests never answered.
    @ivar request_format: how requests are read: one of
        L{fmq.protocol.REQUEST_FORMATS}, or C{auto} to tell each from its data.
    @ivar answer_form: one of L{fmq.protocol.ANSWER_FORMS}.
    @ivar content_type: the C{Content-Type} of answers in C{http} form.
    """

    delay: tuple[float, float] = (0.0, 0.0)
    status: int = 200
    body: str = DEFAULT_BODY
    malformed: float = 0.0
    in_place: float = 0.0
    never: float = 0.0
    request_format: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto",) + REQUEST_FORMATS)
    )
    answer_form: str = attrs.field(default="bare", validator=attrs.validators.in_(ANSWER_FORMS))
    content_type: str = DEFAULT_CONTENT_TYPE


class _HeaderValues(dict[str, str]):
    """
    Request header values by lowercase name; a name not sent is C{""}, and
    a name is found whatever its case.
    """

    def __missing__(self, name: str) -> str:
        return self.get(name.lower(), "")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def fill(template: str, request: BrokerRequest, n: int) -> bytes:
    """
    The body C{template} says for C{request}.

    The template's fields are C{{method}}, C{{path}} (the target, query
    included), C{{n}} (how often this method and target have been answered,
    this time included), C{{body}} (the request body) and C{{header[NAME]}}
    (the value of the request header C{NAME}, C{""} if not sent). Bytes that
    are not UTF-8 come back unchanged: C{{body}} alone echoes any body byte
    for byte.

    @raise KeyError: the template names another field.
    """
    headers = _HeaderValues()
    for name, value in request.headers:
        headers.setdefault(_text(name).lower(), _text(value))
    text = template.format(
        method=_text(request.method),
        path=_text(request.target),
        n=n,
        body=_text(request.body),
        header=headers,
    )
    return text.encode("utf-8", "surrogateescape")


class _Answerer:
    """
    What both stand-in backends share: how they answer, and what they count.

    @ivar counts: what it did, by kind: seen, answered, malformed, in_place,
        ignored, withdrawn (gone before its answer was due), unreadable (not
        a request in the format it reads; answered 400).
    """

    def __init__(self, behaviour: Behaviour, rng: random.Random | None) -> None:
        self._behaviour = behaviour
        self._rng = rng or random.Random()
        self._answers: Counter[tuple[bytes, bytes]] = Counter()
        self.counts: Counter[str] = Counter()

    def render(self, data: bytes) -> bytes:
        """
        The answer to the request C{data} (a request file or message), in
        the answer form, or malformed at the C{malformed} rate. A request it
        cannot read is answered 400, the reason in the body.
        """
        behaviour = self._behaviour
        if self._rng.random() < behaviour.malformed:
            self.counts["malformed"] += 1
            return b"not a status\n"
        form = behaviour.request_format
        try:
            request = parse_request(data, None if form == "auto" else form)
        except ValueError as e:
            self.counts["unreadable"] += 1
            log.warn("cannot read a request: {error}", error=str(e))
            response = BrokerResponse(400, f"cannot read the request: {e}\n".encode())
        else:
            self._answers[request.method, request.target] += 1
            n = self._answers[request.method, request.target]
            response = BrokerResponse(behaviour.status, fill(behaviour.body, request, n))
        if behaviour.answer_form == "http":
            content_type = behaviour.content_type.encode("latin-1")
            response = attrs.evolve(response, headers=((b"Content-Type", content_type),))
        return encode_response(response, behaviour.answer_form)

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
                data = (self.directory / name).read_bytes()
            except FileNotFoundError:
                continue
            self.counts["seen"] += 1
            if self._rng.random() < self._behaviour.never:
                self._state[key] = "ignored"
                self.counts["ignored"] += 1
                continue
            self._state[key] = "pending"
            self.take(key, data)

    def take(self, key: str, data: bytes) -> None:
        """
        Answer a new request after the delay.
        """
        low, high = self._behaviour.delay
        self._clock.callLater(self._rng.uniform(low, high), self.answer, key, data)

    def answer(self, key: str, data: bytes) -> None:
        """
        Write the answer to one request, unless it was withdrawn meanwhile.
        """
        if not (self.directory / f"{key}.req").exists():
            del self._state[key]
            self.counts["withdrawn"] += 1
            return
        self._state[key] = "answered"
        behaviour = self._behaviour
        answer = self.render(data)
        target = self.directory / f"{key}.resp"
        try:
            if self._rng.random() < behaviour.in_place:
                self.counts["in_place"] += 1
                self._write_in_place(target, answer)
            else:
                temp = self.directory / f".backend-{key}.tmp"
                temp.write_bytes(answer)
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


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Behaviour]:
    """
    The command line of C{fmq-backend}, and the behaviour it asks for.

    @raise SystemExit: the command line is wrong (argparse's message said why).
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
        default=DEFAULT_BODY,
        help="body template with {method}, {path} (the target), {n} (how often this "
        "method and target were answered), {body} (the request body, byte for byte: "
        "--body '{body}' echoes it) and {header[NAME]} (a request header's value, "
        "with --request-format http or json) (default: %(default)r)",
    )
    parser.add_argument(
        "--request-format",
        choices=("auto",) + REQUEST_FORMATS,
        default="auto",
        help="how fmq writes requests ([broker] request_format); auto tells each "
        "request's format from its first bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--answer-form",
        choices=ANSWER_FORMS,
        default="bare",
        help="bare: '200' then the body; reason: '200 OK' then the body; http: "
        "'HTTP/1.1 200 OK', a Content-Type and a Content-Length, then the body "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--content-type",
        default=DEFAULT_CONTENT_TYPE,
        help="with --answer-form http (default: %(default)r)",
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
    try:
        fill(args.body, BrokerRequest.of(b"GET", b"/"), 1)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        parser.error(f"--body {args.body!r}: {type(e).__name__} {e}")
    return args, Behaviour(
        args.delay,
        args.status,
        args.body,
        args.malformed,
        args.in_place,
        args.never,
        args.request_format,
        args.answer_form,
        args.content_type,
    )


def main(argv: list[str] | None = None) -> int:
    """
    C{fmq-backend}: answer the requests in a directory until interrupted.
    """
    args, behaviour = parse(argv)

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    reactor: Any = _reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
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
