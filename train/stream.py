"""Training from feature sets left in the store: the given order, read by span, in bounded memory.

A StreamSource serves exactly the order the fit loop gives it (fer.train.sampling.epoch_order), in the same
batches as a MemorySource, so a streamed run has the numbers of an in-memory one. What it keeps is read
locality: the epoch order visits its sampling blocks (consecutive store rows, fixed by the data) a window at a
time, and the source reads what a stretch of the order needs into one of two buffers while the other trains.

- When a window fits the budget (the usual case: two windows of WINDOW_BLOCKS blocks of
  BLOCK_BYTES), a buffer holds whole blocks, each read in one span.
- Under a smaller budget a buffer holds as many rows as it can: the source reads the rows a stretch of the
  order needs, consecutive rows in one span. Slower, but the same batches and the same numbers.

Training reads less where the sets' chunk files can be mapped (uncompressed, local, chunks on page
boundaries: fer.cache.reading.MappedData): each batch makes its draws (FramePlan.choose, make_inputs' own
draws in make_inputs' order) and copies only the drawn frames and views out of the mapped files (a 16-frame
model on a 64-frame, 2-view set: an eighth of each row, where a buffer copies every byte; the kernel maps the
touched pages, and up to 64 KB around each, from its page cache). The next window is read ahead from disk
in the background, and what training touched is dropped from resident memory whenever it passes the buffers'
share of the budget. Evaluation, validation and the statistics pass use every frame and view of their rows
and read them into the buffers as above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.cache.reading import MappedData
from fer.train import sampling
from fer.train.batches import (
    EVAL_BATCH,
    Batch,
    MemorySource,
    make_inputs,
    model_row_bytes,
    model_sets,
    norm_pair,
    norm_rows,
    sampling_blocks,
    stored_row_bytes,
)
from fer.train.config import TrainConfig
from fer.train.features import DiskSet, LoadedFeatures, ModalityData
from fer.train.model import make_batch
from fer.train.sampling import FramePlan

READ_THREADS = 2
"""Background threads reading the next stretch while the current one trains."""
STREAM_CAP = 1 << 30
"""Most bytes the two stream buffers take, whatever the budget."""
MAP = True
"""Training draws its frames from the sets' chunk files mapped into memory where they can be (uncompressed, local:
fer.cache.reading.MappedData), reading only the pages of the frames and views drawn; False reads whole rows into
the buffers (tests compare the two)."""

Log = Callable[[str], None]
Sets = dict[str, ModalityData]


def stretches(units: np.ndarray, capacity: int) -> list[int]:
    """Cuts of ``units`` (the read unit of each entry, in order) into consecutive stretches of at most
    ``capacity`` distinct units each: [0, c1, ..., len(units)]."""
    cuts, seen = [0], set()
    for i, u in enumerate(units.tolist()):
        if u not in seen:
            if len(seen) == capacity:
                cuts.append(i)
                seen = set()
            seen.add(u)
    cuts.append(len(units))
    return cuts


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted distinct ``rows`` as spans [a, b) of consecutive rows."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, ends)]


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

    def hold(self, rows: np.ndarray) -> _Held:
        return self

    def close(self) -> None:
        pass


class StreamSource:
    """Feature sets read from the store by span while training, in bounded memory (see the module note)."""

    concurrent = False
    """One epoch at a time: its two buffers serve one order (the models of a stream train one after another)."""

    def __init__(self, features: LoadedFeatures, cfg: TrainConfig, plans: Mapping[str, FramePlan],
                 device: torch.device, *, budget: int,
                 hold_on_device: Callable[[int], bool] = lambda nbytes: True, log: Log = print):
        from fer.cache import open_store

        self.cfg, self.plans, self.device = cfg, dict(plans), device
        self.hold_on_device = hold_on_device
        self.sets: dict[str, DiskSet] = {m: md for m, md in features.sets.items() if m in cfg.modalities}
        bad = [m for m, md in self.sets.items() if not isinstance(md, DiskSet)]
        if bad:
            raise ValueError(f"StreamSource needs feature sets left on disk; {bad} are in memory")
        self.model_sets = model_sets(self.sets, self.plans)
        self.views = self.plans["face"].test_views if "face" in self.plans else 1
        self.store = open_store(features.store_path, mode="r")
        self.readers = {m: self.store.span_reader(md.spec) for m, md in self.sets.items()}
        self._masks = {m: md.mask.numpy() for m, md in self.sets.items()}  # of the loaded rows, read at load
        self.store_rows = np.asarray(features.rows, dtype=np.int64)
        self.n_store = self.store.n
        _, self.block_rows = sampling_blocks(features, tuple(self.sets))
        row_bytes = sum(stored_row_bytes(md) for md in self.sets.values())
        fits = max(1, min(budget // 2, STREAM_CAP) // (2 * row_bytes))  # rows per buffer the budget allows
        blocks = -(-self.n_store // self.block_rows)
        window = min(sampling.WINDOW_BLOCKS, blocks) * self.block_rows
        self.whole_blocks = fits >= window
        """True: a buffer holds whole sampling blocks (a window); False: the rows a stretch needs."""
        self.buffer_rows = int(window if self.whole_blocks else fits)
        # two buffers: one trains while background threads read the next stretch into the other
        n = self.buffer_rows
        self._data = [{m: np.empty((n, *md.row_shape), dtype=md.dtype) for m, md in self.sets.items()}
                      for _ in range(2)]
        self._mask = [{m: np.empty((n, md.row_shape[0]), dtype=bool) for m, md in self.sets.items()}
                      for _ in range(2)]
        self.buffer_bytes = 2 * self.buffer_rows * row_bytes
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fer-stream")
        self._pending: list[Future] = []
        how = (f"windows of {min(sampling.WINDOW_BLOCKS, blocks)} blocks read whole" if self.whole_blocks else
               f"{self.buffer_rows} clips per buffer, read row by row (a window of {window} clips is over "
               "the budget)")
        self.mapped = self._map() if MAP else {}
        """The sets' data mapped from their chunk files (training draws its frames from them), or empty."""
        if self.mapped:
            how = f"training frames drawn from the mapped chunk files; evaluation in {how}"
        log(f"streaming: blocks of {self.block_rows} clips, {how}, {self.buffer_bytes / 1e6:.1f} MB of "
            f"buffers, {READ_THREADS} reader threads")

    def _map(self) -> dict[str, MappedData]:
        """Every set's data mapped (MappedData), or none of them where one cannot be."""
        out: dict[str, MappedData] = {}
        for m, reader in self.readers.items():
            got = reader.mapped(self.store_rows)
            if got is None:
                for md in out.values():
                    md.close()
                return {}
            out[m] = got
        return out

    # ------------------------------------------------------------ reading
    def _plan(self, rows: np.ndarray) -> list[tuple[np.ndarray, list[tuple[int, int]], np.ndarray]]:
        """Per stretch of ``rows`` (loaded positions, in order): its buffer rows, the store spans to read."""
        at = self.store_rows[rows]
        unit = at // self.block_rows if self.whole_blocks else at
        capacity = self.buffer_rows // self.block_rows if self.whole_blocks else self.buffer_rows
        cuts = stretches(unit, capacity)
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if self.whole_blocks:
                spans = [(int(u) * self.block_rows, min(self.n_store, (int(u) + 1) * self.block_rows))
                         for u in np.unique(unit[a:b])]
            else:
                spans = runs(np.unique(at[a:b]))
            starts = np.array([s for s, _ in spans], dtype=np.int64)
            offsets = np.cumsum([0] + [e - s for s, e in spans[:-1]]).astype(np.int64)
            k = np.searchsorted(starts, at[a:b], side="right") - 1
            out.append((offsets[k] + at[a:b] - starts[k], spans, rows[a:b]))
        return out

    def _read(self, which: int, m: str, spans: list[tuple[int, int, int]]) -> None:
        for offset, a, b in spans:  # the data only: the masks of the loaded rows are in memory already
            self.readers[m].read(a, b, out=self._data[which][m][offset:offset + b - a], mask=False)

    def _fill(self, which: int, spans: list[tuple[int, int]]) -> list[Future]:
        offsets = np.cumsum([0] + [b - a for a, b in spans[:-1]]).tolist()
        placed = [(int(o), a, b) for o, (a, b) in zip(offsets, spans)]
        parts = [placed[i::READ_THREADS] for i in range(READ_THREADS)]
        return [self._pool.submit(self._read, which, m, part) for m in self.readers for part in parts if part]

    def _stretched(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(buffer, buffer rows) per stretch of ``rows``, read ahead: while the caller uses one buffer, the
        next stretch is read into the other."""
        plan = self._plan(np.asarray(rows, dtype=np.int64))
        if not plan:
            return
        self._pending = self._fill(0, plan[0][1])
        try:
            for g, (local, _, entries) in enumerate(plan):
                for f in self._pending:
                    f.result()
                which = g % 2
                self._pending = self._fill(1 - which, plan[g + 1][1]) if g + 1 < len(plan) else []
                for m, mask in self._masks.items():
                    self._mask[which][m][local] = mask[entries]
                yield which, local
        finally:
            for f in self._pending:  # a loop left early: let its reads land before the buffers are reused
                f.exception()
            self._pending = []

    def _take(self, which: int, local: np.ndarray) -> Sets:
        """Rows ``local`` of a buffer, copied (the buffer is reused) and moved to the device."""
        idx = torch.from_numpy(local)
        return {m: ModalityData(md.spec, torch.from_numpy(self._data[which][m])[idx].to(self.device),
                                torch.from_numpy(self._mask[which][m])[idx].to(self.device), md.provenance)
                for m, md in self.sets.items()}

    def _view(self, which: int, local: np.ndarray) -> tuple[Sets, torch.Tensor]:
        """(sets, rows in them) for buffer rows ``local``. On the CPU the buffers are on the training device:
        frames are drawn from them directly (no copy of the raw rows); elsewhere the raw rows are copied."""
        if self.device.type == "cpu":
            return ({m: ModalityData(md.spec, torch.from_numpy(self._data[which][m]),
                                     torch.from_numpy(self._mask[which][m]), md.provenance)
                     for m, md in self.sets.items()}, torch.from_numpy(local))
        return self._take(which, local), torch.arange(len(local), device=self.device)

    def _joined(self, parts: list[Sets]) -> tuple[Sets, torch.Tensor]:
        sets = {m: ModalityData(md.spec, torch.cat([p[m].data for p in parts]),
                                torch.cat([p[m].mask for p in parts]), md.provenance)
                for m, md in parts[0].items()}
        n = int(next(iter(sets.values())).data.shape[0])
        return sets, torch.arange(n, device=self.device)

    def _batches(self, rows: np.ndarray, size: int) -> Iterator[tuple[Sets, torch.Tensor]]:
        """(sets, rows in them) of ``rows`` (loaded positions) in consecutive batches of ``size`` (the last
        one shorter): the batches a MemorySource cuts. A batch that spans two stretches is copied out piece by
        piece before its first buffer is reused."""
        parts: list[Sets] = []
        held = 0
        for which, local in self._stretched(rows):
            i = 0
            if held:
                i = min(size - held, len(local))
                parts.append(self._take(which, local[:i]))
                held += i
                if held == size:
                    yield self._joined(parts)
                    parts, held = [], 0
            while not held and len(local) - i >= size:
                yield self._view(which, local[i:i + size])
                i += size
            if i < len(local):
                parts.append(self._take(which, local[i:]))
                held += len(local) - i
        if held:
            yield self._joined(parts)

    # ------------------------------------------------------------ mapped training
    def _mapped_epoch(self, entries: np.ndarray, draw: torch.Generator | None) -> Iterator[Batch]:
        """The batches of ``entries`` drawn from the mapped sets. While a window of blocks trains, the next one
        is read from disk in the background; what training touched is dropped from resident memory each time
        it passes the stream's share of the budget (the buffers' bytes)."""
        at = self.store_rows[entries]
        blk = at // self.block_rows
        cuts = stretches(blk, sampling.WINDOW_BLOCKS)
        row_cost = sum(md.row_bytes + md.FAULT_BYTES for md in self.mapped.values())  # at most
        dirty: set[int] = set()
        ahead = 0  # stretches asked for so far

        def blocks(how: str, which: Iterable[int]) -> None:
            for a, b in runs(np.array(sorted(which), dtype=np.int64)):
                for md in self.mapped.values():
                    getattr(md, how)(a * self.block_rows, min(self.n_store, b * self.block_rows))

        bs = self.cfg.batch_size
        try:
            for i in range(0, len(entries), bs):
                j = min(len(entries), i + bs)
                g = int(np.searchsorted(cuts, j - 1, side="right"))  # the stretch after this batch's last
                while ahead <= min(g, len(cuts) - 2):
                    self._pool.submit(blocks, "prefetch", np.unique(blk[cuts[ahead]:cuts[ahead + 1]]).tolist())
                    ahead += 1
                dirty.update(at[i:j].tolist())
                yield Batch(self._mapped_inputs(entries[i:j], at[i:j], draw),
                            torch.from_numpy(np.ascontiguousarray(entries[i:j])).to(self.device))
                if len(dirty) * row_cost > self.buffer_bytes:
                    blocks("release", {r // self.block_rows for r in dirty})
                    dirty.clear()
        finally:
            blocks("release", {r // self.block_rows for r in dirty})

    def _mapped_inputs(self, entries: np.ndarray, at: np.ndarray,
                       draw: torch.Generator | None) -> dict[str, torch.Tensor]:
        """make_inputs for store rows ``at``, each set's rows (the face: only its drawn frames and views) taken
        from the mapped data; the draws are make_inputs' own, on the device, so the numbers are the same."""
        sets, out = {}, {}
        for m, md in self.sets.items():
            mask = torch.from_numpy(self._masks[m][entries]).to(self.device)
            if m in self.plans:
                plan = self.plans[m]
                pos, v = plan.choose(mask, train=True, draw=draw)
                x = plan.take(self.mapped[m].data, at, None if pos is None else pos.cpu().numpy(), v.cpu().numpy())
                out[m], out[f"{m}_mask"] = torch.from_numpy(x).to(self.device).float(), plan.present(mask)
            else:
                sets[m] = ModalityData(md.spec, torch.from_numpy(self.mapped[m].data[at]).to(self.device), mask,
                                       md.provenance)
        if sets:
            rows = torch.arange(len(at), device=self.device)
            out.update(make_batch(sets, rows, self.cfg, modalities=tuple(m for m in self.cfg.modalities if m in sets)))
        return out

    # ------------------------------------------------------------ the source
    def epoch(self, order: torch.Tensor, *, draw: torch.Generator | None) -> Iterator[Batch]:
        """Batches of ``order`` (loaded-row positions, with repeats, as drawn), in that order."""
        entries = order.numpy()
        if self.mapped:
            yield from self._mapped_epoch(entries, draw)
            return
        at = 0
        for sets, rows in self._batches(entries, self.cfg.batch_size):
            n = len(rows)
            yield Batch(make_inputs(sets, rows, self.cfg, self.plans, train=True, draw=draw),
                        torch.from_numpy(np.ascontiguousarray(entries[at:at + n])).to(self.device))
            at += n

    def evaluate(self, rows: np.ndarray,
                 batch: int = EVAL_BATCH) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]:
        """(inputs of each evaluated view, positions in ``rows``) per batch, frames at the segment centres."""
        at = 0
        for sets, local in self._batches(np.asarray(rows, dtype=np.int64), batch):
            views = [make_inputs(sets, local, self.cfg, self.plans, train=False, view=v)
                     for v in range(self.views)]
            yield views, torch.arange(at, at + len(local), device=self.device)
            at += len(local)

    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every stored token of ``rows`` of one modality, a few MB at a time (input standardisation)."""
        for sets, local in self._batches(np.asarray(rows, dtype=np.int64), norm_rows(self.sets[modality])):
            yield norm_pair(sets, local, modality, self.cfg)

    def hold(self, rows: np.ndarray) -> _Held:
        """``rows`` (the validation clips) read once and kept in memory as the model sees them at evaluation:
        the face's centre tokens in every evaluated view, the other sets' rows."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in self.sets}
        masks: dict[str, list[torch.Tensor]] = {m: [] for m in self.sets}
        for sets, local in self._batches(rows, EVAL_BATCH):
            for m, md in sets.items():
                if m in self.plans:
                    views = [self.plans[m].gather(md.data, md.mask, local, train=False, view=v)
                             for v in range(self.views)]
                    x = torch.stack([v[0] for v in views], dim=2) if self.views > 1 else views[0][0]
                    parts[m].append(x.cpu())
                    masks[m].append(views[0][1].cpu())
                else:
                    parts[m].append(md.data[local].cpu())
                    masks[m].append(md.mask[local].cpu())
        held = {m: ModalityData(md.spec, torch.cat(parts[m]), torch.cat(masks[m]), md.provenance)
                for m, md in self.sets.items()}
        plans = {m: FramePlan(segments=None, views=self.views) for m in self.plans}  # already drawn
        nbytes = sum(md.nbytes for md in held.values())
        on_device = self.hold_on_device(nbytes)
        return _Held(rows, MemorySource(held, self.cfg, plans, self.device, on_device=on_device))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for md in self.mapped.values():
            md.close()
        self.mapped = {}
        self.store.close()

    def describe(self) -> dict[str, Any]:
        """What a run's resources.json says about this source."""
        return {"source": "stream", "block_rows": int(self.block_rows),
                "whole_blocks": bool(self.whole_blocks), "mapped": bool(self.mapped),
                "buffer_rows": int(self.buffer_rows), "buffer_bytes": int(self.buffer_bytes),
                "read_threads": READ_THREADS}


def check_held(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan], n_val: int, *,
               budget: int, stream_bytes: int, what: str) -> None:
    """Refuse, saying why, when the validation clips (held in memory while streaming) pass the budget."""
    need = model_row_bytes(sets, plans) * n_val
    if need + stream_bytes > budget:
        from fer.cache.report import human_bytes

        raise FerError(f"{what}: its {n_val} validation clips, held in memory while the rest streams, need "
                       f"{human_bytes(need)} (plus {human_bytes(stream_bytes)} of stream buffers), over the "
                       f"memory budget of {human_bytes(budget)} (FER_MEMORY_BUDGET_GB): lower "
                       "--val-fraction, or train on a machine with more memory")
