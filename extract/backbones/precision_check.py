"""``--precision auto`` checks its guess on the run's own weights and data before committing to it.

The per-family table (fer.extract.backbones.precision.CPU_BF16_FAMILIES, and bf16/fp16 on GPUs) is only the
starting guess: it was measured on random weights, and real checkpoints can sit where bf16 rounds away what
matters (a real MobileNetV2 on a real photo: min cosine 0.9977). So before the feature set is named (its spec
carries the precision), ``settle`` runs the run's first clips through the model in fp32 and in the guessed
reduced precision, and keeps the reduced precision only when every feature is within MIN_COSINE of fp32 and it
is at least as fast; otherwise the run is fp32, said in one line. What was measured goes into the provenance.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fer.extract.backbones.precision import is_auto, prepare_device

MIN_COSINE = 0.999
"""The reduced precision is kept only when every feature of the first clips is within this cosine of fp32."""

Features = tuple[torch.Tensor, torch.Tensor]
"""``(data (B, T, ...), mask (B, T))`` as ``Extractor.embed`` returns them."""


@dataclass(frozen=True)
class PrecisionCheck:
    """What ``auto`` measured on the first clips: fp32 against the reduced precision it tried."""

    tried: str
    """``bf16`` or ``fp16``."""
    clips: int
    """Clips compared."""
    min_cosine: float
    """The smallest cosine between a feature in fp32 and the same feature in ``tried`` (1.0 is identical)."""
    fp32_s: float
    """Seconds for the clips in fp32 (after a warm-up call)."""
    reduced_s: float
    """Seconds for the clips in ``tried`` (after a warm-up call)."""
    min_speedup: float = 1.0
    """``tried`` must run at least this many times as fast as fp32 (1.0: not slower)."""

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.reduced_s if self.reduced_s > 0 else float("inf")

    @property
    def kept(self) -> bool:
        """True when ``tried`` is faithful (MIN_COSINE) and fast enough."""
        return self.min_cosine >= MIN_COSINE and self.speedup >= self.min_speedup

    def reason(self) -> str:
        """Why ``tried`` was dropped, for the one-line note."""
        if self.min_cosine < MIN_COSINE:
            return f"drift from fp32 (a cosine below {MIN_COSINE})"
        if self.min_speedup == 1.0:
            return "run slower than fp32"
        return f"run under {self.min_speedup:g}x fp32's speed"

    def provenance(self) -> dict[str, Any]:
        return {"tried": self.tried, "clips": self.clips, "min_cosine": round(self.min_cosine, 6),
                "fp32_s": round(self.fp32_s, 4), f"{self.tried}_s": round(self.reduced_s, 4),
                "speedup": round(self.speedup, 3),
                "decision": f"kept {self.tried}" if self.kept else f"fp32: {self.tried} would "
                            f"{self.reason()}"}


def min_cosine(a: Features, b: Features) -> float | None:
    """The smallest cosine between the rows ``a`` and ``b`` hold for the same tokens (the mask's True entries,
    each flattened); two all-zero rows count as equal. None when no token is present."""
    (x, mask), (y, _) = a, b
    x, y = x[mask].flatten(1).double(), y[mask].flatten(1).double()
    if x.shape[0] == 0:
        return None
    nx, ny = x.norm(dim=1), y.norm(dim=1)
    cos = (x * y).sum(1) / (nx * ny).clamp_min(1e-300)
    cos[(nx == 0) & (ny == 0)] = 1.0
    return float(cos.min())


def measure(run: Callable[[str, list[Any]], Features], items: list[Any], reduced: str,
            min_speedup: float = 1.0) -> PrecisionCheck | None:
    """Run ``items`` with ``run(precision, items)`` in fp32 and in ``reduced`` (each after a one-clip warm-up,
    so one-time costs such as kernel selection are not timed); None when no token was present to compare."""
    timed = {}
    for p in ("fp32", reduced):
        run(p, items[:1])
        t0 = time.perf_counter()
        timed[p] = (run(p, items), time.perf_counter() - t0)
    cos = min_cosine(timed["fp32"][0], timed[reduced][0])
    if cos is None:
        return None
    return PrecisionCheck(reduced, len(items), cos, timed["fp32"][1], timed[reduced][1], min_speedup)


def first_items(extractor: Any, records: Sequence[Any], clips: int) -> list[Any]:
    """``extractor.load`` of the first ``clips`` records that load (bad clips are skipped, as the run
    will skip them)."""
    items: list[Any] = []
    for record in records[: clips * 4]:
        try:
            items.append(extractor.load(record))
        except Exception:  # noqa: BLE001 - a clip the run will record as failed; the check takes the next
            continue
        if len(items) == clips:
            break
    return items


def settle(extractor: Any, records: Sequence[Any], clips: int = 8, started: Collection[str] = (),
           min_speedup: float = 1.0) -> None:
    """Settle ``--precision auto`` for ``extractor`` (a face or speech extractor) before its spec is read.

    Nothing to do unless the precision came from ``auto`` and is a reduced one. A feature set in ``started``
    (the store's) named for this run in either precision is resumed in its precision, unmeasured. Otherwise
    the first ``clips`` loadable ``records`` are measured (``measure``); a reduced precision that drifts or is
    slower is dropped for fp32 with a one-line note on stderr. Sets ``extractor.precision`` (and
    ``requested_precision``, ``build_args["precision"]``) and records ``extractor.precision_check`` for the
    provenance.
    """
    reduced = extractor.precision
    if reduced == "fp32" or not is_auto(extractor.requested_precision):
        return
    extractor.precision = "fp32"
    fp32_spec = extractor.spec
    extractor.precision = reduced
    if extractor.spec in started or fp32_spec in started:
        chosen = reduced if extractor.spec in started else "fp32"
        resumed = f"{chosen}: resumes the feature set begun in it (nothing measured)"
        _commit(extractor, chosen, {"tried": reduced, "decision": resumed})
        return
    items = first_items(extractor, records, clips)

    def run(precision: str, batch: list[Any]) -> Features:
        extractor.precision = precision
        return extractor.embed(batch)

    try:
        check = measure(run, items, reduced, min_speedup) if items else None
    except Exception as e:  # noqa: BLE001 - the run's first batch will say what is wrong with the model
        failed = f"{reduced}: not checked (the model failed on the first clips: {type(e).__name__})"
        _commit(extractor, reduced, {"tried": reduced, "decision": failed})
        return
    finally:
        extractor.precision = reduced
    if check is None:
        none = f"{reduced}: not checked (none of the first clips loaded, or none had a token)"
        _commit(extractor, reduced, {"tried": reduced, "decision": none})
        return
    if not check.kept:
        print(f"note: --precision auto: {reduced} would {check.reason()} on this model's first {check.clips} "
              f"clip(s) (min cosine {check.min_cosine:.5f}, {check.speedup:.2f}x fp32's speed): running in "
              "fp32", file=sys.stderr)
        prepare_device(extractor.device, "fp32", fixed_shapes=False)
    _commit(extractor, reduced if check.kept else "fp32", check.provenance())


def _commit(extractor: Any, precision: str, record: dict[str, Any]) -> None:
    extractor.precision = extractor.requested_precision = precision
    extractor.precision_check = record
    if getattr(extractor, "build_args", None) is not None:  # `fer predict` rebuilds in the precision chosen
        extractor.build_args["precision"] = precision
