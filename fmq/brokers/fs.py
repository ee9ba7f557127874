"""
The file broker's seam over the filesystem.

Every system call the file broker makes goes through L{FileSystem}, so tests
can make any of them fail on demand.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from fmq.brokers.answerfile import ResponseFile, read_answer
from fmq.brokers.layout import temporary_name
from fmq.errors import OVERLOAD_ERRNOS

__all__ = ["OVERLOAD_ERRNOS", "FileSystem", "ResponseFile"]


class FileSystem:
    """
    The real filesystem.
    """

    def write_atomic(self, path: Path, data: bytes) -> int:
        """
        Write C{data} under a temporary name beside C{path}, then rename it.

        @return: the written file's mtime in nanoseconds.
        @raise OSError: nothing was left behind.
        """
        # strings: cheaper than a Path built per request
        head, name = os.path.split(os.fspath(path))
        temp = os.path.join(head, temporary_name(name, os.getpid()))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                mtime_ns = os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
            os.rename(temp, path)
        except OSError:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        return mtime_ns

    def read_response(
        self, path: Path, max_bytes: int | None = None, lease: bool = True
    ) -> ResponseFile | None:
        """
        Read a response file, unless a process still has it open for writing;
        see L{read_answer}.
        """
        return read_answer(path, max_bytes, lease)

    def unlink(self, path: Path) -> bool:
        """
        Delete C{path}: a file, a link (never its target), or an empty
        directory a backend made where an answer should be.

        An absent file is an answer, not an error, and is caught here: an
        exception passing up through the callers makes PyPy build every
        one of their frames, up to Klein's.

        @return: whether it was there.
        @raise OSError: it could not be deleted.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            os.rmdir(path)
        return True

    def probe(self, directory: Path) -> OSError | None:
        """
        Whether fmq can work in C{directory}: it exists, is a folder, fmq may
        create files in it, and its filesystem has room.

        @return: C{None} if so, else an error saying why not.
        """
        try:
            st = os.stat(directory)
        except OSError as e:
            return e
        if not stat.S_ISDIR(st.st_mode):
            return OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(directory, os.W_OK | os.X_OK):
            return OSError(errno.EACCES, os.strerror(errno.EACCES))
        try:
            fs = os.statvfs(directory)
        except OSError as e:
            return e
        if (fs.f_blocks and not fs.f_bavail) or (fs.f_files and not fs.f_favail):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return None

    def stat(self, path: Path) -> os.stat_result:
        return os.stat(path)

    def lstat(self, path: Path) -> os.stat_result | None:
        """
        C{path}'s metadata; a symbolic link's own, not its target's.

        @return: C{None} if there is no such file (caught here, as in
            L{unlink}).
        """
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None

    def list_names(self, directory: Path) -> list[str]:
        return os.listdir(directory)

    def read_bytes(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def ensure_directory(self, path: Path) -> None:
        """
        Create C{path} and its parents if they are missing.
        """
        os.makedirs(path, exist_ok=True)
