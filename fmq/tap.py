"""
The C{twistd fmq} command: options and the service tree.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger, LogPublisher
from twisted.python import usage

from fmq import __version__
from fmq.admin import Admin
from fmq.brokers.factory import make_broker
from fmq.connections import Connections
from fmq.dispatch import Dispatcher
from fmq.gate import AcceptGate, GatedTCP4ServerEndpoint
from fmq.keys import load_collapse_key
from fmq.logs import make_observer
from fmq.metrics import Metrics
from fmq.registry import make_fleet
from fmq.service import Drain, FmqService, exit_cleanly_on_sigterm, settle_heap
from fmq.settings import IniFile, Settings, SettingsError, load_settings
from fmq.status import Events, Sampler, Status
from fmq.warmup import warm_up
from fmq.web import AccessLogSite, FmqRequest, Front, QuietSite

log = Logger(namespace="fmq")


class Options(usage.Options):
    """
    C{twistd fmq --config PATH}, with overrides for the commonest keys.
    """

    optParameters = [
        ["config", "c", "fmq.ini", "The settings file."],
        ["port", "p", None, "Override [http] port."],
        ["broker-dir", "d", None, "Override [broker] directory."],
        ["mode", "m", None, "Override [service] mode: collapse or naive."],
    ]

    def postOptions(self) -> None:
        overrides = {
            (section, key): self[option]
            for option, section, key in [
                ("port", "http", "port"),
                ("broker-dir", "broker", "directory"),
                ("mode", "service", "mode"),
            ]
            if self[option] is not None
        }
        try:
            settings = load_settings(IniFile(Path(self["config"])), overrides)
        except SettingsError as e:
            raise SystemExit(f"fmq: {e}") from None
        try:
            load_collapse_key(settings.service.collapse_key)
        except ValueError as e:
            raise SystemExit(f"fmq: {settings.source}: [service] collapse_key: {e}") from None
        self["settings"] = settings


def raise_open_files_limit() -> tuple[int, int]:
    """
    Raise this process's soft limit of open files to the hard limit.

    @return: the soft limits before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def build_service(settings: Settings, reactor: Any) -> MultiService:
    """
    The service tree: broker, drain, then the HTTP and admin listeners.

    Stopping goes in reverse: the listeners stop accepting, the drain answers
    waiting callers 503, then the broker stops and leaves its request files.
    """
    events = Events(settings.admin.show_query)
    root = FmqService(
        LogPublisher(make_observer(settings.logging.level, settings.logging.format), events)
    )
    fleet = make_fleet(settings, reactor)
    if fleet is not None:
        # Before the broker: it stops after it, so a holder stopped by the
        # broker's stop can still tell the others to take over.
        fleet[1].setServiceParent(root)
    broker = make_broker(settings, reactor)
    broker.setServiceParent(root)
    collapse_key = (
        None
        if settings.service.mode == "naive"
        else load_collapse_key(settings.service.collapse_key)
    )
    metrics = Metrics()
    dispatcher = Dispatcher(
        broker,
        reactor,
        settings.http.request_timeout,
        collapse_key,
        max_waiting=settings.http.max_waiting,
        observer=metrics,
        request_format=settings.broker.request_format,
        fleet=fleet[0] if fleet is not None else None,
    )
    metrics.watch(dispatcher, broker)
    if fleet is not None:
        metrics.watch_fleet(fleet[0])

    resource = Front(dispatcher).app.resource()
    access_log = AccessLogSite(resource, reactor) if settings.http.access_log else None
    site = access_log if access_log is not None else QuietSite(resource, reactor=reactor)
    site.requestFactory = FmqRequest.limited(settings.http.max_body)
    connections = Connections()
    connections.track(site)
    Drain(
        dispatcher,
        connections,
        reactor,
        settings.http.drain_timeout,
        # The lines of the answers that end during the drain.
        when_drained=[access_log.close] if access_log is not None else [],
    ).setServiceParent(root)
    # Callers beyond the open-files limit wait in the backlog, not dropped.
    gate = AcceptGate(connections, reactor, _soft_open_files_limit())
    _serve(
        root,
        GatedTCP4ServerEndpoint(
            reactor, settings.http.port, gate, settings.http.backlog, settings.http.interface
        ),
        site,
    )

    sampler = Sampler(dispatcher, broker, metrics, reactor)
    sampler.setServiceParent(root)
    status = Status(
        dispatcher,
        broker,
        settings.broker.type,
        sampler,
        events,
        reactor,
        settings.effective(),
        __version__,
        settings.admin.show_query,
    )
    admin = Admin(broker, settings.broker.type, dispatcher, reactor, metrics, status)
    admin.fleet = fleet[0] if fleet is not None else None
    admin_resource = admin.app.resource()
    admin_site = QuietSite(admin_resource, reactor=reactor)
    _listen(root, reactor, settings.admin.interface, settings.admin.port, admin_site, 50)
    # Lazy imports and first-use file opens now, not at a first burst of
    # callers that may leave no descriptor for them.
    warm_up(admin_resource, reactor)
    return root


def _soft_open_files_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _listen(
    root: MultiService, reactor: Any, interface: str, port: int, factory: Any, backlog: int
) -> None:
    _serve(root, TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=interface), factory)


def _serve(root: MultiService, endpoint: Any, factory: Any) -> None:
    service = StreamServerEndpointService(endpoint, factory)
    service._raiseSynchronously = True
    service.setServiceParent(root)


def makeService(options: Options) -> IService:
    """
    Build fmq's service from parsed options; only here is the reactor imported.
    """
    from twisted.internet import reactor

    settings: Settings = options["settings"]
    before, after = raise_open_files_limit()
    log.info(
        "open files limit raised from {before} to {after}",
        before=_limit(before),
        after=_limit(after),
    )
    log.info(
        "fmq {version} starting from {source}: {settings}",
        version=__version__,
        source=settings.source,
        settings=settings.summary(),
    )
    try:
        root = build_service(settings, reactor)
    except ValueError as e:
        raise SystemExit(f"fmq: {settings.source}: {e}") from None
    reactor.callWhenRunning(exit_cleanly_on_sigterm, reactor)
    reactor.callWhenRunning(settle_heap)
    return root
