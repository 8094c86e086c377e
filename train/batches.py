"""Where the fit loop's batches come from: one small source per run, whatever holds the features.

The fit loop asks a source for an epoch's batches (``epoch``), for the model inputs of given rows
(``evaluate``: every stored view), for the statistics pass of input standardisation (``norm_chunks``) and
for a resident copy of the validation rows (``hold``). Two sources:

- MemorySource: the feature sets as tensors on the training device, or in host memory with each batch
  copied to the device when the device cannot hold them (fer.train.features.device_budget).
- StreamSource: the sets stay in the store. Each epoch visits blocks of store rows in a shuffled order,
  reads a buffer of blocks in background threads while the previous buffer trains, and shuffles the rows
  within the buffer; memory stays bounded by two buffers, whatever the size of the set.

Both turn raw rows into model inputs with the same FramePlan on the training device (face frames and
views) and fer.train.model.make_batch (pose, audio), so a streamed run differs from an in-memory one only
in the order of its batches. (On the CPU a stream buffer is on the training device: frames are drawn from
it directly; on a GPU a batch's raw rows are copied over and drawn there.)
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.train.config import TrainConfig
from fer.train.features import DiskSet, LoadedFeatures, ModalityData
from fer.train.model import make_batch
from fer.train.sampling import FramePlan

EVAL_BATCH = 256
"""Evaluation batches hold at least this many clips (no gradients: larger batches are cheaper)."""
BUFFER_BLOCKS = 4
"""Blocks read and shuffled together while streaming (the shuffle window)."""
READ_THREADS = 2
"""Background threads reading blocks ahead while streaming."""
MIN_BLOCKS = 8
"""A streamed set is cut into at least this many blocks, however small it is."""
NORM_CHUNK_BYTES = 1 << 20
"""Stored bytes per chunk of the input-standardisation pass (it works in float64: four times that for float16)."""
STREAM_CAP = 1 << 30
"""Most bytes the two stream buffers take, whatever the budget (larger buffers shuffle better but no faster)."""

Log = Callable[[str], None]


@dataclass
class Batch:
    """One training step's data."""

    inputs: dict[str, torch.Tensor]
    """The model's inputs on the training device (fer.train.model.FerModel.forward)."""
    idx: torch.Tensor
    """(B,) positions of the clips in the loaded rows (for their targets), on the training device."""


class BatchSource(Protocol):
    """What the fit loop iterates; see the module note."""

    model_sets: dict[str, ModalityData]
    """One zero row per modality in the model's input layout (what FerModel needs to build itself)."""
    views: int
    """Views evaluated per clip (their predictions are averaged)."""

    def epoch(self, order: torch.Tensor, *, draw: torch.Generator, gen: torch.Generator) -> Iterator[Batch]: ...
    def evaluate(self, rows: np.ndarray, batch: int) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]: ...
    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def hold(self, rows: np.ndarray) -> "BatchSource": ...
    def close(self) -> None: ...


def frame_plans(sets: Mapping[str, ModalityData | DiskSet], cfg: TrainConfig, store: str = "STORE") -> dict[str, FramePlan]:
    """The face's FramePlan (the only modality whose frames are drawn), checked against --augment."""
    if "face" not in cfg.modalities:
        return {}
    face = sets["face"]
    return {"face": FramePlan.for_set(face.spec, face.provenance, tuple(face.row_shape), cfg.augment, cfg.segments, store)}


def _torch_dtype(md: ModalityData | DiskSet) -> torch.dtype:
    if isinstance(md, ModalityData):
        return md.data.dtype
    return torch.from_numpy(np.zeros(1, dtype=md.dtype)).dtype


def _itemsize(md: ModalityData | DiskSet) -> int:
    return torch.zeros((), dtype=_torch_dtype(md)).element_size()


def _token_shape(m: str, md: ModalityData | DiskSet, plans: Mapping[str, FramePlan]) -> tuple[int, ...]:
    """A row as the model sees it: the face's drawn tokens (one view), other sets' rows as stored."""
    return plans[m].token_shape(tuple(md.row_shape)) if m in plans else tuple(md.row_shape)


def model_sets(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan]) -> dict[str, ModalityData]:
    """One zero row per modality, shaped as the model sees it (FerModel reads only shapes, spec, provenance)."""
    out = {}
    for m, md in sets.items():
        shape = _token_shape(m, md, plans)
        out[m] = ModalityData(md.spec, torch.zeros((1, *shape), dtype=_torch_dtype(md)),
                              torch.ones((1, shape[0]), dtype=torch.bool), md.provenance)
    return out


def model_row_bytes(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan]) -> int:
    """Bytes of one clip as held for evaluation: the face's drawn tokens in every view, other sets' rows."""
    return sum(int(np.prod(_token_shape(m, md, plans), dtype=np.int64)) * (plans[m].views if m in plans else 1)
               * _itemsize(md) for m, md in sets.items())


def make_inputs(sets: Mapping[str, ModalityData], rows: torch.Tensor, cfg: TrainConfig, plans: Mapping[str, FramePlan],
                *, train: bool, draw: torch.Generator | None = None, view: int | None = None) -> dict[str, torch.Tensor]:
    """The model's inputs for ``rows`` of in-memory sets (rows on the sets' device): face tokens through its
    FramePlan, pose and audio as make_batch gives them; float32."""
    others = tuple(m for m in cfg.modalities if m != "face")
    out = make_batch(sets, rows, cfg, modalities=others) if others else {}
    if "face" in cfg.modalities:
        face = sets["face"]
        x, m = plans["face"].gather(face.data, face.mask, rows, train=train, draw=draw, view=view)
        out["face"], out["face_mask"] = x.float(), m
    return out


def _norm_rows(md: ModalityData | DiskSet) -> int:
    """Clips per chunk of the input-standardisation pass: NORM_CHUNK_BYTES of stored data."""
    row = int(np.prod(md.row_shape, dtype=np.int64)) * _itemsize(md)
    return max(1, NORM_CHUNK_BYTES // row)


def _norm_pair(sets: Mapping[str, ModalityData], rows: torch.Tensor, modality: str,
               cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, ..., D), mask (B, ...)) of every stored token of ``rows``: what input standardisation counts."""
    if modality == "face":
        face = sets["face"]
        x, mask = face.data[rows], face.mask[rows]
        while mask.dim() < x.dim() - 1:  # views (and map axes) share their frame's mask
            mask = mask.unsqueeze(-1).expand(*x.shape[:mask.dim() + 1])
        return x, mask
    b = make_batch(sets, rows, cfg, modalities=(modality,))
    return b[modality], b[f"{modality}_mask"]


class MemorySource:
    """Feature sets in memory: on the training device, or (``on_device=False``) in host memory with each batch
    gathered on the host and copied to the device."""

    def __init__(self, sets: Mapping[str, ModalityData], cfg: TrainConfig, plans: Mapping[str, FramePlan],
                 device: torch.device, *, on_device: bool = True):
        self.cfg, self.plans, self.device, self.on_device = cfg, dict(plans), device, on_device
        mods = [m for m in sets if m in cfg.modalities]
        if on_device:
            self.sets = {m: ModalityData(sets[m].spec, sets[m].data.to(device), sets[m].mask.to(device),
                                         sets[m].provenance) for m in mods}
        else:
            self.sets = {m: sets[m] for m in mods}
        self.model_sets = model_sets(self.sets, self.plans)
        self.views = self.plans["face"].views if "face" in self.plans else 1

    def _local(self, rows: torch.Tensor) -> tuple[dict[str, ModalityData], torch.Tensor]:
        """The sets to draw from and the rows in them, on the device."""
        if self.on_device:
            return self.sets, rows.to(self.device)
        local = {m: ModalityData(md.spec, md.data[rows].to(self.device), md.mask[rows].to(self.device), md.provenance)
                 for m, md in self.sets.items()}
        return local, torch.arange(len(rows), device=self.device)

    def epoch(self, order: torch.Tensor, *, draw: torch.Generator | None, gen: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches in ``order`` (loaded-row positions, a CPU tensor: fer.train.sampling.epoch_order)."""
        bs = self.cfg.batch_size
        order_d = order.to(self.device)  # one copy per epoch
        for i in range(0, len(order), bs):
            if self.on_device:
                sets, rows = self.sets, order_d[i:i + bs]
            else:
                sets, rows = self._local(order[i:i + bs])
            yield Batch(make_inputs(sets, rows, self.cfg, self.plans, train=True, draw=draw), order_d[i:i + bs])

    def evaluate(self, rows: np.ndarray, batch: int = EVAL_BATCH) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]:
        """(inputs of every view, positions in ``rows``) per batch, frames at the segment centres."""
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        for i in range(0, len(r), batch):
            sets, local = self._local(r[i:i + batch])
            views = [make_inputs(sets, local, self.cfg, self.plans, train=False, view=v) for v in range(self.views)]
            yield views, torch.arange(i, i + len(local), device=self.device)

    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every stored token of ``rows`` of one modality, a few MB at a time (input standardisation)."""
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        chunk = _norm_rows(self.sets[modality])
        for i in range(0, len(r), chunk):
            sets, local = self._local(r[i:i + chunk])
            yield _norm_pair(sets, local, modality, self.cfg)

    def hold(self, rows: np.ndarray) -> "MemorySource":
        return self  # already resident

    def close(self) -> None:
        pass


class _Held:
    """Rows held in memory by a StreamSource (validation), addressed by their loaded-row positions."""

    def __init__(self, rows: np.ndarray, source: MemorySource):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.source = source
        self.views, self.model_sets = source.views, source.model_sets

    def _index(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        at = np.searchsorted(self.rows, rows)
        if np.any(at >= len(self.rows)) or np.any(self.rows[np.minimum(at, len(self.rows) - 1)] != rows):
            raise ValueError("rows outside the held rows")
        return at

    def evaluate(self, rows: np.ndarray, batch: int = EVAL_BATCH):
        return self.source.evaluate(self._index(rows), batch)

    def hold(self, rows: np.ndarray) -> "_Held":
        return self

    def close(self) -> None:
        pass


class StreamSource:
    """Feature sets read from the store by span while training, in bounded memory (see the module note)."""

    def __init__(self, features: LoadedFeatures, cfg: TrainConfig, plans: Mapping[str, FramePlan], device: torch.device,
                 *, budget: int, hold_on_device: Callable[[int], bool] = lambda nbytes: True, log: Log = print):
        from fer.cache import open_store

        self.cfg, self.plans, self.device = cfg, dict(plans), device
        self.hold_on_device = hold_on_device
        self.sets: dict[str, DiskSet] = {m: md for m, md in features.sets.items() if m in cfg.modalities}
        bad = [m for m, md in self.sets.items() if not isinstance(md, DiskSet)]
        if bad:
            raise ValueError(f"StreamSource needs feature sets left on disk; {bad} are in memory")
        self.model_sets = model_sets(self.sets, self.plans)
        self.views = self.plans["face"].views if "face" in self.plans else 1
        self.store = open_store(features.store_path, mode="r")
        self.readers = {m: self.store.span_reader(md.spec) for m, md in self.sets.items()}
        self.store_rows = np.asarray(features.rows, dtype=np.int64)
        self.n_store = self.store.n
        row_bytes = sum(md.row_bytes + md.row_shape[0] for md in self.sets.values())  # data + mask
        room = max(min(budget // 2, STREAM_CAP), 2 * BUFFER_BLOCKS * row_bytes)
        block = max(1, room // (2 * BUFFER_BLOCKS * row_bytes))
        big = max(self.sets.values(), key=lambda md: md.row_bytes)
        if block >= big.chunk_rows:
            block -= block % big.chunk_rows  # whole chunks of the largest set
        block = min(block, -(-self.n_store // MIN_BLOCKS))  # a small set still shuffles across blocks
        self.block_rows = int(block)
        self.block_of = self.store_rows // self.block_rows
        rows = BUFFER_BLOCKS * self.block_rows
        # two buffers: one trains while background threads read the next into the other
        self._data = [{m: np.empty((rows, *md.row_shape), dtype=md.dtype) for m, md in self.sets.items()} for _ in range(2)]
        self._mask = [{m: np.empty((rows, md.row_shape[0]), dtype=bool) for m, md in self.sets.items()} for _ in range(2)]
        self.buffer_bytes = 2 * rows * row_bytes
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fer-stream")
        self._pending: list[Future] = []
        log(f"streaming: blocks of {self.block_rows} clips, {BUFFER_BLOCKS} blocks per shuffle buffer, "
            f"{self.buffer_bytes / 1e6:.0f} MB of buffers, {READ_THREADS} reader threads")

    # ------------------------------------------------------------ reading
    def _read(self, which: int, slot: int, m: str, a: int, b: int) -> None:
        lo = slot * self.block_rows
        _, mask = self.readers[m].read(a, b, out=self._data[which][m][lo:lo + b - a])
        self._mask[which][m][lo:lo + b - a] = mask

    def _fill(self, which: int, blocks: list[int]) -> list[Future]:
        jobs = []
        for slot, blk in enumerate(blocks):
            a = blk * self.block_rows
            b = min(self.n_store, a + self.block_rows)
            jobs += [self._pool.submit(self._read, which, slot, m, a, b) for m in self.readers]
        return jobs

    def _groups(self, blocks: list[int]) -> Iterator[tuple[int, list[int]]]:
        """(buffer, its blocks) per group of BUFFER_BLOCKS blocks, read ahead: while the caller uses one
        buffer, the next group is read into the other."""
        groups = [blocks[i:i + BUFFER_BLOCKS] for i in range(0, len(blocks), BUFFER_BLOCKS)]
        if not groups:
            return
        self._pending = self._fill(0, groups[0])
        try:
            for g, blks in enumerate(groups):
                for f in self._pending:
                    f.result()
                which = g % 2
                self._pending = self._fill(1 - which, groups[g + 1]) if g + 1 < len(groups) else []
                yield which, blks
        finally:
            for f in self._pending:  # a loop left early: let its reads land before the buffers are reused
                f.exception()
            self._pending = []

    def _slots(self, blks: list[int], entries: np.ndarray, by_block: np.ndarray) -> np.ndarray:
        """Buffer rows of ``entries`` (loaded positions whose blocks are ``blks``, in that order)."""
        order = np.argsort(blks)  # the blocks' slots, looked up without a Python loop over the rows
        slot = order[np.searchsorted(np.asarray(blks)[order], by_block)]
        return slot * self.block_rows + self.store_rows[entries] - by_block * self.block_rows

    def _take(self, which: int, local: np.ndarray) -> dict[str, ModalityData]:
        """Rows ``local`` of a buffer, copied (the buffer is reused) and moved to the device."""
        idx = torch.from_numpy(local)
        return {m: ModalityData(md.spec, torch.from_numpy(self._data[which][m])[idx].to(self.device),
                                torch.from_numpy(self._mask[which][m])[idx].to(self.device), md.provenance)
                for m, md in self.sets.items()}

    def _inputs(self, which: int, local: np.ndarray, *, train: bool, draw: torch.Generator | None = None,
                view: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for buffer rows ``local``. On the CPU the buffers are on the training device: frames are
        drawn from them directly (no copy of the raw rows); elsewhere the raw rows are copied to the device and
        drawn there."""
        if self.device.type == "cpu":
            sets = {m: ModalityData(md.spec, torch.from_numpy(self._data[which][m]), torch.from_numpy(self._mask[which][m]),
                                    md.provenance) for m, md in self.sets.items()}
            return make_inputs(sets, torch.from_numpy(local), self.cfg, self.plans, train=train, draw=draw, view=view)
        rows = torch.arange(len(local), device=self.device)
        return make_inputs(self._take(which, local), rows, self.cfg, self.plans, train=train, draw=draw, view=view)

    def _in_block_order(self, rows: np.ndarray, batch: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(buffer, buffer rows, positions in ``rows``) in store order, at most ``batch`` clips at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        blk = self.block_of[rows]
        order = np.argsort(blk, kind="stable")
        for which, blks in self._groups(np.unique(blk).tolist()):
            sel = order[np.isin(blk[order], blks)]
            local = self._slots(blks, rows[sel], blk[sel])
            for i in range(0, len(sel), batch):
                yield which, local[i:i + batch], sel[i:i + batch]

    # ------------------------------------------------------------ the source
    def epoch(self, order: torch.Tensor, *, draw: torch.Generator | None, gen: torch.Generator) -> Iterator[Batch]:
        """The epoch's rows (with repeats, as drawn) by block: blocks in a random order, rows shuffled within
        each buffer of BUFFER_BLOCKS blocks; batches of exactly batch_size but the last."""
        bs = self.cfg.batch_size
        entries = order.numpy()
        blk = self.block_of[entries]
        present = np.unique(blk)
        seq = present[torch.randperm(len(present), generator=gen).numpy()].tolist()
        sort = np.argsort(blk, kind="stable")
        carry: tuple[dict[str, ModalityData], np.ndarray] | None = None
        for which, blks in self._groups(seq):
            sel = sort[np.isin(blk[sort], blks)]
            sel = sel[torch.randperm(len(sel), generator=gen).numpy()]
            local, pos = self._slots(blks, entries[sel], blk[sel]), entries[sel]
            i = 0
            if carry is not None:  # fill the previous buffer's last, short batch first
                i = min(bs - len(carry[1]), len(local))
                more = self._take(which, local[:i])
                carry = ({m: ModalityData(md.spec, torch.cat([md.data, more[m].data]), torch.cat([md.mask, more[m].mask]),
                                          md.provenance) for m, md in carry[0].items()}, np.concatenate([carry[1], pos[:i]]))
                if len(carry[1]) == bs:
                    yield self._batch(*carry, draw)
                    carry = None
            while carry is None and len(local) - i >= bs:
                yield Batch(self._inputs(which, local[i:i + bs], train=True, draw=draw),
                            torch.from_numpy(pos[i:i + bs]).to(self.device))
                i += bs
            if i < len(local):
                carry = (self._take(which, local[i:]), pos[i:])
        if carry is not None:
            yield self._batch(*carry, draw)

    def _batch(self, sets: dict[str, ModalityData], pos: np.ndarray, draw: torch.Generator | None) -> Batch:
        rows = torch.arange(len(pos), device=self.device)
        return Batch(make_inputs(sets, rows, self.cfg, self.plans, train=True, draw=draw),
                     torch.from_numpy(np.ascontiguousarray(pos)).to(self.device))

    def evaluate(self, rows: np.ndarray, batch: int = EVAL_BATCH) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]:
        """(inputs of every view, positions in ``rows``) per batch, in store order, frames at the segment centres."""
        for which, local, where in self._in_block_order(rows, batch):
            views = [self._inputs(which, local, train=False, view=v) for v in range(self.views)]
            yield views, torch.from_numpy(where).to(self.device)

    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every stored token of ``rows`` of one modality, in store order, a few MB at a time (input standardisation)."""
        for which, local, _ in self._in_block_order(rows, _norm_rows(self.sets[modality])):
            sets = self._take(which, local)
            yield _norm_pair(sets, torch.arange(len(local), device=self.device), modality, self.cfg)

    def hold(self, rows: np.ndarray) -> _Held:
        """``rows`` (the validation clips) read once and kept in memory as the model sees them at evaluation:
        the face's centre tokens in every view, the other sets' rows."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in self.sets}
        masks: dict[str, list[torch.Tensor]] = {m: [] for m in self.sets}
        order = np.empty(0, dtype=np.int64)
        for which, local, where in self._in_block_order(rows, EVAL_BATCH):
            sets = self._take(which, local)
            ar = torch.arange(len(local), device=self.device)
            for m, md in sets.items():
                if m in self.plans:
                    views = [self.plans[m].gather(md.data, md.mask, ar, train=False, view=v) for v in range(self.views)]
                    x = torch.stack([v[0] for v in views], dim=2) if self.views > 1 else views[0][0]
                    parts[m].append(x.cpu())
                    masks[m].append(views[0][1].cpu())
                else:
                    parts[m].append(md.data.cpu())
                    masks[m].append(md.mask.cpu())
            order = np.concatenate([order, where])
        back = np.argsort(order)  # store order -> the order of ``rows``
        held = {m: ModalityData(md.spec, torch.cat(parts[m])[back], torch.cat(masks[m])[back], md.provenance)
                for m, md in self.sets.items()}
        plans = {m: FramePlan(segments=None, views=p.views) for m, p in self.plans.items()}  # already drawn
        nbytes = sum(md.nbytes for md in held.values())
        return _Held(rows, MemorySource(held, self.cfg, plans, self.device, on_device=self.hold_on_device(nbytes)))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()


def check_held(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan], n_val: int, *,
               budget: int, stream_bytes: int, what: str) -> None:
    """Refuse, saying why, when the validation clips alone (held in memory while streaming) exceed the budget."""
    need = model_row_bytes(sets, plans) * n_val
    if need + stream_bytes > budget:
        from fer.cache.report import human_bytes

        raise FerError(f"{what}: its {n_val} validation clips, held in memory while the rest streams, need "
                       f"{human_bytes(need)} (plus {human_bytes(stream_bytes)} of stream buffers), over the memory "
                       f"budget of {human_bytes(budget)} (FER_MEMORY_BUDGET_GB): lower --val-fraction, or train on a "
                       "machine with more memory")


def describe(source: Any) -> dict[str, Any]:
    """What a run's resources.json says about its source."""
    if isinstance(source, StreamSource):
        return {"source": "stream", "block_rows": source.block_rows, "buffer_blocks": BUFFER_BLOCKS,
                "buffer_bytes": int(source.buffer_bytes), "read_threads": READ_THREADS}
    return {"source": "memory", "on_device": bool(getattr(source, "on_device", True))}
