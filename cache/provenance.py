"""Provenance helpers: what made a feature set (library versions, time, command line, file hashes)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

# Libraries whose versions can change the numbers in a feature set (or the bytes on disk).
_TRACKED = ("fer-cache", "numpy", "torch", "torchvision", "transformers", "timm", "zarr", "h5py", "numcodecs", "av")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter, plus python; missing ones are left out."""
    out = {"python": platform.python_version()}
    for name in _TRACKED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    """The command line of this process, shell-quoted."""
    return " ".join(shlex.quote(a) for a in sys.argv)


def sha256_file(path: str | Path, *, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def base_provenance() -> dict[str, object]:
    """The provenance every new feature set gets: created, command line, library versions."""
    return {"created": now_iso(), "command_line": command_line(), "library_versions": library_versions()}
