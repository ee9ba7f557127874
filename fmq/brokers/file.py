"""
The file broker: requests and responses are files in one directory.

C{<key>.req} holds a request, C{<key>.resp} its answer (see L{fmq.protocol}).
One file name per broker key means one request per key at a time: a second
request with the same key waits its turn until the first one's files are gone.

This module is the shell. What each key's state is and what to do next is
decided by L{fmq.brokers.keystate}; the directory is kept usable and watched
by L{fmq.brokers.guard}; answers are read by L{fmq.brokers.reader}, files
deleted by L{fmq.brokers.janitor}, and each request's Deferred and TTL kept
by L{fmq.brokers.pending}. Here: the service's life, the scan, what an
earlier run left, and carrying the state machine's actions out.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from fmq.brokers.actions import Action, Delete, Deliver, End, Join, Read, Write
from fmq.brokers.fs import OVERLOAD_ERRNOS, FileSystem
from fmq.brokers.guard import DirectoryGuard
from fmq.brokers.janitor import Janitor
from fmq.brokers.keystate import KeyTable
from fmq.brokers.layout import (
    RESPONSE,
    Paths,
    answer_keys,
    request_name,
    sort_leftovers,
    ttl_left,
)
from fmq.brokers.pending import PendingRequests
from fmq.brokers.reader import AnswerReader, Found, Refused, Stale, Unsettled
from fmq.brokers.watch import WatcherFactory
from fmq.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    Overloaded,
    RequestExpired,
    ShuttingDown,
    Withdrawn,
)
from fmq.interfaces import IBroker
from fmq.logs import debugging
from fmq.protocol import (
    BrokerRequest,
    BrokerResponse,
    encode_request,
    parse_request,
)

__all__ = ["FileBroker"]

#: errors writing C{<key>.req} that concern that one name (a backend made a
#: directory of it), not the directory: only that request fails
_IN_THE_WAY = frozenset({errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY})


@implementer(IBroker)
class FileBroker(Service):
    """
    A broker over a directory, watched by inotify where it can be and
    scanned as a safety net.

    @ivar available: C{False} while the directory is missing, not writable,
        full, or locked by another process.
    @ivar dropped_replies: late answers (no request waits for them) deleted
        unread.
    """

    log = Logger()
    #: a directory never asks fmq to stop writing
    blocked = False

    def __init__(
        self,
        directory: Path,
        clock: IReactorTime,
        *,
        poll_interval: float,
        request_ttl: float,
        settle_time: float,
        delete_retry_max: float,
        check_interval: float = 0.5,
        rescan_interval: float = 1.0,
        max_answer_bytes: int | None = None,
        fs: FileSystem | None = None,
        watcher: WatcherFactory | None = None,
    ) -> None:
        """
        @param poll_interval: seconds between scans while nothing watches
            the directory.
        @param rescan_interval: seconds between scans while a watcher does
            (never less than C{poll_interval}): a net for lost events.
        @param max_answer_bytes: a larger answer is refused (502) unread;
            C{None}: no cap.
        @param watcher: makes the watcher that tells of files as they arrive;
            C{None} to rely on the scan alone.
        """
        self.directory = Path(directory)
        self._clock = clock
        self._poll_interval = poll_interval
        self._rescan_interval = max(poll_interval, rescan_interval)
        self._check_interval = check_interval
        self._ttl = request_ttl
        self._settle_time = settle_time
        self._fs = fs if fs is not None else FileSystem()
        self._paths = Paths(self.directory)
        self._keys = KeyTable(delete_retry_max)
        self._requests = PendingRequests(clock, self._expired)
        self._guard = DirectoryGuard(
            self.directory, self._fs, watcher, self._notified, self._lost, self._back
        )
        self._reader = AnswerReader(self.directory, self._fs, clock, settle_time, max_answer_bytes)
        self._janitor = Janitor(self.directory, self._fs, clock, self._keys, self._run)
        self._scan_loop: LoopingCall | None = None
        self._check_loop: LoopingCall | None = None
        self._taken = False  # directory created, locked and swept
        self.dropped_replies = 0
        self._told_stale: set[int] = set()  # requests whose stale answer was logged

    @property
    def available(self) -> bool:
        return self._guard.available

    @property
    def delete_retries(self) -> int:
        """
        Attempts to delete a file that had to be retried.
        """
        return self._janitor.retries

    # -- the service

    def privilegedStartService(self) -> None:
        """
        Take the directory: create it if missing, lock it, adopt what an
        earlier run left. twistd calls this before the listeners bind, so a
        second instance stops before it takes a port.

        @raise LockHeld: another process works in this directory.
        """
        Service.privilegedStartService(self)
        self._guard.take()
        self._taken = True

    def startService(self) -> None:
        """
        Take the directory if L{privilegedStartService} did not, then scan it
        and check that it stays usable.

        @raise LockHeld: another process works in this directory.
        """
        if not self._taken:
            self.privilegedStartService()
        Service.startService(self)
        self._scan_loop = self._loop(self._scan_safely)
        self._check_loop = self._loop(self._guard.check_safely)
        self._check_loop.start(self._check_interval, now=False)
        self._pace(now=False)
        self.log.info(
            "file broker on {directory} (scan every {interval}s, request TTL {ttl}s)",
            directory=str(self.directory),
            interval=self._scan_loop.interval,
            ttl=self._ttl,
        )

    def stopService(self) -> None:
        """
        Stop scanning; requests still unanswered fail with L{ShuttingDown} and
        their files stay for the next start to adopt.
        """
        Service.stopService(self)
        for loop in (self._scan_loop, self._check_loop):
            if loop is not None and loop.running:
                loop.stop()
        self._janitor.stop()
        unanswered = self._keys.stopped()
        if unanswered:
            self.log.info(
                "stopping with {count} broker requests unanswered; their files stay",
                count=len(unanswered),
            )
        self._run(unanswered, ShuttingDown())
        self._guard.release()
        self._taken = False

    def _loop(self, call: Callable[[], object]) -> LoopingCall:
        loop = LoopingCall(call)
        loop.clock = self._clock
        return loop

    def _pace(self, now: bool) -> None:
        """
        Scan every C{poll_interval} while nothing watches the directory, else
        every C{rescan_interval}; C{now} to scan at once too.
        """
        loop = self._scan_loop
        if loop is None or not self.running:
            return
        interval = self._rescan_interval if self._guard.watching else self._poll_interval
        if loop.running and loop.interval == interval and not now:
            return
        if loop.running:
            loop.stop()
        loop.start(interval, now=now)

    # -- IBroker

    def submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        if not self.running:
            return fail(ShuttingDown())
        if not self.available:
            return fail(BrokerUnavailable())
        state = self._keys.get(request.key)
        same = (
            state is not None
            and state.adopted
            and state.rid is not None
            and _same_file(self._requests.request(state.rid), request)
        )
        rid, deferred = self._requests.wait(request, self._ttl, self._cancelled)
        self._run(self._keys.submit(request.key, rid, same_as_adopted=same))
        return deferred

    def withdraw(self, request: BrokerRequest) -> None:
        state = self._keys.get(request.key)
        for rid in state.requests() if state is not None else []:
            if self._requests.request(rid) is request:
                if debugging():
                    self.log.debug(
                        "withdrew {key}.req ({request}): nobody waits for it",
                        key=request.key,
                        request=request.line,
                    )
                self._run(self._keys.withdraw(request.key, rid), Withdrawn())
                return

    def in_flight(self) -> int:
        return len(self._requests)

    # -- carrying out what the key table decides

    def _run(self, actions: list[Action], error: BrokerRequestFailed | None = None) -> None:
        """
        Carry out C{actions} in order.

        @param error: what a request that L{End}s fails with; C{None} when
            its Deferred is being cancelled and fails by itself.
        """
        for action in actions:
            if isinstance(action, Write):
                self._write(action.key, action.rid)
            elif isinstance(action, Read):
                self._look(action.key, action.rid)
            elif isinstance(action, Delete):
                self._janitor.sweep(action.key)
            elif isinstance(action, End):
                self._requests.end(action.rid, error)
            elif isinstance(action, Join):
                self._requests.join(action.old, action.new)
            else:
                raise AssertionError(f"cannot carry out {action!r} here")

    def _write(self, key: str, rid: int) -> None:
        request = self._requests.request(rid)
        try:
            mtime_ns = self._fs.write_atomic(
                self._paths(request_name(key)), encode_request(request)
            )
        except OSError as e:
            if e.errno in OVERLOAD_ERRNOS:
                self.log.error("cannot write a request: {error}", error=e.strerror)
                self._run(self._keys.write_failed(key, rid), Overloaded())
            elif e.errno in _IN_THE_WAY and self._fs.probe(self.directory) is None:
                # the directory is fine: something in the way of this one name
                self.log.error(
                    "cannot write {key}.req for {request}: {error}",
                    key=key,
                    request=request.line,
                    error=e.strerror or str(e),
                )
                self._run(self._keys.write_failed(key, rid), BrokerUnavailable())
            else:
                self._guard.lose(e.strerror or str(e))
            return
        if debugging():
            self.log.debug("wrote {key}.req for {request}", key=key, request=request.line)
        # a backend may answer before any event reaches us
        self._run(self._keys.written(key, rid, mtime_ns))

    def _expired(self, rid: int) -> None:
        request = self._requests.request(rid)
        self.log.warn(
            "no answer for {key} ({request}) within {ttl}s: withdrawn",
            key=request.key,
            request=request.line,
            ttl=self._ttl,
        )
        self._run(self._keys.expire(request.key, rid), RequestExpired())

    def _cancelled(self, key: str, rid: int) -> None:
        self._run(self._keys.withdraw(key, rid))

    # -- answers

    def _notified(self, name: str) -> None:
        """
        A file was renamed into, or closed in, the directory: an answer is
        complete, and read (or, if nobody waits for it, deleted) at once.
        """
        if name.endswith(RESPONSE) and not name.startswith("."):
            self._seen(name[: -len(RESPONSE)], complete=True)

    def _scan_safely(self) -> None:
        """
        Look at every answer in the directory: one listing, whatever waits.
        Not while the directory is unusable: the guard says so, once.
        """
        if not self.available:
            return
        try:
            names = self._fs.list_names(self.directory)
        except OSError as e:
            if self._fs.probe(self.directory) is None:  # else the guard says it, once
                self.log.warn(
                    "cannot list {directory}: {error}",
                    directory=str(self.directory),
                    error=e.strerror,
                )
            return
        for key in answer_keys(names):
            self._seen(key, complete=False)

    def _seen(self, key: str, complete: bool) -> None:
        actions = self._keys.answer_seen(key)
        for action in actions:
            if isinstance(action, Read):
                self._look(key, action.rid, complete)
            else:
                self.dropped_replies += 1
                self.log.info(
                    "deleting {key}.resp: no request waits for it (a late answer)", key=key
                )
                self._run([action])

    def _look(self, key: str, rid: int, complete: bool = False) -> None:
        """
        Look at C{key}'s answer for C{rid}; deliver it if complete. Errors are
        logged: one bad file never stops the others.
        """
        state = self._keys.get(key)
        if state is None or state.rid != rid:
            return
        try:
            seen = self._reader.look(key, state.written_ns, state.sighting, complete)
        except OSError as e:
            self.log.warn("cannot read {key}.resp: {error}", key=key, error=e.strerror or str(e))
            return
        except Exception:
            self.log.failure("unexpected error reading {key}.resp", key=key)
            return
        if isinstance(seen, Unsettled) and seen.new:
            self._keys.sighted(key, rid, seen.sighting)
            self._clock.callLater(self._settle_time, self._look, key, rid)
        elif isinstance(seen, Found):
            # Delivered before the files are deleted, for latency. The key stays
            # busy until they are gone, so an answer is never delivered twice.
            for action in self._keys.answer_read(key, rid):
                if isinstance(action, Deliver):
                    self._requests.deliver(action.rid, seen.answer)
                else:
                    self._run([action])
        elif isinstance(seen, Stale):
            if rid not in self._told_stale:
                if len(self._told_stale) > 10_000:
                    self._told_stale.clear()
                self._told_stale.add(rid)
                self.log.warn(
                    "{key}.resp is older than its request ({request}), so it is taken for "
                    "a late answer to an earlier one and not read; a backend must not keep "
                    "an old file time (cp -p, os.link of an older file)",
                    key=key,
                    request=self._requests.request(rid).line,
                )
        elif isinstance(seen, Refused):
            self.log.warn(
                "refused {key}.resp for {request}: {error}",
                key=key,
                request=self._requests.request(rid).line,
                error=str(seen.why),
            )
            self._run(self._keys.answer_refused(key, rid), seen.why)

    # -- the directory lost, back, and what an earlier run left

    def _lost(self) -> None:
        self._run(self._keys.lost(), BrokerUnavailable())

    def _back(self) -> None:
        self._take_leftovers()
        self._pace(now=True)  # what arrived while nothing watched

    def _take_leftovers(self) -> None:
        """
        Adopt the requests an earlier run left unanswered; delete the answers
        nobody waits for any more, with their requests, and fmq's temporary files.
        """
        try:
            leftovers = sort_leftovers(self._fs.list_names(self.directory))
        except OSError as e:
            self.log.error(
                "cannot list {directory}: {error}", directory=str(self.directory), error=e.strerror
            )
            return
        for name in leftovers.temporaries:
            try:
                self._fs.unlink(self.directory / name)
            except OSError:
                pass
        for key in leftovers.answered:
            if self._keys.get(key) is None:
                self.log.info("deleting the answer {key}.resp left by an earlier run", key=key)
                self._run(self._keys.discard(key))
        for key in leftovers.unanswered:
            if self._keys.get(key) is None:
                self._adopt(key)

    def _adopt(self, key: str) -> None:
        path = self.directory / request_name(key)
        try:
            st = self._fs.stat(path)
            found = parse_request(self._fs.read_bytes(path))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("cannot adopt {key}.req: {error}", key=key, error=str(e))
            return
        left = ttl_left(self._ttl, st.st_mtime, self._clock.seconds())
        request = attrs.evolve(found, key=key)
        rid = self._requests.adopt(request, left)
        self._run(self._keys.adopt(key, rid, st.st_mtime_ns))
        self.log.info(
            "adopted {key}.req ({request}) left by an earlier run; {left:.0f}s of TTL left",
            key=key,
            request=request.line,
            left=left,
        )


def _same_file(adopted: BrokerRequest, request: BrokerRequest) -> bool:
    """
    Whether C{request} would write the very file C{adopted} was read from: the
    same method, target and body, and the same headers where its format
    carries them. Only then may its caller share the adopted request's answer.
    """
    return encode_request(attrs.evolve(request, format=adopted.format)) == encode_request(adopted)
