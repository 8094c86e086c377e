"""The face frames of one clip, read from the aligned face folders: 16 of them, or all of them.

16 frames: ``faces16`` (DFEW ``clip_224x224_16f``) first, then ``faces_all`` (DFEW ``clip_224x224``,
MAFW's faces, a manifest's face folder, `fer data faces` output) sampled uniformly. A clip with fewer
frames than wanted is stretched by nearest-index interpolation (frames repeated), as DFEW made its own
16f folder; that is reported in the returned info so the runner can record it.

All frames (an all-frame set, ``--frames all``): every frame of ``faces_all`` in order, up to
``max_frames``; a longer clip keeps ``max_frames`` of them sampled uniformly (segment centres), which the
note records; a shorter one is padded with zero frames, which its mask marks absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fer.extract.extractor import ClipError
from fer.extract.media import uniform_indices as sample_indices  # DFEW-style: segment centres, repeats when short
from fer.extract.datasets.records import ClipRecord

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def list_frames(folder: Path) -> list[Path]:
    """Image files of a face folder in frame order (natural sort, so ``2.jpg`` < ``10.jpg``)."""

    def key(p: Path) -> tuple:
        return (tuple(_split_digits(p.stem)), p.suffix)

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()), key=key)


def _split_digits(s: str) -> list[str]:
    out, cur, dig = [], "", None
    for ch in s:
        d = ch.isdigit()
        if cur and d != dig:
            out.append(cur)
            cur = ""
        cur += ch
        dig = d
    if cur:
        out.append(cur)
    # zero-padded digit runs compare as numbers while every part stays a str
    return [c if not c.isdigit() else c.zfill(12) for c in out]


def choose_frames(record: ClipRecord, frames: int = 16) -> tuple[list[Path], str | None]:
    """Pick the frame files to read; returns (paths, info) where info is None for the normal cases
    (the 16f folder, or uniform sampling from all faces) else a short note of what was done."""
    for folder, label in ((record.faces16, "clip_224x224_16f"), (record.faces_all, "all faces")):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            continue
        files = list_frames(folder)
        if not files:
            continue
        n = len(files)
        idx = sample_indices(n, frames)
        # uniform sampling from all faces is the documented fallback (in provenance); only the unusual
        # cases get a per-clip note: too few frames (repeated), or a 16f folder of another length
        if n >= frames and (folder != record.faces16 or n == frames):
            return [files[i] for i in idx], None
        how = "sampled" if n >= frames else "repeated"
        return [files[i] for i in idx], f"{how} {frames} from {n} frames ({label})"
    tried = [str(p) for p in (record.faces16, record.faces_all) if p is not None]
    if not tried:
        raise ClipError("no face frames: neither a clip_224x224_16f nor a clip_224x224 (or manifest faces) folder")
    raise ClipError(f"face folder missing or empty: {tried[0]}")


def read_face_frames(record: ClipRecord, frames: int = 16, size: int = 224) -> tuple[np.ndarray, str | None]:
    """Decode a clip's face frames: ``(frames, size, size, 3)`` uint8 RGB, and the sampling note.

    Frames of another size are resized (bilinear). An unreadable image raises ClipError.
    """
    paths, info = choose_frames(record, frames)
    out = np.empty((frames, size, size, 3), np.uint8)
    _read_images(paths, size, out)
    return out, info


def choose_all_frames(record: ClipRecord, max_frames: int = 64) -> tuple[list[Path], str | None]:
    """Every face frame of the clip's all-frames folder in order, or ``max_frames`` of them sampled uniformly
    (segment centres) when there are more; the note says so (None when every frame is kept)."""
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    folder = Path(record.faces_all) if record.faces_all is not None else None
    if folder is None:
        raise ClipError("no folder of every face frame (DFEW clip_224x224, MAFW faces, a manifest's faces column, "
                        "`fer data faces` output)")
    files = list_frames(folder) if folder.is_dir() else []
    if not files:
        raise ClipError(f"face folder missing or empty: {folder}")
    if len(files) <= max_frames:
        return files, None
    return [files[i] for i in sample_indices(len(files), max_frames)], f"sampled {max_frames} of {len(files)} frames"


def read_all_face_frames(record: ClipRecord, max_frames: int = 64,
                         size: int = 224) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Decode every face frame of a clip (up to ``max_frames``): ``(max_frames, size, size, 3)`` uint8 RGB with
    the frames first and zeros after, the ``(max_frames,)`` bool mask of real frames, and the sampling note."""
    paths, info = choose_all_frames(record, max_frames)
    out = np.zeros((max_frames, size, size, 3), np.uint8)
    _read_images(paths, size, out)
    mask = np.arange(max_frames) < len(paths)
    return out, mask, info


def _read_images(paths: list[Path], size: int, out: np.ndarray) -> None:
    """Decode ``paths`` into ``out[:len(paths)]`` (RGB, resized to size x size); a repeated path is read once."""
    cache: dict[Path, np.ndarray] = {}
    for i, p in enumerate(paths):
        if p not in cache:
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    cache[p] = np.asarray(im)
            except Exception as e:
                raise ClipError(f"unreadable image {p.name} in {p.parent} ({type(e).__name__})") from None
        out[i] = cache[p]
