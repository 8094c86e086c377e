"""Align a face by a similarity transform of its 5 landmarks onto a fixed template, and cut the crop.

The template is the widely used 5-point face template of ArcFace (112 x 112), symmetrised so the
eyes are exactly level and the face centred, and zoomed out (x 0.8 about (0.5, 0.55) of the crop)
so the whole face, forehead to chin, fits: expression lives in the brows and the jaw as well.
Coordinates are pixels with pixel centres at integer positions; the template is given as fractions
of the crop and placed at ``fraction * size - 0.5``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEMPLATE = np.array(
    [
        [0.3735, 0.4795],  # left eye (as seen)
        [0.6265, 0.4795],  # right eye
        [0.5000, 0.6210],  # nose tip
        [0.3970, 0.7700],  # left mouth corner
        [0.6030, 0.7700],  # right mouth corner
    ],
    np.float64,
)
"""5 landmark positions as fractions of the crop's side (x, y)."""
ANTIALIAS_ABOVE = 1.5
"""When the source face is this many times larger than the crop, the frames are downscaled first
(area average) so the bilinear warp does not alias."""


def template_points(size: int) -> np.ndarray:
    """The template in pixels of a ``size`` x ``size`` crop: (5, 2) float64."""
    return TEMPLATE * size - 0.5


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking each set
    of points ``src`` (B, N, 2) onto ``dst`` (N, 2): (B, 2, 3) matrices ``M`` with ``dst ~ M @ [x, y, 1]``.

    Umeyama's solution written with complex numbers, which in 2-D is exactly it: for centred points
    s and d, the best ``a = scale * e^(i angle)`` is ``sum(conj(s) d) / sum(|s|^2)``.
    """
    src = np.asarray(src, np.float64)
    s = src[..., 0] + 1j * src[..., 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sm, dm = s.mean(-1, keepdims=True), d.mean()
    sc, dc = s - sm, d - dm
    a = (np.conj(sc) * dc).sum(-1) / np.maximum((np.abs(sc) ** 2).sum(-1), 1e-12)
    t = dm - a * sm[..., 0]
    return np.stack([
        np.stack([a.real, -a.imag, t.real], -1),
        np.stack([a.imag, a.real, t.imag], -1),
    ], -2)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (..., N, 2) by matrices (..., 2, 3)."""
    return pts @ np.swapaxes(m[..., :, :2], -1, -2) + m[..., None, :, 2]


def warp(frames: torch.Tensor | np.ndarray, m: np.ndarray, size: int, *, device: torch.device | str = "cpu",
         batch: int = 32) -> np.ndarray:
    """Cut the aligned crops: ``frames`` uint8 (B, H, W, 3), ``m`` (B, 2, 3) frame -> crop pixels.

    Runs on ``device`` ``batch`` frames at a time; returns uint8 (B, size, size, 3) numpy on the CPU.
    Parts of the crop outside the frame are black.
    """
    frames = torch.as_tensor(frames)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch].to(device, non_blocking=True)
        out[i:i + batch] = _warp(chunk, m[i:i + batch], size).cpu().numpy()
    return out


def _warp(frames: torch.Tensor, m: np.ndarray, size: int) -> torch.Tensor:
    h, w = frames.shape[1:3]
    inv = _invert(m)  # crop pixel -> frame pixel
    # only the part of the frames the crops read is converted to float: a face is a fraction of a frame
    edge = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    corners = apply(inv, np.broadcast_to(edge, (len(m), 4, 2)))
    x0, y0 = np.clip(np.floor(corners.min((0, 1))) - 1, 0, [w, h]).astype(int)
    x1, y1 = np.clip(np.ceil(corners.max((0, 1))) + 2, 0, [w, h]).astype(int)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crops lie outside the frames
        return frames.new_zeros((len(frames), size, size, 3))
    x = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2).float().contiguous()
    sub_h, sub_w = y1 - y0, x1 - x0
    # frame pixel -> pixel of the (possibly downscaled) region, as a 3x3 map
    to_sub = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]])
    shrink = float(np.median(np.hypot(inv[:, 0, 0], inv[:, 1, 0])))  # frame pixels per crop pixel
    if shrink > ANTIALIAS_ABOVE:
        nh, nw = max(2, round(sub_h / shrink)), max(2, round(sub_w / shrink))
        x = F.interpolate(x, size=(nh, nw), mode="area")
        sx, sy = nw / sub_w, nh / sub_h
        to_sub = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]]) @ to_sub
        sub_h, sub_w = nh, nw
    # grid_sample's normalised coordinates (align_corners=False): pixel p <-> (2p + 1) / n - 1
    from_norm_out = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
    to_norm_in = np.array([[2 / sub_w, 0, 1 / sub_w - 1], [0, 2 / sub_h, 1 / sub_h - 1], [0, 0, 1]])
    inv3 = np.concatenate([inv, np.broadcast_to([0.0, 0, 1], (len(m), 1, 3))], 1)
    theta = (to_norm_in @ to_sub @ inv3 @ from_norm_out)[:, :2]
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=x.device),
                         [len(m), 3, size, size], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y.permute(0, 2, 3, 1).round_().clamp_(0, 255).to(torch.uint8)


def _invert(m: np.ndarray) -> np.ndarray:
    """Inverse of affine maps (B, 2, 3)."""
    a_inv = np.linalg.inv(m[:, :, :2])
    return np.concatenate([a_inv, -a_inv @ m[:, :, 2:]], 2)
