"""`fer data info`: what a dataset holds, and which clips are missing or unreadable."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED, FOLD_VAL, NUM_ANNOTATORS, SINGLE_LABEL_MIN_VOTES
from fer.extract.datasets.common import IMAGE_EXTS, scan_media, vote_conflicts
from fer.extract.datasets.detect import load_dataset
from fer.extract.datasets.dfew import FACES16_DIR, FACES_ALL_DIR, VIDEO_DIR
from fer.extract.datasets.probe import check_image, probe_video
from fer.extract.datasets.records import ClipRecord, Dataset

FRAMES_16 = 16
MAX_LISTED = 20


def single_labeled(votes: np.ndarray) -> np.ndarray:
    """(N,) bool: one class holds at least 7 of 10 votes (DFEW's rule), scaled to the row's total.

    One-hot rows (only a label known) count as single-labeled.
    """
    votes = np.asarray(votes, np.float32)
    return votes.max(1) * NUM_ANNOTATORS >= SINGLE_LABEL_MIN_VOTES * votes.sum(1)


@dataclass
class ClipMedia:
    """What is on disk for one clip."""

    faces16: int = 0
    """Frames in the 16-frame face folder (0 when absent)."""
    faces_all: int = 0
    """Frames in the all-frames face folder (0 when absent)."""
    video: bool = False
    """A readable video file (only existence when media is not checked)."""
    audio: bool | None = None
    """An audio track (in the video or a separate file); None when not checked."""
    problems: list[str] = field(default_factory=list)


def _frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def _rel(path: Path, base: Path | None) -> str:
    """``path`` relative to the dataset's folder when inside it (shorter, still findable)."""
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(path)


def _check_frames(folder: Path, base: Path | None, out: list[str], check: bool, decode: bool) -> int:
    """Count a face folder's frames, note problems; with ``check`` open every frame."""
    if not folder.is_dir():
        out.append(f"face folder {_rel(folder, base)}/ not found")
        return 0
    frames = _frames(folder)
    if not frames:
        out.append(f"{_rel(folder, base)}/ has no image frames")
        return 0
    if check:
        bad = [(p, r) for p in frames if (r := check_image(p, decode=decode))]
        if bad:
            more = f" (and {len(bad) - 1} more frames)" if len(bad) > 1 else ""
            out.append(f"{_rel(bad[0][0], base)}: {bad[0][1]}{more}")
    return len(frames)


def inspect_clip(rec: ClipRecord, check_media: bool, base: Path | None = None) -> ClipMedia:
    """Look at one clip's media; with ``check_media`` open every frame and probe the video.

    Paths in the problems are written relative to ``base`` (the dataset's folder) when inside it.
    """
    m = ClipMedia()
    if rec.faces16 is not None:
        m.faces16 = _check_frames(rec.faces16, base, m.problems, check_media, decode=True)
        if m.faces16 and m.faces16 != FRAMES_16:
            m.problems.append(f"{_rel(rec.faces16, base)}/ has {m.faces16} frames, expected {FRAMES_16}")
    if rec.faces_all is not None:
        # all-frames folders are large: a header + end-marker check per frame is enough here
        m.faces_all = _check_frames(rec.faces_all, base, m.problems, check_media, decode=False)
    if rec.video is not None:
        video = _rel(rec.video, base)
        if not check_media:
            m.video = rec.video.is_file()
            if not m.video:
                m.problems.append(f"video {video} not found")
            elif rec.video.stat().st_size == 0:  # free to see without opening the file
                m.video = False
                m.problems.append(f"{video}: empty file (0 bytes)")
        else:
            probe = probe_video(rec.video)
            m.video = probe.error is None and probe.has_video
            if probe.error:
                m.problems.append(f"{video}: {probe.error}")
            elif not probe.has_video:
                m.problems.append(f"{video} has no video stream")
            m.audio = probe.has_audio
    if rec.audio is not None and check_media:
        probe = probe_video(rec.audio)
        if probe.error:
            m.problems.append(f"{_rel(rec.audio, base)}: {probe.error}")
        m.audio = bool(m.audio) or (probe.error is None and probe.has_audio)
    if check_media and rec.video is not None and m.video and not m.audio:
        m.problems.append(f"{_rel(rec.video, base)} has no audio track")
    return m


def inspect_media(
    ds: Dataset, check_media: bool = True, workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ClipMedia]:
    """``inspect_clip`` over every record, in a thread pool (PIL and FFmpeg release the GIL)."""
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    base = ds.root if ds.root.is_dir() else ds.root.parent
    with ThreadPoolExecutor(workers) as pool:
        out = []
        for i, m in enumerate(pool.map(lambda r: inspect_clip(r, check_media, base), ds.records)):
            out.append(m)
            if progress:
                progress(i + 1)
    return out


def _problem_kind(clip_id: str, reason: str) -> str:
    """A reason with the clip's id, file names and numbers blanked, to count problems by kind."""
    reason = reason.replace(clip_id, "<id>")
    reason = re.sub(r"\S*/\S*|\S+\.(jpg|jpeg|png|mp4|avi|mkv|mov|wav|flac)\b", "<path>", reason)
    return re.sub(r"\d+", "#", reason)


def _missing_expected(ds: Dataset, media: list[ClipMedia]) -> None:
    """A media kind most clips have is expected of all: note the clips that lack it.

    (A DFEW download often has only the 16-frame faces; then a missing video is not a problem.)
    """
    n = len(media)
    kinds = [
        ("faces16", lambda m: m.faces16 > 0, "no 16-frame face folder"),
        ("faces_all", lambda m: m.faces_all > 0, "no all-frames face folder"),
        ("video", lambda m: m.video, "no video"),
    ]
    for attr, has, reason in kinds:
        have = sum(has(m) for m in media)
        if have * 2 < n or have == n:
            continue
        for rec, m in zip(ds.records, media):
            # a path the reader named but that is missing or broken is already a problem
            if not has(m) and getattr(rec, attr) is None and rec.clip_id not in ds.problems:
                m.problems.append(f"{reason} (most clips have one)")


def _fmt(n: int) -> str:
    return f"{n:,}"


def _unlabeled_media(ds: Dataset) -> int:
    """DFEW media folders whose clip has no split label and no annotation (ignored by the reader)."""
    if ds.kind != "dfew":
        return 0
    ids = set(ds.ids)
    found = set()
    for d, dirs in ((FACES16_DIR, True), (FACES_ALL_DIR, True), (VIDEO_DIR, False)):
        found |= set(scan_media(ds.root / d, want_dirs=dirs))
    return len(found - ids)


LAYOUT_TITLES = {"dfew": "DFEW layout", "mafw": "MAFW layout", "ferv39k": "FERV39k layout",
                 "folders": "class folders", "videos": "a folder of videos", "manifest": "manifest CSV"}


def dataset_report(root: Path, check_media: bool = True, max_listed: int = MAX_LISTED, *,
                   layout: str | None = None, classes: Sequence[str] | None = None) -> str:
    """A plain-text summary of a dataset of any layout: classes, folds, media and problems."""
    ds = load_dataset(Path(root), layout=layout, classes=classes)
    # a bar on stderr for big datasets, only on a terminal (tqdm's disable=None)
    with tqdm(total=len(ds.records), desc="checking media" if check_media else "listing media", unit="clip",
              disable=None, leave=False, file=sys.stderr) as bar:
        media = inspect_media(ds, check_media, progress=lambda i: bar.update(i - bar.n))
    _missing_expected(ds, media)
    n = len(ds.records)
    votes, folds = ds.votes(), ds.folds()
    labeled = votes.sum(1) > 0 if votes.shape[1] else np.zeros(n, bool)
    single = single_labeled(votes) & labeled if votes.shape[1] else labeled
    top = ds.labels() if votes.shape[1] else np.zeros(n, np.int64)

    lines = []
    lines.append(f"dataset          {ds.root} ({LAYOUT_TITLES.get(ds.kind, ds.kind)})")
    source = "vote counts" if ds.has_votes else ("one-hot from labels (no annotation votes)" if ds.class_names
                                                  else "none (unlabeled)")
    lines.append(f"clips            {_fmt(n)}   labels: {source}")
    if ds.class_names and ds.has_votes:
        lines.append(f"single-labeled   {_fmt(int(single.sum()))}   (one class with >= {SINGLE_LABEL_MIN_VOTES} of "
                     f"{NUM_ANNOTATORS} votes)")
        conflicts = vote_conflicts(votes, ds.official())
        if (ds.official() >= 0).any():
            lines.append(f"votes vs label   {_fmt(conflicts['disagree'])} disagree, {_fmt(conflicts['tie'])} "
                         "tie   (the official label is used for both)")
    elif ds.class_names:
        lines.append(f"single-labeled   {_fmt(int(single.sum()))}   (one label per clip: no votes)")
    if ds.protocol:
        lines.append(f"protocol         {ds.protocol}")
    unlabeled = _unlabeled_media(ds)
    if unlabeled:
        lines.append(f"unlabeled media  {_fmt(unlabeled)} clip folders/videos in no split file or annotation (ignored)")

    if ds.class_names:
        lines.append("")
        width = max(10, max(len(c) for c in ds.class_names))
        how = "by official label, else majority vote" if ds.has_votes else "by label"
        lines.append(f"class{' ' * (width - 3)}{'all':>7} {'single-labeled':>16}   ({how})")
        for c, name in enumerate(ds.class_names):
            lines.append(f"  {name:<{width}} {_fmt(int(((top == c) & labeled).sum())):>7}"
                         f" {_fmt(int(((top == c) & single).sum())):>16}")

    lines.append("")
    if ds.fold_names and (folds != FOLD_UNUSED).any():
        has_val = bool((folds == FOLD_VAL).any())
        width = max(9, max(len(f) for f in ds.fold_names))
        lines.append(f"fold{' ' * (width - 2)}{'train':>8} {'test':>8}" + (f" {'val':>8}" if has_val else "")
                     + f" {'unused':>8}")
        for k, name in enumerate(ds.fold_names):
            col = folds[:, k]
            row = (f"  {name:<{width}} {_fmt(int((col == FOLD_TRAIN).sum())):>8} "
                   f"{_fmt(int((col == FOLD_TEST).sum())):>8}")
            if has_val:
                row += f" {_fmt(int((col == FOLD_VAL).sum())):>8}"
            lines.append(row + f" {_fmt(int((col == FOLD_UNUSED).sum())):>8}")
    else:
        lines.append("folds            none (no split files / fold columns)")
    for w in ds.warnings:
        lines.append(f"warning: {w}")
    lines.append("")
    lines.append("media            clips")
    lines.append(f"  16 face frames {_fmt(sum(m.faces16 > 0 for m in media)):>8}")
    lines.append(f"  all face frames{_fmt(sum(m.faces_all > 0 for m in media)):>8}")
    lines.append(f"  video          {_fmt(sum(m.video for m in media)):>8}")
    if check_media:
        lines.append(f"  audio track    {_fmt(sum(bool(m.audio) for m in media)):>8}")
    else:
        lines.append("  audio track         ?   (not checked; run with --check-media)")

    problems: dict[str, list[str]] = {cid: [reason] for cid, reason in ds.problems.items()}
    for rec, m in zip(ds.records, media):
        if rec.clip_id in ds.problems:  # the reader already said which paths are missing
            m.problems = [p for p in m.problems if not p.endswith("not found")]
        if m.problems:
            problems.setdefault(rec.clip_id, []).extend(m.problems)
    lines.append("")
    checked = "" if check_media else " (files not opened; --check-media finds unreadable ones)"
    if not problems:
        lines.append(f"problems         none{checked}")
    else:
        lines.append(f"problems         {_fmt(len(problems))} clip{'s' if len(problems) != 1 else ''}{checked}")
        order = [r.clip_id for r in ds.records if r.clip_id in problems]
        width = max(len(c) for c in order[:max_listed])
        for cid in order[:max_listed]:
            lines.append(f"  {cid:<{width}}  {'; '.join(problems[cid])}")
        if len(order) > max_listed:
            lines.append(f"  ... and {_fmt(len(order) - max_listed)} more")
            kinds = Counter(_problem_kind(cid, r) for cid in order for r in problems[cid])
            lines.append("problem kinds")
            for kind, count in kinds.most_common(10):
                lines.append(f"  {_fmt(count):>7}  {kind}")
            if len(kinds) > 10:
                lines.append(f"  ... and {len(kinds) - 10} more kinds")
    return "\n".join(lines)
