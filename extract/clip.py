"""One new clip, outside any store: build its record and compute the features a trained run needs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fer.cache.errors import FerError
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError

FACE_SIZE = 224
FACE_FRAMES = 16


def _aligned_faces(video: Path, out_dir: Path, device: str = "auto", all_frames: int | None = None) -> Path:
    """Detect, follow and align the main face of ``video`` as `fer data faces` does, into jpgs: 16 frames, or with
    ``all_frames`` every frame up to that many (segment centres of a longer video; a short one is not stretched)."""
    from fer.cache.devices import resolve_device
    from fer.extract.faces.pipeline import NoFaceError, aligned_faces, save_frames

    try:
        clip = aligned_faces(video, all_frames or FACE_FRAMES, FACE_SIZE, device=resolve_device(device),
                             distinct=bool(all_frames))
    except NoFaceError as e:
        raise FerError(f"{video}: no face found ({e}); pass --faces with a folder of the video's aligned "
                       "face frames") from None
    except ClipError as e:
        raise FerError(f"{video}: {e}") from None
    save_frames(out_dir, clip.crops)
    return out_dir


def all_frames_cap(features: Mapping[str, Mapping[str, Any]]) -> int | None:
    """``max_frames`` of a run's all-frame face set (``features`` as ``clip_features`` takes them), else None."""
    prov = dict(features.get("face", {}).get("provenance", {}))
    if str(prov.get("frames", "")).lower() != "all":
        return None
    return int(prov.get("max_frames") or 64)


def clip_record(clip: str, *, root: Path | None = None, faces: Path | None = None,
                workdir: Path | None = None, device: str = "auto", need_faces: bool = True,
                all_frames: int | None = None) -> ClipRecord:
    """The record for ``clip``: a clip id of the dataset at ``root``, or a video path.

    A video comes with its face frames (``faces``: a folder of aligned face crops) or, without them and when
    ``need_faces`` (the run uses the face), its main face is detected, followed and aligned
    (``fer.extract.faces``, on ``device``) into ``workdir``: in 16 frames, or with ``all_frames`` (the cap of an
    all-frame run, ``all_frames_cap``) in every frame up to that many; FerError when no frame shows a face.
    """
    if root is not None:
        from fer.extract.datasets import load_dataset, normalize_dfew_id

        dataset = load_dataset(root)
        wanted = {clip}
        try:
            wanted.add(normalize_dfew_id(clip))
        except Exception:  # not a DFEW-style number: match the id as written
            pass
        for r in dataset.records:
            if r.clip_id in wanted:
                return r
        raise FerError(f"clip {clip!r} is not in the dataset at {root}; "
                       f"pass one of its clip ids (e.g. {dataset.ids[0]})")
    path = Path(clip)
    if not path.exists():
        raise FerError(f"{clip} is neither a file nor a folder; pass a video, or --root DATASET with a clip id")
    if path.is_dir():  # face frames only
        return ClipRecord(clip_id=path.name, faces_all=path)
    if faces is not None:
        if not faces.is_dir():
            raise FerError(f"--faces {faces} is not a folder of face frames")
        return ClipRecord(clip_id=path.stem, faces_all=faces, video=path)
    if not need_faces:  # an audio or pose run reads the video itself
        return ClipRecord(clip_id=path.stem, video=path)
    if workdir is None:
        raise FerError("internal: a working folder is needed to cut face frames from the video")
    face_dir = _aligned_faces(path, workdir / "faces", device, all_frames)
    if all_frames:
        return ClipRecord(clip_id=path.stem, faces_all=face_dir, video=path)
    return ClipRecord(clip_id=path.stem, faces16=face_dir, video=path)


def clip_features(record: ClipRecord, features: Mapping[str, Mapping[str, Any]], *,
                  device: str = "auto") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """modality -> (data (1, *row), mask (1, T)) for ``record``, made exactly as each feature set was.

    ``features`` is a run's ``{modality: {"spec", "provenance"}}``; each extractor is rebuilt from its
    provenance and must give the same spec, else FerError (the features would not be comparable).
    """
    from fer.extract.backbones.registry import extractor_from_provenance

    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for modality, meta in features.items():
        prov = dict(meta.get("provenance", {}))
        prov.setdefault("spec", meta.get("spec"))
        extractor = extractor_from_provenance(prov, device)
        if extractor.spec != meta.get("spec"):
            raise FerError(f"cannot reproduce {meta.get('spec')}: these settings now give {extractor.spec} "
                           "(weights file changed or missing?); re-extract and retrain, or restore the weights")
        try:
            item = extractor.load(record)
        except ClipError as e:
            raise FerError(f"{record.clip_id}: {modality} features cannot be made: {e}") from None
        with torch.inference_mode():
            data, mask = extractor.embed([item])
        out[modality] = (data.float().cpu(), mask.bool().cpu())
    return out

