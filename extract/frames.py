"""The face frames of one clip, read from the aligned face folders: 16 of them, or all of them.

16 frames: ``faces16`` (DFEW ``clip_224x224_16f``) first, then ``faces_all`` (DFEW ``clip_224x224``,
MAFW's faces, a manifest's face folder, `fer data faces` output) sampled uniformly. A clip with fewer
frames than wanted is stretched by nearest-index interpolation (frames repeated), as DFEW made its own
16f folder; that is reported in the returned info so the runner can record it.

All frames (an all-frame set, ``--frames all``): every frame of ``faces_all`` in order, up to
``max_frames``; a longer clip keeps ``max_frames`` of them sampled uniformly (segment centres), which the
note records. A clip without that folder falls back, with a note, to its 16-frame folder, and a clip with no
face folder at all to its video's full frames (centre square crop: not face crops). Padding to
``max_frames`` (zero frames, masked absent) is the extractor's: only real frames travel from the workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.media import uniform_indices as sample_indices  # DFEW-style: segment centres, repeats when short

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
    (segment centres) when there are more; the note says so (None when every frame is kept). Without that
    folder, the 16-frame folder, said in the note; ClipError when neither holds frames."""
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    files, note = _folder_files(record.faces_all), None
    if not files:
        files = _folder_files(record.faces16)
        if not files:
            raise ClipError(_no_faces(record))
        note = f"no all-frames face folder: the {len(files)} frames of the 16-frame folder"
    return _cap(files, max_frames, note)


def read_all_frames(record: ClipRecord, max_frames: int = 64, size: int = 224) -> tuple[np.ndarray, str | None]:
    """Every frame of a clip, up to ``max_frames``: ``(n, size, size, 3)`` uint8 RGB (n <= max_frames, no padding)
    and the note (None when every frame of the all-frames folder is kept).

    From the all-frames face folder; else the 16-frame folder; else, when the clip has no face folder at all,
    the video's full frames (centre square crop, resized: not face crops), each case said in the note.
    """
    if record.faces_all is None and record.faces16 is None and record.video is not None:
        return read_video_square_frames(Path(record.video), max_frames, size)
    paths, note = choose_all_frames(record, max_frames)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    _read_images(paths, size, out)
    return out, note


def read_video_square_frames(video: Path, max_frames: int, size: int) -> tuple[np.ndarray, str]:
    """Every frame of ``video`` (``max_frames`` sampled uniformly when longer), each centre-cropped to a square
    and resized to ``size``: ``(n, size, size, 3)`` uint8 and the note saying these are not face crops."""
    from fer.extract.media import read_video_frames

    info: dict = {}
    # decoded at twice the output side at most: enough for the crop, and 64 frames of a 4K clip stay small
    data = read_video_frames(video, max_frames, max_side=2 * size, info=info)
    n = int(info["source_frames"])
    _, first = np.unique(info["indices"], return_index=True)  # a short clip is sampled with repeats: each frame once
    frames = data[np.sort(first)]
    out = np.empty((len(frames), size, size, 3), np.uint8)
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    for i, f in enumerate(frames):
        im = Image.fromarray(f[top:top + side, left:left + side])
        out[i] = np.asarray(im.resize((size, size), Image.BILINEAR) if side != size else im)
    kept = f"{len(frames)} of {n}" if len(frames) < n else f"all {n}"
    return out, f"no face folder: {kept} full frames of {video.name}, centre square crop (not face crops)"


def _folder_files(folder: Path | None) -> list[Path]:
    """The frame files of ``folder``; [] when it is None, missing or holds no image."""
    if folder is None or not Path(folder).is_dir():
        return []
    return list_frames(Path(folder))


def _no_faces(record: ClipRecord) -> str:
    folders = [str(p) for p in (record.faces_all, record.faces16) if p is not None]
    if folders:
        return f"face folder missing or empty: {folders[0]}"
    return ("no face frames and no video: neither an all-frames folder (DFEW clip_224x224, MAFW faces, a manifest's "
            "faces column, `fer data faces` output) nor a 16-frame folder")


def _cap(files: list[Path], max_frames: int, note: str | None) -> tuple[list[Path], str | None]:
    """``files``, or ``max_frames`` of them at the segment centres when there are more (the note says so)."""
    if len(files) <= max_frames:
        return files, note
    sampled = f"sampled {max_frames} of {len(files)} frames"
    return [files[i] for i in sample_indices(len(files), max_frames)], f"{note}; {sampled}" if note else sampled


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
