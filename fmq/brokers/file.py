"""
The file broker: requests and responses are files in one directory.

C{<key>.req} holds a request, C{<key>.resp} its answer (see L{fmq.protocol}).
One file name per broker key means one request per key at a time: a second
request with the same key waits its turn until the first one's files are gone.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from fmq.brokers.fs import OVERLOAD_ERRNOS, FileSystem, ResponseFile
from fmq.brokers.layout import (
    RESPONSE,
    request_name,
    response_name,
    retry_delay,
    settled,
    sort_leftovers,
    ttl_left,
)
from fmq.brokers.lock import DirectoryLock, LockHeld
from fmq.brokers.watch import Watcher, WatcherFactory
from fmq.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    MalformedResponse,
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
    decode_request,
    encode_request,
)


@attrs.define(eq=False)
class _Pending:
    """
    One broker request in this broker: queued, then sent, then answered.

    @ivar adopted: a request left by an earlier run that no caller has joined yet.
    """

    request: BrokerRequest
    deferred: Deferred[BrokerResponse]
    expiry: IDelayedCall | None = None
    written_mtime_ns: int = 0
    adopted: bool = False
    # the response as last seen and when, while waiting for it to settle
    seen: tuple[int, int, int] | None = None
    seen_at: float = 0.0


@attrs.define(eq=False)
class _Cleanup:
    """
    The files of a finished request, being deleted, the request first.
    """

    key: str
    names: list[str]
    attempts: int = 0
    retry: IDelayedCall | None = None


@implementer(IBroker)
class FileBroker(Service):
    """
    A broker over a directory, scanned by a L{LoopingCall}.

    @ivar available: C{False} while the directory is missing, not writable,
        full, or locked by another process.
    @ivar delete_retries: attempts to delete a file that had to be retried.
    """

    log = Logger()

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
        max_answer_bytes: int | None = None,
        fs: FileSystem | None = None,
        watcher: WatcherFactory | None = None,
    ) -> None:
        """
        @param max_answer_bytes: a larger answer is refused (502) unread;
            C{None}: no cap.
        @param watcher: makes the watcher that tells of files as they arrive;
            C{None} to rely on the scan alone.
        """
        self.directory = Path(directory)
        self._clock = clock
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        self._ttl = request_ttl
        self._settle_time = settle_time
        self._delete_retry_max = delete_retry_max
        self._max_answer_bytes = max_answer_bytes
        self._fs = fs if fs is not None else FileSystem()
        self._lock = DirectoryLock(self.directory)
        self._sent: dict[str, _Pending] = {}
        self._waiting: dict[str, deque[_Pending]] = {}
        self._cleaning: dict[str, _Cleanup] = {}
        self._loops: list[LoopingCall] = []
        self._make_watcher = watcher
        self._watcher: Watcher | None = None
        self._watch_failed = False
        self.available = False
        self.delete_retries = 0
        self._taken = False  # directory created, locked and swept
        self._lost_logged = False

    # -- the service

    def privilegedStartService(self) -> None:
        """
        Take the directory: create it if missing, lock it, adopt what an
        earlier run left. twistd calls this before the listeners bind, so a
        second instance stops before it takes a port.

        @raise LockHeld: another process works in this directory.
        """
        Service.privilegedStartService(self)
        try:
            self._fs.ensure_directory(self.directory)
        except OSError as e:
            self.log.error(
                "cannot create {directory}: {error}",
                directory=str(self.directory),
                error=e.strerror,
            )
        self._watch(starting=True)
        self._taken = True

    def startService(self) -> None:
        """
        Take the directory if L{privilegedStartService} did not, then scan it
        and watch that it stays usable.

        @raise LockHeld: another process works in this directory.
        """
        if not self._taken:
            self.privilegedStartService()
        Service.startService(self)
        for call, interval in [
            (self._scan, self._poll_interval),
            (self._watch_safely, self._check_interval),
        ]:
            loop = LoopingCall(call)
            loop.clock = self._clock
            loop.start(interval, now=False)
            self._loops.append(loop)
        self.log.info(
            "file broker on {directory} (scan every {interval}s, request TTL {ttl}s)",
            directory=str(self.directory),
            interval=self._poll_interval,
            ttl=self._ttl,
        )

    def stopService(self) -> None:
        """
        Stop scanning; requests still unanswered fail with L{ShuttingDown} and
        their files stay for the next start to adopt.
        """
        Service.stopService(self)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for cleanup in self._cleaning.values():
            if cleanup.retry is not None and cleanup.retry.active():
                cleanup.retry.cancel()
        self._cleaning.clear()
        everyone = self._forget_all()
        if everyone:
            self.log.info(
                "stopping with {count} broker requests unanswered; their files stay",
                count=len(everyone),
            )
        for pending in everyone:
            self._fail(pending, ShuttingDown())
        self._disarm()
        self._lock.release()
        self._taken = False

    # -- IBroker

    def submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        adopted = self._sent.get(request.key)
        if adopted is not None and adopted.adopted and self.running:
            return self._join_adopted(adopted, request)
        pending = _Pending(request, Deferred(lambda d: self._drop(pending, None)))
        if not self.running:
            pending.deferred.errback(ShuttingDown())
        elif not self.available:
            pending.deferred.errback(BrokerUnavailable())
        else:
            pending.expiry = self._clock.callLater(self._ttl, self._expire, pending)
            key = request.key
            if key in self._sent or key in self._cleaning or key in self._waiting:
                self._waiting.setdefault(key, deque()).append(pending)
            else:
                self._send(pending)
        return pending.deferred

    def withdraw(self, request: BrokerRequest) -> None:
        pending = self._sent.get(request.key)
        if pending is None or pending.request is not request:
            pending = next(
                (p for p in self._waiting.get(request.key, ()) if p.request is request),
                None,
            )
        if pending is not None:
            self._drop(pending, Withdrawn())

    def in_flight(self) -> int:
        return len(self._sent) + sum(len(queue) for queue in self._waiting.values())

    # -- sending

    def _send(self, pending: _Pending) -> None:
        request = pending.request
        try:
            pending.written_mtime_ns = self._fs.write_atomic(
                self.directory / request_name(request.key), encode_request(request)
            )
        except OSError as e:
            if e.errno in OVERLOAD_ERRNOS:
                self.log.error("cannot write a request: {error}", error=e.strerror)
                self._fail(pending, Overloaded())
            else:
                self._fail(pending, BrokerUnavailable())
                self._lose(e.strerror or str(e))
            return
        self._sent[request.key] = pending
        if debugging():
            self.log.debug("wrote {key}.req for {request}", key=request.key, request=request.line)
        self._check_safely(pending)  # a backend may answer before any event reaches us

    def _next(self, key: str) -> None:
        """
        Send the next request waiting for C{key}, now that its file name is free.
        """
        queue = self._waiting.get(key)
        while queue and key not in self._sent and key not in self._cleaning:
            self._send(queue.popleft())
        if queue is not None and not queue and self._waiting.get(key) is queue:
            del self._waiting[key]

    # -- the directory: usable or not, and what an earlier run left

    def _watch(self, starting: bool = False) -> None:
        """
        Check that the directory is usable and still the one locked; on a
        change, fail or resume, and log it once.

        @raise LockHeld: when starting, another process holds the lock.
        """
        error = self._fs.probe(self.directory)
        if error is None:
            try:
                directory = self._fs.stat(self.directory)
            except OSError as e:  # removed since the probe
                self._lose(e.strerror or str(e))
                return
            if not self._lock.holds(directory):
                if self.available:
                    self._lose("the directory was replaced")
                self._disarm()
                try:
                    self._lock.acquire()
                except LockHeld as e:
                    if starting:
                        raise
                    self._lose(str(e))
                    return
                except OSError as e:
                    self._lose(e.strerror or str(e))
                    return
        if error is not None:
            self._lose(error.strerror or str(error))
        elif not self.available:
            self._arm()
            self.available = True
            if not starting:
                self.log.info(
                    "broker directory {directory} is usable again", directory=str(self.directory)
                )
            self._take_leftovers()

    def _watch_safely(self) -> None:
        """
        L{_watch} for the loop: a bug is logged, and the loop goes on.
        """
        try:
            self._watch()
        except Exception:
            self.log.failure("unexpected error checking {directory}", directory=str(self.directory))

    def _lose(self, reason: str) -> None:
        """
        The directory became unusable: every request in flight fails with
        L{BrokerUnavailable}, and so do new ones until it is back.
        """
        if self.available or not self._lost_logged:
            self.log.error(
                "broker directory {directory} is unavailable: {reason}",
                directory=str(self.directory),
                reason=reason,
            )
        self._lost_logged = True
        self.available = False
        for pending in self._forget_all():
            if not pending.adopted:
                self._fail(pending, BrokerUnavailable())
            else:
                self._cancel_expiry(pending)

    def _forget_all(self) -> list[_Pending]:
        everyone = list(self._sent.values())
        for queue in self._waiting.values():
            everyone.extend(queue)
            queue.clear()
        self._sent.clear()
        self._waiting.clear()
        return everyone

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
            if key not in self._sent and key not in self._cleaning:
                self.log.info("deleting the answer {key}.resp left by an earlier run", key=key)
                self._attempt(self._start_cleanup(key))
        for key in leftovers.unanswered:
            if key not in self._sent and key not in self._cleaning:
                self._adopt(key)

    def _adopt(self, key: str) -> None:
        path = self.directory / request_name(key)
        try:
            st = self._fs.stat(path)
            method, target = decode_request(self._fs.read_bytes(path))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("cannot adopt {key}.req: {error}", key=key, error=str(e))
            return
        deferred: Deferred[BrokerResponse] = Deferred()
        deferred.addErrback(lambda f: None)  # nobody may ever join it
        pending = _Pending(
            BrokerRequest(key, method, target),
            deferred,
            adopted=True,
            written_mtime_ns=st.st_mtime_ns,
        )
        left = ttl_left(self._ttl, st.st_mtime, self._clock.seconds())
        pending.expiry = self._clock.callLater(left, self._expire, pending)
        self._sent[key] = pending
        self.log.info(
            "adopted {key}.req ({request}) left by an earlier run; {left:.0f}s of TTL left",
            key=key,
            request=pending.request.line,
            left=left,
        )

    def _join_adopted(self, pending: _Pending, request: BrokerRequest) -> Deferred[BrokerResponse]:
        """
        The first caller for an adopted request takes it over: nothing is written.
        """
        pending.adopted = False
        pending.request = request
        pending.deferred = Deferred(lambda d: self._drop(pending, None))
        self.log.info("a caller joined the adopted request {key}", key=request.key)
        return pending.deferred

    # -- ending a request

    def _expire(self, pending: _Pending) -> None:
        pending.expiry = None
        self.log.warn(
            "no answer for {key} ({request}) within {ttl}s: withdrawn",
            key=pending.request.key,
            request=pending.request.line,
            ttl=self._ttl,
        )
        self._drop(pending, RequestExpired())

    def _drop(self, pending: _Pending, error: BrokerRequestFailed | None) -> None:
        """
        Forget C{pending}: unqueue it or take back its request file.

        @param error: what its Deferred fails with; C{None} when it is being
            cancelled and fails by itself.
        """
        key = pending.request.key
        if self._sent.get(key) is pending:
            del self._sent[key]
            if debugging() and not isinstance(error, RequestExpired):
                self.log.debug(
                    "withdrew {key}.req ({request}): nobody waits for it",
                    key=key,
                    request=pending.request.line,
                )
            self._attempt(self._start_cleanup(key))
        else:
            queue = self._waiting.get(key)
            if queue is None or pending not in queue:
                return
            queue.remove(pending)
            if not queue:
                del self._waiting[key]
        if error is None:
            self._cancel_expiry(pending)
        else:
            self._fail(pending, error)

    def _cancel_expiry(self, pending: _Pending) -> None:
        if pending.expiry is not None and pending.expiry.active():
            pending.expiry.cancel()
        pending.expiry = None

    def _fail(self, pending: _Pending, error: BrokerRequestFailed) -> None:
        self._cancel_expiry(pending)
        pending.deferred.errback(error)

    # -- scanning

    def _arm(self) -> None:
        """
        Watch the directory (again), if a watcher is configured.
        """
        self._disarm()
        if self._make_watcher is None:
            return
        watcher = self._make_watcher(self.directory, self._notified)
        try:
            watcher.start()
        except OSError as e:
            if not self._watch_failed:  # once, not at every return of the directory
                self.log.warn(
                    "cannot watch {directory} ({error}); relying on the scan",
                    directory=str(self.directory),
                    error=e.strerror or str(e),
                )
            self._watch_failed = True
            return
        except Exception:
            self.log.failure("unexpected error watching {directory}", directory=str(self.directory))
            return
        self._watch_failed = False
        self._watcher = watcher

    def _disarm(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            watcher.stop()

    def _notified(self, name: str) -> None:
        """
        A file was renamed into, or closed in, the directory: if it is an
        answer fmq waits for, it is complete and read at once.
        """
        if name.endswith(RESPONSE):
            pending = self._sent.get(name[: -len(RESPONSE)])
            if pending is not None:
                self._check_safely(pending, complete=True)

    def _scan(self) -> None:
        for pending in list(self._sent.values()):
            self._check_safely(pending)

    def _check_safely(self, pending: _Pending, complete: bool = False) -> None:
        """
        L{_check}, with errors logged: one bad file never stops the others.
        """
        try:
            self._check(pending, complete)
        except OSError as e:
            self.log.warn(
                "cannot read {key}.resp: {error}",
                key=pending.request.key,
                error=e.strerror or str(e),
            )
        except Exception:
            self.log.failure("unexpected error reading {key}.resp", key=pending.request.key)

    def _check(self, pending: _Pending, complete: bool = False) -> None:
        """
        Deliver the answer to C{pending} if it is there and complete.

        @param complete: the file is known to be complete (an event said it
            was renamed into place or closed), so there is no settling to wait.
        """
        key = pending.request.key
        if self._sent.get(key) is not pending:
            return
        try:
            found = self._fs.read_response(
                self.directory / response_name(key), self._max_answer_bytes
            )
        except FileNotFoundError:
            return
        if found is None or found.mtime_ns < pending.written_mtime_ns:
            return  # still being written, or a late answer to an older request
        if found.closed is None and not complete:
            identity = (found.inode, found.size, found.mtime_ns)
            now = self._clock.seconds()
            if not settled(pending.seen, identity, pending.seen_at, now, self._settle_time):
                if pending.seen != identity:
                    pending.seen, pending.seen_at = identity, now
                return
        self._answer(pending, found)

    def _answer(self, pending: _Pending, found: ResponseFile) -> None:
        request = pending.request
        del self._sent[request.key]
        self._cancel_expiry(pending)
        # Deliver before deleting, for latency. The key stays busy until its
        # files are gone, and a busy key is never read: an answer that cannot
        # be deleted is never delivered twice.
        cleanup = self._start_cleanup(request.key)
        try:
            response = found.response()
        except MalformedResponse as e:
            self.log.warn(
                "malformed response in {key}.resp for {request}: {error}",
                key=request.key,
                request=request.line,
                error=str(e),
            )
            pending.deferred.errback(e)
        else:
            if pending.adopted:
                self.log.info(
                    "answered the adopted {key}.req ({request}): {status}; nobody was waiting",
                    key=request.key,
                    request=request.line,
                    status=response.status,
                )
            elif debugging():
                self.log.debug(
                    "answered {key}: {status}, {size} bytes",
                    key=request.key,
                    status=response.status,
                    size=len(response.body),
                )
            pending.deferred.callback(response)
        self._attempt(cleanup)

    # -- deleting

    def _start_cleanup(self, key: str) -> _Cleanup:
        """
        Mark C{key} busy until its files are deleted (see L{_attempt}).
        """
        cleanup = _Cleanup(key, [request_name(key), response_name(key)])
        self._cleaning[key] = cleanup
        return cleanup

    def _attempt(self, cleanup: _Cleanup) -> None:
        """
        Delete the files of C{cleanup}, the C{.req} first, retrying with
        backoff; once they are gone, send the next request waiting for the key.
        """
        cleanup.retry = None
        if self._cleaning.get(cleanup.key) is not cleanup:
            return
        while cleanup.names:
            name = cleanup.names[0]
            try:
                self._fs.unlink(self.directory / name)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.delete_retries += 1
                delay = retry_delay(cleanup.attempts, self._delete_retry_max)
                cleanup.attempts += 1
                self.log.warn(
                    "cannot delete {name}: {error}; retry {attempt} in {delay:.2f}s",
                    name=name,
                    error=e.strerror or str(e),
                    attempt=cleanup.attempts,
                    delay=delay,
                )
                cleanup.retry = self._clock.callLater(delay, self._attempt, cleanup)
                return
            cleanup.names.pop(0)
        del self._cleaning[cleanup.key]
        self._next(cleanup.key)
