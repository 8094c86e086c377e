"""MTCNN face detection with 5 landmarks, batched over the frames of a clip.

Our own compact implementation of the cascade of Zhang et al. (2016) (P-Net proposals over an image
pyramid, R-Net refinement, O-Net boxes and landmarks), with the P/R/O-Net weights that the
facenet-pytorch wheel ships (MIT). The package itself is never imported (it pins an old torch and
needs ``requests``): its data folder is found with ``importlib.util.find_spec``.

Differences from facenet-pytorch's loop, made for speed: every stage runs on all frames of a batch
at once; the R-Net and O-Net crops are cut with one ``torchvision.ops.roi_align`` call (boxes
reaching outside the frame are zero-padded, as the original MTCNN did, instead of squeezed), and
frames larger than ``max_side`` are downscaled before detection (coordinates are mapped back).
Coordinates are in pixels of the input frames, pixel centres at integer positions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file

WEIGHTS_PACKAGE = "facenet_pytorch"
WEIGHTS_DIST = "facenet-pytorch"
INSTALL_HINT = (
    "the face detector's weights come from facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0 "
    "(it pins an old torch, so --no-deps)"
)
NETS = ("pnet", "rnet", "onet")

MIN_FACE = 20
"""Smallest face searched for, in pixels of the (possibly downscaled) detection frame."""
THRESHOLDS = (0.6, 0.7, 0.7)
"""Face score thresholds of P-Net, R-Net and O-Net."""
FACTOR = 0.709
"""Scale step of the image pyramid."""
MAX_SIDE = 640
"""Frames with a longer side are downscaled to it for detection (DFER faces are large; this bounds cost)."""
NMS_STAGE1_SCALE, NMS_STAGE1, NMS_STAGE2, NMS_STAGE3 = 0.5, 0.7, 0.7, 0.7
CHUNK = 512
"""R-Net / O-Net crops per forward pass (bounds memory on frames with many proposals)."""
CPU_PNET_PIXELS = 1 << 17
"""On the CPU, P-Net sees at most this many pixels per call (several small pyramid levels at once, one
large one alone): its activations then stay in the CPU caches; a whole batch at the largest level ran
3x slower per frame (benchmarks/bench_faces.py). On a GPU a level runs for all frames at once."""


# ---------------------------------------------------------------- the three networks
class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 windows at stride 2 -> (box offsets, face prob)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops -> (box offsets, face prob)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # the weights were converted from Caffe, which flattens (W, H, C): keep that order
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops -> (box offsets, 5 landmarks as x1..x5 y1..y5, face prob)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


# ---------------------------------------------------------------- weights
def weights_dir() -> Path:
    """facenet-pytorch's ``data/`` folder, found without importing the package; FerError when absent."""
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "data"
        if all((folder / f"{n}.pt").is_file() for n in NETS):
            return folder
    raise FerError(INSTALL_HINT)


@lru_cache(maxsize=4)
def _identity(folder: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, sha256_file(Path(folder) / f"{n}.pt")) for n in NETS)


def detector_identity() -> dict[str, object]:
    """What made the boxes and landmarks: name, weight source and version, sha256 per file, settings."""
    folder = weights_dir()
    try:
        version = importlib.metadata.version(WEIGHTS_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "name": "mtcnn",
        "implementation": "fer.extract.faces.detect (batched; roi_align crops, zero padding)",
        "weights": f"{WEIGHTS_DIST} {version}",
        "sha256": dict(_identity(str(folder))),
        "min_face": MIN_FACE,
        "thresholds": list(THRESHOLDS),
        "factor": FACTOR,
        "max_side": MAX_SIDE,
    }


def _load(net: nn.Module, path: Path) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # a damaged or foreign file: say which and how to repair it
        raise FerError(f"cannot load the face detector weights {path} ({type(e).__name__}: {e}); "
                       f"reinstall them: {INSTALL_HINT}") from None
    # channels-last: 2-2.5x faster convolutions and 5-10x faster ceil-mode max pooling on the CPU
    # (benchmarks/bench_faces.py); the results agree with NCHW to 1e-6
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- results
@dataclass
class Faces:
    """The faces found in one frame, best score first."""

    boxes: np.ndarray
    """(k, 4) float32 x1, y1, x2, y2."""
    scores: np.ndarray
    """(k,) float32 O-Net face probability."""
    landmarks: np.ndarray
    """(k, 5, 2) float32 x, y of left eye, right eye, nose, left and right mouth corner (as seen)."""

    def __len__(self) -> int:
        return len(self.scores)


def _empty() -> Faces:
    return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


# ---------------------------------------------------------------- the detector
class MTCNN(nn.Module):
    """The cascade; ``detect`` takes a batch of same-size frames and returns one ``Faces`` per frame."""

    def __init__(self, device: torch.device | str = "cpu", *, min_face: int = MIN_FACE,
                 thresholds: tuple[float, float, float] = THRESHOLDS, factor: float = FACTOR,
                 max_side: int | None = MAX_SIDE) -> None:
        super().__init__()
        folder = weights_dir()
        self.pnet = _load(PNet(), folder / "pnet.pt")
        self.rnet = _load(RNet(), folder / "rnet.pt")
        self.onet = _load(ONet(), folder / "onet.pt")
        self.min_face, self.thresholds, self.factor, self.max_side = min_face, thresholds, factor, max_side
        self.device = torch.device(device)
        self.to(self.device)

    def to(self, device: torch.device | str) -> MTCNN:  # type: ignore[override]
        self.device = torch.device(device)
        return super().to(self.device)

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor | np.ndarray, batch: int = 32) -> list[Faces]:
        """Faces in each of ``frames`` (uint8 ``(B, H, W, 3)`` RGB), ``batch`` frames per pass."""
        if isinstance(frames, np.ndarray) and not frames.flags.writeable:
            frames = frames.copy()  # torch warns on read-only arrays (e.g. np.asarray of a PIL image)
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames (B, H, W, 3), got {tuple(frames.shape)}")
        out: list[Faces] = []
        for i in range(0, len(frames), batch):
            out.extend(self._detect(frames[i:i + batch]))
        return out

    # -- stages
    def _detect(self, frames: torch.Tensor) -> list[Faces]:
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().contiguous()
        b, _, h, w = x.shape
        r = 1.0
        if self.max_side and max(h, w) > self.max_side:
            r = self.max_side / max(h, w)
            x = F.interpolate(x, size=(max(1, round(h * r)), max(1, round(w * r))), mode="area")
            ry, rx = x.shape[2] / h, x.shape[3] / w
        pyramid = self._pyramid(x)
        boxes, img = self._stage1(pyramid)
        if len(boxes):
            boxes, img = self._stage2(pyramid, boxes, img)
        if not len(boxes):
            return [_empty() for _ in range(b)]
        boxes, scores, points, img = self._stage3(pyramid, boxes, img)
        if r != 1.0:  # back to input pixels (pixel centres at integers)
            scale = torch.tensor([rx, ry], device=boxes.device)
            boxes = ((boxes.view(-1, 2, 2) + 0.5) / scale - 0.5).view(-1, 4)
            points = (points + 0.5) / scale - 0.5
        boxes, scores, points, img = (t.cpu().numpy() for t in (boxes, scores, points, img))
        out = []
        for i in range(b):
            sel = np.flatnonzero(img == i)
            out.append(Faces(boxes[sel].astype(np.float32), scores[sel].astype(np.float32),
                             points[sel].astype(np.float32)))
        return out

    def _pyramid(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """The frames at every scale P-Net searches (12 / min_face, times ``factor`` per level), plus the
        frames themselves first (scale 1). Each level is an area resize of the one before: as sharp as
        resizing the full frames each time (the steps are all downscales) and several times cheaper."""
        h, w = x.shape[2:]
        m = 12.0 / self.min_face
        levels = [(1.0, x)]
        scale, side = m, min(h, w) * m
        while side >= 12:
            prev = levels[-1][1]
            levels.append((scale, F.interpolate(prev, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")))
            scale *= self.factor
            side *= self.factor
        return levels

    def _stage1(self, pyramid: list[tuple[float, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the pyramid: square candidate boxes (K, 5: x1 y1 x2 y2 score) and their frame index."""
        x = pyramid[0][1]
        all_boxes, all_img = [], []
        for scale, im in pyramid[1:]:
            reg, prob = self._pnet(im)
            idx = (prob >= self.thresholds[0]).nonzero()  # (K, 3): frame, y, x
            if not len(idx):
                continue
            img, gy, gx = idx.unbind(1)
            score = prob[img, gy, gx]
            offs = reg[img, :, gy, gx]
            cell = torch.stack([gx, gy], 1).to(x.dtype)
            q1 = ((2 * cell + 1) / scale).floor()
            q2 = ((2 * cell + 12) / scale).floor()
            boxes = torch.cat([q1, q2], 1)
            keep = batched_nms(boxes, score, img, NMS_STAGE1_SCALE)
            all_boxes.append(torch.cat([boxes[keep], score[keep, None], offs[keep]], 1))
            all_img.append(img[keep])
        if not all_boxes:
            return x.new_zeros((0, 5)), torch.zeros(0, dtype=torch.long, device=x.device)
        boxes, img = torch.cat(all_boxes), torch.cat(all_img)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], img, NMS_STAGE1)
        boxes, img = boxes[keep], img[keep]
        wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
        refined = boxes[:, :4] + boxes[:, 5:9] * wh
        return _square(torch.cat([refined, boxes[:, 4:5]], 1)), img

    def _pnet(self, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if im.device.type != "cpu":
            return self.pnet(_nhwc(_normalise(im)))
        step = max(1, CPU_PNET_PIXELS // (im.shape[2] * im.shape[3]))
        return _chunked(lambda part: self.pnet(_nhwc(_normalise(part))), im, step)

    def _stage2(self, pyramid, boxes, img):
        reg, prob = _chunked(self.rnet, _crops(pyramid, boxes, img, 24))
        ok = prob > self.thresholds[1]
        boxes = torch.cat([boxes[ok, :4], prob[ok, None]], 1)
        img, reg = img[ok], reg[ok]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], img, NMS_STAGE2)
        return _square(_regress(boxes[keep], reg[keep])), img[keep]

    def _stage3(self, pyramid, boxes, img):
        reg, pts, prob = _chunked(self.onet, _crops(pyramid, boxes, img, 48))
        ok = prob > self.thresholds[2]
        boxes, img, reg, pts, score = boxes[ok, :4], img[ok], reg[ok], pts[ok], prob[ok]
        wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = torch.stack([pts[:, :5], pts[:, 5:]], 2) * wh[:, None] + boxes[:, None, 0:2] - 1
        boxes = _regress(torch.cat([boxes, score[:, None]], 1), reg)
        keep = _nms_min(boxes[:, :4], score, img, NMS_STAGE3)
        return boxes[keep, :4], score[keep], points[keep], img[keep]


# ---------------------------------------------------------------- box helpers
def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (the R/O-Nets see square crops)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(1, keepdim=True).values
    tl = boxes[:, 0:2] + wh * 0.5 - side * 0.5
    return torch.cat([tl, tl + side, boxes[:, 4:]], 1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    wh = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    return torch.cat([boxes[:, :4] + reg * wh, boxes[:, 4:]], 1)


def _crops(pyramid: list[tuple[float, torch.Tensor]], boxes: torch.Tensor, img: torch.Tensor,
           size: int) -> torch.Tensor:
    """Normalised ``size``-square crops of the boxes; the part outside the frame is black (zero pixels).

    Each box is cut from the smallest pyramid level where it still spans ``size`` pixels, with 2 x 2
    samples per output pixel: about an area resize (as MTCNN's crops are), without averaging the
    hundreds of full-resolution pixels a large box covers per output pixel.
    """
    h, w = pyramid[0][1].shape[2:]
    side = (boxes[:, 2:4] - boxes[:, 0:2] + 1).amax(1)
    choice = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    for k, (scale, _) in enumerate(pyramid[1:], 1):
        choice[side * scale >= size] = k
    # a box x1..x2 covers pixels x1-1 .. x2-1 (MTCNN's 1-based convention); aligned roi_align treats
    # pixel i as the interval [i, i+1), so that region is [x1-1, x2]; samples beyond the frame read 0
    # (black) before normalisation, as the original MTCNN padded its crops
    edges = torch.cat([boxes[:, 0:2] - 1, boxes[:, 2:4]], 1)
    out = boxes.new_empty((len(boxes), 3, size, size))
    for k in choice.unique().tolist():
        level = pyramid[k][1]
        sel = (choice == k).nonzero().squeeze(1)
        fx, fy = level.shape[3] / w, level.shape[2] / h
        rois = torch.cat([img[sel, None].to(level.dtype), edges[sel] * edges.new_tensor([fx, fy, fx, fy])], 1)
        out[sel] = roi_align(level, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return _nhwc(_normalise(out))


def _chunked(net, x: torch.Tensor, step: int = CHUNK):
    outs = [net(x[i:i + step]) for i in range(0, len(x), step)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, img: torch.Tensor, thresh: float) -> torch.Tensor:
    """Greedy NMS per frame where overlap is intersection over the *smaller* box (MTCNN's last stage):
    drops a box nested inside a better one even when their IoU is small."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    b, im = boxes[order], img[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt + 1).clamp(min=0).prod(2)
    over = (inter / torch.minimum(area[:, None], area[None, :]) > thresh) & (im[:, None] == im[None, :])
    over = over.cpu().numpy()
    alive = np.ones(len(b), bool)
    for i in range(len(b)):
        if alive[i]:
            alive[i + 1:] &= ~over[i, i + 1:]
    return order[torch.from_numpy(np.flatnonzero(alive)).to(order.device)]
