"""The model half of ``fer extract``: a batch of loaded clips through ``extractor.embed``, one clip that
breaks the model failing alone, and a systemic failure (a bug, out of memory) stopping the run with one
line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerEnvError, FerError
from fer.extract.extractor import Extractor
from fer.extract.loading import Loaded
from fer.extract.summary import one_line


def embed_safe(
    extractor: Extractor, oks: list[Loaded], strict: bool = False
) -> dict[int, tuple[np.ndarray, np.ndarray] | str]:
    """row -> (data fp16, mask) or a failure reason. A failing batch is retried clip by clip so one
    clip that breaks the model fails alone; when every clip of a batch fails on its own (a systemic
    problem such as a bug or out of memory), or a single-clip first batch fails (``strict``), it raises.

    The retries run after the except block has ended, with the device's cache emptied: the failed batch's
    exception and traceback (which hold its tensors) are gone by then, so after an out-of-memory error the
    single clips get the memory back."""
    if not oks:
        return {}

    def run(group: list[Loaded]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        with torch.inference_mode():
            data, mask = extractor.embed([b.item for b in group])
        data = data.detach().to("cpu", torch.float16).numpy()
        mask = mask.detach().to("cpu", torch.bool).numpy()
        return {b.row: (data[i], mask[i]) for i, b in enumerate(group)}

    got = _attempt(run, oks)
    if not isinstance(got, _Failure):
        return got
    failure = got
    if len(oks) == 1 and not strict:
        return {oks[0].row: one_line(f"model failed on this clip: {failure.reason}")}
    out: dict[int, Any] = {}
    if len(oks) > 1:
        _release_memory(extractor.device)
        for b in oks:
            got = _attempt(run, [b])
            if isinstance(got, _Failure):
                out[b.row] = one_line(f"model failed on this clip: {got.reason}")
                failure = got
                _release_memory(extractor.device)
            else:
                out.update(got)
    if out and not all(isinstance(v, str) for v in out.values()):
        return out
    raise _systemic_error(extractor, failure, len(oks))


@dataclass
class _Failure:
    """What is kept of a failed model call: its message, never the exception (its traceback holds tensors)."""

    reason: str
    out_of_memory: bool


def _attempt(run: Any, group: list[Loaded]) -> Any:
    """``run(group)``, or a _Failure when it raises an ordinary exception."""
    try:
        return run(group)
    except Exception as e:  # noqa: BLE001 - any model error: the caller decides per clip
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        return _Failure(reason=one_line(f"{type(e).__name__}: {e}"), out_of_memory=oom)


def _release_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back before a retry (nothing to do on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _systemic_error(extractor: Extractor, failure: _Failure, clips: int) -> FerError:
    """The one-line error when the model fails on every clip of a batch, one by one too."""
    what = "the first clip" if clips == 1 else f"every clip of a batch of {clips}, also one at a time"
    if failure.out_of_memory:
        return FerEnvError(
            f"the model ran out of memory on {extractor.device} on {what} ({failure.reason}): free the "
            "device (other processes on it?), use a smaller --batch-size or --size, or --device cpu"
        )
    return FerError(f"the model failed on {what} ({failure.reason}); this looks like a bug or a broken "
                    "install, not bad clips")
