"""What the aligned-faces output folder (``fer data faces``' OUT) holds and how it is written: one folder per
finished clip (``OUT/<clip id>/00001.jpg ...`` plus its record ``.fer-faces.json``), clips being written under
``OUT/.partial/`` until they are renamed into place, and the index files ``OUT/manifest.csv`` and
``OUT/faces.json`` (the settings the folder was made with, each clip's record, the failures), rebuilt from the
finished folders under a lock so shards can share one OUT.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np

from fer.cache.errors import FerError
from fer.cache.provenance import now_iso
from fer.cache.schema import FOLD_CODE_NAMES, FOLD_UNUSED
from fer.extract.datasets.records import ClipRecord, Dataset
from fer.extract.extractor import ClipError
from fer.extract.faces.align import TEMPLATE, template_points
from fer.extract.faces.detect import detector_identity
from fer.extract.faces.pipeline import AlignedClip, save_frames

MARKER = ".fer-faces.json"
"""A finished clip folder holds its record under this name (written before the folder is renamed into place)."""
PARTIAL = ".partial"
"""Clips being written live here until complete."""
MANIFEST = "manifest.csv"
FACES_JSON = "faces.json"


# ---------------------------------------------------------------- clip folders
def clip_dir(out: Path, clip_id: str) -> Path:
    """``OUT/<clip id>`` (ids with '/' nest); ClipError for an id that would leave OUT or hide the folder."""
    p = PurePosixPath(clip_id)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts):
        raise ClipError(f"clip id {clip_id!r} cannot name a folder inside the output folder")
    return out.joinpath(*p.parts)


def is_finished(out: Path, clip_id: str) -> bool:
    """Whether OUT holds this clip's finished folder (its record is there)."""
    try:
        return (clip_dir(out, clip_id) / MARKER).is_file()
    except ClipError:
        return False


def write_clip(out: Path, clip_id: str, clip: AlignedClip) -> None:
    """Write the crops as ``00001.jpg ...`` plus the record into a temporary folder, then rename it into place."""
    final = clip_dir(out, clip_id)
    tmp = partial_dir(out, clip_id)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    save_frames(tmp, clip.crops)
    (tmp / MARKER).write_text(json.dumps(clip.record()))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)


def partial_dir(out: Path, clip_id: str) -> Path:
    """Where a clip is written until it is complete."""
    return out / PARTIAL / quote(clip_id, safe="")


def check_free(out: Path, clip_id: str) -> None:
    """ClipError when OUT already holds a folder for this clip that fer data faces did not write."""
    d = clip_dir(out, clip_id)
    if d.exists() and not (d / MARKER).is_file():
        raise ClipError(f"{d} exists and was not written by fer data faces; move it away or choose another OUT")


# ---------------------------------------------------------------- settings, manifest, faces.json
def frame_settings(size: int, frames: int | None) -> dict[str, Any]:
    """What kind of frames a run makes (detector, template, size, frames), as faces.json records it."""
    return {
        "detector": detector_identity(),
        "template": {"size": size, "points": np.round(template_points(size), 3).tolist(),
                     "fractions": TEMPLATE.tolist(),
                     "order": ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"]},
        "size": size,
        "frames": "all" if frames is None else frames,
    }


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A second run into the same OUT must make the same kind of frames; the first run records them."""
    path = out / FACES_JSON
    old = _read_json(path)
    if old is None:
        _write_atomic(path, json.dumps({**settings, "created": now_iso(), "clips": {}, "failed": {}}, indent=1))
        return
    for key, what in (("size", "--size"), ("frames", "--frames")):
        if old.get(key) != settings[key]:
            raise FerError(f"{out} holds faces made with {what} {old.get(key)}, not {settings[key]}; "
                           "use the same settings to resume, or another output folder")
    if (old.get("detector") or {}).get("sha256") != settings["detector"]["sha256"]:
        raise FerError(f"{out} holds faces made by another face detector (weights differ); use another output folder")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FerError(f"cannot read {path}: {e}; delete it to rebuild it from the finished clip folders") from None


def write_index(dataset: Dataset, out: Path, settings: dict[str, Any], failed_now: dict[str, str]) -> None:
    """Rebuild ``OUT/manifest.csv`` and ``OUT/faces.json`` from the finished clip folders (all shards')."""
    old = _read_json(out / FACES_JSON) or {}
    failed = {**(old.get("failed") or {}), **failed_now}
    clips: dict[str, dict] = {}
    rows: list[tuple[ClipRecord, dict]] = []
    for rec in dataset.records:
        if not is_finished(out, rec.clip_id):
            continue
        try:
            info = json.loads((clip_dir(out, rec.clip_id) / MARKER).read_text())
        except (OSError, ValueError):
            continue  # unreadable record: the clip is redone by the next run
        clips[rec.clip_id] = info
        rows.append((rec, info))
        failed.pop(rec.clip_id, None)
    _write_atomic(out / MANIFEST, _manifest_text(dataset, out, rows))
    doc = {**settings, "created": old.get("created", now_iso()), "updated": now_iso(),
           "source": {"root": str(dataset.root), "kind": dataset.kind, "clips": len(dataset.records)},
           "clips": clips, "failed": failed}
    _write_atomic(out / FACES_JSON, json.dumps(doc, indent=1))


def _manifest_text(dataset: Dataset, out: Path, rows: list[tuple[ClipRecord, dict]]) -> str:
    with_audio = any(r.audio is not None for r in dataset.records)
    header = ["clip_id", "video", "faces"] + (["audio"] if with_audio else []) + ["label"]
    header += [f"vote_{c}" for c in dataset.class_names] + [f"fold_{f}" for f in dataset.fold_names]
    header += ["faces_found", "faces_borrowed"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for rec, info in rows:
        votes = np.asarray(rec.votes, np.float64)
        cls = rec.label if rec.label is not None else int(votes.argmax())  # the official label decides a tie
        label = dataset.class_names[cls] if votes.sum() > 0 or rec.label is not None else ""
        row = [rec.clip_id, str(Path(rec.video).resolve()) if rec.video else "",
               clip_dir(out, rec.clip_id).relative_to(out).as_posix()]
        if with_audio:
            row.append(str(Path(rec.audio).resolve()) if rec.audio else "")
        row.append(label)
        row += [f"{v:g}" for v in votes]
        row += [FOLD_CODE_NAMES[int(c)] if int(c) != FOLD_UNUSED else "" for c in rec.folds]
        row += [info.get("found", ""), info.get("borrowed", "")]
        w.writerow(row)
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One process at a time reads and rewrites OUT's index files (shards finish at different times)."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # some network filesystems refuse locks
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def tidy_partial(out: Path) -> None:
    """Remove ``OUT/.partial`` once no clip is being written into it."""
    with contextlib.suppress(OSError):
        (out / PARTIAL).rmdir()  # only when empty: another shard may be writing into it
