"""
Tests for L{fmq.brokers.file}: what only the directory broker does.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers.answerfile import ResponseFile
from fmq.brokers.file import FileBroker
from fmq.brokers.fs import FileSystem
from fmq.brokers.layout import LOCK_NAME, retry_delay, settled
from fmq.brokers.lock import LockHeld
from fmq.errors import BrokerUnavailable, Overloaded, RequestExpired, ShuttingDown
from fmq.protocol import BrokerRequest
from tests.brokers import CHECK, POLL, TTL, FileBackend, file_broker


class FaultyFileSystem(FileSystem):
    """
    The real filesystem, but each call named in C{faults} fails with the
    next errno queued for it.
    """

    def __init__(self) -> None:
        self.faults: dict[str, list[int]] = {}
        self.unlinked: list[str] = []
        self.written: list[str] = []
        self.closed: bool | None = True
        self.probe_error: OSError | None = None

    def probe(self, directory: Path) -> OSError | None:
        return self.probe_error or super().probe(directory)

    def _fault(self, call: str) -> None:
        queue = self.faults.get(call)
        if queue:
            code = queue.pop(0)
            raise OSError(code, os.strerror(code))

    def write_atomic(self, path: Path, data: bytes) -> int:
        self._fault("write")
        mtime = super().write_atomic(path, data)
        self.written.append(path.name)
        return mtime

    def unlink(self, path: Path) -> bool:
        self._fault("unlink")
        there = super().unlink(path)
        if there:
            self.unlinked.append(path.name)
        return there

    def read_response(
        self, path: Path, max_bytes: int | None = None, lease: bool = True
    ) -> ResponseFile | None:
        self._fault("read")
        found = super().read_response(path, max_bytes, lease)
        if found is not None and self.closed is None:
            return ResponseFile(found.data, found.inode, found.size, found.mtime_ns, None)
        return found


class FileBrokerTests(SynchronousTestCase):
    """
    The directory broker's files, scan and deletions.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.fs = FaultyFileSystem()
        self.broker = file_broker(self.directory, self.clock, fs=self.fs)
        self.broker.startService()
        self.addCleanup(self.stop)
        self.backend = FileBackend(self.directory, self.clock)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def stop(self) -> None:
        """
        Stop the broker. A test that leaves a request in flight checks that
        it fails with L{ShuttingDown}: an unhandled one fails the test.
        """
        if self.broker.running:
            self.broker.stopService()

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if n != LOCK_NAME)

    def test_creates_directory(self) -> None:
        """
        The broker directory is created at start if it is missing.
        """
        self.assertTrue(self.directory.is_dir())

    def test_request_file(self) -> None:
        """
        The request is C{<md5 key>.req} holding C{METHOD PATH\\n}; no temporary
        file stays behind.
        """
        request = BrokerRequest.of(b"GET", b"/items?id=1")
        pending = self.broker.submit(request)
        self.assertEqual(self.names(), [f"{request.key}.req"])
        self.assertEqual((self.directory / f"{request.key}.req").read_bytes(), b"GET /items?id=1\n")
        self.stop()
        self.failureResultOf(pending, ShuttingDown)

    def test_deletes_req_before_resp(self) -> None:
        """
        After an answer both files are deleted, the request first.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request)
        self.backend.answer(request, b"200\nok")
        self.backend.deliver()
        self.assertEqual(self.fs.unlinked, [f"{request.key}.req", f"{request.key}.resp"])
        self.assertEqual(self.names(), [])

    def test_other_files_untouched(self) -> None:
        """
        Files that are not fmq's C{.req}/C{.resp} are never read or deleted.
        """
        for name in ["notes.txt", ".hidden", "x.resp.tmp", ".x.resp"]:
            (self.directory / name).write_bytes(b"200\n")
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request)
        self.backend.answer(request, b"200\nok")
        self.backend.deliver()
        self.assertEqual(self.names(), sorted([".hidden", ".x.resp", "notes.txt", "x.resp.tmp"]))

    def test_same_key_waits_for_files_to_go(self) -> None:
        """
        A second request with the same key is written only after the first
        one's files are deleted, so it is never deleted under it.
        """
        first, second = BrokerRequest.of(b"GET", b"/x"), BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(first)
        answer = self.broker.submit(second)
        self.fs.faults["unlink"] = [errno.EBUSY]
        self.backend.answer(first, b"200\none")
        self.backend.deliver()
        # .req could not be deleted: the second request must not be written yet
        self.assertEqual(self.backend.requests(), [b"GET /x\n"])
        self.assertEqual(self.names(), [f"{first.key}.req", f"{first.key}.resp"])
        self.clock.advance(retry_delay(0, 5.0))
        self.assertEqual(self.names(), [f"{second.key}.req"])
        self.assertNoResult(answer)
        self.backend.answer(second, b"200\ntwo")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"two")

    def test_request_during_cleanup_is_held(self) -> None:
        """
        A request arriving while the previous one's files cannot be deleted yet
        is held, not written over the old file (which the retry would then
        delete under it); once the old files are gone, it is written.
        """
        first = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(first)
        self.fs.faults["unlink"] = [errno.EPERM]
        self.backend.answer(first, b"200\nfirst")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"first")
        second = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        self.assertEqual(self.fs.written, [f"{first.key}.req"])  # held, not written
        self.clock.advance(retry_delay(0, 5.0))
        self.assertEqual(self.fs.written, [f"{first.key}.req"] * 2)
        self.assertTrue((self.directory / f"{first.key}.req").exists())
        self.assertNoResult(second)
        self.backend.answer(first, b"200\nsecond")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(second).body, b"second")
        self.assertEqual(self.names(), [])

    def test_answer_not_delivered_twice(self) -> None:
        """
        An answer whose files cannot be deleted yet is delivered once only.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.fs.faults["unlink"] = [errno.EPERM] * 3
        self.backend.answer(request, b"200\nonce")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"once")
        second = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        for _ in range(10):
            self.clock.advance(POLL)
        self.assertNoResult(second)
        self.stop()
        self.failureResultOf(second, ShuttingDown)

    def test_delete_retry_backoff(self) -> None:
        """
        Deletion is retried with doubling delays, capped, each retry counted
        and logged.
        """
        self.assertEqual([retry_delay(n, 1.0) for n in range(6)], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request)
        self.fs.faults["unlink"] = [errno.EACCES] * 3
        self.backend.answer(request, b"200\n")
        self.backend.deliver()
        for delay in (0.1, 0.2):
            self.clock.advance(delay)
            self.assertTrue((self.directory / f"{request.key}.req").exists())
        self.clock.advance(0.4)
        self.assertEqual(self.names(), [])
        self.assertEqual(self.broker.delete_retries, 3)
        retries = [e for e in self.events if "cannot delete" in e.get("log_format", "")]
        self.assertEqual(len(retries), 3)

    def test_late_answer_ignored(self) -> None:
        """
        A response file older than the current request file is a late answer
        to an earlier request and is not delivered.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        stale = self.directory / f"{request.key}.resp"
        stale.write_bytes(b"200\nstale")
        os.utime(stale, (1, 1))
        answer = self.broker.submit(request)
        self.backend.deliver()
        self.assertNoResult(answer)
        self.backend.answer(request, b"200\nfresh")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"fresh")

    def count_reads(self) -> list[str]:
        """
        Record the name of each response file the broker opens to read.
        """
        reads: list[str] = []
        original = self.fs.read_response
        self.fs.read_response = lambda path, *a, **kw: (
            reads.append(path.name) or original(path, *a, **kw)
        )
        return reads

    def test_stale_answer_removed_before_next_request(self) -> None:
        """
        An answer lying under a key's name when a new request for it comes
        (late, to a request that has ended) is deleted unread before the new
        request is written: it is never read, let alone handed to it.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        stale = self.directory / f"{request.key}.resp"
        stale.write_bytes(b"200\nstale" + b"x" * 100_000)
        os.utime(stale, (1, 1))
        reads = self.count_reads()
        answer = self.broker.submit(request)
        for _ in range(10):
            self.backend.deliver()
        self.assertEqual(reads, [])
        self.assertEqual(self.names(), [f"{request.key}.req"])
        self.backend.answer(request, b"200\nfresh")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"fresh")

    def test_answer_older_than_request_not_read(self) -> None:
        """
        An answer renamed into place while a request is in flight, but older
        than its request file (a late answer to an earlier request), is told
        apart by its metadata alone: never read, never delivered.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        reads = self.count_reads()
        late = self.directory / "prepared-earlier"
        late.write_bytes(b"200\nlate")
        os.utime(late, (1, 1))
        os.rename(late, self.directory / f"{request.key}.resp")
        for _ in range(10):
            self.backend.deliver()
            self.clock.advance(POLL)
        self.assertEqual(reads, [])
        self.assertNoResult(answer)
        told = [e for e in self.events if "older than its request" in e.get("log_format", "")]
        self.assertEqual(len(told), 1)  # once, not at every look
        self.backend.answer(request, b"200\nfresh")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"fresh")

    def test_a_request_file_that_cannot_be_written_fails_alone(self) -> None:
        """
        A request whose file cannot be written while the directory itself is
        fine (a backend made a directory of that name) fails alone with 503:
        the broker stays available for every other key.
        """
        other = self.broker.submit(BrokerRequest.of(b"GET", b"/other"))
        request = BrokerRequest.of(b"GET", b"/x")
        (self.directory / f"{request.key}.req").mkdir()
        self.failureResultOf(self.broker.submit(request), BrokerUnavailable)
        self.assertTrue(self.broker.available)
        self.assertNoResult(other)
        self.stop()
        self.failureResultOf(other, ShuttingDown)

    def test_answer_held_open_is_read_once_settled(self) -> None:
        """
        An answer whose writer keeps it open (a descriptor inherited by a
        background child) is read once it has not changed for the settle time.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        with open(self.directory / f"{request.key}.resp", "wb") as writer:
            writer.write(b"200\nheld open")
            writer.flush()
            self.backend.deliver()
            self.assertNoResult(answer)
            for _ in range(5):
                self.backend.deliver()
            self.assertEqual(self.successResultOf(answer).body, b"held open")

    def test_unsettled_answer_read_once(self) -> None:
        """
        Where fmq cannot tell whether the writer is done, the answer is
        watched by its metadata while it settles, and its data read once
        more when it has: not on every scan.
        """
        self.fs.closed = None
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        reads = self.count_reads()
        self.backend.answer(request, b"200\nsettled")
        for _ in range(10):
            self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"settled")
        self.assertLessEqual(len(reads), 2)

    def test_in_place_writer_is_waited_for(self) -> None:
        """
        A response still open for writing is not read; once it is closed, it is.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        with open(self.directory / f"{request.key}.resp", "wb") as writer:
            writer.write(b"200\nfirst half,")
            writer.flush()
            self.backend.deliver()
            self.assertNoResult(answer)
            writer.write(b" second half")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"first half, second half")

    def test_settle_time_without_lease(self) -> None:
        """
        Where the broker cannot tell whether the writer is done, it reads the
        response once it has not changed for the settle time.
        """
        self.assertTrue(settled(None, (1, 2, 3), 0.0, 0.0, 0.0))
        self.assertFalse(settled(None, (1, 2, 3), 0.0, 5.0, 0.2))
        self.assertFalse(settled((1, 2, 3), (1, 2, 4), 0.0, 5.0, 0.2))
        self.assertTrue(settled((1, 2, 3), (1, 2, 3), 0.0, 0.2, 0.2))
        self.fs.closed = None
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        path = self.directory / f"{request.key}.resp"
        path.write_bytes(b"200\npart")
        self.backend.deliver()
        self.clock.advance(0.1)
        with open(path, "ab") as writer:
            writer.write(b" and the rest")
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
        self.backend.deliver()
        self.clock.advance(0.1)
        self.assertNoResult(answer)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(answer).body, b"part and the rest")

    def test_scan_survives_errors(self) -> None:
        """
        An error reading one response is logged and the scan goes on, for
        this file at the next scan and for the others at once.
        """
        a, b = BrokerRequest.of(b"GET", b"/a"), BrokerRequest.of(b"GET", b"/b")
        answer_a, answer_b = self.broker.submit(a), self.broker.submit(b)
        self.backend.answer(a, b"200\na")
        self.backend.answer(b, b"200\nb")
        self.fs.faults["read"] = [errno.EIO]
        self.backend.deliver()
        self.assertEqual(len([r for r in (answer_a, answer_b) if r.called]), 1)
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer_a).body, b"a")
        self.assertEqual(self.successResultOf(answer_b).body, b"b")
        self.assertTrue(any("cannot read" in e.get("log_format", "") for e in self.events))

    def test_unexpected_bug_does_not_stop_the_scan(self) -> None:
        """
        Even an unexpected exception leaves the scan loop running.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nok")
        original = self.fs.read_response
        self.fs.read_response = lambda path, *a, **kw: 1 / 0
        self.backend.deliver()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.fs.read_response = original
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"ok")

    def test_missing_directory_is_unavailable(self) -> None:
        """
        With the directory gone, a request fails with L{BrokerUnavailable}, the
        change is logged once, and the broker resumes by itself when the
        directory is back, locking it again.
        """
        shutil.rmtree(self.directory)
        for path in (b"/a", b"/b"):
            self.failureResultOf(
                self.broker.submit(BrokerRequest.of(b"GET", path)), BrokerUnavailable
            )
        self.assertFalse(self.broker.available)
        for _ in range(5):
            self.clock.advance(CHECK)
        changes = [e for e in self.events if "unavailable" in e.get("log_format", "")]
        self.assertEqual(len(changes), 1)
        self.assertEqual(changes[0]["log_level"], LogLevel.error)
        os.mkdir(self.directory)
        self.failureResultOf(self.broker.submit(BrokerRequest.of(b"GET", b"/c")), BrokerUnavailable)
        self.clock.advance(CHECK)
        self.assertTrue(self.broker.available)
        self.assertTrue((self.directory / LOCK_NAME).exists())
        last = self.broker.submit(BrokerRequest.of(b"GET", b"/c"))
        self.assertNoResult(last)
        self.assertEqual(
            len([e for e in self.events if "usable again" in e.get("log_format", "")]), 1
        )
        self.stop()
        self.failureResultOf(last, ShuttingDown)

    def test_waiting_callers_get_503_within_a_check(self) -> None:
        """
        When the directory goes away, requests already in flight or queued fail
        with L{BrokerUnavailable} at the next availability check, however long
        the scan interval.
        """
        self.broker.stopService()
        self.broker = file_broker(self.directory, self.clock, fs=self.fs, poll_interval=60.0)
        self.broker.startService()
        first = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        queued = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        other = self.broker.submit(BrokerRequest.of(b"GET", b"/y"))
        shutil.rmtree(self.directory)
        self.clock.advance(CHECK)
        for d in (first, queued, other):
            self.failureResultOf(d, BrokerUnavailable)
        self.assertEqual(self.broker.in_flight(), 0)

    def test_not_writable_is_unavailable(self) -> None:
        """
        A directory fmq may not write in is unavailable until that changes.
        """
        answer = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        self.fs.probe_error = OSError(errno.EACCES, "Permission denied")
        self.clock.advance(CHECK)
        self.failureResultOf(answer, BrokerUnavailable)
        self.failureResultOf(self.broker.submit(BrokerRequest.of(b"GET", b"/y")), BrokerUnavailable)
        self.fs.probe_error = None
        self.clock.advance(CHECK)
        self.assertTrue(self.broker.available)

    def test_full_disk_write(self) -> None:
        """
        A write failing with ENOSPC fails that request with 503 and marks the
        broker unavailable until the next check finds room.
        """
        self.fs.faults["write"] = [errno.ENOSPC]
        self.failureResultOf(self.broker.submit(BrokerRequest.of(b"GET", b"/x")), BrokerUnavailable)
        self.assertFalse(self.broker.available)
        self.clock.advance(CHECK)
        self.assertTrue(self.broker.available)

    def test_directory_replaced(self) -> None:
        """
        A directory removed and made again between two checks fails the
        requests that were in it and is locked again.
        """
        answer = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        shutil.rmtree(self.directory)
        os.mkdir(self.directory)
        self.clock.advance(CHECK)
        self.failureResultOf(answer, BrokerUnavailable)
        self.assertTrue(self.broker.available)
        self.assertTrue((self.directory / LOCK_NAME).exists())

    def test_queued_requests_fail_when_unavailable(self) -> None:
        """
        Requests waiting their turn fail too when the directory goes away.
        """
        first = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(first)
        waiting = self.broker.submit(BrokerRequest.of(b"GET", b"/x"))
        self.backend.answer(first, b"200\n")
        self.fs.faults["write"] = [errno.ENOENT]
        self.backend.deliver()
        self.failureResultOf(waiting, BrokerUnavailable)
        self.assertEqual(self.broker.in_flight(), 0)

    def test_out_of_descriptors_is_not_unavailable(self) -> None:
        """
        EMFILE fails the request with L{Overloaded} and leaves the broker available.
        """
        self.fs.faults["write"] = [errno.EMFILE]
        self.failureResultOf(self.broker.submit(BrokerRequest.of(b"GET", b"/x")), Overloaded)
        self.assertTrue(self.broker.available)

    def test_stop_leaves_request_files(self) -> None:
        """
        At stop, request files stay for the next start.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request).addErrback(lambda f: None)
        self.broker.stopService()
        self.assertEqual(self.names(), [f"{request.key}.req"])

    def test_late_answers_deleted_unread_at_next_scan(self) -> None:
        """
        Answers for keys that nothing is in flight for (late answers to
        requests that ended) are deleted at the next scan, and never read.
        """
        for n in range(50):
            (self.directory / f"{n:032x}.resp").write_bytes(b"200\n")
        reads: list[Path] = []
        original = self.fs.read_response
        self.fs.read_response = lambda path, *a, **kw: (
            reads.append(path) or original(path, *a, **kw)
        )
        self.backend.deliver()
        self.assertEqual(reads, [])
        self.assertEqual(self.names(), [])


class StartTests(SynchronousTestCase):
    """
    Starting where the directory cannot be made.
    """

    def test_start_without_directory(self) -> None:
        """
        A directory that cannot be created leaves the broker running but unavailable.
        """
        parent = Path(self.mktemp())
        parent.write_bytes(b"a file, not a folder")
        broker = FileBroker(
            parent / "broker",
            Clock(),
            poll_interval=POLL,
            request_ttl=1,
            settle_time=0.2,
            delete_retry_max=1,
        )
        broker.startService()
        self.addCleanup(broker.stopService)
        self.assertTrue(broker.running)
        self.assertFalse(broker.available)


class LeftoverTests(SynchronousTestCase):
    """
    What a broker finds in its directory at start, left by an earlier run.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())  # file times and the clock agree
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.backend = FileBackend(self.directory, self.clock)

    def leave(self, name: str, data: bytes = b"", age: float = 0.0) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        when = self.clock.seconds() - age
        os.utime(path, (when, when))
        return path

    def start(self, **kwargs) -> FileBroker:
        broker = file_broker(self.directory, self.clock, **kwargs)
        broker.startService()
        self.addCleanup(lambda: broker.running and broker.stopService())
        return broker

    def test_adopts_unanswered_request(self) -> None:
        """
        A request left unanswered is adopted, not written again: a new
        identical request joins it and gets the backend's answer.
        """
        request = BrokerRequest.of(b"GET", b"/left")
        left = self.leave(f"{request.key}.req", b"GET /left\n", age=10)
        inode = left.stat().st_ino
        broker = self.start()
        self.assertEqual(broker.in_flight(), 1)
        answer = broker.submit(BrokerRequest.of(b"GET", b"/left"))
        self.assertEqual(left.stat().st_ino, inode)
        self.assertEqual(broker.in_flight(), 1)
        self.backend.answer(request, b"200\nfor the adopted")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(answer).body, b"for the adopted")
        self.assertEqual(os.listdir(self.directory), [LOCK_NAME])

    def test_only_the_same_request_joins_an_adopted_one(self) -> None:
        """
        A new request joins an adopted one only if it would write the same
        file: another body (or, in the http format, other headers) waits its
        turn behind it, so a caller never gets the answer to someone else's
        request.
        """
        request = BrokerRequest.of(b"POST", b"/orders", body=b"mine")
        left = self.leave(f"{request.key}.req", b"POST /orders\nmine", age=10)
        inode = left.stat().st_ino
        broker = self.start()
        other = broker.submit(BrokerRequest.of(b"POST", b"/orders", body=b"yours"))
        same = broker.submit(BrokerRequest.of(b"POST", b"/orders", body=b"mine"))
        self.assertEqual(broker.in_flight(), 2)  # the adopted one, joined, and the other
        self.assertEqual((left.stat().st_ino, left.read_bytes()), (inode, b"POST /orders\nmine"))
        self.backend.answer(request, b"200\nfor mine")
        self.backend.deliver()
        self.assertEqual(self.successResultOf(same).body, b"for mine")
        self.assertNoResult(other)
        self.clock.advance(POLL)
        self.assertEqual(left.read_bytes(), b"POST /orders\nyours")
        broker.stopService()
        self.failureResultOf(other, ShuttingDown)

    def test_adopted_ttl_counts_from_file_time(self) -> None:
        """
        An adopted request's TTL counts from its file's mtime; when nobody
        joined it, it is withdrawn quietly.
        """
        self.leave(f"{BrokerRequest.of(b'GET', b'/old').key}.req", b"GET /old\n", age=TTL - 5)
        broker = self.start()
        self.clock.advance(4)
        self.assertEqual(broker.in_flight(), 1)
        self.clock.advance(1)
        self.assertEqual(broker.in_flight(), 0)
        self.assertEqual(os.listdir(self.directory), [LOCK_NAME])

    def test_adopted_expired_fails_joined_caller(self) -> None:
        """
        A caller who joined an adopted request gets L{RequestExpired} at its TTL.
        """
        self.leave(f"{BrokerRequest.of(b'GET', b'/old').key}.req", b"GET /old\n", age=TTL - 5)
        broker = self.start()
        answer = broker.submit(BrokerRequest.of(b"GET", b"/old"))
        self.clock.advance(5)
        self.failureResultOf(answer, RequestExpired)

    def test_deletes_answered_and_temporary(self) -> None:
        """
        Answers nobody waits for are deleted with their requests, so are
        answers with no request and fmq's own temporary files; other files stay.
        """
        a, b = BrokerRequest.of(b"GET", b"/a"), BrokerRequest.of(b"GET", b"/b")
        self.leave(f"{a.key}.req", b"GET /a\n")
        self.leave(f"{a.key}.resp", b"200\nold")
        self.leave(f"{b.key}.resp", b"200\norphan")
        self.leave(f".fmq-{a.key}.req.123.tmp", b"GET /a")
        self.leave("notes.txt", b"mine")
        self.leave(".backend.tmp", b"200\n")
        broker = self.start()
        self.assertEqual(broker.in_flight(), 0)
        self.assertEqual(
            sorted(os.listdir(self.directory)), [".backend.tmp", LOCK_NAME, "notes.txt"]
        )
        answer = broker.submit(BrokerRequest.of(b"GET", b"/a"))
        self.backend.deliver()
        self.assertNoResult(answer)
        broker.stopService()
        self.failureResultOf(answer, ShuttingDown)

    def test_unreadable_leftover(self) -> None:
        """
        A leftover request that is not a request line is not adopted, and
        the start goes on.
        """
        self.leave(f"{'0' * 32}.req", b"garbage")
        broker = self.start()
        self.assertEqual(broker.in_flight(), 0)
        self.assertTrue(broker.available)

    def test_second_broker_refused(self) -> None:
        """
        A second broker on the same directory does not start: L{LockHeld}
        names the lock file and the holder's pid.
        """
        self.start()
        second = file_broker(self.directory, self.clock)
        error = self.assertRaises(LockHeld, second.startService)
        self.assertEqual(error.path, self.directory / LOCK_NAME)
        self.assertEqual(error.holder, str(os.getpid()))
        self.assertIn(f"held by pid {os.getpid()}", str(error))
        self.assertFalse(second.running)

    def test_lock_released_at_stop(self) -> None:
        """
        After a broker stops, another one can take the directory.
        """
        self.start().stopService()
        self.start()


class FakeWatcher:
    """
    A watcher the test fires by hand.
    """

    def __init__(self, directory: Path, on_file, fail: bool = False) -> None:
        self.directory = directory
        self.on_file = on_file
        self.fail = fail
        self.started = self.stopped = False

    def start(self) -> None:
        if self.fail:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        self.started = True

    def stop(self) -> None:
        self.stopped = True


class WatchTests(SynchronousTestCase):
    """
    Being told of a file at once, with the scan as a safety net.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.fs = FaultyFileSystem()
        self.watchers: list[FakeWatcher] = []
        self.fail_watch = False
        self.broker = file_broker(
            self.directory, self.clock, fs=self.fs, poll_interval=60.0, watcher=self.make
        )
        self.broker.startService()
        self.addCleanup(lambda: self.broker.running and self.broker.stopService())
        self.backend = FileBackend(self.directory, self.clock)
        self.reads: list[str] = []
        original = self.fs.read_response
        self.fs.read_response = lambda path, *a, **kw: (
            self.reads.append(path.name) or original(path, *a, **kw)
        )

    def make(self, directory: Path, on_file) -> FakeWatcher:
        watcher = FakeWatcher(directory, on_file, self.fail_watch)
        self.watchers.append(watcher)
        return watcher

    def test_event_delivers_at_once(self) -> None:
        """
        An event for an awaited answer delivers it without waiting for a scan.
        """
        [watcher] = self.watchers
        self.assertTrue(watcher.started)
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nnow")
        watcher.on_file(f"{request.key}.resp")
        self.assertEqual(self.successResultOf(answer).body, b"now")

    def test_unrelated_events_read_nothing(self) -> None:
        """
        Events for files nobody waits for, or that are not answers, read nothing.
        """
        [watcher] = self.watchers
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request).addErrback(lambda f: None)
        self.reads.clear()
        for name in ["0" * 32 + ".resp", f"{request.key}.req", ".tmp-x", "notes.txt"]:
            watcher.on_file(name)
        self.assertEqual(self.reads, [])

    def test_event_skips_settling(self) -> None:
        """
        Where fmq cannot take a lease, a file an event reports complete is read
        at once; one found by the scan alone still waits to settle.
        """
        self.fs.closed = None
        [watcher] = self.watchers
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nclosed")
        self.clock.advance(60)  # the scan finds it, and waits
        self.assertNoResult(answer)
        watcher.on_file(f"{request.key}.resp")
        self.assertEqual(self.successResultOf(answer).body, b"closed")

    def test_missed_event_caught_by_scan(self) -> None:
        """
        An event lost (an inotify queue overflow) costs one scan interval, no more.
        """
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nlate")
        self.clock.advance(59)
        self.assertNoResult(answer)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(answer).body, b"late")

    def test_answer_there_before_any_event(self) -> None:
        """
        Right after writing a request, fmq looks once for its answer.
        """
        request = BrokerRequest.of(b"GET", b"/fast")
        original = self.fs.write_atomic

        def write_and_answer(path: Path, data: bytes) -> int:
            mtime = original(path, data)
            if path.name.endswith(".req"):
                self.backend.answer(request, b"200\ninstant")
            return mtime

        self.fs.write_atomic = write_and_answer
        self.assertEqual(self.successResultOf(self.broker.submit(request)).body, b"instant")

    def test_rearmed_when_directory_returns(self) -> None:
        """
        When the directory is removed and comes back, the old watcher is
        stopped and a new one watches the new directory.
        """
        [old] = self.watchers
        shutil.rmtree(self.directory)
        self.clock.advance(CHECK)
        os.mkdir(self.directory)
        self.clock.advance(CHECK)
        self.assertTrue(old.stopped)
        [_, new] = self.watchers
        self.assertTrue(new.started)
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nagain")
        new.on_file(f"{request.key}.resp")
        self.assertEqual(self.successResultOf(answer).body, b"again")

    def test_watch_failure_falls_back_to_scan(self) -> None:
        """
        A watcher that cannot start is logged; the scan still delivers.
        """
        self.broker.stopService()
        self.fail_watch = True
        self.broker = file_broker(self.directory, self.clock, poll_interval=1.0, watcher=self.make)
        self.broker.startService()
        request = BrokerRequest.of(b"GET", b"/x")
        answer = self.broker.submit(request)
        self.backend.answer(request, b"200\nscanned")
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(answer).body, b"scanned")

    def test_late_answer_deleted_on_its_event(self) -> None:
        """
        An answer that arrives after its request was withdrawn is deleted,
        unread, as soon as its event comes.
        """
        [watcher] = self.watchers
        request = BrokerRequest.of(b"GET", b"/x")
        self.broker.submit(request).addErrback(lambda f: None)
        self.broker.withdraw(request)
        self.backend.answer(request, b"200\ntoo late")
        self.reads.clear()
        watcher.on_file(f"{request.key}.resp")
        self.assertEqual(self.reads, [])
        self.assertEqual(sorted(os.listdir(self.directory)), [LOCK_NAME])

    def test_watched_directory_scanned_seldom(self) -> None:
        """
        While a watcher tells of answers, the scan is only a safety net: a
        poll interval passes without any look at the requests waiting, and
        one listing every rescan interval still catches a lost event.
        """
        self.broker.stopService()
        self.broker = file_broker(
            self.directory, self.clock, fs=self.fs, watcher=self.make, rescan_interval=1.0
        )
        self.broker.startService()
        listings: list[int] = []
        original = self.fs.list_names
        self.fs.list_names = lambda d: listings.append(1) or original(d)
        requests = [BrokerRequest.of(b"GET", b"/%d" % n) for n in range(100)]
        answers = [self.broker.submit(r).addErrback(lambda f: None) for r in requests]
        self.reads.clear()
        for _ in range(19):
            self.clock.advance(POLL)
        self.assertEqual((self.reads, listings), ([], []))
        self.backend.answer(requests[7], b"200\nevent lost")
        self.clock.advance(POLL)
        self.assertEqual(listings, [1])
        self.assertEqual(self.reads, [f"{requests[7].key}.resp"])
        self.assertEqual(self.successResultOf(answers[7]).body, b"event lost")

    def test_stop_stops_watcher(self) -> None:
        """
        Stopping the broker stops its watcher.
        """
        self.broker.stopService()
        self.assertTrue(self.watchers[0].stopped)


class WatchLoopTests(SynchronousTestCase):
    """
    The availability check never stops its loop.
    """

    def test_bug_in_check_is_logged_and_loop_goes_on(self) -> None:
        """
        An unexpected error in one check is logged; the next check still runs.
        """
        clock = Clock()
        fs = FaultyFileSystem()
        broker = file_broker(Path(self.mktemp()), clock, fs=fs)
        broker.startService()
        self.addCleanup(broker.stopService)
        calls = []
        original = fs.probe
        fs.probe = lambda directory: calls.append(1) or 1 / 0
        clock.advance(CHECK)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        fs.probe = lambda directory: calls.append(1) or original(directory)
        clock.advance(CHECK)
        self.assertEqual(len(calls), 2)
        self.assertTrue(broker.available)

    def test_directory_gone_between_probe_and_stat(self) -> None:
        """
        A directory removed between the probe and the stat makes the broker
        unavailable, not the loop die.
        """
        clock = Clock()
        fs = FaultyFileSystem()
        broker = file_broker(Path(self.mktemp()), clock, fs=fs)
        broker.startService()
        self.addCleanup(broker.stopService)

        def gone(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")

        fs.stat = gone
        broker._guard.lock.release()  # so the check looks at the directory again
        clock.advance(CHECK)
        self.assertFalse(broker.available)
