"""Real small and read-only file systems for the fault tests: a tmpfs of a few MB, a read-only bind mount.

Mounting needs root (CAP_SYS_ADMIN); where it is not allowed the test is skipped with the reason. Without
root, read_only() falls back to chmod, which a non-root process cannot write through either.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler.bin"


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def can_mount() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def small_disk(where: Path, size_kb: int = 8192, free_kb: int | None = None) -> Iterator[Path]:
    """A real tmpfs of ``size_kb`` KB mounted at ``where``; with ``free_kb``, a filler file leaves about that
    much free. Unmounted afterwards. Skips the test when mounting is not permitted."""
    if not can_mount():
        pytest.skip("a small real file system needs root to mount a tmpfs (this fault needs a real full disk)")
    where.mkdir(parents=True, exist_ok=True)
    p = _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where))
    if p.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {p.stderr.strip()}")
    try:
        if free_kb is not None:
            fill(where, free_kb)
        yield where
    finally:
        _umount(where)


def fill(disk: Path, free_kb: int) -> None:
    """Grow (or shrink) the filler file so that about ``free_kb`` KB stay free on ``disk``."""
    filler = disk / FILLER
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - free_kb * 1024
    if size > 0:
        with open(filler, "wb") as f:
            f.write(b"\0" * size)


def full(disk: Path) -> None:
    """Leave no free byte on ``disk``."""
    fill(disk, 0)
    with contextlib.suppress(OSError), open(disk / "filler-last.bin", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` (a folder) read-only for this process: a read-only bind mount where mounting is allowed
    (root ignores file modes, and a read-only mount is what clusters hand out), else ``chmod a-w`` on the tree
    (writes then fail with "permission denied" instead of "read-only file system")."""
    if can_mount() and _mount("--bind", str(path), str(path)).returncode == 0:
        if _mount("-o", "remount,bind,ro", str(path)).returncode == 0:
            try:
                yield
            finally:
                _umount(path)
            return
        _umount(path)
    modes = {}
    for p in [path, *path.rglob("*")]:
        modes[p] = p.stat().st_mode
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for p, m in modes.items():
            p.chmod(m)
