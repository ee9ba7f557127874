"""
The file broker's seam over the filesystem.

Every system call the file broker makes goes through L{FileSystem}, so tests
can make any of them fail on demand.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import attrs

from fmq.brokers.layout import temporary_name

#: errno values that mean this process is short of descriptors.
OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


@attrs.frozen
class ResponseFile:
    """
    A response file as read, with its identity.

    @ivar closed: C{True} when no process had the file open for writing as it
        was read; C{None} when that cannot be known here (no lease rights), so
        the caller must wait for the file to settle instead.
    """

    data: bytes
    inode: int
    size: int
    mtime_ns: int
    closed: bool | None


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
        temp = path.with_name(temporary_name(path.name, os.getpid()))
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

    def read_response(self, path: Path, lease: bool = True) -> ResponseFile | None:
        """
        Read a response file, unless a process still has it open for writing.

        A read lease is refused (C{EAGAIN}) while any process has the file
        open for writing; that is how a backend writing in place is told
        apart from one that has finished.

        @param lease: C{False} to read it as it is, without asking (it has
            settled).
        @return: the file, or C{None} while it is open for writing.
        @raise FileNotFoundError: there is no such file.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            closed: bool | None = True if lease else None
            try:
                if lease:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return None
                closed = None
            try:
                st = os.fstat(fd)
                chunks = []
                while chunk := os.read(fd, max(st.st_size, 65536)):
                    chunks.append(chunk)
            finally:
                if closed:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return ResponseFile(b"".join(chunks), st.st_ino, st.st_size, st.st_mtime_ns, closed)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        """
        Delete C{path}.

        @raise OSError: it could not be deleted (C{FileNotFoundError} if absent).
        """
        os.unlink(path)

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

    def lstat(self, path: Path) -> os.stat_result:
        """
        C{path}'s metadata; a symbolic link's own, not its target's.
        """
        return os.lstat(path)

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
