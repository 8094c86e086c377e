"""One clip, video to aligned face crops: decode, detect, follow the main face, align.

``decode_clip`` is the CPU half (it runs in DataLoader workers in ``fer data faces``);
``align_clip`` is the model half (detector and warp on the device). ``aligned_faces`` does both,
for a single video (``fer predict``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fer.extract.extractor import ClipError
from fer.extract.faces.align import similarity, template_points, warp
from fer.extract.faces.detect import MTCNN
from fer.extract.faces.track import main_face

DECODE_MAX_SIDE = 1280
"""Frames are decoded at most this large: ample for a face crop, and it bounds memory."""
JPEG_QUALITY = 95
CLIP_MAX_BYTES = 1 << 30
"""``--frames all`` holds a clip's decoded frames in memory; longer clips are decoded smaller to fit."""


class NoFaceError(ClipError):
    """No frame of the clip shows a face the detector finds."""


@dataclass
class ClipFrames:
    """The decoded frames of one clip, each distinct source frame once."""

    frames: torch.Tensor
    """(U, H, W, 3) uint8 RGB, distinct frames in time order."""
    times: np.ndarray
    """(U,) the frames' numbers in the source video."""
    order: np.ndarray
    """(T,) for each output frame, its row in ``frames`` (a short clip sampled to more frames repeats some)."""
    source_frames: int
    """Frames in the source video."""

    def pin_memory(self) -> ClipFrames:
        """Pin the frames, so the device copies them without waiting (the DataLoader calls this on CUDA)."""
        self.frames = self.frames.pin_memory()
        return self


def decode_clip(video: str | Path, frames: int | None) -> ClipFrames:
    """Decode ``frames`` frames sampled uniformly (DFEW's rule), or every frame when ``frames`` is None."""
    from fer.extract.media import read_all_video_frames, read_video_frames

    if frames is None:
        data = read_all_video_frames(video, max_side=DECODE_MAX_SIDE, max_bytes=CLIP_MAX_BYTES)
        n = len(data)
        return ClipFrames(torch.from_numpy(data), np.arange(n), np.arange(n), n)
    info: dict = {}
    data = read_video_frames(video, frames, max_side=DECODE_MAX_SIDE, info=info)
    times, first, order = np.unique(info["indices"], return_index=True, return_inverse=True)
    return ClipFrames(torch.from_numpy(np.ascontiguousarray(data[first])), times, order.reshape(-1),
                      int(info["source_frames"]))


@dataclass
class AlignedClip:
    """The aligned face crops of one clip and how they were made."""

    crops: np.ndarray
    """(T, size, size, 3) uint8 RGB, one per output frame."""
    found: int
    """Output frames where the main face was detected."""
    borrowed: int
    """Output frames aligned with the landmarks of the nearest frame where it was detected."""
    faces_seen: int
    """The most faces detected in one frame."""
    track: dict
    """The main-track choice (see ``fer.extract.faces.track.main_face``)."""
    source_frames: int
    """Frames in the source video."""

    def record(self) -> dict:
        """The clip's entry in ``faces.json``."""
        return {"frames": len(self.crops), "found": self.found, "borrowed": self.borrowed,
                "faces_seen": self.faces_seen, "track": self.track, "source_frames": self.source_frames}


def align_clip(clip: ClipFrames, detector: MTCNN, size: int, *, batch: int = 32) -> AlignedClip:
    """Detect, follow and align the main face of a decoded clip; NoFaceError when no frame shows a face."""
    faces = detector.detect(clip.frames, batch=batch)
    main = main_face(faces, clip.times)
    if main is None:
        raise NoFaceError(f"no face in {len(clip.times)} frames")
    m = similarity(main.landmarks, template_points(size))
    crops = warp(clip.frames, m, size, device=detector.device, batch=batch)
    found = int(main.found[clip.order].sum())
    return AlignedClip(crops=crops[clip.order], found=found, borrowed=len(clip.order) - found,
                       faces_seen=main.faces_seen, track=main.track, source_frames=clip.source_frames)


def save_frames(folder: Path, crops: np.ndarray, quality: int = JPEG_QUALITY) -> Path:
    """Write crops (T, S, S, 3) as ``00001.jpg``, ``00002.jpg``, ... into ``folder`` (DFEW's naming)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(crops, 1):
        Image.fromarray(crop).save(folder / f"{i:05d}.jpg", quality=quality)
    return folder


def aligned_faces(video: str | Path, frames: int | None, size: int, *, device: torch.device | str = "cpu",
                  detector: MTCNN | None = None, distinct: bool = False) -> AlignedClip:
    """Decode, detect, follow and align the main face of one video (ClipError: unreadable, or no face).

    ``distinct``: each sampled source frame once, so a clip shorter than ``frames`` gives all its frames, not
    ``frames`` with repeats (what an all-frame face set reads from a folder of every face)."""
    detector = detector or MTCNN(device)
    clip = decode_clip(video, frames)
    if distinct:
        clip = replace(clip, order=np.arange(len(clip.times)))
    return align_clip(clip, detector, size)
