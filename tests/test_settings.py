"""
Tests for L{fmq.settings}, C{fmq/configspec.ini} and L{fmq.keys}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from fmq.interfaces import ISettingsSource
from fmq.keys import (
    CallerRequest,
    load_collapse_key,
    method_and_path,
    method_and_path_without_query,
    reads_per_credentials,
)
from fmq.settings import DictSource, IniFile, Settings, SettingsError, load_settings


def temporary_directory(case: SynchronousTestCase) -> Path:
    """
    A new empty directory outside the checkout, removed when C{case} ends.
    """
    path = Path(tempfile.mkdtemp(prefix="fmq-test-")).resolve()
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class DefaultsTests(SynchronousTestCase):
    """
    Every key has the default of the contract, so an empty source works.
    """

    def setUp(self) -> None:
        self.base = temporary_directory(self)
        self.settings = load_settings(DictSource({}, base=self.base))

    def test_http(self) -> None:
        """
        The HTTP listener defaults to 127.0.0.1:8080, a 60 s caller timeout, backlog
        4096, request bodies of up to 1 MiB and the access log on.
        """
        http = self.settings.http
        self.assertEqual(
            (
                http.interface,
                http.port,
                http.request_timeout,
                http.backlog,
                http.max_body,
                http.access_log,
            ),
            ("127.0.0.1", 8080, 60.0, 4096, 1024 * 1024, True),
        )

    def test_request_format(self) -> None:
        """
        Requests are written in the seed's C{line} format by default; C{http} and
        C{json} may be chosen, nothing else.
        """
        self.assertEqual(self.settings.broker.request_format, "line")
        for format in ["http", "json"]:
            chosen = load_settings(DictSource({"broker": {"request_format": format}}))
            self.assertEqual(chosen.broker.request_format, format)
        error = self.assertRaises(
            SettingsError,
            load_settings,
            DictSource({"broker": {"request_format": "xml"}}),
        )
        self.assertIn("[broker] request_format", str(error))

    def test_broker(self) -> None:
        """
        The broker defaults to the file broker in C{./var/broker}, scanned every 50 ms.
        """
        broker = self.settings.broker
        self.assertEqual(
            (broker.type, broker.directory, broker.poll_interval, broker.request_ttl),
            ("file", self.base / "var" / "broker", 0.05, 300.0),
        )

    def test_max_answer_bytes(self) -> None:
        """
        Answers of up to 64 MiB are read by default.
        """
        self.assertEqual(self.settings.broker.max_answer_bytes, 64 * 1024 * 1024)

    def test_service(self) -> None:
        """
        The service defaults to collapse mode with the safe key: reads per credentials.
        """
        self.assertEqual(
            (self.settings.service.mode, self.settings.service.collapse_key),
            ("collapse", "fmq.keys.reads_per_credentials"),
        )

    def test_admin(self) -> None:
        """
        The admin listener defaults to 127.0.0.1:8081.
        """
        self.assertEqual(
            (self.settings.admin.interface, self.settings.admin.port), ("127.0.0.1", 8081)
        )

    def test_amqp(self) -> None:
        """
        The AMQP broker defaults to the local RabbitMQ's default vhost and C{fmq.requests}.
        """
        self.assertEqual(
            (self.settings.amqp.url, self.settings.amqp.request_queue),
            ("amqp://guest:guest@127.0.0.1:5672/%2F", "fmq.requests"),
        )

    def test_types(self) -> None:
        """
        Values are converted to their types, and the source is recorded by name.
        """
        self.assertEqual(
            (
                type(self.settings.http.port),
                type(self.settings.http.request_timeout),
                type(self.settings.broker.directory),
                self.settings.source,
            ),
            (int, float, type(self.base), "settings"),
        )

    def test_dict_source_cwd(self) -> None:
        """
        A L{DictSource} without a base resolves relative directories against the current folder.
        """
        settings = load_settings(DictSource({"broker": {"directory": "spool"}}))
        self.assertEqual(settings.broker.directory, Path.cwd() / "spool")


class IniFileTests(SynchronousTestCase):
    """
    Tests for L{load_settings} with an L{IniFile}.
    """

    def setUp(self) -> None:
        self.folder = temporary_directory(self)
        self.path = self.folder / "fmq.ini"

    def load(self, text: str) -> Settings:
        """
        Write C{text} to the ini file and load it.
        """
        self.path.write_text(text, encoding="utf-8")
        return load_settings(IniFile(self.path))

    def test_only_directory(self) -> None:
        """
        A file with only C{[broker] directory} works; every other key has its default.
        """
        settings = self.load("[broker]\ndirectory = /srv/fmq\n")
        self.assertEqual(
            (settings.broker.directory, settings.http.port, settings.source),
            (Path("/srv/fmq"), 8080, str(self.path)),
        )

    def test_relative_directory(self) -> None:
        """
        A relative directory is relative to the ini file's folder, not the current folder.
        """
        self.assertNotEqual(Path.cwd(), self.folder)
        settings = self.load("[broker]\ndirectory = ./spool/in\n")
        self.assertEqual(settings.broker.directory, self.folder / "spool" / "in")

    def test_relative_ini_path(self) -> None:
        """
        An ini file named by a relative path still anchors relative directories in its folder.
        """
        self.path.write_text("[broker]\ndirectory = spool\n", encoding="utf-8")
        relative = Path(os.path.relpath(self.path))
        self.assertFalse(relative.is_absolute())
        settings = load_settings(IniFile(relative))
        self.assertEqual(settings.broker.directory, self.folder / "spool")

    def test_absolute_directory(self) -> None:
        """
        An absolute directory is kept as it is.
        """
        elsewhere = temporary_directory(self)
        settings = self.load(f"[broker]\ndirectory = {elsewhere}\n")
        self.assertEqual(settings.broker.directory, elsewhere)

    def test_inline_comments(self) -> None:
        """
        Comments after values, as in the contract's example, are allowed.
        """
        settings = self.load(
            "[http]\n"
            "port = 9090           # where callers connect\n"
            "request_timeout = 2.5 # seconds\n"
            "[service]\n"
            "mode = naive          # collapse | naive\n"
        )
        self.assertEqual(
            (settings.http.port, settings.http.request_timeout, settings.service.mode),
            (9090, 2.5, "naive"),
        )

    def test_contract_example(self) -> None:
        """
        The contract's example file loads with the values it shows: the defaults,
        but for the seed's collapse key, which it names.
        """
        settings = self.load(
            "[http]\ninterface = 127.0.0.1\nport = 8080\nrequest_timeout = 60.0\n"
            "[broker]\ntype = file\ndirectory = ./var/broker\npoll_interval = 0.05\n"
            "request_ttl = 300.0\n"
            "[service]\nmode = collapse\ncollapse_key = fmq.keys.method_and_path\n"
            "[admin]\ninterface = 127.0.0.1\nport = 8081\n"
        )
        defaults = load_settings(DictSource({}, name=str(self.path), base=self.folder))
        self.assertEqual(settings.service.collapse_key, "fmq.keys.method_and_path")
        self.assertEqual(
            settings,
            attrs.evolve(
                defaults,
                service=attrs.evolve(defaults.service, collapse_key="fmq.keys.method_and_path"),
            ),
        )

    def test_no_interpolation(self) -> None:
        """
        Percent signs in values, as in an AMQP URL's vhost, are kept as written.
        """
        settings = self.load("[amqp]\nurl = amqp://u:p@rabbit:5672/%2F?x=%(name)s\n")
        self.assertEqual(settings.amqp.url, "amqp://u:p@rabbit:5672/%2F?x=%(name)s")

    def test_overrides_win(self) -> None:
        """
        An override wins over the file's value and is converted like it.
        """
        self.path.write_text("[http]\nport = 8000\n", encoding="utf-8")
        settings = load_settings(IniFile(self.path), {("http", "port"): "9000"})
        self.assertEqual(settings.http.port, 9000)

    def test_override_directory_relative(self) -> None:
        """
        A relative directory given as an override is relative to the ini file's folder too.
        """
        self.path.write_text("", encoding="utf-8")
        settings = load_settings(IniFile(self.path), {("broker", "directory"): "spool"})
        self.assertEqual(settings.broker.directory, self.folder / "spool")


class SettingsErrorTests(SynchronousTestCase):
    """
    Every problem is a L{SettingsError} with one line naming the file and the key.
    """

    def setUp(self) -> None:
        self.folder = temporary_directory(self)
        self.path = self.folder / "fmq.ini"

    def error(self, text: str | bytes, overrides: dict[tuple[str, str], str] | None = None) -> str:
        """
        Write C{text} to the ini file, load it with C{overrides}, and return the error's message.
        """
        if isinstance(text, bytes):
            self.path.write_bytes(text)
        else:
            self.path.write_text(text, encoding="utf-8")
        error = self.assertRaises(SettingsError, load_settings, IniFile(self.path), overrides or {})
        return str(error)

    def assert_one_line(self, message: str, *words: str) -> None:
        """
        Assert C{message} is one line naming the file and every one of C{words}.
        """
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{self.path}: "), message)
        for word in words:
            self.assertIn(word, message)

    def test_missing_file(self) -> None:
        """
        A missing file is named.
        """
        error = self.assertRaises(SettingsError, load_settings, IniFile(self.path))
        self.assert_one_line(str(error), "cannot read")

    def test_unparsable(self) -> None:
        """
        A file that is not ini syntax is an error naming the file and the line.
        """
        self.assert_one_line(self.error("[http\nport = 1\n"), "cannot parse", "line 1")

    def test_unparsable_several_errors(self) -> None:
        """
        A file with several syntax errors still gives a one-line message.
        """
        self.assert_one_line(self.error("[http]\nport\nfoo\n"), "cannot parse")

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is a settings error naming the file.
        """
        self.assert_one_line(self.error(b"[http]\ninterface = \xff\xfe\n"), "cannot")

    def test_duplicate_key(self) -> None:
        """
        A key given twice in one section is an error.
        """
        self.assert_one_line(self.error("[http]\nport = 1\nport = 2\n"), "Duplicate", "line 3")

    def test_unknown_section(self) -> None:
        """
        An unknown section is named.
        """
        self.assert_one_line(self.error("[htpp]\nport = 1\n"), "[htpp]", "section")

    def test_unknown_key(self) -> None:
        """
        An unknown key is named with its section.
        """
        self.assert_one_line(self.error("[http]\nprot = 1\n"), "[http] prot", "not a known key")

    def test_unknown_subsection(self) -> None:
        """
        A subsection inside a known section is an unknown key of that section.
        """
        self.assert_one_line(self.error("[http]\n[[tls]]\ncert = x\n"), "[http] tls")

    def test_wrong_type(self) -> None:
        """
        A value of the wrong type names the key and what was expected.
        """
        self.assert_one_line(self.error("[http]\nport = abc\n"), "[http] port", "abc", "integer")

    def test_list_for_integer(self) -> None:
        """
        A comma-separated list where a number is expected is the wrong type.
        """
        self.assert_one_line(self.error("[http]\nport = 1, 2\n"), "[http] port", "wrong type")

    def test_too_big(self) -> None:
        """
        A port above 65535 is out of range.
        """
        self.assert_one_line(self.error("[http]\nport = 99999\n"), "[http] port", "too big")

    def test_too_small(self) -> None:
        """
        A poll interval of zero is out of range.
        """
        self.assert_one_line(
            self.error("[broker]\npoll_interval = 0\n"), "[broker] poll_interval", "too small"
        )

    def test_empty_directory(self) -> None:
        """
        An empty broker directory is rejected.
        """
        self.assert_one_line(self.error("[broker]\ndirectory =\n"), "[broker] directory")

    def test_bad_option(self) -> None:
        """
        A mode that is neither collapse nor naive names the key and the choices.
        """
        self.assert_one_line(
            self.error("[service]\nmode = fast\n"), "[service] mode", "fast", "naive"
        )

    def test_key_outside_section(self) -> None:
        """
        A key before the first section is named.
        """
        self.assert_one_line(self.error("port = 8080\n[http]\n"), "'port'", "outside")

    def test_bad_override(self) -> None:
        """
        An override is validated like the file's values, and its key is named.
        """
        self.assert_one_line(self.error("", {("http", "port"): "ninety"}), "[http] port", "ninety")

    def test_bad_override_mode(self) -> None:
        """
        A bad mode given as an override is rejected, naming the key.
        """
        self.assert_one_line(self.error("", {("service", "mode"): "fast"}), "[service] mode")

    def test_dict_source_named(self) -> None:
        """
        Errors from a L{DictSource} are named by the source's name.
        """
        source = DictSource({"http": {"port": "x"}}, name="env")
        error = self.assertRaises(SettingsError, load_settings, source)
        self.assertTrue(str(error).startswith("env: [http] port"), str(error))


class SourceInterfaceTests(SynchronousTestCase):
    """
    Both settings sources provide L{ISettingsSource}.
    """

    def test_ini_file(self) -> None:
        """
        L{IniFile} provides L{ISettingsSource} and is based in its file's folder.
        """
        source = IniFile(Path("/etc/fmq/fmq.ini"))
        self.assertTrue(verifyObject(ISettingsSource, source))
        self.assertEqual(
            (source.name, source.base_directory()), ("/etc/fmq/fmq.ini", Path("/etc/fmq"))
        )

    def test_dict_source(self) -> None:
        """
        L{DictSource} provides L{ISettingsSource} and returns its mapping.
        """
        source = DictSource({"http": {"port": "1"}}, name="test", base=Path("/base"))
        self.assertTrue(verifyObject(ISettingsSource, source))
        self.assertEqual(
            (source.load(), source.base_directory()), ({"http": {"port": "1"}}, Path("/base"))
        )


def shout(request: CallerRequest) -> bytes:
    """
    A collapse key defined here, for L{load_collapse_key}.
    """
    return request.target.upper()


#: not callable, for L{load_collapse_key}.
NOT_CALLABLE = 42


class LoadCollapseKeyTests(SynchronousTestCase):
    """
    Tests for L{load_collapse_key}.
    """

    def test_builtin(self) -> None:
        """
        The shipped dotted paths name L{reads_per_credentials} and L{method_and_path}.
        """
        self.assertIs(load_collapse_key("fmq.keys.method_and_path"), method_and_path)
        self.assertIs(load_collapse_key("fmq.keys.reads_per_credentials"), reads_per_credentials)

    def test_user_function(self) -> None:
        """
        A function in any importable module can be named.
        """
        self.assertIs(load_collapse_key(f"{__name__}.shout"), shout)

    def test_missing_module(self) -> None:
        """
        A module that does not exist is a L{ValueError} naming the path.
        """
        error = self.assertRaises(ValueError, load_collapse_key, "fmq_no_such_module.key")
        self.assertIn("fmq_no_such_module.key", str(error))

    def test_missing_attribute(self) -> None:
        """
        A name the module lacks is a L{ValueError} naming the path.
        """
        error = self.assertRaises(ValueError, load_collapse_key, "fmq.keys.no_such_key")
        self.assertIn("fmq.keys.no_such_key", str(error))

    def test_not_callable(self) -> None:
        """
        A name that is not callable is a L{ValueError}.
        """
        error = self.assertRaises(ValueError, load_collapse_key, f"{__name__}.NOT_CALLABLE")
        self.assertIn("not callable", str(error))

    def test_no_dot(self) -> None:
        """
        A name without a dot is a L{ValueError}.
        """
        error = self.assertRaises(ValueError, load_collapse_key, "method_and_path")
        self.assertIn("not a dotted path", str(error))

    def test_empty_parts(self) -> None:
        """
        A leading or trailing dot is a L{ValueError}.
        """
        self.assertRaises(ValueError, load_collapse_key, ".method_and_path")
        self.assertRaises(ValueError, load_collapse_key, "fmq.keys.")

    def test_relative_path(self) -> None:
        """
        A relative dotted path is a L{ValueError}, not another exception.
        """
        self.assertRaises(ValueError, load_collapse_key, "..method_and_path")


class CollapseKeyTests(SynchronousTestCase):
    """
    Tests for the collapse key functions shipped in L{fmq.keys}.
    """

    def test_method_and_path(self) -> None:
        """
        L{method_and_path} is the method and the whole target, query string included.
        """
        request = CallerRequest(b"GET", b"/items?id=1")
        self.assertEqual(method_and_path(request), (b"GET", b"/items?id=1"))

    def test_method_and_path_distinguishes_query(self) -> None:
        """
        L{method_and_path} keeps requests with different query strings apart.
        """
        self.assertNotEqual(
            method_and_path(CallerRequest(b"GET", b"/items?id=1")),
            method_and_path(CallerRequest(b"GET", b"/items?id=2")),
        )

    def test_method_and_path_ignores_headers(self) -> None:
        """
        L{method_and_path} collapses requests that differ only in their headers.
        """
        plain = CallerRequest(b"GET", b"/a")
        with_headers = CallerRequest(b"GET", b"/a", Headers({b"X-Trace": [b"1"]}))
        self.assertEqual(method_and_path(plain), method_and_path(with_headers))

    def test_method_counts(self) -> None:
        """
        Both shipped keys keep requests with different methods apart.
        """
        for key in [method_and_path, method_and_path_without_query]:
            self.assertNotEqual(
                key(CallerRequest(b"GET", b"/a")), key(CallerRequest(b"HEAD", b"/a"))
            )

    def test_without_query(self) -> None:
        """
        L{method_and_path_without_query} drops everything from the first C{?}.
        """
        request = CallerRequest(b"GET", b"/items?id=1?x")
        self.assertEqual(method_and_path_without_query(request), (b"GET", b"/items"))

    def test_without_query_collapses(self) -> None:
        """
        L{method_and_path_without_query} collapses requests that differ only in their query.
        """
        self.assertEqual(
            method_and_path_without_query(CallerRequest(b"GET", b"/items?id=1")),
            method_and_path_without_query(CallerRequest(b"GET", b"/items")),
        )

    def test_keys_hashable(self) -> None:
        """
        The keys can be used in a dict, as the collapse map does.
        """
        request = CallerRequest(b"GET", b"/a?b", Headers({b"Cookie": [b"a=1", b"b=2"]}))
        groups = {
            method_and_path(request): 1,
            method_and_path_without_query(request): 2,
            reads_per_credentials(request): 3,
        }
        self.assertEqual(len(groups), 3)


def caller(
    method: bytes = b"GET", target: bytes = b"/me", body: bytes = b"", **headers: str
) -> CallerRequest:
    """
    A caller's request with C{headers} given as C{authorization="..."}.
    """
    raw = Headers()
    for name, value in headers.items():
        raw.addRawHeader(name.encode(), value.encode())
    return CallerRequest(method, target, raw, body)


class ReadsPerCredentialsTests(SynchronousTestCase):
    """
    Tests for L{reads_per_credentials}, the default collapse key.
    """

    def test_reads_collapse(self) -> None:
        """
        Two GETs (or two HEADs) for one target, with the same credentials or none, collapse.
        """
        for method in [b"GET", b"HEAD"]:
            self.assertEqual(
                reads_per_credentials(caller(method)), reads_per_credentials(caller(method))
            )
            self.assertEqual(
                reads_per_credentials(caller(method, authorization="Bearer a", cookie="s=1")),
                reads_per_credentials(caller(method, authorization="Bearer a", cookie="s=1")),
            )

    def test_other_headers_do_not_count(self) -> None:
        """
        Headers other than Authorization and Cookie do not keep callers apart.
        """
        self.assertEqual(
            reads_per_credentials(caller(x_trace="1", accept="*/*")),
            reads_per_credentials(caller(x_trace="2")),
        )

    def test_credentials_keep_apart(self) -> None:
        """
        Different, present or absent Authorization or Cookie values never collapse.
        """
        keys = [
            reads_per_credentials(caller()),
            reads_per_credentials(caller(authorization="Bearer a")),
            reads_per_credentials(caller(authorization="Bearer b")),
            reads_per_credentials(caller(cookie="s=1")),
            reads_per_credentials(caller(cookie="s=2")),
            reads_per_credentials(caller(authorization="Bearer a", cookie="s=1")),
        ]
        self.assertEqual(len(set(keys)), len(keys))

    def test_method_and_target_count(self) -> None:
        """
        GET and HEAD, and different targets, are kept apart.
        """
        keys = {
            reads_per_credentials(caller(b"GET", b"/a")),
            reads_per_credentials(caller(b"HEAD", b"/a")),
            reads_per_credentials(caller(b"GET", b"/a?x=1")),
        }
        self.assertEqual(len(keys), 3)

    def test_other_methods_never_collapse(self) -> None:
        """
        Every other method gets a key of its own, even with the same target and body.
        """
        for method in [b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"get"]:
            self.assertNotEqual(
                reads_per_credentials(caller(method, body=b"x")),
                reads_per_credentials(caller(method, body=b"x")),
            )
