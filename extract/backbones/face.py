"""Face modality: an image encoder over each clip's face frames (``frames`` per clip, 16 by default).

The encoder is any of fer's image families (fer.extract.backbones.image.ImageEncoder):

- ``resnet18`` (default): ResNet-18; ``layer="pool"`` stores the 512-d pooled vector per frame, rows
  ``(16, 512)``; ``layer3``/``layer2`` store that block's map, e.g. ``(16, 256, 14, 14)`` at 224, so the
  trainer can fine-tune the later blocks from the cache;
- any torchvision classification model (``convnext_tiny``, ``vit_b_16`` ...);
- ``hf:<model id or folder>`` (CLIP's vision tower, DINOv2, ViT ...), ``layer="proj"`` for CLIP's image embedding;
- ``timm:<model name>``.

Frames are decoded in the DataLoader workers as uint8 and preprocessed on the extractor's device by
the encoder's own preprocessing (normalise, or resize + centre crop + normalise).
"""

from __future__ import annotations

from typing import Any

import torch

from fer.cache.errors import FerError
from fer.extract.backbones import precision as prec
from fer.extract.backbones.image import ImageEncoder
from fer.extract.backbones.torchvision_models import (  # noqa: F401  (fer's ResNet-18 API lives on here)
    IMAGENET_MEAN, IMAGENET_STD, ResNetTrunk, build_resnet18, map_size,
)
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import Extractor
from fer.extract.frames import read_face_frames

LAYERS = ("pool", "layer3", "layer2")


def build_image_encoder(backbone: str = "resnet18", weights: str | None = None, layer: str | None = None,
                        size: int | None = None, seed: int = 0) -> ImageEncoder:
    """The image encoder ``backbone`` names: ``resnet18``, a torchvision model name, ``hf:<id|folder>``, ``timm:<name>``."""
    if size is not None and not 32 <= size <= 1024:
        raise FerError(f"face input size {size} is out of range (32..1024)")
    if backbone.startswith("hf:"):
        from fer.extract.backbones.hf import hf_vision_encoder

        return hf_vision_encoder(backbone[3:], weights, layer, size, seed)
    if backbone.startswith("timm:"):
        from fer.extract.backbones.timm_models import timm_encoder

        return timm_encoder(backbone[5:], weights, layer, size, seed)
    if backbone == "resnet18":
        from fer.extract.backbones.torchvision_models import resnet18_encoder

        return resnet18_encoder(weights, layer, size, seed)
    from fer.extract.backbones.torchvision_models import torchvision_encoder

    return torchvision_encoder(backbone, weights, layer, size, seed)


class FaceExtractor(Extractor):
    """Face features for ``frames`` face frames per clip, from any image encoder."""

    modality = "face"

    def __init__(
        self,
        weights: str | None = None,
        layer: str | None = None,
        size: int | None = None,
        frames: int = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
        backbone: str = "resnet18",
        precision: str | None = None,
        encoder: ImageEncoder | None = None,
    ):
        """``backbone`` + ``weights``/``layer``/``size``/``seed`` build the encoder (or pass ``encoder``);
        ``precision``: fp32 | bf16 | fp16 | auto; None: $FER_PRECISION or auto (fer.extract.backbones.precision)."""
        if layer is not None and backbone == "resnet18" and layer not in LAYERS:
            raise FerError(f"unknown --layer {layer!r} for the face backbone; choose from {', '.join(LAYERS)}")
        if frames < 1:
            raise FerError(f"frames must be >= 1, got {frames}")
        self.encoder = encoder or build_image_encoder(backbone, weights, layer, size, seed)
        self.model = self.encoder.model.eval()
        self.preprocess = self.encoder.preprocess
        self.layer, self.size, self.frames, self.seed = self.encoder.layer, self.encoder.size, frames, seed
        self.requested_precision = precision
        self.device = torch.device("cpu")
        self.to(device)

    # ---------------------------------------------------------------- description
    @property
    def spec(self) -> str:
        e = self.encoder
        return f"face.{e.backbone}.{e.tag}.{e.layer}.{e.size}.{self.frames}f{prec.spec_suffix(self.precision)}"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.frames, *self.encoder.out_shape)

    @property
    def is_maps(self) -> bool:
        """True when rows hold intermediate maps (C, H, W) per frame rather than vectors."""
        return len(self.encoder.out_shape) == 3

    def provenance(self) -> dict[str, Any]:
        e = self.encoder
        return {
            "modality": "face",
            "backbone": e.backbone,
            "family": e.family,
            "weights": e.weights,
            "layer": e.layer,
            "input_size": e.size,
            "frames": self.frames,
            "width": e.out_shape[0],
            **prec.provenance(self.precision, self.device),
            "preprocessing": (
                f"{self.frames} face frames (clip_224x224_16f, else uniformly sampled from all faces; fewer "
                f"repeated by nearest index), RGB, resized to {e.size}x{e.size} bilinear when needed; then {e.preprocessing}"
            ),
            "output": e.output,
            **e.extra,
        }

    # ---------------------------------------------------------------- work
    def to(self, device: torch.device | str) -> "FaceExtractor":
        self.device = torch.device(device)
        self.precision = prec.resolve_precision(self.requested_precision, self.device, self.encoder.family)
        prec.prepare_device(self.device, self.precision)
        self.model.to(self.device)
        self.preprocess.to(self.device)
        if self.encoder.channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self

    def load(self, record: ClipRecord) -> tuple[torch.Tensor, str | None]:
        frames, info = read_face_frames(record, self.frames, self.size)
        return torch.from_numpy(frames), info

    def row_info(self, item: Any) -> str | None:
        return item[1]

    @torch.inference_mode()
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        cuda = dev.type == "cuda"
        # uint8 travels to the device (4x less than float) and is preprocessed there
        x = torch.stack([it[0].to(dev, non_blocking=cuda) for it in items])  # (B, T, H, W, 3)
        b, t = x.shape[:2]
        x = self.preprocess(x.view(b * t, *x.shape[2:]).permute(0, 3, 1, 2))
        if self.encoder.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with prec.autocast(dev, self.precision):
            y = self.model(x)
        # maps are cast to the store's fp16 on the device: half the bytes to copy, no host-side cast
        y = y.to(torch.float16 if self.is_maps else torch.float32).reshape(b, t, *y.shape[1:]).cpu()
        return y, torch.ones(b, t, dtype=torch.bool)
