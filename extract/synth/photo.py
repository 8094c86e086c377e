"""Short videos made from a real photograph (matplotlib's ``grace_hopper.jpg``), with known landmarks: the
tests of face detection, tracking and alignment and benchmarks/bench_faces.py use them.

The face is cut from the photo with a soft elliptical mask and painted onto a plain background by a
known affine map per frame (move, scale, a small roll, and a horizontal squeeze that mimics a slight
turn), so where its eyes are in every frame is known: the photo's landmarks (found once by the
detector on the photo) mapped by the same affine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer.extract.synth.scene import write_mp4

W, H = 256, 192
FPS = 10


def photo_path() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@lru_cache(maxsize=1)
def photo() -> tuple[Image.Image, np.ndarray]:
    """The photo as RGBA with the face's soft elliptical mask, and its 5 landmarks (5, 2)."""
    from fer.extract.faces.detect import MTCNN

    img = Image.open(photo_path()).convert("RGB")
    faces = MTCNN().detect(np.asarray(img)[None])[0]
    assert len(faces) == 1, "the photo shows one face"
    x1, y1, x2, y2 = faces.boxes[0]
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 0.75, (y2 - y1) * 0.72
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(6))
    rgba = img.copy()
    rgba.putalpha(mask)
    return rgba, faces.landmarks[0].astype(np.float64)


def affine(centre: tuple[float, float], scale: float, roll_deg: float = 0.0, squeeze: float = 1.0) -> np.ndarray:
    """2x3 map photo -> frame: the photo's face centre lands on ``centre``, scaled, rolled and squeezed."""
    _, pts = photo()
    c = pts.mean(0)
    a = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([scale * squeeze, scale])
    t = np.asarray(centre) - lin @ c
    return np.concatenate([lin, t[:, None]], 1)


def background(seed: int = 0, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A plain, slightly textured background (a gradient plus mild noise), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([90 + 60 * x / w, 110 + 40 * y / h, 140 - 30 * x / w], -1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def paint(bg: np.ndarray, maps: list[np.ndarray]) -> np.ndarray:
    """``bg`` with one face painted per map."""
    rgba, _ = photo()
    out = Image.fromarray(bg).convert("RGBA")
    for m in maps:
        full = np.vstack([m, [0, 0, 1]])
        inv = np.linalg.inv(full)[:2].reshape(-1)
        face = rgba.transform(out.size, Image.AFFINE, tuple(inv), resample=Image.BILINEAR)
        out.alpha_composite(face)
    return np.asarray(out.convert("RGB"))


def landmarks(m: np.ndarray) -> np.ndarray:
    """Where the photo's 5 landmarks are in a frame painted with map ``m``: (5, 2)."""
    _, pts = photo()
    return pts @ m[:, :2].T + m[:, 2]


def moving_maps(n: int, size: tuple[int, int] = (W, H)) -> list[np.ndarray]:
    """The face moves right, grows and rolls a little, and turns (squeezes) slightly."""
    w, h = size
    out = []
    for i in range(n):
        f = i / max(n - 1, 1)
        out.append(affine((w * (0.39 + 0.2 * f), h * (0.48 + 0.05 * f)), h / H * (0.42 + 0.12 * f),
                          roll_deg=-6 + 12 * f, squeeze=1 - 0.12 * f))
    return out


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, FPS, None, 16000)
    return path


def make_moving(path: Path, n: int = 12, size: tuple[int, int] = (W, H)) -> tuple[Path, list[np.ndarray]]:
    """A clip where the face moves, scales, rolls and turns; returns (path, the per-frame maps)."""
    bg = background(1, size)
    maps = moving_maps(n, size)
    return write_video(path, [paint(bg, [m]) for m in maps]), maps


def make_gaps(path: Path, n: int = 12, absent: tuple[int, ...] = (4, 5, 6)) -> Path:
    """The face is absent in the frames ``absent``."""
    bg = background(2)
    maps = moving_maps(n)
    return write_video(path, [bg.copy() if i in absent else paint(bg, [m]) for i, m in enumerate(maps)])


def make_two_faces(path: Path, n: int = 8) -> tuple[Path, list[np.ndarray]]:
    """Two faces, the right one larger; returns (path, the larger face's maps)."""
    bg = background(3)
    small = [affine((60, 90 + 2 * i), 0.30) for i in range(n)]
    large = [affine((170, 96 - 2 * i), 0.50, roll_deg=4) for i in range(n)]
    return write_video(path, [paint(bg, [s, b]) for s, b in zip(small, large)]), large


def make_empty(path: Path, n: int = 8) -> Path:
    """No face at all."""
    bg = background(4)
    return write_video(path, [bg.copy() for _ in range(n)])
