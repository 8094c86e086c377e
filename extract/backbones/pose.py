"""Pose modality: COCO-17 keypoints of the main person in K frames sampled from the original clip.

Row ``(K, 17, 3)`` per clip: ``x / W``, ``y / H`` (frame-normalised, in [0, 1]) and a keypoint
confidence in [0, 1]; mask ``(K,)`` is False for frames where nobody is found (row zeros there).

The third column is the backbone's *real* keypoint confidence (Keypoint R-CNN: the sigmoid of its
heatmap score; OpenPifPaf: its own keypoint confidence). The paper's pose input used a third
column that is always 1 (torchvision's "visibility" column); a trainer that wants that
convention simply ignores or overwrites column 2, so nothing is lost by storing the real score.

Main person per frame: highest detection score, ties broken by the larger box area.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.extract.backbones.family import Family
from fer.extract.backbones.weights import (
    WeightsIdentity,
    fetch_torchvision,
    resolve_torchvision,
    torchvision_file,
)
from fer.extract.config import check_family
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError, Extractor
from fer.extract.media import read_video_frames

NUM_KEYPOINTS = 17
BACKENDS = ("keypointrcnn", "openpifpaf")


# ---------------------------------------------------------------- shared conversion
def main_person(scores: Sequence[float], areas: Sequence[float]) -> int | None:
    """Index of the main person: highest score, ties broken by the larger box area; None if empty."""
    if len(scores) == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), float(areas[i])), reverse=True)
    return order[0]


def keypoints_row(xy: np.ndarray, conf: np.ndarray, width: int, height: int) -> np.ndarray:
    """(17, 3) float32: x / W, y / H clipped to [0, 1], and the confidence clipped to [0, 1]."""
    out = np.empty((NUM_KEYPOINTS, 3), np.float32)
    out[:, 0] = np.clip(xy[:, 0] / float(width), 0.0, 1.0)
    out[:, 1] = np.clip(xy[:, 1] / float(height), 0.0, 1.0)
    out[:, 2] = np.clip(conf, 0.0, 1.0)
    return out


class _PoseBase(Extractor):
    """Frame sampling and the row layout shared by the pose backends."""

    modality = "pose"
    frames: int
    max_side: int | None

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.frames, NUM_KEYPOINTS, 3)

    def load(self, record: ClipRecord) -> np.ndarray:
        if record.video is None:
            raise ClipError("no original video for this clip (pose needs full frames)")
        return read_video_frames(record.video, self.frames, max_side=self.max_side)


# ---------------------------------------------------------------- Keypoint R-CNN
class KeypointRCNNPose(_PoseBase):
    """torchvision ``keypointrcnn_resnet50_fpn`` (COCO weights by default) on K frames per clip."""

    def __init__(
        self,
        weights: str = "coco",
        frames: int = 3,
        device: torch.device | str = "cpu",
        min_size: int = 512,
        max_size: int = 864,
        min_score: float = 0.5,
        detections: int = 10,
        proposals: int = 300,
        seed: int = 0,
    ):
        """
        ``min_size``/``max_size``: the detector's internal resize (torchvision defaults 800/1333);
        512/864 keeps people in movie frames well detected at about 2.5x less compute.
        ``min_score``: a detection below this person score counts as nobody (mask False).
        ``detections``: detections kept per frame, best first, before the keypoint head (torchvision
        default 100); only the main person is stored, so 10 loses nothing and saves keypoint-head time.
        ``proposals``: RPN proposals kept per frame for the box head (torchvision default 1000); the box
        head's 12544x1024 fc over every proposal dominates CPU time, and a movie frame has few people.
        """
        if frames < 1:
            raise FerError(f"pose frames must be >= 1, got {frames}")
        if not 64 <= min_size <= max_size <= 4096:
            raise FerError(f"pose sizes must satisfy 64 <= min_size <= max_size <= 4096, got {min_size}/{max_size}")
        if not 0.0 <= min_score < 1.0:
            raise FerError(f"pose min_score must be in [0, 1), got {min_score}")
        if detections < 1:
            raise FerError(f"pose detections must be >= 1, got {detections}")
        self.frames, self.min_size, self.max_size = frames, min_size, max_size
        self.min_score, self.seed = min_score, seed
        self.detections, self.proposals = detections, proposals
        # Frames are decoded no larger than the detector will look at (it downsizes anyway).
        self.max_side = max_size
        self.model, self.weights = build_keypointrcnn(weights, min_size, max_size, seed, detections, proposals,
                                                      min_score)
        self.model.eval()
        self.device = torch.device("cpu")
        self.to(device)

    @property
    def spec(self) -> str:
        s = f"pose.keypointrcnn.{self.weights.tag}.k{self.frames}.{self.min_size}-{self.max_size}"
        # settings at their defaults stay out of the name; any other value changes the numbers
        if self.min_score != 0.5:
            s += f".t{self.min_score:g}"
        if (self.detections, self.proposals) != (10, 300):
            s += f".d{self.detections}p{self.proposals}"
        return s

    def provenance(self) -> dict[str, Any]:
        return {
            "modality": "pose",
            "backbone": "keypointrcnn_resnet50_fpn",
            "weights": self.weights.as_dict(),
            "frames": self.frames,
            "input_size": {"min_size": self.min_size, "max_size": self.max_size},
            "min_score": self.min_score,
            "detections_per_frame": self.detections,
            "rpn_proposals": self.proposals,
            "preprocessing": (
                f"{self.frames} frames sampled uniformly (segment centres) from the original clip, RGB, decoded "
                f"with the long side <= {self.max_side}, /255; "
                f"detector resizes to min {self.min_size} max {self.max_size}"
            ),
            "output": (
                "main person per frame (highest score, ties by box area); columns x/W, y/H, "
                "sigmoid(keypoint heatmap score) -- the real keypoint confidence, not the paper's constant 1; "
                f"mask False where no person scores >= {self.min_score}"
            ),
            "keypoints": "COCO-17",
        }

    @torch.inference_mode()
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        imgs = [torch.from_numpy(f).to(dev).permute(2, 0, 1).float().div_(255) for clip in items for f in clip]
        outs = self.model(imgs)
        data = np.zeros((len(items), self.frames, NUM_KEYPOINTS, 3), np.float32)
        mask = np.zeros((len(items), self.frames), bool)
        for j, out in enumerate(outs):
            b, t = divmod(j, self.frames)
            h, w = items[b].shape[1:3]
            row = rcnn_main_person(out, w, h, self.min_score)
            if row is not None:
                data[b, t], mask[b, t] = row, True
        return torch.from_numpy(data), torch.from_numpy(mask)


def rcnn_main_person(out: dict[str, torch.Tensor], width: int, height: int,
                     min_score: float = 0.0) -> np.ndarray | None:
    """Convert one Keypoint R-CNN output dict (boxes, scores, keypoints, keypoints_scores) to a
    (17, 3) row for the main person, or None when no detection scores >= ``min_score``."""
    scores = out["scores"].detach().float().cpu().numpy()
    keep = np.nonzero(scores >= min_score)[0]
    if keep.size == 0:
        return None
    boxes = out["boxes"].detach().float().cpu().numpy()[keep]
    areas = (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)
    i = keep[main_person(scores[keep], areas)]
    kp = out["keypoints"][i].detach().float().cpu().numpy()
    conf = torch.sigmoid(out["keypoints_scores"][i].detach().float()).cpu().numpy()
    return keypoints_row(kp[:, :2], conf, width, height)


def build_keypointrcnn(weights: str, min_size: int, max_size: int, seed: int = 0,
                       detections: int = 10, proposals: int = 300,
                       min_score: float = 0.05) -> tuple[torch.nn.Module, WeightsIdentity]:
    """torchvision Keypoint R-CNN with ``--weights coco|none|PATH`` resolved by fer.extract.backbones.weights."""
    from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights, keypointrcnn_resnet50_fpn

    def build(_: Any) -> torch.nn.Module:
        # weights are loaded by resolve_torchvision; never let torchvision fetch a backbone here
        return keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                         num_keypoints=NUM_KEYPOINTS,
                                         min_size=min_size, max_size=max_size, box_detections_per_img=detections,
                                         rpn_post_nms_top_n_test=proposals,
                                         # detections under min_score are discarded anyway: dropping them
                                         # before NMS leaves the others unchanged and spares the keypoint head
                                         box_score_thresh=min_score)

    w = (weights or "coco").strip()
    return resolve_torchvision(w, build=build, weights_cls=KeypointRCNN_ResNet50_FPN_Weights, default="coco",
                               what="Keypoint R-CNN ResNet-50 FPN", seed=seed, strip=("module.",))


# ---------------------------------------------------------------- OpenPifPaf
PIFPAF_MISSING = (
    "the openpifpaf pose backend needs the openpifpaf package, which is not installed here: PyPI's "
    "openpifpaf 0.13.11 pins torch 1.13 and does not build against torch 2; install it in a separate "
    "environment (python -m venv pifpaf && pifpaf/bin/pip install openpifpaf 'torch==1.13.*' and fer) and run "
    "`fer extract --modality pose --backbone openpifpaf` there, or use the default --backbone keypointrcnn"
)


def pifpaf_main_person(annotations: Sequence[Any], width: int, height: int,
                       min_score: float = 0.0) -> np.ndarray | None:
    """Convert OpenPifPaf annotations (``.data`` (17, 3) x, y, confidence; ``.score``) to the main
    person's (17, 3) row, or None when none scores >= ``min_score``. Box area = extent of the
    keypoints with confidence > 0 (OpenPifPaf's own ``bbox()`` uses the same points)."""
    cands = []
    for a in annotations:
        d = np.asarray(a.data, np.float32)
        if d.shape != (NUM_KEYPOINTS, 3) or float(a.score) < min_score:
            continue
        seen = d[d[:, 2] > 0]
        area = float(np.ptp(seen[:, 0]) * np.ptp(seen[:, 1])) if len(seen) else 0.0
        cands.append((float(a.score), area, d))
    i = main_person([c[0] for c in cands], [c[1] for c in cands])
    if i is None:
        return None
    d = cands[i][2]
    return keypoints_row(d[:, :2], d[:, 2], width, height)


class OpenPifPafPose(_PoseBase):
    """OpenPifPaf on K frames per clip; ``predictor`` is an ``openpifpaf.Predictor`` (or anything whose
    ``numpy_image(rgb)`` returns ``(annotations, gt_anns, meta)`` like it)."""

    def __init__(self, predictor: Any, checkpoint: str, frames: int = 3, max_side: int | None = 864,
                 min_score: float = 0.0, device: torch.device | str = "cpu"):
        self.predictor, self.checkpoint, self.frames, self.max_side, self.min_score = (
            predictor, checkpoint, frames, max_side, min_score)
        self.device = torch.device(device)

    @property
    def spec(self) -> str:
        s = f"pose.openpifpaf.{self.checkpoint}.k{self.frames}.{self.max_side or 'native'}"
        return s if self.min_score == 0.0 else f"{s}.t{self.min_score:g}"

    def provenance(self) -> dict[str, Any]:
        version = getattr(__import__("sys").modules.get("openpifpaf"), "__version__", "stand-in")
        return {
            "modality": "pose",
            "backbone": "openpifpaf",
            "weights": {"id": f"openpifpaf:{self.checkpoint}", "sha256": None},
            "frames": self.frames,
            "input_size": {"max_side": self.max_side},
            "min_score": self.min_score,
            "preprocessing": f"{self.frames} frames sampled uniformly from the original clip, RGB uint8",
            "output": "main person per frame (highest score, ties by keypoint extent); x/W, y/H, keypoint confidence",
            "keypoints": "COCO-17",
            "openpifpaf_version": str(version),
        }

    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.zeros((len(items), self.frames, NUM_KEYPOINTS, 3), np.float32)
        mask = np.zeros((len(items), self.frames), bool)
        for b, clip in enumerate(items):
            for t, img in enumerate(clip):
                annotations = self.predictor.numpy_image(np.ascontiguousarray(img))[0]
                row = pifpaf_main_person(annotations, img.shape[1], img.shape[0], self.min_score)
                if row is not None:
                    data[b, t], mask[b, t] = row, True
        return torch.from_numpy(data), torch.from_numpy(mask)


def _make_pifpaf_predictor(checkpoint: str) -> Any:
    try:
        import openpifpaf  # type: ignore[import-not-found]
    except Exception:  # ImportError, or a broken install against the wrong torch
        raise FerError(PIFPAF_MISSING) from None
    try:
        return openpifpaf.Predictor(checkpoint=checkpoint)
    except Exception as e:
        raise FerError(f"openpifpaf could not load checkpoint {checkpoint!r} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''}); "
                       "fetch it while online or pass a local file") from None


# ---------------------------------------------------------------- the families
def keypointrcnn_extractor(name: str, weights: str | None, device: torch.device | str,
                           frames: int | None = None, size: int | None = None, **kw: Any) -> KeypointRCNNPose:
    """Keypoint R-CNN; ``size`` is the detector's short side, its long side keeps torchvision's 800:1333."""
    if size:
        kw.setdefault("min_size", size)
        kw.setdefault("max_size", max(size, round(size * 1333 / 800)))
    return KeypointRCNNPose(weights=weights or "coco", frames=frames or 3, device=device, **kw)


def openpifpaf_extractor(name: str, weights: str | None, device: torch.device | str,
                         frames: int | None = None, size: int | None = None, seed: int | None = None,
                         **kw: Any) -> OpenPifPafPose:
    """OpenPifPaf; ``weights`` is its checkpoint name (``coco``: shufflenetv2k16); no random init, no
    ``size`` (it decodes frames at ``max_side``)."""
    checkpoint = "shufflenetv2k16" if weights in (None, "coco") else weights
    predictor = kw.pop("predictor", None) or _make_pifpaf_predictor(checkpoint)
    return OpenPifPafPose(predictor, checkpoint, frames=frames or 3, device=device, **kw)


def _coco_weights() -> Any:
    from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights

    return KeypointRCNN_ResNet50_FPN_Weights.COCO_V1


KEYPOINTRCNN = Family(
    name="keypointrcnn", modalities=("pose",), pattern="keypointrcnn", help="keypointrcnn",
    build=keypointrcnn_extractor, spec="pose.keypointrcnn.<weights>.k<frames>.<min size>-<max size>",
    fetch=lambda _: str(fetch_torchvision(_coco_weights(), what="Keypoint R-CNN COCO")),
    cached=lambda _: torchvision_file(_coco_weights()).is_file(),
    top="COCO-17 keypoints and their scores of the main person (the detector's own output)",
    only=(("precision", "fp32", "the pose backends run in fp32 only"),),
)
"""torchvision's Keypoint R-CNN ResNet-50 FPN, COCO weights."""

OPENPIFPAF = Family(
    name="openpifpaf", modalities=("pose",), pattern="openpifpaf", help="openpifpaf",
    build=openpifpaf_extractor,
    spec="pose.openpifpaf.<checkpoint>.k<frames>.<max side>", top="COCO-17 keypoints of the main person",
    only=(("precision", "fp32", "the pose backends run in fp32 only"),
          ("size", None, "it decodes frames at its own max_side")),
)
"""OpenPifPaf (its own package and checkpoints, which it fetches itself)."""

POSE_FAMILIES = (KEYPOINTRCNN, OPENPIFPAF)


# ---------------------------------------------------------------- factory
def make_pose_extractor(backend: str = "keypointrcnn", weights: str = "coco", frames: int = 3,
                        device: torch.device | str = "cpu", **kw: Any) -> Extractor:
    """The pose extractor for ``backend``.

    keypointrcnn: ``weights`` coco|none|PATH; ``min_size``, ``max_size``, ``min_score``, ``seed`` in ``kw``.
    openpifpaf: ``weights`` is the OpenPifPaf checkpoint name ("coco" means shufflenetv2k16);
    ``predictor=`` injects a ready predictor; ``max_side``, ``min_score`` in ``kw``.
    """
    family = next((f for f in POSE_FAMILIES if f.matches(backend)), None)
    if family is None:
        raise FerError(f"unknown pose backend {backend!r}; choose from {', '.join(BACKENDS)}")
    check_family(family, backend, **kw)
    return family.build(family.model_name(backend), weights, device, frames=frames, **kw)
