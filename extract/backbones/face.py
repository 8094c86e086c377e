"""Face modality: an image encoder over each clip's face frames (``frames`` per clip, 16 by default).

The encoder is any of fer's image families (fer.extract.backbones.image.ImageEncoder):

- ``resnet18`` (default): ResNet-18; ``layer="pool"`` stores the 512-d pooled vector per frame, rows
  ``(16, 512)``; ``layer3``/``layer2`` store that block's map, e.g. ``(16, 256, 14, 14)`` at 224, so the
  trainer can fine-tune the later blocks from the cache;
- any torchvision classification model (``convnext_tiny``, ``vit_b_16`` ...);
- ``hf:<model id or folder>`` (CLIP's vision tower, DINOv2, ViT ...), ``layer="proj"`` for CLIP's image embedding;
- ``timm:<model name>``.

Frames per clip: a fixed number (``frames=16``: rows ``(16, D...)``, spec ``...16f``) or every frame
(``frames="all"``, up to ``max_frames``: rows ``(max_frames, D...)``, zero rows after a clip's frames, the mask
marking the real ones, spec ``...all64f``; see fer.extract.frames for where they come from). ``flip=True`` also
stores each frame's horizontally mirrored view on an axis after the frames: rows ``(T, 2, D...)``, provenance
``views: ["original", "hflip"]``, spec ``....flip``; the mirror is taken of each decoded frame on the device and
runs in the same forward pass as the original.

Frames are decoded in the DataLoader workers as uint8 (only a clip's real frames) and preprocessed on the
extractor's device by the encoder's own preprocessing (normalise, or resize + centre crop + normalise). The
model runs over the real frames of a batch of clips in sub-batches of ``frame_batch`` images, whose features
are scattered into the padded rows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.extract.backbones import precision as prec
from fer.extract.backbones.image import ImageEncoder
from fer.extract.backbones.precision_check import settle
from fer.extract.config import check_family, check_frames
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import Extractor
from fer.extract.frames import read_all_frames, read_face_frames

MAX_FRAMES = 64
"""Default cap on the frames an all-frame set keeps per clip (``--max-frames``)."""
FRAME_BATCH = 256
"""Images per model forward (both views counted): a batch of clips with 64 frames and their mirrors is split."""
VIEWS = ("original", "hflip")


def build_image_encoder(backbone: str = "resnet18", weights: str | None = None, layer: str | None = None,
                        size: int | None = None, seed: int = 0,
                        transforms: str | None = None) -> ImageEncoder:
    """The image encoder ``backbone`` names, built by its face family (fer.extract.backbones.families):
    ``resnet18``, a torchvision model name, ``hf:<id|folder>``, ``timm:<name>`` ...; ``layer``
    ``block:K``/``all`` cuts a vision transformer (fer.extract.backbones.vit_cut); ``weights`` may be a
    `fer train` checkpoint whose backbone (or ViT top) was fine-tuned on one fold (recorded as such);
    ``transforms`` names whose preprocessing to use, for the families that take it."""
    from fer.extract.backbones import vit_cut
    from fer.extract.backbones.families import FAMILIES, family_of, normalize_backbone

    if size is not None and not 32 <= size <= 1024:
        raise FerError(f"face input size {size} is out of range (32..1024)")
    backbone = normalize_backbone(backbone)
    family = family_of("face", backbone)
    check_family(family, backbone, layer=layer)
    if transforms is not None and family.transforms is None:
        takes = "; ".join(f"{f.name}: {f.transforms}" for f in FAMILIES
                          if f.transforms and "face" in f.modalities)
        raise FerError(f"--transforms does not apply to {backbone}, whose preprocessing is fixed; it applies "
                       f"to {takes}")
    more = {} if transforms is None else {"transforms": transforms}
    cut = vit_cut.is_cut(layer)
    own = vit_cut.base_layer(str(layer)) if cut else layer
    name = family.model_name(backbone)
    ck = vit_cut.trained_checkpoint(weights)
    base = vit_cut.adapted_base(ck, backbone, str(weights)) if ck is not None else None
    if base is not None:  # a ViT top adapted by `fer train --finetune top`: its base first, then the top
        enc = family.build(name, base.get("weights"), own, size, int(base.get("seed") or 0), **more)
        enc = vit_cut.adapt(enc, ck, str(weights))
    else:
        enc = family.build(name, weights, own, size, seed, **more)
        if ck is not None:
            enc.extra["finetuned_on_fold"] = int(ck["finetuned_on_fold"])
    return vit_cut.cut_encoder(enc, str(layer)) if cut else enc


class FaceExtractor(Extractor):
    """Face features for ``frames`` face frames per clip (or every frame, up to ``max_frames``), from any image
    encoder; with ``flip``, the mirrored view of every frame too."""

    modality = "face"

    def __init__(
        self,
        weights: str | None = None,
        layer: str | None = None,
        size: int | None = None,
        frames: int | str = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
        backbone: str = "resnet18",
        precision: str | None = None,
        encoder: ImageEncoder | None = None,
        max_frames: int | None = None,
        flip: bool = False,
        frame_batch: int = FRAME_BATCH,
        transforms: str | None = None,
    ):
        """``backbone`` + ``weights``/``layer``/``size``/``seed`` build the encoder (or pass ``encoder``);
        ``precision``: fp32 | bf16 | fp16 | auto; None: $FER_PRECISION or auto (fer.extract.backbones.precision).
        ``frames``: N, or ``"all"`` with ``max_frames`` (64 by default) the cap; ``flip``: store mirrored views too;
        ``frame_batch``: images per model forward; ``transforms``: whose preprocessing to use (a weights
        entry, a timm pretrained tag, an HF model), for the families that take it."""
        frames = check_frames(frames, max_frames)
        self.all_frames = frames == "all"
        if frame_batch < 1:
            raise FerError(f"frame_batch must be >= 1, got {frame_batch}")
        self.max_frames = (max_frames or MAX_FRAMES) if self.all_frames else None
        self.encoder = encoder or build_image_encoder(backbone, weights, layer, size, seed, transforms)
        self.model = self.encoder.model.eval()
        self.preprocess = self.encoder.preprocess
        self.layer, self.size, self.frames, self.seed = self.encoder.layer, self.encoder.size, frames, seed
        self.flip, self.frame_batch = bool(flip), frame_batch
        if self.all_frames and self.is_maps:
            mb = math.prod(self.row_shape) * 2 / 2**20
            kind = "tokens" if len(self.encoder.out_shape) == 2 else "maps"
            raise FerError(f"--frames all stores pooled vectors only: {self.layer} {kind} of up to "
                           f"{self.tokens} frames"
                           f"{' x 2 views' if self.flip else ''} are {mb:.1f} MB a clip (fp16); "
                           "extract maps with a fixed "
                           "--frames 16 (for --finetune layer4|top), or every frame with --layer pool")
        self.requested_precision = precision
        self.precision_check: dict[str, Any] | None = None
        self.device = torch.device("cpu")
        self.to(device)

    # ---------------------------------------------------------------- description
    @property
    def tokens(self) -> int:
        """Frames per stored row (T): the fixed count, or the cap of an all-frame set."""
        return self.max_frames if self.all_frames else self.frames

    @property
    def views(self) -> int:
        """Views stored per frame: 2 with ``flip`` (original, mirrored), else 1."""
        return 2 if self.flip else 1

    @property
    def spec(self) -> str:
        e = self.encoder
        frames = f"all{self.max_frames}f" if self.all_frames else f"{self.frames}f"
        flip = ".flip" if self.flip else ""
        return f"face.{e.backbone}.{e.tag}.{e.layer}.{e.size}.{frames}{flip}{prec.spec_suffix(self.precision)}"

    @property
    def row_shape(self) -> tuple[int, ...]:
        views = (self.views,) if self.flip else ()
        return (self.tokens, *views, *self.encoder.out_shape)

    @property
    def is_maps(self) -> bool:
        """True when rows hold an array per frame (layer3 maps (C, H, W), a ViT's tokens (tokens, D)) rather
        than one vector; ``--layer all``'s per-block vectors (L + 1, D) are small and count as vectors."""
        return len(self.encoder.out_shape) == 3 or (len(self.encoder.out_shape) == 2 and self.layer != "all")

    def provenance(self) -> dict[str, Any]:
        e = self.encoder
        if self.all_frames:
            frames = (f"every face frame up to {self.max_frames} (the all-frames folder: DFEW clip_224x224, "
                      "MAFW faces, "
                      f"a manifest's faces, `fer data faces` output; more frames: {self.max_frames} at the segment "
                      "centres; no such folder: the 16-frame folder; no face folder: the video's full frames, centre "
                      "square crop; each case in row_info), zero frames after a clip's last, masked absent")
        else:
            frames = (f"{self.frames} face frames (clip_224x224_16f, else uniformly sampled from all faces; fewer "
                      "repeated by nearest index)")
        views = {}
        if self.flip:
            views = {"views": list(VIEWS),
                     "flip": "hflip: each frame mirrored left-right on the device (torch.flip of the width axis of the "
                             "uint8 frame), then preprocessed and run in the same batch as the original"}
        return {
            "modality": "face",
            "backbone": e.backbone,
            "family": e.family,
            "weights": e.weights,
            "layer": e.layer,
            "input_size": e.size,
            "frames": self.frames,
            **({"max_frames": self.max_frames} if self.all_frames else {}),
            **views,
            "width": e.out_shape[0],
            **prec.provenance(self.precision, self.device, self.precision_check),
            "preprocessing": (
                f"{frames}, RGB, resized to {e.size}x{e.size} bilinear when needed; then {e.preprocessing}"
            ),
            "output": e.output,
            **e.extra,
        }

    # ---------------------------------------------------------------- work
    def settle_precision(self, records: Sequence[ClipRecord], clips: int = 8,
                         started: Collection[str] = ()) -> None:
        settle(self, records, clips, started)

    def to(self, device: torch.device | str) -> FaceExtractor:
        self.device = torch.device(device)
        self.precision = prec.resolve_precision(self.requested_precision, self.device, self.encoder.family)
        prec.prepare_device(self.device, self.precision)
        self.model.to(self.device)
        self.preprocess.to(self.device)
        if self.encoder.channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self

    def load(self, record: ClipRecord) -> tuple[torch.Tensor, str | None]:
        """(uint8 (n, S, S, 3) frames, note): n = ``frames``, or a clip's real frames (<= max_frames) when all."""
        if self.all_frames:
            frames, info = read_all_frames(record, self.max_frames, self.size)
        else:
            frames, info = read_face_frames(record, self.frames, self.size)
        return torch.from_numpy(frames), info

    def row_info(self, item: Any) -> str | None:
        return item[1]

    @torch.inference_mode()
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        dev, t = self.device, self.tokens
        cuda = dev.type == "cuda"
        counts = [int(it[0].shape[0]) for it in items]
        # uint8 travels to the device (4x less than float) and is preprocessed there; only real frames
        x = torch.cat([it[0].to(dev, non_blocking=cuda) for it in items])  # (F, H, W, 3), F = sum(counts)
        step = max(1, self.frame_batch // self.views)
        y = torch.cat([self._forward(x[s:s + step]) for s in range(0, x.shape[0], step)])  # (F, [V,] D...)
        b = len(items)
        mask = torch.from_numpy(np.arange(t)[None, :] < np.asarray(counts)[:, None])  # (B, T): real frames first
        where = torch.from_numpy(np.flatnonzero(mask.numpy())).to(dev, non_blocking=cuda)
        out = y.new_zeros((b * t, *y.shape[1:]))
        out.index_copy_(0, where, y)  # scatter the real frames into the padded rows (no host sync)
        return out.view(b, t, *y.shape[1:]).cpu(), mask

    def _forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 frames on the device -> (n, [V,] D...) features (fp16 maps, else fp32)."""
        n = frames.shape[0]
        if self.flip:
            # the mirrored view in the same forward (2n images); mirrored before the preprocessing, as a folder of
            # mirrored faces would be: a centre crop off by one pixel (e.g. resize 73, crop 64) is not symmetric
            frames = torch.cat([frames, frames.flip(2)])
        x = self.preprocess(frames.permute(0, 3, 1, 2))
        if self.encoder.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with prec.autocast(self.device, self.precision):
            y = self.model(x)
        # maps are cast to the store's fp16 on the device: half the bytes to copy, no host-side cast
        y = y.to(torch.float16 if self.is_maps else torch.float32)
        if self.flip:
            y = y.unflatten(0, (2, n)).transpose(0, 1)  # (n, 2, D...): the view axis after the frame
        return y
