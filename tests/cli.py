"""The real `fer` command in a subprocess, as a user runs it (one torch thread: the test models are tiny)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FER_OFFLINE": "1"}


def fer(*args: object, check: int | None = None, cwd: object = None, timeout: float = 300, input: str | None = None,
        prefix: Sequence[str] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m fer.cli ARGS`` (after ``prefix``, e.g. torchrun); with ``check`` the exit status must be it.

    Whatever the status, fer never ends in a traceback or a crash: every fault is one line.
    """
    p = subprocess.run([*prefix, sys.executable, "-m", "fer.cli", *map(str, args)], capture_output=True, text=True,
                       env=ENV if env is None else env, cwd=cwd, timeout=timeout, input=input)
    assert "Traceback" not in p.stderr and p.returncode >= 0 and p.returncode != 139, p.stderr
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


def fer_ok(*args: object, check: int | None = 0, **kw) -> subprocess.CompletedProcess:
    """``fer`` that must exit 0 unless told another status."""
    return fer(*args, check=check, **kw)
