"""One new clip, outside any store: build its record and compute the features a trained run needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image

from fer.cache.errors import FerError
from fer.extract.extractor import ClipError
from fer.extract.datasets.records import ClipRecord

FACE_SIZE = 224
FACE_FRAMES = 16


def _centred_faces(video: Path, out_dir: Path) -> Path:
    """Write 16 centre-square crops of ``video`` as jpgs, for a video that shows one centred face."""
    from fer.extract.media import read_video_frames

    frames = read_video_frames(video, FACE_FRAMES)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, 1):
        h, w = f.shape[:2]
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        img = Image.fromarray(f[y:y + s, x:x + s]).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
        img.save(out_dir / f"{i:05d}.jpg", quality=95)
    return out_dir


def clip_record(clip: str, *, root: Path | None = None, faces: Path | None = None,
                workdir: Path | None = None) -> ClipRecord:
    """The record for ``clip``: a clip id of the dataset at ``root``, or a video path.

    A video comes with its face frames (``faces``: a folder of aligned face crops) or, without them,
    is taken to show one centred face: 16 centre-square crops are cut from it into ``workdir``.
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
        raise FerError(f"clip {clip!r} is not in the dataset at {root}; pass one of its clip ids (e.g. {dataset.ids[0]})")
    path = Path(clip)
    if not path.exists():
        raise FerError(f"{clip} is neither a file nor a folder; pass a video, or --root DATASET with a clip id")
    if path.is_dir():  # face frames only
        return ClipRecord(clip_id=path.name, faces_all=path)
    if faces is not None:
        if not faces.is_dir():
            raise FerError(f"--faces {faces} is not a folder of face frames")
        return ClipRecord(clip_id=path.stem, faces_all=faces, video=path)
    if workdir is None:
        raise FerError("internal: a working folder is needed to cut face frames from the video")
    try:
        face_dir = _centred_faces(path, workdir / "faces")
    except ClipError as e:
        raise FerError(f"{path}: {e}") from None
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

