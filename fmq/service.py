"""
The service tree's root: start failures as one line, and a graceful stop.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from fmq.brokers.lock import LockHeld
from fmq.connections import Connections
from fmq.dispatch import Dispatcher

log = Logger(namespace="fmq")


class FmqService(MultiService):
    """
    fmq's root service. Expected start failures (the directory is locked by
    another instance, a port is taken) end the start with one line.

    @param log_observer: set on the application twistd puts it in, where
        twistd looks for the observer of its log (see L{fmq.logs}).
    """

    def __init__(self, log_observer: ILogObserver | None = None) -> None:
        MultiService.__init__(self)
        self._log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        MultiService.setServiceParent(self, parent)
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)

    def privilegedStartService(self) -> None:
        with _one_line_start_errors():
            MultiService.privilegedStartService(self)

    def startService(self) -> None:
        with _one_line_start_errors():
            MultiService.startService(self)


@contextmanager
def _one_line_start_errors() -> Iterator[None]:
    try:
        yield
    except LockHeld as e:
        raise SystemExit(f"fmq: {e}") from None
    except CannotListenError as e:
        raise SystemExit(
            f"fmq: cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}"
        ) from None


class Drain(Service):
    """
    At stop, answer waiting callers 503, close idle connections at once, and
    let every answer already being written reach its caller before its
    connection is closed, up to C{patience} seconds.

    Put it after the broker and before the HTTP listener in the tree: stopping
    goes in reverse, so the listener stops accepting first.

    @param connections: the callers' connections.
    @param patience: seconds to wait for answers still being written; what
        is still open then is cut off by the reactor's shutdown.
    @param when_drained: called once the drain ends, e.g. to write the
        access lines of the requests that ended during it.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        connections: Connections,
        clock: IReactorTime,
        patience: float = 5.0,
        tick: float = 0.02,
        when_drained: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._dispatcher = dispatcher
        self._connections = connections
        self._clock = clock
        self._patience = patience
        self._tick = tick
        self._when_drained = list(when_drained)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        waiting = self._dispatcher.callers_waiting
        self._dispatcher.close()
        log.info(
            "stopping: answered {waiting} waiting callers 503, closing {connections} "
            "connections once their answers are written",
            waiting=waiting,
            connections=len(self._connections),
        )
        done: Deferred[None] = Deferred()
        deadline = self._clock.seconds() + self._patience

        def check() -> None:
            still_open = self._connections.close_idle()
            if not still_open:
                done.callback(None)
            elif self._clock.seconds() >= deadline:
                log.warn(
                    "stopping: {connections} connections still writing after {patience}s "
                    "are cut off",
                    connections=still_open,
                    patience=self._patience,
                )
                done.callback(None)
            else:
                self._clock.callLater(self._tick, check)

        def drained(result: None) -> None:
            for callback in self._when_drained:
                callback()

        done.addCallback(drained)
        check()
        return done


def exit_cleanly_on_sigterm(reactor: IReactorCore) -> None:
    """
    Make SIGTERM stop the reactor like any shutdown, so twistd exits with
    status 0 instead of re-raising the signal (status 143).

    Call it once the reactor runs: it installs its own handlers at start.
    """

    def stop() -> None:
        log.info("SIGTERM: stopping; request files stay for the next start")
        reactor.stop()

    signal.signal(
        signal.SIGTERM, lambda signum, frame: cast(IReactorThreads, reactor).callFromThread(stop)
    )


def settle_heap(collector: ModuleType = gc) -> None:
    """
    Keep the objects made while starting out of every later garbage
    collection (C{gc.freeze}, CPython 3.7 and later; PyPy has none).

    Call it once the reactor runs, every service started. Callers held for
    milliseconds outlive the young generations, so they die in the oldest,
    and each time enough have, CPython walks the whole heap: a few hundred
    thousand objects of Twisted, Klein, pika and prometheus_client that
    live as long as the process. Frozen, they are no longer walked.
    """
    freeze = getattr(collector, "freeze", None)
    if freeze is None:
        return
    collector.collect()  # what is already garbage is not kept for good
    freeze()
