"""
Tests for L{fmq.brokers.answerfile}: reading an answer file, whatever it is.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from fmq.brokers import answerfile as reader
from fmq.brokers.answerfile import read_answer
from fmq.errors import AnswerTooLarge, MalformedResponse, NotARegularFile


class ReadAnswerTests(SynchronousTestCase):
    """
    L{read_answer} on a real directory.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "k.resp"

    def refusal(self, max_bytes: int | None = None) -> MalformedResponse:
        found = read_answer(self.path, max_bytes)
        assert found is not None
        self.assertEqual(found.data, b"")
        self.assertTrue(found.closed)
        assert found.refused is not None
        self.assertRaises(type(found.refused), found.response)
        return found.refused

    def test_regular_file(self) -> None:
        """
        A regular file closed by its writer is read whole, and known closed.
        """
        self.path.write_bytes(b"200\nbody")
        found = read_answer(self.path)
        assert found is not None
        self.assertEqual((found.data, found.size, found.closed), (b"200\nbody", 8, True))
        self.assertEqual(found.response().body, b"body")

    def test_open_for_writing(self) -> None:
        """
        A file some process still has open for writing is not read yet.
        """
        with open(self.path, "wb") as writer:
            writer.write(b"200\nhalf")
            writer.flush()
            self.assertIsNone(read_answer(self.path))

    def test_missing(self) -> None:
        """
        No file: L{FileNotFoundError}.
        """
        self.assertRaises(FileNotFoundError, read_answer, self.path)

    def test_symlink_not_followed(self) -> None:
        """
        A symbolic link, to a valid answer or to nothing, is refused unread;
        its target is left as it was.
        """
        target = self.directory / "target"
        target.write_bytes(b"200\nsecret")
        os.symlink(target, self.path)
        self.assertIsInstance(self.refusal(), NotARegularFile)
        self.assertIn("symbolic link", str(self.refusal()))
        self.assertEqual(target.read_bytes(), b"200\nsecret")
        target.unlink()
        self.assertIsInstance(self.refusal(), NotARegularFile)

    def test_link_made_after_the_check(self) -> None:
        """
        A file replaced by a link between the type check and the open is
        refused too: the open itself never follows a link.
        """
        target = self.directory / "target"
        target.write_bytes(b"200\nsecret")
        self.path.write_bytes(b"200\nplain")
        lstat = os.lstat
        swapped: list[Path] = []

        def swap_then_lstat(path, *args, **kwargs):
            result = lstat(path, *args, **kwargs)
            if not swapped:
                swapped.append(path)
                os.unlink(path)
                os.symlink(target, path)
            return result

        self.patch(reader.os, "lstat", swap_then_lstat)
        self.assertIn("symbolic link", str(self.refusal()))

    def test_fifo_never_blocks(self) -> None:
        """
        A FIFO is refused without being opened, so no read can block.
        """
        os.mkfifo(self.path)
        self.assertIn("a FIFO", str(self.refusal()))

    def test_directory_and_socket(self) -> None:
        """
        A directory or a socket is not a regular file.
        """
        self.path.mkdir()
        self.assertIn("a directory", str(self.refusal()))
        self.path.rmdir()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(self.path))
            self.assertIn("a socket", str(self.refusal()))

    def test_too_large_is_not_read(self) -> None:
        """
        An answer larger than the cap is refused from its size, unread; one
        of exactly the cap is read.
        """
        self.path.write_bytes(b"200\n" + b"x" * 96)
        reads: list[int] = []
        original = os.read
        self.patch(reader.os, "read", lambda fd, n: reads.append(n) or original(fd, n))
        refused = self.refusal(max_bytes=99)
        self.assertIsInstance(refused, AnswerTooLarge)
        self.assertIn("100 bytes, more than max_answer_bytes (99)", str(refused))
        self.assertEqual(reads, [])
        found = read_answer(self.path, 100)
        assert found is not None
        self.assertEqual(len(found.data), 100)

    def test_growing_while_read(self) -> None:
        """
        A file larger than its size said when checked is read no further than
        one byte past the cap, and refused.
        """
        self.path.write_bytes(b"200\n" + b"x" * 1000)

        def said_small(call):
            def small(what: object) -> object:
                st = call(what)
                return SimpleNamespace(
                    st_mode=st.st_mode, st_size=10, st_ino=st.st_ino, st_mtime_ns=st.st_mtime_ns
                )

            return small

        self.patch(reader.os, "lstat", said_small(os.lstat))
        self.patch(reader.os, "fstat", said_small(os.fstat))
        read: list[int] = []
        original = os.read
        self.patch(reader.os, "read", lambda fd, n: read.append(n) or original(fd, n))
        refused = self.refusal(max_bytes=20)
        self.assertIsInstance(refused, AnswerTooLarge)
        self.assertIn("grew while read", str(refused))
        self.assertEqual(sum(read), 21)

    def test_lease_given_back_after_a_failed_read(self) -> None:
        """
        When reading fails, the lease is given back at once: a writer may open
        the file without waiting for the lease to be broken.
        """
        self.path.write_bytes(b"200\nbody")

        def failing_read(fd: int, n: int) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(reader.os, "read", failing_read)
        self.assertRaises(OSError, read_answer, self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # EWOULDBLOCK under a lease
        os.close(fd)

    def test_no_lease_without_its_signal_routed(self) -> None:
        """
        Where the lease signal cannot be routed away from SIGIO, no lease is
        taken (it could end the process): the file is read as one whose
        writer cannot be known, to wait for it to settle.
        """
        self.path.write_bytes(b"200\nbody")
        fcntl_calls: list[int] = []
        fcntl = reader.fcntl.fcntl

        def no_setsig(fd: int, command: int, arg: int = 0) -> int:
            fcntl_calls.append(command)
            if command == reader._F_SETSIG:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return fcntl(fd, command, arg)

        self.patch(reader.fcntl, "fcntl", no_setsig)
        found = read_answer(self.path)
        assert found is not None
        self.assertEqual((found.data, found.closed), (b"200\nbody", None))
        self.assertNotIn(reader._F_SETLEASE, fcntl_calls)
