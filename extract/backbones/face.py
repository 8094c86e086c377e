"""Face modality: torchvision ResNet-18 over each clip's 16 aligned face frames.

``layer="pool"`` (default) stores the 512-d global-average-pooled vector per frame (fc removed):
rows ``(16, 512)``. ``layer="layer3"`` / ``"layer2"`` store that block's output map instead,
e.g. ``(16, 256, 14, 14)`` at 224, so the trainer can fine-tune the later blocks from the cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.extract.extractor import Extractor
from fer.extract.frames import read_face_frames
from fer.extract.datasets.records import ClipRecord
from fer.extract.backbones.weights import WeightsIdentity, resolve_torchvision

LAYERS = ("pool", "layer3", "layer2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHANNELS = {"pool": 512, "layer3": 256, "layer2": 128}


def _conv_out(s: int, k: int, stride: int, pad: int) -> int:
    return (s + 2 * pad - k) // stride + 1


def map_size(size: int, layer: str) -> int:
    """Spatial side of ``layer``'s output map for a ``size`` x ``size`` input."""
    s = _conv_out(_conv_out(size, 7, 2, 3), 3, 2, 1)  # conv1, maxpool
    for _ in range({"layer2": 1, "layer3": 2}[layer]):
        s = _conv_out(s, 3, 2, 1)
    return s


class ResNetTrunk(nn.Module):
    """ResNet-18 up to ``layer``: pooled 512-d features, or the ``layer2``/``layer3`` map."""

    def __init__(self, resnet: nn.Module, layer: str):
        super().__init__()
        blocks = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
        if layer in ("layer3", "pool"):
            blocks.append("layer3")
        if layer == "pool":
            blocks.append("layer4")
        self.body = nn.Sequential(*(getattr(resnet, b) for b in blocks))
        self.pool = layer == "pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return torch.flatten(x.mean(dim=(2, 3)), 1) if self.pool else x


def build_resnet18(weights: str = "imagenet", seed: int = 0) -> tuple[nn.Module, WeightsIdentity]:
    """A torchvision ResNet-18 with ``--weights`` resolved (see fer.extract.backbones.weights); fc kept."""
    from torchvision.models import ResNet18_Weights, resnet18

    return resolve_torchvision(
        weights,
        build=lambda w: resnet18(weights=w),
        weights_cls=ResNet18_Weights,
        default="imagenet",
        what="ResNet-18 ImageNet",
        seed=seed,
        optional_missing=("fc.",),  # a fine-tuned backbone saved without its classifier head
    )


class FaceExtractor(Extractor):
    """ResNet-18 face features for ``frames`` face frames per clip."""

    modality = "face"

    def __init__(
        self,
        weights: str = "imagenet",
        layer: str = "pool",
        size: int = 224,
        frames: int = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        if layer not in LAYERS:
            raise FerError(f"unknown --layer {layer!r} for the face backbone; choose from {', '.join(LAYERS)}")
        if not 32 <= size <= 1024:
            raise FerError(f"face input size {size} is out of range (32..1024)")
        if frames < 1:
            raise FerError(f"frames must be >= 1, got {frames}")
        self.layer, self.size, self.frames, self.seed = layer, size, frames, seed
        resnet, self.weights = build_resnet18(weights, seed)
        self.model = ResNetTrunk(resnet, layer).eval()
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.device = torch.device("cpu")
        self.to(device)

    # ---------------------------------------------------------------- description
    @property
    def spec(self) -> str:
        return f"face.resnet18.{self.weights.tag}.{self.layer}.{self.size}.{self.frames}f"

    @property
    def row_shape(self) -> tuple[int, ...]:
        if self.layer == "pool":
            return (self.frames, 512)
        s = map_size(self.size, self.layer)
        return (self.frames, _CHANNELS[self.layer], s, s)

    def provenance(self) -> dict[str, Any]:
        return {
            "modality": "face",
            "backbone": "resnet18",
            "weights": self.weights.as_dict(),
            "layer": self.layer,
            "input_size": self.size,
            "frames": self.frames,
            "preprocessing": (
                f"{self.frames} face frames (clip_224x224_16f, else uniformly sampled from all faces; fewer "
                f"repeated by nearest index), RGB, resized to {self.size}x{self.size} bilinear when needed, "
                f"/255, ImageNet mean {list(IMAGENET_MEAN)} std {list(IMAGENET_STD)}"
            ),
            "output": "global average pool, fc removed" if self.layer == "pool" else f"{self.layer} output map",
        }

    # ---------------------------------------------------------------- work
    def to(self, device: torch.device | str) -> "FaceExtractor":
        self.device = torch.device(device)
        self.model.to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        # channels_last: cuDNN tensor cores on GPU, and ~25% faster oneDNN convolutions on CPU (measured)
        self.model.to(memory_format=torch.channels_last)
        return self

    def load(self, record: ClipRecord) -> tuple[torch.Tensor, str | None]:
        frames, info = read_face_frames(record, self.frames, self.size)
        return torch.from_numpy(frames), info

    def row_info(self, item: Any) -> str | None:
        return item[1]

    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        cuda = dev.type == "cuda"
        # uint8 travels to the device (4x less than float) and is normalised there
        x = torch.stack([it[0].to(dev, non_blocking=cuda) for it in items])  # (B, T, H, W, 3)
        b, t = x.shape[:2]
        x = x.view(b * t, *x.shape[2:]).permute(0, 3, 1, 2).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                y = self.model(x)
        else:
            y = self.model(x)
        y = y.float().reshape(b, t, *y.shape[1:]).cpu()
        return y, torch.ones(b, t, dtype=torch.bool)
