"""Load the chosen feature sets from a store once, into tensors, with targets and folds.

The trainer never reads rows one by one: each feature set is read whole (`store.read`), kept as
float16 tensors (cast per batch), and indexed by row number from then on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fer.cache.errors import FerError

Log = Callable[[str], None]


@dataclass
class ModalityData:
    """One feature set in memory, restricted to the loaded rows."""

    spec: str
    """Feature-set name in the store."""
    data: torch.Tensor
    """(n, T, ...) float16 (or float32) features."""
    mask: torch.Tensor
    """(n, T) bool, True where a token is present."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """The feature set's attrs (modality, backbone, weights, layer, ...)."""

    @property
    def modality(self) -> str:
        return str(self.provenance.get("modality", self.spec.split(".")[0]))


@dataclass
class LoadedFeatures:
    """Feature sets, targets and folds for the rows usable by training (same row order everywhere)."""

    store_path: str
    """The store they came from."""
    ids: np.ndarray
    """(n,) clip ids."""
    votes: np.ndarray
    """(n, C) float32 vote counts, one column per class of the store."""
    folds: np.ndarray
    """(n, K) int8 fold codes (0 unused, 1 train, 2 test, 3 validation), one column per fold of the store."""
    rows: np.ndarray
    """(n,) int64 row numbers in the store."""
    sets: dict[str, ModalityData]
    """modality -> its feature set."""
    has_votes: bool = True
    """False when the store only knows one label per clip (targets are then one-hot)."""
    left_out: int = 0
    """Rows used by some fold that were dropped because a chosen feature set had not done them."""
    class_names: tuple[str, ...] = ()
    """The store's classes, in the order of the vote columns (and of every model output)."""
    fold_names: tuple[str, ...] = ()
    """The store's folds; fold k (1-based) is column k-1 of ``folds``."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(self.votes.shape[1])

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64 majority class (argmax of votes)."""
        return self.votes.argmax(axis=1).astype(np.int64)

    @property
    def dist(self) -> np.ndarray:
        """(n, C) float32 normalised vote distribution (zeros where a row has no votes)."""
        s = self.votes.sum(axis=1, keepdims=True)
        return np.where(s > 0, self.votes / np.maximum(s, 1e-12), 0).astype(np.float32)

    @property
    def has_target(self) -> np.ndarray:
        """(n,) bool rows with at least one vote."""
        return self.votes.sum(axis=1) > 0


def extract_hint(modality: str, store_path: str) -> str:
    """The command that would add a feature set of this modality to the store."""
    return f"fer extract ROOT --modality {modality} --store {store_path}"


def _modality_of(store: Any, spec: str) -> str:
    try:
        m = store.info(spec).get("modality")
    except Exception:  # a broken feature set still has a readable name
        m = None
    return str(m) if m else spec.split(".")[0]


def choose_spec(store: Any, modality: str, spec: str | None, store_path: str) -> str:
    """The feature set for `modality`: `spec` if given, else the store's only one of that modality."""
    specs = list(store.specs())
    listing = ", ".join(f"{s} ({_modality_of(store, s)})" for s in specs) or "no feature sets"
    if spec is not None:
        if spec not in specs:
            raise FerError(f"feature set {spec} is not in {store_path} (it has: {listing}); "
                           f"make it with `{extract_hint(modality, store_path)}`")
        got = _modality_of(store, spec)
        if got != modality:
            raise FerError(f"feature set {spec} holds {got} features, not {modality}: pass a {modality} spec with --{modality}")
        return spec
    mine = [s for s in specs if _modality_of(store, s) == modality]
    if not mine:
        raise FerError(f"{store_path} has no {modality} feature set (it has: {listing}); "
                       f"make one with `{extract_hint(modality, store_path)}`")
    if len(mine) > 1:
        raise FerError(f"{store_path} has {len(mine)} {modality} feature sets ({', '.join(mine)}): "
                       f"choose one with --{modality} SPEC")
    return mine[0]


def _is_one_hot(votes: np.ndarray) -> bool:
    return bool(np.all((votes > 0).sum(axis=1) <= 1))


def memory_budget() -> int:
    """Bytes the trainer may hold in features: FER_MEMORY_BUDGET_GB if set, else the memory available now."""
    env = os.environ.get("FER_MEMORY_BUDGET_GB")
    if env:
        try:
            return int(float(env) * 1e9)
        except ValueError:
            raise FerError(f"FER_MEMORY_BUDGET_GB={env!r} is not a number of gigabytes") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(store: Any, specs: Sequence[str], store_path: str) -> None:
    """Refuse up front, with what to do, when the chosen feature sets cannot be held in memory at once."""
    need = sum(int(np.prod(store.info(s)["shape"])) * np.dtype(store.info(s)["dtype"]).itemsize for s in specs)
    budget = memory_budget()
    if need > budget:
        raise FerError(f"the chosen feature sets of {store_path} need {need / 1e9:.1f} GB in memory but {budget / 1e9:.1f} GB "
                       "is available (FER_MEMORY_BUDGET_GB overrides): train on a machine with more memory, or use a "
                       "pooled face set (`fer extract ... --layer pool`) instead of feature maps")


def load_features(store_path: str, modalities: Sequence[str], *, specs: Mapping[str, str | None] | None = None,
                  allow_incomplete: bool = False, log: Log = print) -> LoadedFeatures:
    """Read the chosen feature sets (one per modality) whole, once, with votes and folds.

    Rows that some fold uses must be done in every chosen feature set; otherwise this
    refuses with the counts, or with `allow_incomplete` keeps only rows done everywhere and says
    how many were left out. Rows no fold uses are dropped (training never sees them).
    """
    from fer.cache import open_store

    specs = dict(specs or {})
    with open_store(store_path, mode="r") as store:
        folds = np.asarray(store.folds, dtype=np.int8)
        if not store.class_names:
            raise FerError(f"{store_path} holds no labels (its dataset had no classes): extract from a labeled "
                           "dataset or manifest to train")
        if folds.size == 0 or not np.any(folds != 0):
            raise FerError(f"{store_path} has no fold columns (no clip is in any fold): extract from a root with its "
                           "split files, or a manifest with fold_<k> or split columns")
        used = np.any(folds != 0, axis=1)
        chosen = {m: choose_spec(store, m, specs.get(m), store_path) for m in modalities}
        check_fits(store, list(chosen.values()), store_path)
        keep = used.copy()
        raw = {}
        for m, spec in chosen.items():
            fs = store.read(spec)
            done = np.asarray(fs.done, dtype=bool)
            missing = used & ~done
            if missing.any():
                n_fail = len(store.failures(spec))
                detail = f"{int(missing.sum())} of {int(used.sum())} clips in the folds are not done in {spec}"
                if n_fail:
                    detail += f" ({n_fail} failed: see `fer cache info {store_path}`)"
                if not allow_incomplete:
                    raise FerError(f"{detail}: finish it with `{extract_hint(m, store_path)}` "
                                   "or pass --allow-incomplete to train on the done clips")
            keep &= done
            raw[m] = (spec, fs)
        rows = np.flatnonzero(keep).astype(np.int64)
        left_out = int(used.sum() - keep.sum())
        if left_out:
            log(f"warning: {left_out} of {int(used.sum())} clips in the folds are left out (not done in every chosen feature set)")
        if rows.size == 0:
            raise FerError(f"no clip of {store_path} is done in every chosen feature set: run `fer extract` first")
        full = rows.size == len(folds)
        sets = {}
        for m, (spec, fs) in raw.items():
            data = np.asarray(fs.data) if full else np.asarray(fs.data)[rows]
            mask = np.asarray(fs.mask, dtype=bool) if full else np.asarray(fs.mask, dtype=bool)[rows]
            sets[m] = ModalityData(spec=spec, data=torch.from_numpy(np.ascontiguousarray(data)),
                                   mask=torch.from_numpy(np.ascontiguousarray(mask)), provenance=dict(fs.attrs))
        votes = np.asarray(store.votes, dtype=np.float32)[rows]
        attrs = dict(store.attrs)
        has_votes = attrs.get("has_votes", True) is not False and not _is_one_hot(votes)
        if not has_votes:
            log("warning: the store has no vote distributions (one label per clip): kl/mse train on one-hot targets")
        ids = np.asarray(store.ids)[rows]
        class_names, fold_names = tuple(store.class_names), tuple(store.fold_names)
    return LoadedFeatures(store_path=str(store_path), ids=ids, votes=votes, folds=folds[rows], rows=rows,
                          sets=sets, has_votes=has_votes, left_out=left_out, class_names=class_names,
                          fold_names=fold_names)


def features_for(features: LoadedFeatures, modalities: Sequence[str], specs: Mapping[str, str | None]) -> None:
    """Check that features loaded elsewhere (e.g. once by `fer sweep`) hold what a run asks for."""
    for m in modalities:
        if m not in features.sets:
            raise FerError(f"the loaded features hold no {m} feature set (have: {', '.join(features.sets)})")
        want = specs.get(m)
        if want is not None and features.sets[m].spec != want:
            raise FerError(f"the loaded {m} feature set is {features.sets[m].spec}, not {want}")


def check_leakage(features: LoadedFeatures, modalities: Sequence[str], fold: int) -> None:
    """Refuse a fold whose test clips a backbone was fine-tuned on (provenance `finetuned_on_fold`)."""
    for m in modalities:
        ft = features.sets[m].provenance.get("finetuned_on_fold")
        if ft is not None and int(ft) != fold:
            raise FerError(f"feature set {features.sets[m].spec} comes from a backbone fine-tuned on fold {int(ft)}'s "
                           f"training clips, which include fold {fold}'s test clips: train only --fold {int(ft)} on it")
