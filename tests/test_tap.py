"""
Tests for L{fmq.tap}, L{fmq.brokers.factory} and the C{twistd fmq} plugin.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import fmq.tap
from fmq.brokers.amqp import AmqpBroker
from fmq.brokers.factory import make_broker
from fmq.brokers.file import FileBroker
from fmq.gate import GatedPort, GatedTCP4ServerEndpoint
from fmq.interfaces import IBroker
from fmq.settings import DictSource, Settings, load_settings
from fmq.tap import Options, build_service
from fmq.testing import MemoryBroker

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "twisted_plugins" / "fmq_plugin.py"


def temporary_directory(case: SynchronousTestCase) -> Path:
    """
    A new empty directory outside the checkout, removed when C{case} ends.
    """
    path = Path(tempfile.mkdtemp(prefix="fmq-test-")).resolve()
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def load_plugin() -> ModuleType:
    """
    Import C{twisted_plugins/fmq_plugin.py} from the source checkout.
    """
    spec = importlib.util.spec_from_file_location("fmq_plugin_under_test", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PluginTests(SynchronousTestCase):
    """
    Tests for the C{twistd} plugin.
    """

    def setUp(self) -> None:
        self.plugin = load_plugin()

    def test_service_maker(self) -> None:
        """
        The plugin's C{fmq} provides L{IServiceMaker} under the name C{fmq}.
        """
        self.assertTrue(IServiceMaker.providedBy(self.plugin.fmq))
        self.assertEqual(self.plugin.fmq.tapname, "fmq")

    def test_only_one_maker(self) -> None:
        """
        The plugin module offers exactly one service maker.
        """
        makers = [v for v in vars(self.plugin).values() if IServiceMaker.providedBy(v)]
        self.assertEqual(makers, [self.plugin.fmq])

    def test_points_at_tap(self) -> None:
        """
        The plugin's options and C{makeService} are those of L{fmq.tap}.
        """
        self.assertIs(self.plugin.fmq.options, fmq.tap.Options)
        self.assertIs(self.plugin.fmq.makeService, fmq.tap.makeService)


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def setUp(self) -> None:
        self.folder = temporary_directory(self)
        self.path = self.folder / "fmq.ini"
        self.path.write_text("[broker]\ndirectory = spool\n", encoding="utf-8")

    def parse(self, *args: str) -> Options:
        """
        Parse C{args} after C{--config} and the ini file.
        """
        options = Options()
        options.parseOptions(["--config", str(self.path), *args])
        return options

    def exit_message(self, *args: str) -> str:
        """
        Parse C{args}, which must fail, and return the message the process exits with.
        """
        error = self.assertRaises(SystemExit, self.parse, *args)
        self.assertIsInstance(error.code, str)
        return str(error.code)

    def assert_one_line(self, message: str, *words: str) -> None:
        """
        Assert C{message} is one C{fmq: } line naming the file and each of C{words}.
        """
        self.assertNotIn("\n", message)
        self.assertNotIn("Usage", message)
        self.assertTrue(message.startswith("fmq: "), message)
        self.assertIn(str(self.path), message)
        for word in words:
            self.assertIn(word, message)

    def test_settings(self) -> None:
        """
        C{--config} loads the file into a L{Settings} under C{options["settings"]}.
        """
        settings = self.parse()["settings"]
        self.assertIsInstance(settings, Settings)
        self.assertEqual(
            (settings.source, settings.broker.directory, settings.http.port),
            (str(self.path), self.folder / "spool", 8080),
        )

    def test_overrides(self) -> None:
        """
        C{--port}, C{--broker-dir} and C{--mode} override the file.
        """
        other = self.folder / "other"
        settings = self.parse("--port", "9001", "--broker-dir", str(other), "--mode", "naive")[
            "settings"
        ]
        self.assertEqual(
            (settings.http.port, settings.broker.directory, settings.service.mode),
            (9001, other, "naive"),
        )

    def test_short_overrides(self) -> None:
        """
        The overrides have short forms C{-p}, C{-d} and C{-m}.
        """
        settings = self.parse("-p", "9002", "-d", "/srv/spool", "-m", "naive")["settings"]
        self.assertEqual(
            (settings.http.port, settings.broker.directory, settings.service.mode),
            (9002, Path("/srv/spool"), "naive"),
        )

    def test_missing_file(self) -> None:
        """
        A missing settings file stops the start with one line naming it.
        """
        self.path.unlink()
        self.assert_one_line(self.exit_message(), "cannot read")

    def test_bad_key(self) -> None:
        """
        An unknown key stops the start with one line naming the file and the key.
        """
        self.path.write_text("[http]\nprot = 1\n", encoding="utf-8")
        self.assert_one_line(self.exit_message(), "[http] prot")

    def test_bad_mode(self) -> None:
        """
        C{--mode fast} stops the start with one line naming the file and the key.
        """
        self.assert_one_line(self.exit_message("--mode", "fast"), "[service] mode", "fast")

    def test_bad_port(self) -> None:
        """
        A C{--port} that is not a number stops the start with one line naming the key.
        """
        self.assert_one_line(self.exit_message("--port", "http"), "[http] port")

    def test_bad_collapse_key(self) -> None:
        """
        A collapse key that cannot be imported stops the start with one line naming the key.
        """
        self.path.write_text("[service]\ncollapse_key = fmq.keys.nope\n", encoding="utf-8")
        self.assert_one_line(self.exit_message(), "[service] collapse_key", "fmq.keys.nope")


def memory_broker(settings: Settings, reactor: Any) -> MemoryBroker:
    """
    A broker factory named by dotted path in the tests below.
    """
    broker = MemoryBroker(reactor, request_ttl=settings.broker.request_ttl)
    broker.made_with = (settings, reactor)  # type: ignore[attr-defined]
    return broker


def not_a_broker(settings: Settings, reactor: Any) -> object:
    """
    A broker factory that returns something that is not an L{IBroker}.
    """
    return object()


class MakeBrokerTests(SynchronousTestCase):
    """
    Tests for L{make_broker}.
    """

    def settings(self, **broker: str) -> Settings:
        """
        Settings with the given C{[broker]} keys and a temporary directory.
        """
        directory = temporary_directory(self) / "broker"
        return load_settings(DictSource({"broker": {"directory": str(directory), **broker}}))

    def test_file(self) -> None:
        """
        C{type = file} makes a L{FileBroker} on the configured directory.
        """
        settings = self.settings(type="file")
        broker = make_broker(settings, MemoryReactorClock())
        self.assertIsInstance(broker, FileBroker)
        self.assertEqual(broker.directory, settings.broker.directory)

    def test_file_answer_cap(self) -> None:
        """
        The file broker gets C{max_answer_bytes}.
        """
        broker = make_broker(self.settings(max_answer_bytes="1000"), MemoryReactorClock())
        self.assertEqual(broker._reader.max_bytes, 1000)

    def broker_warnings(self, mode: int) -> list[str]:
        """
        The warnings logged while making a file broker on a directory of C{mode}.
        """
        settings = self.settings()
        self.directory = settings.broker.directory
        settings.broker.directory.mkdir()
        settings.broker.directory.chmod(mode)
        self.addCleanup(settings.broker.directory.chmod, 0o700)
        with capturedLogs() as events:
            make_broker(settings, MemoryReactorClock())
        return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

    def test_writable_by_everyone_warns(self) -> None:
        """
        A broker directory every user may write to, sticky or not, gives one
        warning line that names it: anyone could plant answers.
        """
        for mode in [0o777, 0o1777, 0o733]:
            [line] = self.broker_warnings(mode)
            self.assertIn("can be written by every user", line)
            self.assertIn("plant answers", line)
            self.assertIn(str(self.directory), line)

    def test_private_directory_no_warning(self) -> None:
        """
        A directory only its owner, or its owner's group, may write to gives no warning.
        """
        for mode in [0o700, 0o755, 0o775, 0o1775]:
            self.assertEqual(self.broker_warnings(mode), [])

    def test_missing_directory_no_warning(self) -> None:
        """
        A directory that is not there yet gives no warning (fmq makes it).
        """
        with capturedLogs() as events:
            make_broker(self.settings(), MemoryReactorClock())
        self.assertEqual([e for e in events if e["log_level"] == LogLevel.warn], [])

    def test_amqp(self) -> None:
        """
        C{type = amqp} gives an L{AmqpBroker}, not yet connected.
        """
        broker = make_broker(self.settings(type="amqp"), MemoryReactorClock())
        self.assertIsInstance(broker, AmqpBroker)
        self.assertFalse(broker.available)

    def test_unknown_dotted_path(self) -> None:
        """
        A dotted path that cannot be imported is a L{ValueError} naming C{[broker] type}.
        """
        settings = self.settings(type="fmq_no_such_module.broker")
        error = self.assertRaises(ValueError, make_broker, settings, MemoryReactorClock())
        self.assertIn("[broker] type", str(error))
        self.assertIn("fmq_no_such_module.broker", str(error))

    def test_unknown_name(self) -> None:
        """
        A type that is neither a known broker nor a dotted path is a L{ValueError}.
        """
        error = self.assertRaises(
            ValueError, make_broker, self.settings(type="rabbit"), MemoryReactorClock()
        )
        self.assertIn("[broker] type", str(error))

    def test_factory(self) -> None:
        """
        A dotted path names a factory that gets the settings and the reactor.
        """
        settings = self.settings(type=f"{__name__}.memory_broker")
        reactor = MemoryReactorClock()
        broker = make_broker(settings, reactor)
        self.assertIsInstance(broker, MemoryBroker)
        self.assertTrue(IBroker.providedBy(broker))
        self.assertEqual(broker.made_with, (settings, reactor))  # type: ignore[attr-defined]

    def test_factory_not_broker(self) -> None:
        """
        A factory that does not return an L{IBroker} is a L{ValueError}.
        """
        settings = self.settings(type=f"{__name__}.not_a_broker")
        error = self.assertRaises(ValueError, make_broker, settings, MemoryReactorClock())
        self.assertIn("did not make an IBroker", str(error))


def listeners(service: MultiService) -> list[tuple[int, int, str, bool]]:
    """
    The port, backlog and interface of each listener in C{service}, and
    whether its port is gated by the open-files limit.
    """
    found = []
    for child in service:
        if isinstance(child, StreamServerEndpointService):
            e: Any = child.endpoint
            if isinstance(e, GatedTCP4ServerEndpoint):
                found.append((e.port, e.backlog, e.interface, True))
            else:
                found.append((e._port, e._backlog, e._interface, False))
    return found


class BuildServiceTests(SynchronousTestCase):
    """
    Tests for L{build_service}.
    """

    def build(
        self, start: bool = True, **sections: dict[str, str]
    ) -> tuple[MultiService, MemoryReactorClock]:
        """
        Build the service tree on a fake reactor and, if C{start}, start it
        (the HTTP listener on a free port: it listens for real) and stop it
        at cleanup.
        """
        directory = temporary_directory(self) / "broker"
        values: dict[str, dict[str, str]] = {"broker": {"directory": str(directory)}}
        if start:
            values["http"] = {"port": "0"}
        values.update(sections)
        self.settings = load_settings(DictSource(values))
        reactor = MemoryReactorClock()
        service = build_service(self.settings, reactor)
        if start:
            service.startService()
            # The listener closes its socket a reactor turn after it stops.
            self.addCleanup(reactor.advance, 0)
            self.addCleanup(service.stopService)
        return service, reactor

    def test_multi_service(self) -> None:
        """
        The root is a running L{MultiService} with the broker among its children.
        """
        service, _ = self.build()
        self.assertIsInstance(service, MultiService)
        self.assertTrue(service.running)
        brokers = [child for child in service if IBroker.providedBy(child)]
        self.assertEqual(len(brokers), 1)
        self.assertTrue(brokers[0].running)

    def test_default_listeners(self) -> None:
        """
        The HTTP listener uses the default port with a deep backlog, gated by
        the open-files limit; the admin its own port.
        """
        service, _ = self.build(start=False)
        self.assertEqual(
            listeners(service), [(8080, 4096, "127.0.0.1", True), (8081, 50, "127.0.0.1", False)]
        )

    def test_configured_listeners(self) -> None:
        """
        Ports, interfaces and the backlog come from the settings.
        """
        service, _ = self.build(
            start=False,
            http={"port": "9100", "interface": "0.0.0.0", "backlog": "1234"},
            admin={"port": "9101", "interface": "127.0.0.2"},
        )
        self.assertEqual(
            listeners(service), [(9100, 1234, "0.0.0.0", True), (9101, 50, "127.0.0.2", False)]
        )

    def test_listening(self) -> None:
        """
        Started, the HTTP listener listens on a gated port, the admin one
        through the reactor.
        """
        service, reactor = self.build()
        [http] = [child for child in service if isinstance(child, StreamServerEndpointService)][:1]
        # successResultOf would take the port from the Deferred, and the
        # service could not stop listening (a socket left open).
        ports: list[Any] = []
        http._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        [port] = ports
        self.assertIsInstance(port, GatedPort)
        self.assertIn(port, reactor.readers)
        self.assertEqual([server[0] for server in reactor.tcpServers], [8081])

    def test_broker_directory_created(self) -> None:
        """
        Starting the service creates the broker directory.
        """
        self.build()
        self.assertTrue(self.settings.broker.directory.is_dir())

    def test_stop(self) -> None:
        """
        Stopping the root stops every child, the broker included.
        """
        service, reactor = self.build()
        service.stopService()
        reactor.advance(0)
        self.assertEqual([child.running for child in service], [False] * len(list(service)))

    def test_max_body(self) -> None:
        """
        The callers' site keeps request bodies of up to C{[http] max_body} bytes.
        """
        for values, limit in [({}, 1 << 20), ({"http": {"max_body": "10"}}, 10)]:
            service, _ = self.build(start=False, **values)
            http = next(c for c in service if isinstance(c, StreamServerEndpointService))
            self.assertEqual(http.factory.requestFactory.max_body, limit)

    def test_naive_mode(self) -> None:
        """
        Naive mode builds the same two listeners.
        """
        service, _ = self.build(start=False, service={"mode": "naive"})
        self.assertEqual([listener[0] for listener in listeners(service)], [8080, 8081])

    def test_bad_broker_type(self) -> None:
        """
        An unusable broker type is a L{ValueError} naming the key, before anything listens.
        """
        directory = temporary_directory(self) / "broker"
        settings = load_settings(
            DictSource({"broker": {"directory": str(directory), "type": "fmq_no.such"}})
        )
        reactor = MemoryReactorClock()
        error = self.assertRaises(ValueError, build_service, settings, reactor)
        self.assertIn("[broker] type", str(error))
        self.assertEqual(reactor.tcpServers, [])


_LIMIT_SCRIPT = """
import json, resource
from fmq.tap import raise_open_files_limit
result = raise_open_files_limit()
print(json.dumps([result, resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


@pytest.mark.process
class OpenFilesLimitTests(SynchronousTestCase):
    """
    Tests for L{raise_open_files_limit}, run in a child process with a lowered soft limit.
    """

    def run_child(self, soft: int) -> tuple[list[int], list[int]]:
        """
        Run L{raise_open_files_limit} in a child whose soft limit is C{soft}.
        """
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def lower() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        done = subprocess.run(
            [sys.executable, "-c", _LIMIT_SCRIPT],
            preexec_fn=lower,
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
        result, limits = json.loads(done.stdout)
        return result, limits

    def test_raised_to_hard(self) -> None:
        """
        A soft limit below the hard limit is raised to it, and both are reported.
        """
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            raise SkipTest("the hard limit of open files is unlimited here")
        soft = min(256, hard // 2)
        self.assertEqual(self.run_child(soft), ([soft, hard], [hard, hard]))

    def test_already_at_hard(self) -> None:
        """
        A soft limit already at the hard limit is reported unchanged.
        """
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(self.run_child(hard), ([hard, hard], [hard, hard]))


@pytest.mark.process
class InstalledPluginTests(SynchronousTestCase):
    """
    The installed project, as twistd sees it.
    """

    def test_twistd_lists_fmq(self) -> None:
        """
        C{twistd --help} of the installed project lists the fmq plugin (the
        test suite runs on a plain, non-editable install).
        """
        twistd = Path(sys.executable).with_name("twistd")
        result = subprocess.run(
            [str(twistd), "--help"], capture_output=True, text=True, timeout=120, check=True
        )
        [line] = [line for line in result.stdout.splitlines() if line.split()[:1] == ["fmq"]]
        self.assertIn("message broker", line)
