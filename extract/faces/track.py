"""Follow the main face through a clip: link detections over frames, choose one track, fill its gaps.

Linking is greedy and frame to frame: a detection joins the track whose last detection overlaps it
(box IoU) or whose landmarks lie close to its own (mean distance relative to the face size), best
match first; anything left starts a new track. A track may skip frames (the face was missed there).
The main track is the one with the largest sum of face sizes over its frames: the longest track,
and of equally long tracks the largest face. Frames where the main face was missed borrow the
landmarks of the nearest frame where it was found; all landmarks are then smoothed over time (a
local linear fit with Gaussian weights in source-frame units), so consecutive frames do not jitter,
steady motion is not dragged, and sparse samples (16 frames from a long clip) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer.extract.faces.detect import Faces

MIN_IOU = 0.3
"""A detection continues a track when its box overlaps the track's last box at least this much ..."""
MAX_LANDMARK_DIST = 0.5
"""... or when its landmarks are within this mean distance (in face sizes) of the track's last landmarks,"""
GAP_LANDMARK_DIST = 0.25
"""... plus this much for every frame since the track was last seen (the face moved on meanwhile)."""
SMOOTH_SIGMA = 1.0
"""Temporal smoothing of the landmarks: Gaussian sigma in frames of the source video."""
MAX_OTHERS = 5
"""Other tracks described in a clip's record (the largest ones)."""


@dataclass
class Track:
    """One face followed over frames: parallel lists of frame positions and detection indices."""

    frames: list[int] = field(default_factory=list)
    dets: list[int] = field(default_factory=list)
    sides: list[float] = field(default_factory=list)
    """Face size (square root of the box area) per frame, in pixels."""

    @property
    def weight(self) -> float:
        """Length times size: what makes a track the main one."""
        return float(sum(self.sides))

    def describe(self) -> dict[str, float | int]:
        return {"frames": len(self.frames), "side": round(float(np.median(self.sides)), 1)}


def _side(box: np.ndarray) -> np.ndarray:
    wh = np.clip(box[..., 2:4] - box[..., 0:2], 0, None)
    return np.sqrt(wh[..., 0] * wh[..., 1])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4): (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def link_tracks(faces: list[Faces]) -> list[Track]:
    """Link the detections of consecutive frames into tracks (see the module notes)."""
    tracks: list[Track] = []
    last_box: list[np.ndarray] = []
    last_pts: list[np.ndarray] = []
    for t, f in enumerate(faces):
        if not len(f):
            continue
        matched_dets: set[int] = set()
        if tracks:
            boxes = np.stack(last_box)
            pts = np.stack(last_pts)
            iou = _iou(boxes, f.boxes)  # (tracks, dets)
            dist = np.linalg.norm(pts[:, None] - f.landmarks[None], axis=-1).mean(-1)
            dist = dist / np.maximum(_side(boxes), 1.0)[:, None]
            missed = np.array([t - tr.frames[-1] - 1 for tr in tracks], np.float64)
            ok = (iou >= MIN_IOU) | (dist <= (MAX_LANDMARK_DIST + GAP_LANDMARK_DIST * missed)[:, None])
            score = np.where(ok, iou - dist, -np.inf)
            used_tracks: set[int] = set()
            for flat in np.argsort(-score, axis=None):
                i, j = np.unravel_index(flat, score.shape)
                if not np.isfinite(score[i, j]):
                    break
                if i in used_tracks or j in matched_dets:
                    continue
                used_tracks.add(int(i))
                matched_dets.add(int(j))
                _extend(tracks[i], t, int(j), f)
                last_box[i], last_pts[i] = f.boxes[j], f.landmarks[j]
        for j in range(len(f)):
            if j not in matched_dets:
                tracks.append(_extend(Track(), t, j, f))
                last_box.append(f.boxes[j])
                last_pts.append(f.landmarks[j])
    return tracks


def _extend(track: Track, t: int, j: int, f: Faces) -> Track:
    track.frames.append(t)
    track.dets.append(j)
    track.sides.append(float(_side(f.boxes[j])))
    return track


@dataclass
class MainFace:
    """The main face of a clip: landmarks for every frame, and how they were obtained."""

    landmarks: np.ndarray
    """(T, 5, 2) float32 smoothed landmarks, one set per frame (borrowed where the face was missed)."""
    found: np.ndarray
    """(T,) bool: the main face was detected in this frame (else its landmarks are borrowed)."""
    faces_seen: int
    """The most faces detected in any one frame."""
    track: dict
    """The choice: tracks linked, the chosen one (frames, median face size in px), the largest others."""


def main_face(faces: list[Faces], times: np.ndarray | None = None, sigma: float = SMOOTH_SIGMA) -> MainFace | None:
    """Choose the main track among ``faces`` (one entry per frame) and give it landmarks on every frame.

    ``times`` are the frames' positions in the source video (for smoothing; default 0..T-1).
    None when no face was detected in any frame.
    """
    n = len(faces)
    times = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    tracks = link_tracks(faces)
    if not tracks:
        return None
    tracks.sort(key=lambda tr: tr.weight, reverse=True)
    best = tracks[0]
    pts = np.full((n, 5, 2), np.nan, np.float64)
    for t, j in zip(best.frames, best.dets):
        pts[t] = faces[t].landmarks[j]
    found = np.zeros(n, bool)
    found[best.frames] = True
    filled = borrow_nearest(pts, found, times)
    record: dict = {"tracks": len(tracks), "chosen": best.describe()}
    if len(tracks) > 1:
        record["others"] = [tr.describe() for tr in tracks[1:1 + MAX_OTHERS]]
        record["rule"] = "largest sum of face sizes over frames (longest, then largest)"
    return MainFace(
        landmarks=smooth(filled, times, sigma).astype(np.float32),
        found=found,
        faces_seen=max(len(f) for f in faces),
        track=record,
    )


def borrow_nearest(values: np.ndarray, found: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Copy ``values[t]`` from the nearest frame in time where ``found`` (ties: the earlier frame)."""
    src = np.flatnonzero(found)
    if not len(src):
        raise ValueError("no frame to borrow from")
    out = values.copy()
    for t in np.flatnonzero(~found):
        out[t] = values[src[np.argmin(np.abs(times[src] - times[t]))]]
    return out


def smooth(values: np.ndarray, times: np.ndarray, sigma: float) -> np.ndarray:
    """Local linear fit over time with Gaussian weights (sigma in source frames), evaluated at each frame.

    Jitter is averaged away while steady motion passes through unchanged, also at the clip's ends
    (a plain weighted mean would drag the first and last frames towards their neighbours). Frames
    further apart than a few sigma (sparse samples) keep their own values.
    """
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    n = len(values)
    reach = int(np.ceil(3 * sigma))  # neighbours further than 3 sigma in index are further in time too
    extra = (1,) * (values.ndim - 1)
    s0, s1, s2 = (np.zeros(n) for _ in range(3))
    sy = np.zeros(values.shape, np.float64)
    sty = np.zeros(values.shape, np.float64)
    for o in range(-reach, reach + 1):
        lo, hi = max(0, -o), min(n, n - o)
        if lo >= hi:
            continue
        dt = times[lo + o:hi + o] - times[lo:hi]
        w = np.exp(-0.5 * (dt / sigma) ** 2)
        s0[lo:hi] += w
        s1[lo:hi] += w * dt
        s2[lo:hi] += w * dt * dt
        sy[lo:hi] += w.reshape(-1, *extra) * values[lo + o:hi + o]
        sty[lo:hi] += (w * dt).reshape(-1, *extra) * values[lo + o:hi + o]
    det = s0 * s2 - s1 * s1
    linear = det > 1e-6 * np.maximum(s0 * s2, 1e-12)
    safe = np.where(linear, det, 1.0)
    fit = (s2.reshape(-1, *extra) * sy - s1.reshape(-1, *extra) * sty) / safe.reshape(-1, *extra)
    mean = sy / s0.reshape(-1, *extra)
    return np.where(linear.reshape(-1, *extra), fit, mean)
