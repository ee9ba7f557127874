"""
Tests for L{fmq.tools.backend}, the stand-in backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fmq.protocol import (
    ANSWER_FORMS,
    REQUEST_FORMATS,
    BrokerRequest,
    BrokerResponse,
    encode_request,
    parse_response,
)
from fmq.tools.backend import AmqpBackend, Behaviour, DirectoryBackend, parse

POST = BrokerRequest.of(
    b"POST",
    b"/orders?x=1",
    ((b"Content-Type", b"application/json"), (b"X-Token", b"t-7")),
    b'{"item": 42}',
)


class DirectoryBackendTests(SynchronousTestCase):
    """
    The stand-in backend answers request files as a real backend would.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def backend(self, **behaviour) -> DirectoryBackend:
        backend = DirectoryBackend(
            self.directory, self.clock, Behaviour(**behaviour), poll_interval=0.01
        )
        backend.start()
        self.addCleanup(backend.stop)
        return backend

    def request(self, target: bytes = b"/a?b=1") -> BrokerRequest:
        return self.write(BrokerRequest.of(b"GET", target))

    def write(self, request: BrokerRequest) -> BrokerRequest:
        """
        Write C{request} as fmq does, in its own format.
        """
        (self.directory / f"{request.key}.req").write_bytes(encode_request(request))
        return request

    def response(self, request: BrokerRequest) -> bytes:
        return (self.directory / f"{request.key}.resp").read_bytes()

    def consume(self, request: BrokerRequest) -> None:
        """
        Do what fmq does after reading the answer.
        """
        os.unlink(self.directory / f"{request.key}.req")
        os.unlink(self.directory / f"{request.key}.resp")

    def test_answers_after_delay(self) -> None:
        """
        A request is answered with the status and the filled-in template after the delay.
        """
        backend = self.backend(delay=(1.0, 1.0), status=201, body="{method} {path} #{n}")
        request = self.request()
        self.clock.advance(0.01)
        self.assertFalse((self.directory / f"{request.key}.resp").exists())
        self.clock.advance(1.0)
        self.assertEqual(self.response(request), b"201\nGET /a?b=1 #1")
        self.assertEqual(backend.counts["answered"], 1)
        self.assertEqual(
            sorted(os.listdir(self.directory)), [f"{request.key}.req", f"{request.key}.resp"]
        )

    def test_answers_once_until_consumed(self) -> None:
        """
        A request is answered once; after fmq consumes the answer, a new request
        with the same key is answered again, with the counter moved on, even if
        it appeared before the next scan.
        """
        backend = self.backend()
        request = self.request()
        for _ in range(3):
            self.clock.advance(0.01)
        self.assertEqual(backend.counts["answered"], 1)
        self.consume(request)
        self.request()
        self.clock.advance(0.01)
        self.clock.advance(0)
        self.assertEqual(self.response(request), b"200\nGET /a?b=1 #2\n")
        self.assertEqual(backend.counts["seen"], 2)

    def test_malformed(self) -> None:
        """
        With malformed=1 every answer is not in the response format.
        """
        self.backend(malformed=1.0)
        request = self.request()
        self.clock.advance(0.01)
        self.assertEqual(self.response(request), b"not a status\n")

    def test_never(self) -> None:
        """
        With never=1 no request is answered.
        """
        backend = self.backend(never=1.0)
        request = self.request()
        for _ in range(5):
            self.clock.advance(0.01)
        self.assertFalse((self.directory / f"{request.key}.resp").exists())
        self.assertEqual(backend.counts["ignored"], 1)

    def test_in_place(self) -> None:
        """
        With in_place=1 the answer is written in place in two parts, the
        file staying open in between.
        """
        self.backend(in_place=1.0, body="0123456789")
        request = self.request()
        self.clock.advance(0.01)
        self.assertEqual(self.response(request), b"200\n012")
        self.clock.advance(0.05)
        self.assertEqual(self.response(request), b"200\n0123456789")

    def test_withdrawn_before_answer(self) -> None:
        """
        A request withdrawn before its answer is due is not answered.
        """
        backend = self.backend(delay=(1.0, 1.0))
        request = self.request()
        self.clock.advance(0.01)
        os.unlink(self.directory / f"{request.key}.req")
        self.clock.advance(1.0)
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(backend.counts["withdrawn"], 1)

    def test_default_body_echoes_request_body(self) -> None:
        """
        The default template answers a GET as it always did, and a POST with
        its request line followed by its body.
        """
        self.backend()
        get = self.request()
        post = self.write(POST)
        self.clock.advance(0.01)
        self.assertEqual(self.response(get), b"200\nGET /a?b=1 #1\n")
        self.assertEqual(self.response(post), b'200\nPOST /orders?x=1 #1\n{"item": 42}')

    def test_reads_every_request_format(self) -> None:
        """
        Told C{auto}, it reads each request format, its body and (in C{http}
        and C{json}) its headers, whatever the case of the header's name.
        """
        self.backend(body="{method} {path} [{header[x-token]}] [{header[X-TOKEN]}] {body}")
        answers = {}
        for format in REQUEST_FORMATS:
            request = self.write(attrs.evolve(POST, format=format))
            self.clock.advance(0.01)
            answers[format] = self.response(request)
            self.consume(request)
        self.assertEqual(
            answers,
            {
                "line": b'200\nPOST /orders?x=1 [] [] {"item": 42}',
                "http": b'200\nPOST /orders?x=1 [t-7] [t-7] {"item": 42}',
                "json": b'200\nPOST /orders?x=1 [t-7] [t-7] {"item": 42}',
            },
        )

    def test_told_format(self) -> None:
        """
        Told one format, it reads requests in that format, and answers 400
        to one it cannot read, saying why.
        """
        backend = self.backend(request_format="json", body="{body}")
        good = self.write(attrs.evolve(POST, format="json"))
        self.clock.advance(0.01)
        self.assertEqual(self.response(good), b'200\n{"item": 42}')
        self.consume(good)
        bad = self.write(attrs.evolve(POST, format="line"))
        self.clock.advance(0.01)
        answer = parse_response(self.response(bad))
        self.assertEqual(answer.status, 400)
        self.assertIn(b"not a JSON request", answer.body)
        self.assertEqual(backend.counts["unreadable"], 1)

    def test_echoes_any_body_byte_for_byte(self) -> None:
        """
        C{{body}} echoes a body that is not UTF-8 unchanged, in every format.
        """
        self.backend(body="{body}")
        body = bytes(range(256)) + b"\xff\xfe{x}"
        for format in REQUEST_FORMATS:
            request = self.write(BrokerRequest.of(b"PUT", b"/b", body=body, format=format))
            self.clock.advance(0.01)
            self.assertEqual(self.response(request), b"200\n" + body, format)
            self.consume(request)

    def test_answer_forms(self) -> None:
        """
        Each answer form reads back as the same status and body; the C{http}
        form adds the Content-Type it is given.
        """
        got = {}
        for form in ANSWER_FORMS:
            backend = self.backend(
                status=201, body="{body}", answer_form=form, content_type="application/json"
            )
            request = self.write(POST)
            self.clock.advance(0.01)
            got[form] = self.response(request)
            self.consume(request)
            backend.stop()
        self.assertEqual(got["bare"], b'201\n{"item": 42}')
        self.assertEqual(got["reason"], b'201 Created\n{"item": 42}')
        self.assertTrue(got["http"].startswith(b"HTTP/1.1 201 Created\r\n"), got["http"])
        self.assertEqual(
            parse_response(got["http"]),
            BrokerResponse(201, b'{"item": 42}', ((b"Content-Type", b"application/json"),)),
        )

    def test_http_form_default_content_type(self) -> None:
        """
        Answers in C{http} form say C{text/plain; charset=utf-8} unless told otherwise.
        """
        self.backend(answer_form="http")
        request = self.request()
        self.clock.advance(0.01)
        self.assertEqual(
            parse_response(self.response(request)).headers,
            ((b"Content-Type", b"text/plain; charset=utf-8"),),
        )


class _Channel:
    """
    Records what the AMQP backend publishes and acks.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []
        self.acked: list[int] = []

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties) -> None:
        self.published.append((routing_key, body, properties.correlation_id))

    def basic_ack(self, delivery_tag: int) -> None:
        self.acked.append(delivery_tag)


class AmqpBackendTests(SynchronousTestCase):
    """
    The stand-in AMQP backend reads and answers message bodies as the
    directory one reads and answers files.
    """

    def test_reply_in_every_format_and_form(self) -> None:
        """
        A request message in any format gets its body echoed, in the answer
        form it is told, to its C{reply_to} with its C{correlation_id}.
        """
        for format in REQUEST_FORMATS:
            for form in ANSWER_FORMS:
                backend = AmqpBackend(
                    Clock(), "amqp://", "q", Behaviour(body="{method} {body}", answer_form=form)
                )
                channel = backend._channel = _Channel()
                properties = SimpleNamespace(reply_to="reply", correlation_id="c-1")
                request = attrs.evolve(POST, format=format)
                backend.reply(SimpleNamespace(delivery_tag=7), properties, encode_request(request))
                [(to, body, correlation_id)] = channel.published
                self.assertEqual((to, correlation_id, channel.acked), ("reply", "c-1", [7]))
                answer = parse_response(body)
                self.assertEqual(answer.body, b'POST {"item": 42}', (format, form))
                self.assertEqual(
                    answer.headers,
                    ((b"Content-Type", b"text/plain; charset=utf-8"),) if form == "http" else (),
                )


class CommandLineTests(SynchronousTestCase):
    """
    C{fmq-backend}'s command line.
    """

    def test_formats_and_forms(self) -> None:
        """
        The request format, answer form and Content-Type are taken from the
        command line; by default it tells the format and answers in the bare form.
        """
        _, default = parse([])
        self.assertEqual((default.request_format, default.answer_form), ("auto", "bare"))
        _, told = parse(
            ["--request-format", "json", "--answer-form", "http", "--content-type", "text/csv"]
        )
        self.assertEqual(
            (told.request_format, told.answer_form, told.content_type), ("json", "http", "text/csv")
        )

    def test_unknown_form(self) -> None:
        """
        Only the known request formats and answer forms are taken.
        """
        for argv in (["--request-format", "xml"], ["--answer-form", "full"]):
            with self.assertRaises(SystemExit):
                parse(argv)

    def test_bad_template(self) -> None:
        """
        A body template naming an unknown field is refused at start, not at
        the first request; one naming only known fields is taken.
        """
        with self.assertRaises(SystemExit) as raised:
            parse(["--body", "{method} {bogus}"])
        self.assertEqual(raised.exception.code, 2)
        _, behaviour = parse(["--body", "{method} {path} {n} {body} {header[Authorization]}"])
        self.assertEqual(behaviour.body, "{method} {path} {n} {body} {header[Authorization]}")
