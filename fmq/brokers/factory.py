"""
Choose the broker named by C{[broker] type}.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import cast

from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.logger import Logger

from fmq._importing import import_dotted
from fmq.brokers.file import FileBroker
from fmq.brokers.watch import inotify_available, inotify_watcher
from fmq.interfaces import IBroker
from fmq.settings import Settings

__all__ = [
    "BROKERS",
    "BrokerFactory",
    "amqp_broker",
    "file_broker",
    "make_broker",
    "writable_by_everyone",
]

log = Logger(namespace="fmq.brokers")


def writable_by_everyone(directory: Path) -> bool:
    """
    Whether every local user may create files in C{directory} (mode C{o+w}).

    The sticky bit does not help: it stops users from removing or renaming
    each other's files, not from creating a C{.resp} that is not there yet.
    A missing directory is not (fmq makes it with the process's umask).
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWOTH)


#: what C{[broker] type} names: settings and the reactor in, a broker out
BrokerFactory = Callable[[Settings, IReactorTime], IBroker]


def file_broker(settings: Settings, reactor: IReactorTime) -> IBroker:
    """
    The directory broker of C{[broker]}.
    """
    broker = settings.broker
    if writable_by_everyone(broker.directory):
        log.warn(
            "the broker directory {directory} can be written by every user: any local "
            "user could plant answers; chmod o-w it",
            directory=str(broker.directory),
        )
    watcher = None
    if broker.watch != "poll":
        if inotify_available():
            watcher = inotify_watcher(cast(IReactorFDSet, reactor))
        elif broker.watch == "inotify":
            raise ValueError("[broker] watch: inotify is not available here")
    return FileBroker(
        broker.directory,
        reactor,
        poll_interval=broker.poll_interval,
        rescan_interval=broker.rescan_interval,
        request_ttl=broker.request_ttl,
        settle_time=broker.settle_time,
        delete_retry_max=broker.delete_retry_max,
        check_interval=broker.check_interval,
        max_answer_bytes=broker.max_answer_bytes,
        watcher=watcher,
    )


def amqp_broker(settings: Settings, reactor: IReactorTime) -> IBroker:
    """
    The RabbitMQ broker of C{[amqp]}.
    """
    from fmq.brokers.amqp import AmqpBroker

    amqp = settings.amqp
    return AmqpBroker(
        reactor,
        amqp.url,
        amqp.request_queue,
        request_ttl=settings.broker.request_ttl,
        connect_timeout=amqp.connect_timeout,
        reconnect_max=amqp.reconnect_max,
        max_answer_bytes=settings.broker.max_answer_bytes,
    )


BROKERS: dict[str, BrokerFactory] = {"file": file_broker, "amqp": amqp_broker}


def make_broker(settings: Settings, reactor: IReactorTime) -> IBroker:
    """
    Build the broker of C{settings}: C{file}, C{amqp} or a dotted factory path.

    @raise ValueError: the type names no broker; the message names the key.
    """
    name = settings.broker.type
    factory = BROKERS.get(name)
    if factory is None:
        try:
            factory = cast(BrokerFactory, import_dotted(name))
        except ValueError as e:
            raise ValueError(f"[broker] type: {e}") from None
    broker = factory(settings, reactor)
    if not IBroker.providedBy(broker):
        raise ValueError(f"[broker] type: {name!r} did not make an IBroker")
    return broker
