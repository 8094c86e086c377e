"""The run folder on disk: owned by one process, made and tested writable up front, checked for room for
checkpoints, checkpoints saved atomically, and disk faults (no space, read-only, permission) turned into
one-line FerEnvErrors."""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from fer.cache.errors import FerEnvError, FerError, env_error, env_faults
from fer.cache.locks import FolderLock, Holder, own_folder

F = TypeVar("F", bound=Callable[..., Any])

_OUT_FIX = "pass --out a folder you may write to (e.g. in your home or scratch space)"
_SPACE_FIX = ("free space there (or choose another --out), then continue the run with the same command and --resume "
              "(finished folds and the last checkpoint are kept)")
ENTRY_BYTES = 320
"""What torch.save adds per tensor (zip entry, name, pickled record), measured."""
BASE_BYTES = 16 << 10
"""What a checkpoint holds beside its tensors (history, config, RNG states), about."""
SLACK_BYTES = 4 << 20
"""Room beyond the checkpoints for history, predictions, metrics and plots."""


def try_run_folder(out: Path) -> FolderLock | Holder:
    """Make ``out`` and take it for this process (the held lock), or say who holds it. One process owns a
    run folder until it releases the lock; the lock dies with its process, so a killed run never blocks a
    rerun."""
    with env_faults(out, "creating the run folder", _OUT_FIX):
        out.mkdir(parents=True, exist_ok=True)
    return own_folder(out, _OUT_FIX)


def own_run_folder(out: Path) -> FolderLock:
    """``try_run_folder``, or a one-line FerError naming the holder (process, host, since when)."""
    got = try_run_folder(out)
    if isinstance(got, Holder):
        raise FerError(f"{out} is in use by {got}, which is writing its run (one process owns a run folder): "
                       "wait for it to finish, or choose another --out")
    return got


def prepare_run_folder(out: Path) -> None:
    """Make ``out`` and prove it writable now, before any feature is loaded (read-only, forbidden or full
    places fail here with one line, not after minutes of work)."""
    with env_faults(out, "creating the run folder", _OUT_FIX):
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"fer")
        finally:
            probe.unlink(missing_ok=True)


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the tensors in a state dict (or any iterable of tensors)."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))


def checkpoint_bytes(model: nn.Module, backbone: nn.Module | None = None) -> tuple[int, int]:
    """(mid-fold, final) checkpoint sizes, estimated before training: a mid-fold checkpoint holds the model,
    its best state so far and Adam's two moments per trainable parameter (about 4x the model); the final one
    holds the model (and the fine-tuned backbone)."""
    sd = model.state_dict()
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = tensor_bytes(sd) + ENTRY_BYTES * len(sd)
    moments = 2 * sum(p.numel() * 4 + ENTRY_BYTES for p in trainable)
    final = state + (tensor_bytes(backbone.state_dict()) + ENTRY_BYTES * len(backbone.state_dict())
                     if backbone is not None else 0)
    return 2 * state + moments + BASE_BYTES, final + BASE_BYTES // 8


def check_checkpoint_space(checkpoint: Path, model: nn.Module, backbone: nn.Module | None = None) -> None:
    """FerEnvError, up front, when the run folder's disk cannot hold this fold's checkpoints: the previous
    mid-fold checkpoint stays until the next one is written, so two must fit at once."""
    mid, final = checkpoint_bytes(model, backbone)
    have = checkpoint.stat().st_size if checkpoint.is_file() else 0
    need = max(2 * mid, mid + final) - have + SLACK_BYTES
    try:
        free = shutil.disk_usage(checkpoint.parent).free
    except OSError:
        return  # cannot tell: the save itself reports a full disk
    if free < need:
        raise FerEnvError(
            f"the disk of {checkpoint.parent} has {free / 1e6:.0f} MB free, but this fold's checkpoints need about "
            f"{need / 1e6:.0f} MB (a mid-fold checkpoint holds the model, its best state and the optimizer state, "
            f"{mid / 1e6:.0f} MB, and the previous one is kept until the next is written): free space there, or "
            "choose another --out"
        )


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write never leaves a half checkpoint, and a
    failed write (no space) leaves no temporary file behind and ends in one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        # through a Python file, so a failed write keeps its errno (torch's own writer reports "unexpected pos")
        with env_faults(path.parent, f"saving {path.name}", _SPACE_FIX):
            with open(tmp, "wb") as f:
                torch.save(obj, f)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_folder_faults(out_of: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator: a disk fault escaping the wrapped run (history, predictions, metrics) becomes a one-line
    FerEnvError naming the run folder, which ``out_of(*args, **kwargs)`` gives."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except FerError:
                raise
            except (OSError, RuntimeError) as e:
                err = env_error(e, out_of(*args, **kwargs), "writing the run folder", _SPACE_FIX)
                if err is None:
                    raise
                raise err from e

        return inner  # type: ignore[return-value]

    return wrap
