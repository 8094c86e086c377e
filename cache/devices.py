"""Which torch device a run uses (``--device`` of `fer extract`, `fer data faces`, `fer train`), in the layer
both stages share: one rule, one set of one-line errors. torch is imported when a device is resolved."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fer.cache.errors import FerError

if TYPE_CHECKING:
    import torch


def local_cuda_index(local_rank: str | None, count: int) -> int:
    """The GPU of this process: LOCAL_RANK modulo the visible GPUs (0 without LOCAL_RANK). Launchers that show
    each process only its own GPU (SLURM --gpus-per-task) give every rank one visible device, index 0."""
    if local_rank is None or local_rank == "":
        return 0
    try:
        rank = int(local_rank)
    except ValueError:
        raise FerError(f"LOCAL_RANK={local_rank!r} is not an integer") from None
    if count < 1:
        raise FerError("no CUDA GPU is visible; use --device cpu or auto")
    return rank % count


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the local CUDA device when there is one (LOCAL_RANK under torchrun, modulo the visible
    GPUs), else CPU. A CUDA device is also made the current one (torch.cuda.set_device). A cuda request
    without a GPU, an unknown name, or a GPU index past the visible ones is a one-line FerError."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FerError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise FerError(f"unknown --device {device!r}; choose auto, cpu, cuda or cuda:N") from None
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", local_cuda_index(os.environ.get("LOCAL_RANK"), count))
        elif dev.index >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise FerError(f"--device {device} asks for GPU {dev.index} but {count} GPU(s) are visible "
                           f"(CUDA_VISIBLE_DEVICES={visible}); use cuda:0..{count - 1}")
        # the current device too, so libraries that use "the current device" (and new contexts) land here
        torch.cuda.set_device(dev)
        return dev
    if d != "cpu":
        raise FerError(f"unknown --device {device!r}; choose auto, cpu or cuda")
    return torch.device("cpu")
