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

from fmq.brokers.fs import OVERLOAD_ERRNOS, UNAVAILABLE_ERRNOS, FileSystem, ResponseFile
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
from fmq.protocol import BrokerRequest, BrokerResponse, encode_request, parse_response

#: first delay between attempts to delete a file; it doubles up to the cap.
FIRST_DELETE_RETRY = 0.1


@attrs.define(eq=False)
class _Pending:
    """
    One broker request in this broker: queued, then sent, then answered.
    """

    request: BrokerRequest
    deferred: Deferred[BrokerResponse]
    expiry: IDelayedCall | None = None
    written_mtime_ns: int = 0
    # the response as last seen and when, while waiting for it to settle
    seen: tuple[int, int, int] | None = None
    seen_at: float = 0.0


@attrs.define(eq=False)
class _Cleanup:
    """
    The files of a finished request, being deleted.
    """

    key: str
    names: list[str]
    attempts: int = 0
    retry: IDelayedCall | None = None


def settled(
    previous: tuple[int, int, int] | None,
    current: tuple[int, int, int],
    seen_at: float,
    now: float,
    settle_time: float,
) -> bool:
    """
    Whether a response of unknown state may be read: it has not changed
    (inode, size, mtime) for C{settle_time} seconds.
    """
    if settle_time <= 0:
        return True
    return previous == current and now - seen_at >= settle_time


def retry_delay(attempt: int, cap: float) -> float:
    """
    Seconds before the next attempt to delete a file: exponential, capped.
    """
    return min(FIRST_DELETE_RETRY * 2 ** min(attempt, 30), cap)


@implementer(IBroker)
class FileBroker(Service):
    """
    A broker over a directory, scanned by a L{LoopingCall}.

    @ivar available: C{False} after a request could not be written because
        the directory is missing, not writable or full.
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
        fs: FileSystem | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._poll_interval = poll_interval
        self._ttl = request_ttl
        self._settle_time = settle_time
        self._delete_retry_max = delete_retry_max
        self._fs = fs if fs is not None else FileSystem()
        self._sent: dict[str, _Pending] = {}
        self._waiting: dict[str, deque[_Pending]] = {}
        self._cleaning: dict[str, _Cleanup] = {}
        self._loop: LoopingCall | None = None
        self.available = True
        self.delete_retries = 0

    # -- the service

    def startService(self) -> None:
        Service.startService(self)
        try:
            self._fs.ensure_directory(self.directory)
        except OSError as e:
            self._set_available(False, e)
        self._loop = LoopingCall(self._scan)
        self._loop.clock = self._clock
        self._loop.start(self._poll_interval, now=False)
        self.log.info(
            "file broker on {directory} (scan every {interval}s, request TTL {ttl}s)",
            directory=str(self.directory),
            interval=self._poll_interval,
            ttl=self._ttl,
        )

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for cleanup in self._cleaning.values():
            if cleanup.retry is not None and cleanup.retry.active():
                cleanup.retry.cancel()
        self._cleaning.clear()
        everyone = list(self._sent.values())
        for queue in self._waiting.values():
            everyone.extend(queue)
        self._sent.clear()
        self._waiting.clear()
        if everyone:
            self.log.info(
                "stopping with {count} broker requests unanswered; their files stay",
                count=len(everyone),
            )
        for pending in everyone:
            self._fail(pending, ShuttingDown())

    # -- IBroker

    def submit(self, request: BrokerRequest) -> Deferred[BrokerResponse]:
        pending = _Pending(request, Deferred(lambda d: self._drop(pending, None)))
        if not self.running:
            pending.deferred.errback(ShuttingDown())
            return pending.deferred
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

    def _path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}"

    def _send(self, pending: _Pending) -> None:
        request = pending.request
        try:
            pending.written_mtime_ns = self._fs.write_atomic(
                self._path(request.key, ".req"), encode_request(request)
            )
        except OSError as e:
            self._fail(pending, self._write_error(e))
            return
        self._set_available(True)
        self._sent[request.key] = pending
        self.log.debug("wrote {key}.req for {request}", key=request.key, request=request.line)

    def _write_error(self, error: OSError) -> BrokerRequestFailed:
        if error.errno in OVERLOAD_ERRNOS:
            self.log.error(
                "cannot write a request: {error} (out of file descriptors)", error=error.strerror
            )
            return Overloaded()
        if error.errno not in UNAVAILABLE_ERRNOS:
            self.log.error("cannot write a request: {error}", error=str(error))
        self._set_available(False, error)
        return BrokerUnavailable()

    def _set_available(self, available: bool, error: OSError | None = None) -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            self.log.info(
                "broker directory {directory} is usable again", directory=str(self.directory)
            )
        else:
            self.log.error(
                "broker directory {directory} is unavailable: {error}",
                directory=str(self.directory),
                error=error.strerror if error is not None else "unknown",
            )

    def _next(self, key: str) -> None:
        """
        Send the next request waiting for C{key}, now that its file name is free.
        """
        queue = self._waiting.get(key)
        while queue and key not in self._sent and key not in self._cleaning:
            self._send(queue.popleft())
        if queue is not None and not queue and self._waiting.get(key) is queue:
            del self._waiting[key]

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

    def _scan(self) -> None:
        for pending in list(self._sent.values()):
            try:
                self._check(pending)
            except OSError as e:
                self.log.warn(
                    "cannot read {key}.resp: {error}",
                    key=pending.request.key,
                    error=e.strerror or str(e),
                )
            except Exception:
                self.log.failure("unexpected error reading {key}.resp", key=pending.request.key)

    def _check(self, pending: _Pending) -> None:
        key = pending.request.key
        try:
            found = self._fs.read_response(self._path(key, ".resp"))
        except FileNotFoundError:
            return
        if found is None or found.mtime_ns < pending.written_mtime_ns:
            return  # still being written, or a late answer to an older request
        if found.closed is None:
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
        # Deliver before deleting, for latency; the key stays busy meanwhile.
        cleanup = self._start_cleanup(request.key)
        try:
            response = parse_response(found.data)
        except MalformedResponse as e:
            self.log.warn(
                "malformed response in {key}.resp for {request}: {error}",
                key=request.key,
                request=request.line,
                error=str(e),
            )
            pending.deferred.errback(e)
        else:
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
        cleanup = _Cleanup(key, [f"{key}.req", f"{key}.resp"])
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
