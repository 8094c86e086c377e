"""Chunk locks: a writer locks the chunks it owns so that two writers never share one.

One lock file per feature set, one byte per chunk, locked with POSIX record locks (``lockf``). The kernel
drops a process's locks when it dies (even by SIGKILL), so a rerun can take over straight away. POSIX locks
belong to the process, not the file descriptor, so this module keeps one descriptor per lock file per
process and an in-process table to catch two writers of the same process overlapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from fer.cache.errors import FerError, env_faults

_LOCK_FIX = ("writing to a store needs its folder writable (reading does not): write to a writable copy or another "
             "--store")

_lock = threading.Lock()
_fds: dict[str, list[int]] = {}  # lock file -> [fd, users]
_held: dict[str, dict[int, int]] = {}  # lock key -> {chunk: owner token}


def lock_dir_for(store_path: Path) -> Path:
    """The folder beside a local store that holds its lock files (``.<name>.locks``)."""
    return store_path.parent / f".{store_path.name}.locks"


def _holder_pid(fd: int, chunk: int) -> int | None:
    """The pid holding a lock on byte ``chunk`` (F_GETLK), or None if it cannot be told."""
    try:
        # struct flock on Linux (64-bit off_t): short type, short whence, off_t start, off_t len, pid_t pid
        req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, chunk, 1, 0)
        res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        ltype, _, _, _, pid = struct.unpack("hhqqi4x", res)
        return pid if ltype != fcntl.F_UNLCK and pid > 0 else None
    except (OSError, struct.error):
        return None


class ChunkLocks:
    """Exclusive, non-blocking locks on a set of chunks of one feature set.

    ``key`` names the feature set (process-wide); ``lock_file`` is None for stores with no local
    file system (memory://), where only writers inside this process are kept apart.
    """

    def __init__(self, key: str, lock_file: Path | None, chunks: Sequence[int], what: str) -> None:
        self.key = key
        self.lock_file = lock_file
        self.chunks = [int(c) for c in chunks]
        self.what = what
        self.token = id(self)
        self._fd: int | None = None
        self._acquire()

    def _acquire(self) -> None:
        with _lock:
            held = _held.setdefault(self.key, {})
            clash = [c for c in self.chunks if c in held]
            if clash:
                raise FerError(
                    f"{self.what}: chunk {clash[0]} is already being written by another writer in this process; "
                    "close it first or give each writer its own shard"
                )
            if self.lock_file is not None:
                self._fd = self._open_fd()
                taken: list[int] = []
                for c in self.chunks:
                    try:
                        fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, c, os.SEEK_SET)
                    except OSError:
                        pid = _holder_pid(self._fd, c)
                        for t in taken:
                            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, t, os.SEEK_SET)
                        self._close_fd()
                        who = f"process {pid}" if pid else "another process"
                        raise FerError(
                            f"{self.what}: chunk {c} is locked by {who}, which is writing the same rows; "
                            "wait for it, or give each writer a disjoint --shard k/n"
                        ) from None
                    taken.append(c)
            for c in self.chunks:
                held[c] = self.token

    def _open_fd(self) -> int:
        path = str(self.lock_file)
        entry = _fds.get(path)
        if entry is None:
            with env_faults(self.lock_file.parent, "creating a lock file beside the store", _LOCK_FIX):
                self.lock_file.parent.mkdir(parents=True, exist_ok=True)
                entry = _fds[path] = [os.open(path, os.O_RDWR | os.O_CREAT, 0o666), 0]
        entry[1] += 1
        return entry[0]

    def _close_fd(self) -> None:
        path = str(self.lock_file)
        entry = _fds.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            os.close(entry[0])  # closing drops every lock this process holds on the file
            del _fds[path]
        self._fd = None

    def release(self) -> None:
        with _lock:
            held = _held.get(self.key, {})
            for c in self.chunks:
                if held.get(c) == self.token:
                    del held[c]
            if self._fd is not None:
                for c in self.chunks:
                    try:
                        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, c, os.SEEK_SET)
                    except OSError:
                        pass
                self._close_fd()
            self.chunks = []


_thread_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def exclusive(lock_file: Path | None, key: str) -> Iterator[None]:
    """A short blocking lock (e.g. while creating a feature set), across processes when there is a file."""
    with _lock:
        tl = _thread_locks.setdefault(key, threading.Lock())
    with tl:
        if lock_file is None:
            yield
            return
        with env_faults(lock_file.parent, "creating a lock file beside the store", _LOCK_FIX):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(lock_file), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
