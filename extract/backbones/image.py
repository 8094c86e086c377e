"""An image encoder as the face extractor sees it: a frozen model, its own preprocessing, names for the spec.

Each family module (torchvision_models, hf, timm_models) builds one ``ImageEncoder``; the face
extractor (fer.extract.backbones.face) runs any of them over a clip's face frames.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.extract.backbones.family import cut_matches


def slug(name: str, limit: int = 60) -> str:
    """A spec-safe token: letters, digits, ``_`` and ``-`` (lower case)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()[:limit] or "model"


@dataclass
class ImageEncoder:
    """A frozen image model: ``preprocess`` maps uint8 ``(N, 3, S, S)`` frames (on the device) to the
    model's input; ``model`` maps that to ``(N, *out_shape)`` features."""

    backbone: str
    """Spec token naming the architecture, e.g. ``resnet18``, ``convnext_tiny``, ``hf-clip``,
    ``timm-vit_base_patch16_224``."""
    family: str
    """``resnet18`` | ``torchvision`` | ``hf-vision`` | ``timm``: picks the CPU precision default."""
    model: nn.Module
    preprocess: nn.Module
    weights: dict[str, Any]
    """Provenance of the weights: id, sha256 (None for random init), and revision / notes where known."""
    tag: str
    """Spec token for the weights: ``imagenet``, ``none-s0``, ``<stem>-<sha8>``, ``<hub name>``."""
    size: int
    """Side of the square frames read from disk and given to ``preprocess`` (the model's input side)."""
    out_shape: tuple[int, ...]
    """One frame's feature shape: ``(D,)``, or ``(C, H, W)`` for an intermediate map."""
    layer: str = "pool"
    """Spec token for what is taken: ``pool``, ``proj`` (CLIP projection), ``layer3`` ..."""
    preprocessing: str = ""
    """Human-readable preprocessing for the provenance."""
    output: str = ""
    """Human-readable description of the output for the provenance."""
    channels_last: bool = False
    """Run convolutions in channels_last (faster oneDNN/cuDNN convolutions)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More provenance (e.g. the checkpoint keys that were ignored, the model config)."""
    transforms: str | None = None
    """Whose preprocessing ``preprocess`` is, as ``--transforms`` names it (a torchvision weights entry, a
    timm pretrained tag, an HF processor's model); None for a family with one fixed preprocessing."""


def notice(message: str) -> None:
    """A one-line note on stderr: something the user should know about a choice fer made (the run goes on)."""
    print(f"note: {message}", file=sys.stderr)


def with_transforms(tag: str, transforms: str | None, automatic: str | None) -> str:
    """The weights' spec token, plus ``+<transforms>`` when ``--transforms`` named another preprocessing than
    the weights alone would get: the name changes only when the numbers do."""
    if transforms is None or transforms == automatic:
        return tag
    return f"{tag}+{slug(transforms.rstrip('/').rsplit('/', 1)[-1], 40)}"


def probe_width(model: nn.Module, size: int, what: str) -> tuple[int, ...]:
    """One frame's output shape, from a forward pass of one blank ``size`` x ``size`` image.

    It also proves the model accepts that input size, so a wrong ``--size`` fails here, in one line,
    before any clip is read.
    """
    try:
        with torch.inference_mode():
            y = model(torch.zeros(1, 3, size, size))
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise FerError(f"{what} does not run on {size}x{size} input ({type(e).__name__}: {first}); "
                       "leave --size out to use the model's own input size") from None
    if not isinstance(y, torch.Tensor):
        raise FerError(f"{what} returns {type(y).__name__}, not a feature tensor")
    return tuple(y.shape[1:])


def check_layer(layer: str | None, allowed: Sequence[str], what: str) -> str:
    """``layer`` or the first allowed one; FerError naming the choices otherwise (an allowed ``block:K`` takes
    any ``block:<integer>``, fer.extract.backbones.family.cut_matches)."""
    layer = layer or allowed[0]
    if not any(cut_matches(a, layer) for a in allowed):
        raise FerError(f"--layer {layer} is not available for {what}; choose from {', '.join(allowed)}")
    return layer


class Uint8Normalize(nn.Module):
    """uint8 frames -> float, ``(x - 255 mean) / (255 std)``: plain per-channel standardisation, no resize."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def scaled_classification(size: int, crop: int, resize: int | list[int], mean: Sequence[float], std: Sequence[float],
                          interpolation: Any, antialias: bool = True) -> nn.Module:
    """torchvision's own ImageClassification preset (resize, centre crop, /255, normalise) at input side ``size``.

    ``crop``/``resize`` are the preset's sizes at its native input; for another ``size`` the resize
    keeps the same ratio to the crop (e.g. 256/224), as the model's own recipe would at that size.
    """
    from torchvision.transforms._presets import ImageClassification

    squash = isinstance(resize, (list, tuple)) and len(resize) == 2
    r = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
    t = ImageClassification(crop_size=size, resize_size=r if size == crop else int(round(size * r / crop)),
                            mean=tuple(mean), std=tuple(std), interpolation=interpolation, antialias=antialias)
    if squash:  # resize straight to the input size (no crop)
        t.resize_size = [size, size]
    return t


def describe_classification(t: nn.Module) -> str:
    """One line for the provenance from an ImageClassification preset."""
    interp = getattr(t.interpolation, "value", t.interpolation)
    return (f"resize {list(t.resize_size)} ({interp}, antialias {t.antialias}), centre crop {list(t.crop_size)}, "
            f"/255, mean {[round(m, 5) for m in t.mean]} std {[round(s, 5) for s in t.std]}")
