"""Load the chosen feature sets from a store, with targets and folds: into memory, or left on disk to stream.

When the chosen sets fit the memory budget (FER_MEMORY_BUDGET_GB, default the memory available now) each is
read once (`store.read`), kept as float16 tensors (cast per batch) and indexed by row number from then on.
When they do not (or `stream` asks for it) only their masks are read: the data stays in the store and the
trainer's batch source (fer.train.batches) reads it by span while training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.cache.schema import scored_labels

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

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


@dataclass
class DiskSet:
    """One feature set left in the store: its data is read by span while training (streaming)."""

    spec: str
    """Feature-set name in the store."""
    mask: torch.Tensor
    """(n, T) bool for the loaded rows (masks are small, so they are kept in memory)."""
    provenance: dict[str, Any]
    """The feature set's attrs."""
    row_shape: tuple[int, ...]
    """Shape of one row of data (T, ...)."""
    dtype: str
    """Data type in the store (float16)."""
    chunk_rows: int
    """Rows per chunk in the store."""

    @property
    def modality(self) -> str:
        return str(self.provenance.get("modality", self.spec.split(".")[0]))

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * int(self.mask.shape[0])


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
    sets: dict[str, ModalityData | DiskSet]
    """modality -> its feature set (all in memory, or all on disk when streaming)."""
    has_votes: bool = True
    """False when the store only knows one label per clip (targets are then one-hot)."""
    left_out: int = 0
    """Rows used by some fold that were dropped because a chosen feature set had not done them."""
    class_names: tuple[str, ...] = ()
    """The store's classes, in the order of the vote columns (and of every model output)."""
    fold_names: tuple[str, ...] = ()
    """The store's folds; fold k (1-based) is column k-1 of ``folds``."""
    official: np.ndarray | None = None
    """(n,) the dataset's official labels (-1: none named); None for a store made before clips/label."""

    @property
    def streamed(self) -> bool:
        """True when the feature sets stay on disk and are read by span while training."""
        return any(isinstance(md, DiskSet) for md in self.sets.values())

    def nbytes(self, modalities: Sequence[str] | None = None) -> int:
        """Bytes of the loaded rows' data of these modalities' sets (all by default), in memory or not."""
        return sum(md.nbytes for m, md in self.sets.items() if modalities is None or m in modalities)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(self.votes.shape[1])

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64 the label each clip is trained and scored by: its official label where the dataset names
        one (a tie in the votes takes it), else the votes' majority (fer.cache.schema.scored_labels)."""
        return scored_labels(self.votes, self.official)

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
            raise FerError(f"feature set {spec} holds {got} features, not {modality}: "
                           f"pass a {modality} spec with --{modality}")
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


def _gb_env(name: str) -> int | None:
    """Bytes from an environment variable given in gigabytes; None when unset."""
    env = os.environ.get(name)
    if not env:
        return None
    try:
        return int(float(env) * 1e9)
    except ValueError:
        raise FerError(f"{name}={env!r} is not a number of gigabytes") from None


def memory_budget() -> int:
    """Bytes the trainer may hold in features: FER_MEMORY_BUDGET_GB if set, else the memory available now."""
    env = _gb_env("FER_MEMORY_BUDGET_GB")
    if env is not None:
        return env
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


DEVICE_SHARE = 0.7
"""Share of an accelerator's free memory the feature sets may take; the rest is the model's, its optimizer's
and the activations'."""


def device_budget(device: torch.device) -> int | None:
    """Bytes of the training device's memory free for features: FER_DEVICE_MEMORY_GB if set (on any device, so
    the placement can be tested without a GPU), else the free CUDA memory; None for the CPU (host memory,
    checked against memory_budget)."""
    env = _gb_env("FER_DEVICE_MEMORY_GB")
    if env is not None:
        return env
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def fits_device(nbytes: int, device: torch.device) -> bool:
    """True when ``nbytes`` of features may be copied to the device whole (DEVICE_SHARE of its free memory)."""
    budget = device_budget(device)
    return budget is None or nbytes <= DEVICE_SHARE * budget


def set_bytes(store: Any, specs: Sequence[str], rows: int) -> int:
    """Bytes of ``rows`` rows of each of these feature sets."""
    total = 0
    for spec in specs:
        info = store.info(spec)
        total += int(np.prod(info["shape"][1:], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize * rows
    return total


def load_features(store_path: str, modalities: Sequence[str], *, specs: Mapping[str, str | None] | None = None,
                  allow_incomplete: bool = False, stream: bool = False, log: Log = print) -> LoadedFeatures:
    """Read the chosen feature sets (one per modality) with votes and folds: whole, once, when they fit the
    memory budget; else (or with ``stream``) only their masks, leaving the data to be streamed.

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
        keep = used.copy()
        masks = {}
        for m, spec in chosen.items():
            mask, done = store.read_masks(spec)
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
            masks[m] = mask
        rows = np.flatnonzero(keep).astype(np.int64)
        left_out = int(used.sum() - keep.sum())
        if left_out:
            log(f"warning: {left_out} of {int(used.sum())} clips in the folds are left out "
                "(not done in every chosen feature set)")
        if rows.size == 0:
            raise FerError(f"no clip of {store_path} is done in every chosen feature set: run `fer extract` first")
        need, budget = set_bytes(store, list(chosen.values()), rows.size), memory_budget()
        to_stream = stream or need > budget
        if to_stream:
            from fer.cache.report import human_bytes

            why = "--stream" if stream and need <= budget else (
                f"they need {human_bytes(need)}, over the memory budget of {human_bytes(budget)} "
                "(FER_MEMORY_BUDGET_GB)")
            log(f"streaming the feature sets from {store_path} by chunk ({why})")
        full = rows.size == len(folds)
        sets: dict[str, ModalityData | DiskSet] = {}
        for m, spec in chosen.items():
            attrs = dict(store.set_attrs(spec))
            if to_stream:
                info = store.info(spec)
                sets[m] = DiskSet(spec=spec, mask=torch.from_numpy(np.ascontiguousarray(masks[m][rows])),
                                  provenance=attrs, row_shape=tuple(info["shape"][1:]), dtype=info["dtype"],
                                  chunk_rows=int(info["chunk_rows"]))
                continue
            fs = store.read(spec) if full else store.read(spec, rows=rows)  # only the rows the folds use
            sets[m] = ModalityData(spec=spec, data=torch.from_numpy(np.ascontiguousarray(fs.data)),
                                   mask=torch.from_numpy(np.ascontiguousarray(fs.mask, dtype=bool)), provenance=attrs)
        votes = np.asarray(store.votes, dtype=np.float32)[rows]
        attrs = dict(store.attrs)
        has_votes = attrs.get("has_votes", True) is not False and not _is_one_hot(votes)
        if not has_votes:
            log("warning: the store has no vote distributions (one label per clip): kl/mse train on one-hot targets")
        ids = np.asarray(store.ids)[rows]
        class_names, fold_names = tuple(store.class_names), tuple(store.fold_names)
        official = None if store.labels is None else np.asarray(store.labels, dtype=np.int64)[rows]
    return LoadedFeatures(store_path=str(store_path), ids=ids, votes=votes, folds=folds[rows], rows=rows,
                          sets=sets, has_votes=has_votes, left_out=left_out, class_names=class_names,
                          fold_names=fold_names, official=official)


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
