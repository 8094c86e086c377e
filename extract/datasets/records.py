"""The dataset as the extractor sees it: one record per clip, whatever the source layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer.cache.schema import CLASS_NAMES, DFEW_FOLDS, NO_LABEL, NUM_CLASSES, NUM_FOLDS, scored_labels


@dataclass
class ClipRecord:
    """Everything known about one clip before any media is decoded."""

    clip_id: str
    """Stable id, e.g. DFEW's zero-padded ``00001``; the row key in every store."""
    faces16: Path | None = None
    """Folder with exactly the 16 aligned face frames (DFEW ``clip_224x224_16f``)."""
    faces_all: Path | None = None
    """Folder with all aligned face frames (DFEW ``clip_224x224``, or a manifest's ``faces``)."""
    video: Path | None = None
    """The original clip (full frames and, usually, the audio track)."""
    audio: Path | None = None
    """A separate audio file (wav/flac), when the dataset ships one."""
    votes: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.float32))
    """(C,) float32 vote counts per class of the dataset; one-hot when only a label is known."""
    folds: np.ndarray = field(default_factory=lambda: np.zeros(NUM_FOLDS, np.int8))
    """(K,) int8 per fold of the protocol: 0 unused, 1 train, 2 test, 3 validation (``fer.cache.schema``)."""
    label: int | None = None
    """The dataset's official label (class index: split file, label column, class folder); None where it names
    none (votes only). It decides a clip whose votes tie."""


@dataclass
class Dataset:
    """A dataset read from one layout (DFEW, MAFW, FERV39k, class folders or a manifest CSV)."""

    root: Path
    """The dataset's root folder, or the manifest file."""
    kind: str
    """The layout: ``dfew``, ``mafw``, ``ferv39k``, ``folders`` or ``manifest``."""
    records: list[ClipRecord]
    """Clips in store row order (sorted by id for DFEW, file order for a manifest)."""
    has_votes: bool
    """True when real vote distributions are known (annotation file or vote columns)."""
    problems: dict[str, str] = field(default_factory=dict)
    """Per-clip problems found while reading (clip id -> reason); these clips are still listed."""
    class_names: tuple[str, ...] = CLASS_NAMES
    """The dataset's classes, in the order of the vote columns (peers disagree on order: names are kept)."""
    fold_names: tuple[str, ...] = DFEW_FOLDS
    """One name per fold of the protocol (``set_1``..``set_5``; one official split for FERV39k)."""
    protocol: str = ""
    """One line on how the folds are meant to be used (which split is evaluated, where selection happens)."""
    warnings: list[str] = field(default_factory=list)
    """Dataset-level notes that do not stop anything (e.g. a class in test but never in train)."""
    face_preprocessing: dict | None = None
    """How the face frames were made when fer made them (`fer data faces`: detector, template, size);
    copied into a face feature set's provenance."""

    @property
    def ids(self) -> list[str]:
        return [r.clip_id for r in self.records]

    def votes(self) -> np.ndarray:
        """(N, C) float32 vote counts in record order."""
        return np.stack([r.votes for r in self.records]).astype(np.float32)

    def folds(self) -> np.ndarray:
        """(N, K) int8 fold codes in record order."""
        return np.stack([r.folds for r in self.records]).astype(np.int8)

    def official(self) -> np.ndarray:
        """(N,) int16 official labels in record order (-1 where the dataset names none): clips/label."""
        return np.array([NO_LABEL if r.label is None else r.label for r in self.records], dtype=np.int16)

    def labels(self) -> np.ndarray:
        """(N,) int64 the label each clip is trained and scored by: official, else the votes' majority."""
        return scored_labels(self.votes(), self.official()) if self.records else np.zeros(0, np.int64)
