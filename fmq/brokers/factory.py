"""
Choose the broker named by C{[broker] type}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IReactorFDSet, IReactorTime

from fmq._importing import import_dotted
from fmq.brokers.file import FileBroker
from fmq.brokers.watch import inotify_available, inotify_watcher
from fmq.interfaces import IBroker
from fmq.settings import Settings

__all__ = ["BROKERS", "BrokerFactory", "amqp_broker", "file_broker", "make_broker"]

#: what C{[broker] type} names: settings and the reactor in, a broker out
BrokerFactory = Callable[[Settings, IReactorTime], IBroker]


def file_broker(settings: Settings, reactor: IReactorTime) -> IBroker:
    """
    The directory broker of C{[broker]}.
    """
    broker = settings.broker
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
