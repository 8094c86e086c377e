"""The numeric precision a backbone runs in, and how it is named in the spec and the provenance.

``--precision`` takes ``fp32``, ``bf16``, ``fp16`` or ``auto`` (the default of ``fer extract``):

- on CUDA, ``auto`` is bf16 autocast where the extractor's own GPU does bf16 natively (compute
  capability 8.0 or later; emulated bf16 on V100/T4 is slow and does not count), else fp16 autocast;
- on a CPU, ``auto`` is bf16 autocast only where oneDNN has native bf16 kernels (AVX512-BF16 or AMX)
  *and* the backbone family was measured to gain from it (benchmarks/bench_precision.py: at least
  1.5x faster with every pooled feature within cosine 0.999 of fp32, see CPU_BF16_FAMILIES); else fp32.

That choice is the starting guess: before a run commits to it, fer.extract.backbones.precision_check measures
it on the run's own weights and first clips, and falls back to fp32 when it drifts or is slower.

fp32 keeps the spec name fer always used, so older stores keep matching; any autocast adds its
precision (``.bf16``, ``.fp16``), so features of two precisions never share a feature set (a set
resumed or sharded across mixed machines would otherwise mix them) and ``fer predict`` recomputes a
clip in the precision training saw.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from fer.cache.errors import FerError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENV = "FER_PRECISION"
"""Environment variable with the precision used when none is asked for (default: auto), e.g. fp32 on a
cluster that must give the same numbers on every node; fer's tests set it to fp32."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

CPU_BF16_FAMILIES: frozenset[str] = frozenset(
    {"resnet18", "torchvision", "hf-vision", "timm", "hf-speech", "hf-whisper"})
"""Backbone families that run in bf16 by default on CPUs with native bf16 (``auto``).

From benchmarks/results/precision.md (bench_precision.py on this project's 2-core AVX512-BF16 machine, quiet,
random weights of the real architectures): a family is listed only when bf16 autocast was at least 1.5x faster
than fp32 and every pooled feature stayed within cosine 0.999 of fp32. Measured: ResNet-18 1.79x, ConvNeXt-T
2.74x, torchvision ViT-B/16 3.17x, CLIP ViT-B/16 3.02x, DINOv2-B 1.93x, timm ViT-B/16 2.84x, wav2vec2-large
2.44x, HuBERT-base 2.53x, WavLM-base+ 2.44x (``hf-speech``: the wav2vec2-style encoders), Whisper-base's encoder
1.75x (``hf-whisper``); every cosine >= 0.99996. (An earlier run on a loaded machine had Whisper at 0.78x: the
table is only trusted from a quiet run.)"""


def cpu_bf16_native() -> bool:
    """True when oneDNN on this CPU has native bf16 kernels (AVX512-BF16 / AMX), not emulation."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # builds without oneDNN
        return False


def cuda_bf16_native(device: torch.device) -> bool:
    """True when ``device`` (the extractor's GPU, not the current one) does bf16 natively."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def is_auto(requested: str | None) -> bool:
    """True when ``requested`` (None: $FER_PRECISION, else auto) leaves the precision to ``auto``."""
    return (requested or os.environ.get(ENV) or "auto").strip().lower() == "auto"


def resolve_precision(requested: str | None, device: torch.device | str, family: str) -> str:
    """``auto`` | ``fp32`` | ``bf16`` | ``fp16`` -> the precision to run (never ``auto``); None: $FER_PRECISION or auto.

    ``family`` (``resnet18``, ``torchvision``, ``hf-vision``, ``timm``, ``hf-speech``, ...) picks
    the CPU default from CPU_BF16_FAMILIES. A precision the device cannot run is a FerError.
    """
    p = (requested or os.environ.get(ENV) or "auto").strip().lower()
    if p not in PRECISIONS:
        raise FerError(f"unknown --precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if dev.type == "cuda":
        if p == "auto":
            return "bf16" if cuda_bf16_native(dev) else "fp16"
        if p == "bf16" and not cuda_bf16_native(dev):
            raise FerError(f"{torch.cuda.get_device_name(dev)} has no native bf16 (compute capability < 8.0): "
                           "use --precision fp16 or fp32")
        return p
    if p == "auto":
        return "bf16" if family in CPU_BF16_FAMILIES and cpu_bf16_native() else "fp32"
    # an explicit bf16/fp16 runs on any CPU (emulated where there are no native kernels: slow but the
    # same numbers), so `fer predict` can recompute a clip exactly as a GPU-made feature set was made
    return p


def spec_suffix(precision: str) -> str:
    """What a precision adds to a spec name: nothing for fp32 (the names fer always used), else ``.bf16``/``.fp16``."""
    return "" if precision == "fp32" else f".{precision}"


def provenance(precision: str, device: torch.device | str,
               check: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``precision`` entries of a feature set's attrs; ``check``: what ``auto`` measured before choosing
    (fer.extract.backbones.precision_check)."""
    dev = torch.device(device)
    how = ("fp32" if precision == "fp32" else
           f"torch.autocast({dev.type!r}, {DTYPES[precision]}): matmuls and convolutions in {precision}, "
           "accumulation and pooling in fp32")
    measured = {"precision_check": check} if check else {}
    return {"precision": precision, "compute": how, "device": dev.type, **measured}


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast for ``precision`` on ``device`` (no-op for fp32)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=DTYPES[precision]):
        yield


def prepare_device(device: torch.device, precision: str, fixed_shapes: bool = True) -> None:
    """Process-wide settings for extraction on ``device``.

    CUDA: cuDNN autotuning when every batch has the same shape (face frames; not variable-length audio,
    which would re-tune on every new length); fp32 means fp32, so TF32 convolutions and matmuls are
    turned off for it (they would change the numbers under the fp32 name).
    """
    if device.type != "cuda":
        return
    if fixed_shapes:
        torch.backends.cudnn.benchmark = True
    if precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
