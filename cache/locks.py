"""Locks between writers: of a store's chunks, of a store while a feature set is created, and of a run folder.

One mechanism underneath all of them: POSIX record locks (``lockf``) on a lock file. The kernel drops a
process's locks when it dies (even by SIGKILL), so a rerun can take over straight away: a lock file left
behind by a killed process is stale, not held. Record locks work across machines on NFS (v4, or v3 with
its lock daemon). They belong to the process, not the file descriptor, and closing *any* descriptor of a
file drops all the process's locks on it, so this module keeps one descriptor per lock file per process
and an in-process table to keep two holders inside one process apart.

Public API:
- ``StoreLocks``: the locks of one store (``FeatureStore.locks``): ``chunks(spec, ...)`` for a writer's
  chunks, ``creating()`` while a feature set is created or its attrs are changed.
- ``ChunkLocks``: exclusive, non-blocking locks on chunks of one feature set.
- ``exclusive(lock_file, key)``: a short blocking lock.
- ``FolderLock`` / ``own_folder``: one process owns a folder (a run folder of ``fer train`` / ``fer sweep``);
  the lock file also names its holder (pid, host, since) for the message a second process gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fer.cache.errors import FerError, env_faults

_LOCK_FIX = ("writing to a store needs its folder writable (reading does not): write to a writable copy or another "
             "--store")

_lock = threading.Lock()  # guards the tables below
_fds: dict[str, list[int]] = {}  # lock file -> [fd, users]
_held: dict[str, dict[int, int]] = {}  # lock key -> {slot: owner token}
_thread_locks: dict[str, threading.Lock] = {}


def lock_dir_for(store_path: Path) -> Path:
    """The folder beside a local store that holds its lock files (``.<name>.locks``)."""
    return store_path.parent / f".{store_path.name}.locks"


def _holder_pid(fd: int, slot: int) -> int | None:
    """The pid holding a lock on byte ``slot`` (F_GETLK), or None if it cannot be told."""
    try:
        # struct flock on Linux (64-bit off_t): short type, short whence, off_t start, off_t len, pid_t pid
        req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0)
        res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        ltype, _, _, _, pid = struct.unpack("hhqqi4x", res)
        return pid if ltype != fcntl.F_UNLCK and pid > 0 else None
    except (OSError, struct.error):
        return None


def _open_fd(lock_file: Path, fix: str) -> int:
    """This process's one descriptor of ``lock_file`` (made with its folder when missing); call under
    _lock."""
    path = str(lock_file)
    entry = _fds.get(path)
    if entry is None:
        with env_faults(lock_file.parent, "creating a lock file", fix):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            entry = _fds[path] = [os.open(path, os.O_RDWR | os.O_CREAT, 0o666), 0]
    entry[1] += 1
    return entry[0]


def _close_fd(lock_file: Path) -> None:
    """Give back one use of the descriptor; the last closes it (which drops every lock this process holds on
    the file, so it is closed only when no holder in this process is left); call under _lock."""
    path = str(lock_file)
    entry = _fds.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        os.close(entry[0])
        del _fds[path]


@dataclass
class Clash:
    """Why a lock was not taken: ``slot`` is held by ``pid`` (None when it cannot be told), or by another
    holder inside this process (``in_process``)."""

    slot: int
    pid: int | None = None
    in_process: bool = False


class _RecordLocks:
    """Exclusive, non-blocking locks on byte ``slots`` of one lock file (the one mechanism of this module).

    ``key`` names what is locked (process-wide); ``lock_file`` None keeps apart only holders in this process
    (stores with no local file system, memory://).
    """

    def __init__(self, key: str, lock_file: Path | None, slots: Sequence[int], fix: str = _LOCK_FIX) -> None:
        self.key = key
        self.lock_file = None if lock_file is None else Path(lock_file).resolve()  # one descriptor per file
        self.slots = [int(c) for c in slots]
        self.token = id(self)
        self.fd: int | None = None
        self._fix = fix

    def take(self) -> Clash | None:
        """Take every slot, or none of them and say which one is held by whom."""
        with _lock:
            held = _held.setdefault(self.key, {})
            clash = [c for c in self.slots if c in held]
            if clash:
                return Clash(clash[0], os.getpid(), in_process=True)
            if self.lock_file is not None:
                self.fd = _open_fd(self.lock_file, self._fix)
                taken: list[int] = []
                for c in self.slots:
                    try:
                        fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, c, os.SEEK_SET)
                    except OSError:
                        pid = _holder_pid(self.fd, c)
                        for t in taken:
                            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, t, os.SEEK_SET)
                        _close_fd(self.lock_file)
                        self.fd = None
                        return Clash(c, pid)
                    taken.append(c)
            for c in self.slots:
                held[c] = self.token
            return None

    def release(self) -> None:
        with _lock:
            held = _held.get(self.key, {})
            for c in self.slots:
                if held.get(c) == self.token:
                    del held[c]
            if self.fd is not None:
                for c in self.slots:
                    try:
                        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, c, os.SEEK_SET)
                    except OSError:
                        pass
                _close_fd(self.lock_file)
                self.fd = None
            self.slots = []


class ChunkLocks:
    """Exclusive, non-blocking locks on a set of chunks of one feature set (FerError naming the holder when
    one is taken). ``key`` names the feature set (process-wide); ``lock_file`` is None for stores with no
    local file system (memory://), where only writers inside this process are kept apart."""

    def __init__(self, key: str, lock_file: Path | None, chunks: Sequence[int], what: str) -> None:
        self._locks = _RecordLocks(key, lock_file, chunks)
        self.what = what
        clash = self._locks.take()
        if clash is None:
            return
        if clash.in_process:
            raise FerError(
                f"{what}: chunk {clash.slot} is already being written by another writer in this process; "
                "close it first or give each writer its own shard"
            )
        who = f"process {clash.pid}" if clash.pid else "another process"
        raise FerError(
            f"{what}: chunk {clash.slot} is locked by {who}, which is writing the same rows; "
            "wait for it, or give each writer a disjoint --shard k/n"
        )

    @property
    def chunks(self) -> list[int]:
        return self._locks.slots

    def release(self) -> None:
        self._locks.release()


@contextlib.contextmanager
def exclusive(lock_file: Path | None, key: str) -> Iterator[None]:
    """A short blocking lock (e.g. while creating a feature set), across processes when there is a file.

    Inside a process the lock file (when there is one) names the lock, so two spellings of one path wait for
    each other too."""
    if lock_file is not None:
        lock_file = Path(lock_file).resolve()
    name = str(lock_file) if lock_file is not None else key
    with _lock:
        tl = _thread_locks.setdefault(name, threading.Lock())
    with tl:
        if lock_file is None:
            yield
            return
        with _lock:
            fd = _open_fd(lock_file, _LOCK_FIX)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)  # waits for other processes
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)
        finally:
            with _lock:
                _close_fd(lock_file)


class StoreLocks:
    """The locks of one store: lock files live in ``.<name>.locks`` beside a local zarr store; HDF5 lets one
    process open the file for writing, so it needs no lock files, and memory:// has no files (writers inside
    this process are still kept apart)."""

    def __init__(self, path: str, local: Path | None, fmt: str) -> None:
        self.path = path
        self._base = str(local.resolve()) if local is not None else path
        self.dir = None if local is None or fmt == "hdf5" else lock_dir_for(local.resolve())

    def file(self, name: str) -> Path | None:
        """The lock file ``name`` (a feature set's spec, or ``_create``), None where the store needs none."""
        return None if self.dir is None else self.dir / f"{name}.lock"

    def chunks(self, spec: str, chunks: Sequence[int], what: str) -> ChunkLocks:
        """Lock chunks of feature set ``spec`` (FerError naming the holder when one is taken)."""
        return ChunkLocks(f"{self._base}::{spec}", self.file(spec), chunks, what)

    def creating(self) -> contextlib.AbstractContextManager[None]:
        """Held while a feature set (or the store) is created or a set's attrs change: one at a time."""
        return exclusive(self.file("_create"), f"{self.path}::create")


# ------------------------------------------------------------------ one process owns a folder
FOLDER_LOCK = ".fer.lock"
"""The lock file inside an owned folder; it also names its holder."""


@dataclass
class Holder:
    """Who holds a folder: pid and host (from the lock file; the pid from the kernel when the file does not
    say yet), and since when."""

    pid: int | None
    host: str
    since: str = ""

    def __str__(self) -> str:
        who = f"process {self.pid}" if self.pid else "another process"
        return f"{who} on host {self.host}" + (f" (since {self.since})" if self.since else "")


class FolderLock:
    """One process owns ``folder``: an exclusive lock on ``folder/.fer.lock`` (made with the folder), held
    until ``release``. Inside one thread the lock nests (a sweep holds a grid point's folder and the run it
    starts takes it again); another thread of the process, or another process, is refused."""

    def __init__(self, folder: Path, fix: str) -> None:
        self.folder = Path(folder)
        self.file = self.folder.resolve() / FOLDER_LOCK
        self._locks = _RecordLocks(f"folder::{self.file}", self.file, [0], fix)
        self._depth = 0  # holds of the outermost lock of this thread
        self._outer: FolderLock | None = None  # set on a nested hold: the lock it counts on

    def acquire(self) -> Holder | None:
        """Take the folder (None), or say who holds it."""
        nested = _nesting(self.file)
        if nested is not None:
            nested._depth += 1
            self._outer = nested
            return None
        clash = self._locks.take()
        if clash is None:
            self._depth = 1
            with _lock:
                _owners[str(self.file)] = (threading.get_ident(), self)
            self._write_holder()
            return None
        return self._holder(clash)

    def _write_holder(self) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        try:
            os.ftruncate(self._locks.fd, 0)
            os.pwrite(self._locks.fd, text.encode(), 0)
        except OSError:
            pass  # the lock holds without its note; a second process then names the pid the kernel gives

    def _holder(self, clash: Clash) -> Holder:
        if clash.in_process:
            return Holder(os.getpid(), socket.gethostname(), "")
        note: dict = {}
        try:
            with _lock:
                # through the shared descriptor: closing another one would drop this process's locks
                fd = _open_fd(self.file, _LOCK_FIX)
                try:
                    note = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                finally:
                    _close_fd(self.file)
        except (OSError, ValueError, FerError):
            pass
        if not isinstance(note, dict) or not isinstance(note.get("pid"), int):
            # the holder has not written its note yet: the kernel's pid is of this host's view
            return Holder(clash.pid, socket.gethostname() if clash.pid else "unknown")
        return Holder(note["pid"], str(note.get("host") or "unknown"), str(note.get("since") or ""))

    def release(self) -> None:
        if self._outer is not None:
            self._outer._depth -= 1
            self._outer = None
            return
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        with _lock:
            _owners.pop(str(self.file), None)
        self._locks.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_owners: dict[str, tuple[int, FolderLock]] = {}  # lock file -> (thread, outermost lock) of held folders


def _nesting(file: Path) -> FolderLock | None:
    """The lock this thread already holds on ``file``, if any."""
    with _lock:
        owner = _owners.get(str(file))
    if owner is not None and owner[0] == threading.get_ident():
        return owner[1]
    return None


def own_folder(folder: Path, fix: str) -> FolderLock | Holder:
    """Take ``folder`` for this process: the held FolderLock, or the Holder of the folder when another process
    (or thread) has it. ``fix`` is what to do when the folder cannot be written (for the one-line error)."""
    lock = FolderLock(folder, fix)
    holder = lock.acquire()
    return lock if holder is None else holder
