"""The synthetic dataset in each real layout: class set, protocol, where each clip's media go, the split files.

The rendered content is the same for every layout (faces, voice and body carry the class); a layout says
which classes exist (and which rendered expression each one gets), how clips are split, and writes the
paths and tables exactly as the real release does, so each reader is exercised on its own layout.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer.cache.schema import DFEW_CLASSES, NUM_FOLDS
from fer.extract.synth.plan import DFEW_CLASS_TOTALS, ClipPlan

ANNOTATION_HEADER = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear"]
DFEW_TOTALS = tuple(DFEW_CLASS_TOTALS)
MAFW_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
                "contempt", "anxiety", "helplessness", "disappointment")
MAFW_TOTALS = (1390, 639, 625, 1242, 1138, 1470, 1072, 236, 916, 262, 182)
FERV_CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
FERV_TOTALS = (7327, 6916, 9748, 7393, 3140, 2300, 2111)
FERV_SCENES = ("Action", "DailyLife", "Interview", "Talkshow", "War")
# AFEW's class folders (sorted, as ImageFolder lists them)
FOLDER_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
FOLDER_TOTALS = (197, 114, 115, 215, 216, 172, 120)
# which rendered expression (row of the FACE/BODY/AUDIO_APEX tables) each class shows
_ROW = {"happy": 0, "happiness": 0, "sad": 1, "sadness": 1, "neutral": 2, "angry": 3, "anger": 3,
        "surprise": 4, "disgust": 5, "fear": 6, "contempt": 7, "anxiety": 8, "helplessness": 9, "disappointment": 10}


@dataclass(frozen=True)
class ClipPaths:
    """Where one clip's media go (None: this layout has no such media)."""

    faces_all: Path | None
    faces16: Path | None
    video: Path | None


@dataclass(frozen=True)
class SynthLayout:
    """One real dataset layout, as the synthetic generator writes it."""

    name: str
    class_names: tuple[str, ...]
    totals: tuple[float, ...]
    """Class shares (the real dataset's counts)."""
    annotators: bool = False
    """DFEW: 10 simulated annotators' votes and ambiguous clips; else one label per clip."""
    splits: dict[str, float] | None = None
    """One official split (name -> share); None: 5 folds."""
    video: bool = True
    """Each clip has an mp4 (video + audio); FERV39k's face-crop release has none."""
    paths: Callable[[Path, ClipPlan, SynthLayout], ClipPaths] | None = field(default=None, compare=False)
    tables: Callable[[Path, list[ClipPlan], SynthLayout], None] | None = field(default=None, compare=False)
    top: tuple[str, ...] = ()
    """Top-level entries the layout writes (cleared when the folder is synthesised again)."""

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(_ROW[c.lower()] for c in self.class_names)

    def clip_id(self, plan: ClipPlan) -> str:
        if self.name == "ferv39k":
            return f"{FERV_SCENES[plan.index % len(FERV_SCENES)]}/{self.class_names[plan.primary]}/{plan.index:04d}"
        if self.name == "folders":
            return f"{plan.split}/{self.class_names[plan.primary]}/clip_{plan.index:05d}"
        return f"{plan.index:05d}"


# ---------------------------------------------------------------- DFEW
def _dfew_paths(out: Path, plan: ClipPlan, lay: SynthLayout) -> ClipPaths:
    cid = lay.clip_id(plan)
    return ClipPaths(out / "Clip" / "clip_224x224" / cid, out / "Clip" / "clip_224x224_16f" / cid,
                     out / "Clip" / "original" / f"{cid}.mp4")


def _dfew_tables(out: Path, plans: list[ClipPlan], lay: SynthLayout) -> None:
    """Annotation (csv + xlsx) and the 5-fold split files over the single-labeled clips."""
    import openpyxl  # only needed here

    ann = out / "Annotation"
    ann.mkdir(parents=True, exist_ok=True)
    rows = [[p.index, *(int(v) for v in p.votes)] for p in plans]
    with open(ann / "annotation.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ANNOTATION_HEADER)
        w.writerows(rows)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(ANNOTATION_HEADER)
    for r in rows:
        ws.append(r)
    wb.save(ann / "annotation.xlsx")

    single = [p for p in plans if p.label]
    for k in range(1, NUM_FOLDS + 1):
        for part, members in (("train", [p for p in single if p.test_fold != k]),
                              ("test", [p for p in single if p.test_fold == k])):
            d = out / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
            d.mkdir(parents=True, exist_ok=True)
            with open(d / f"set_{k}.csv", "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["video_name", "label"])
                w.writerows([p.index, p.label] for p in members)


# ---------------------------------------------------------------- MAFW
def _mafw_paths(out: Path, plan: ClipPlan, lay: SynthLayout) -> ClipPaths:
    cid = lay.clip_id(plan)
    return ClipPaths(out / "data" / "faces" / cid, None, out / "data" / "clips" / f"{cid}.mp4")


def _mafw_tables(out: Path, plans: list[ClipPlan], lay: SynthLayout) -> None:
    for k in range(1, NUM_FOLDS + 1):
        d = out / "Train & Test Set" / "single" / "no_caption" / f"set_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for part, members in (("train", [p for p in plans if p.test_fold != k]),
                              ("test", [p for p in plans if p.test_fold == k])):
            (d / f"{part}.txt").write_text(
                "".join(f"{lay.clip_id(p)}.mp4 {lay.class_names[p.primary]}\n" for p in members))


# ---------------------------------------------------------------- FERV39k
def _ferv_paths(out: Path, plan: ClipPlan, lay: SynthLayout) -> ClipPaths:
    return ClipPaths(out / "2_ClipsforFaceCrop" / lay.clip_id(plan), None, None)


def _ferv_tables(out: Path, plans: list[ClipPlan], lay: SynthLayout) -> None:
    d = out / "4_setups" / "All_scenes"
    d.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        members = [p for p in plans if p.split == part]
        (d / f"{part}_All.csv").write_text(
            "".join(f"{lay.clip_id(p)} {lay.class_names[p.primary]}\n" for p in members))


# ---------------------------------------------------------------- class folders
def _folder_paths(out: Path, plan: ClipPlan, lay: SynthLayout) -> ClipPaths:
    cid = lay.clip_id(plan)  # <split>/<class>/<clip>: a frame folder and a video of the same name
    return ClipPaths(out / cid, None, out / f"{cid}.mp4")


def _no_tables(out: Path, plans: list[ClipPlan], lay: SynthLayout) -> None:
    pass  # the folders are the labels


LAYOUTS: dict[str, SynthLayout] = {
    "dfew": SynthLayout("dfew", DFEW_CLASSES, DFEW_TOTALS, annotators=True, paths=_dfew_paths, tables=_dfew_tables,
                        top=("Clip", "Annotation", "EmoLabel_DataSplit")),
    "mafw": SynthLayout("mafw", MAFW_CLASSES, MAFW_TOTALS, paths=_mafw_paths, tables=_mafw_tables,
                        top=("data", "Train & Test Set")),
    "ferv39k": SynthLayout("ferv39k", FERV_CLASSES, FERV_TOTALS, splits={"train": 0.8, "test": 0.2}, video=False,
                           paths=_ferv_paths, tables=_ferv_tables, top=("2_ClipsforFaceCrop", "4_setups")),
    "folders": SynthLayout("folders", FOLDER_CLASSES, FOLDER_TOTALS, splits={"train": 0.65, "val": 0.15, "test": 0.2},
                           paths=_folder_paths, tables=_no_tables, top=("train", "val", "test")),
}
"""The layouts `fer data synth --layout` writes."""


def class_table(table: np.ndarray, lay: SynthLayout) -> np.ndarray:
    """An APEX table re-indexed by the layout's classes (row c: what class c looks/sounds like)."""
    return table[list(lay.rows)]
