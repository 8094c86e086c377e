"""A real process that owns a folder (fer.cache.locks.own_folder, the lock of `fer train`) until it is
killed."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_HOLD = """
import sys
from pathlib import Path
from fer.cache.locks import FolderLock, own_folder
got = own_folder(Path(sys.argv[1]), "")
print("held" if isinstance(got, FolderLock) else f"refused {got}", flush=True)
sys.stdin.read()  # until the test closes stdin or kills it
"""


@contextlib.contextmanager
def holder(folder: Path) -> Iterator[subprocess.Popen]:
    """A process holding ``folder`` (made when missing); killed (SIGKILL) at the end unless the test did."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "held", line + p.stderr.read()
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()
        p.stderr.close()
