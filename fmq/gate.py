"""
Stop accepting callers' connections before this process runs out of file
descriptors, and accept again as they close.

Twisted's listener, on C{EMFILE} at C{accept}, frees a reserved descriptor,
accepts every waiting connection and closes it at once: those callers get no
answer at all. Paused instead, the listener leaves them in the kernel's
backlog, where they wait to be served as descriptors free up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define
from twisted.internet import tcp
from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from fmq.connections import Connections

__all__ = ["AcceptGate", "GatedPort", "GatedTCP4ServerEndpoint", "resume_room", "room"]

log = Logger(namespace="fmq")

#: descriptors kept free for what is not a caller's connection: the files
#: the broker opens while it works, /health and /metrics, a request body
#: large enough for a temporary file, Twisted's own reserve
SPARE = 64
#: seconds without a pause after which the listener is said to accept again
QUIET = 5.0
#: seconds between counts of open descriptors while paused, in case those
#: that free up are not callers' connections
CHECK_EVERY = 1.0


def room(open_descriptors: int, limit: int | None, spare: int) -> int:
    """
    How many more connections may be accepted now.

    @param limit: the soft limit of open files, or L{None} for no limit.
    """
    if limit is None:
        return sys.maxsize
    return max(0, limit - spare - open_descriptors)


def resume_room(connections_when_paused: int) -> int:
    """
    The room a paused listener waits for before it accepts again: more than
    one connection, so that it does not pause and resume (and log) at every
    close, but never more than the connections whose closing may free it.
    """
    return max(1, min(16, connections_when_paused // 4))


def count_open_descriptors() -> int | None:
    """
    How many descriptors this process has open, or L{None} if that cannot be
    read (no C{/proc}, or no descriptor left to read it with).
    """
    try:
        # The listing's own descriptor is among those listed.
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


class Listener(Protocol):
    """
    What the gate pauses and resumes: a listening port.
    """

    def startReading(self) -> None: ...

    def stopReading(self) -> None: ...


class AcceptGate:
    """
    Decides when a listener pauses and resumes, from the callers' connections
    it tracks plus the other descriptors open when last counted.

    A stretch of pauses and resumes close together (as connections close and
    new ones take their place) logs one line at its first pause and one when
    it has not paused for C{quiet} seconds.

    @param limit: the soft limit of open files, or L{None} for no limit.
    @param count: counts the descriptors open now, or returns L{None}.
    """

    def __init__(
        self,
        connections: Connections,
        clock: IReactorTime,
        limit: int | None,
        spare: int = SPARE,
        count: Callable[[], int | None] = count_open_descriptors,
        check_every: float = CHECK_EVERY,
        quiet: float = QUIET,
    ) -> None:
        self._connections = connections
        self._clock = clock
        self._limit = limit
        self._spare = spare
        self._count = count
        self._check_every = check_every
        self._quiet = quiet
        self._others = 0
        self._listener: Listener | None = None
        self._resume_at: int | None = None
        self._check: IDelayedCall | None = None
        self._stretch: _Stretch | None = None
        connections.when_closed(self._closed)

    @property
    def paused(self) -> bool:
        """
        Whether the listener waits for descriptors to free up.
        """
        return self._resume_at is not None

    def listening(self, listener: Listener) -> None:
        """
        C{listener} started listening, and reads when this allows it.
        """
        self._listener = listener
        self._recount()

    def stopped(self) -> None:
        """
        The listener stopped listening: never resume it.
        """
        self._listener = None
        self._resume_at = None
        self._cancel_check()
        if self._stretch is not None:
            _cancel(self._stretch.end)
            self._stretch = None

    def allowed(self) -> int:
        """
        How many connections the listener may accept now. At 0 the listener
        is paused, until connections close or descriptors free up.
        """
        if self.paused:
            return 0
        allowed = self._room()
        if allowed <= 0:
            # What else is open may have changed since the last count.
            self._recount()
            allowed = self._room()
        if allowed <= 0:
            self._pause()
        return allowed

    def _cancel_check(self) -> None:
        _cancel(self._check)
        self._check = None

    def _room(self) -> int:
        return room(self._others + len(self._connections), self._limit, self._spare)

    def _recount(self) -> None:
        if self._limit is None:
            return
        open_now = self._count()
        if open_now is not None:
            self._others = max(0, open_now - len(self._connections))

    def _pause(self) -> None:
        if self._listener is None:
            return
        self._resume_at = resume_room(len(self._connections))
        self._listener.stopReading()
        self._check = self._clock.callLater(self._check_every, self._checked)
        if self._stretch is None:
            self._stretch = _Stretch(self._clock.seconds())
            log.warn(
                "out of descriptors: {connections} connections open, limit {limit}; "
                "new connections wait in the backlog",
                connections=len(self._connections),
                limit=self._limit,
            )
        else:
            self._stretch.pauses += 1
            _cancel(self._stretch.end)
            self._stretch.end = None

    def _closed(self) -> None:
        if self._resume_at is not None and self._room() >= self._resume_at:
            self._resume()

    def _checked(self) -> None:
        self._check = None
        self._recount()
        self._closed()
        if self.paused:
            self._check = self._clock.callLater(self._check_every, self._checked)

    def _resume(self) -> None:
        self._resume_at = None
        self._cancel_check()
        if self._listener is None:
            return
        self._listener.startReading()
        if self._stretch is not None:
            self._stretch.end = self._clock.callLater(self._quiet, self._stretch_ended)

    def _stretch_ended(self) -> None:
        stretch, self._stretch = self._stretch, None
        assert stretch is not None
        log.info(
            "descriptors free again: {connections} connections open, limit {limit}; "
            "new connections are accepted again ({pauses} pauses over {seconds:.1f}s)",
            connections=len(self._connections),
            limit=self._limit,
            pauses=stretch.pauses,
            seconds=self._clock.seconds() - self._quiet - stretch.began,
        )


@define
class _Stretch:
    """
    Pauses close together, logged as one.

    @ivar end: when it is over, unless the listener pauses again before.
    """

    began: float
    pauses: int = 1
    end: IDelayedCall | None = None


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class GatedPort(tcp.Port):
    """
    A TCP listener that accepts no more connections at a time than its
    L{AcceptGate} allows, and none while it is paused.
    """

    def __init__(self, gate: AcceptGate, *args: Any, **kwargs: Any) -> None:
        tcp.Port.__init__(self, *args, **kwargs)
        self._gate = gate

    def startListening(self) -> None:
        tcp.Port.startListening(self)
        self._gate.listening(self)

    def doRead(self) -> None:
        allowed = self._gate.allowed()
        if allowed > 0:
            # accept() no more in this round than may be served.
            self.numberAccepts = min(self.numberAccepts, allowed)
            tcp.Port.doRead(self)

    def loseConnection(self, *args: Any, **kwargs: Any) -> Deferred[None] | None:
        self._gate.stopped()
        return tcp.Port.loseConnection(self, *args, **kwargs)

    stopListening = loseConnection


@implementer(IStreamServerEndpoint)
class GatedTCP4ServerEndpoint:
    """
    Like L{twisted.internet.endpoints.TCP4ServerEndpoint}, but listens with
    a L{GatedPort}.

    @ivar port: the port number to listen on.
    @ivar backlog: connections the kernel may hold waiting to be accepted.
    @ivar interface: the address to listen on.
    """

    def __init__(
        self, reactor: Any, port: int, gate: AcceptGate, backlog: int, interface: str
    ) -> None:
        self._reactor = reactor
        self._gate = gate
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with C{factory}; see L{IStreamServerEndpoint.listen}.
        """
        return execute(self._listen, factory)

    def _listen(self, factory: IProtocolFactory) -> GatedPort:
        port = GatedPort(
            self._gate, self.port, factory, self.backlog, self.interface, self._reactor
        )
        port.startListening()
        return port
