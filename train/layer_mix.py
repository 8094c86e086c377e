"""``--audio-layer weighted``: a learned softmax-weighted sum of every stored audio layer (SUPERB).

Speech encoders carry emotion in middle layers more than in the last, and which layers depends on
the model; instead of picking one index, the trainer learns one weight per layer. Each layer is
first standardised with the training split's per-layer statistics (layers sit on very different
scales), then mixed with ``softmax(logits)``. The learned weights of each fold are written to the
run folder as ``layer_weights_fold<k>.json`` and drawn by fer.train.plots.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError

STATE_KEY = "audio_norm.logits"
"""Where a FerModel checkpoint keeps the mix's logits (the mix takes the place of the audio InputNorm)."""
STATE_KEYS = {"audio": STATE_KEY, "face": "face_mix.logits"}
"""The mix's logits per modality (``--face-layer weighted`` mixes the blocks of a face set of
``--layer all``)."""
PREFIX = {"audio": "", "face": "face_"}
"""File-name prefix of each modality's ``layer_weights_fold<k>.json`` (the audio's has none, as it always
had)."""


class LayerMix(nn.Module):
    """``(B, L, D)`` per-layer pooled states -> ``(B, D)``: per-layer standardisation, then a softmax-weighted sum.

    ``norm`` is the trainer's per-feature standardisation over the flattened ``L * D`` features
    (fer.train.model.InputNorm), so each layer gets its own statistics.
    """

    def __init__(self, layers: int, dim: int, norm: nn.Module):
        super().__init__()
        self.layers, self.dim = layers, dim
        self.logits = nn.Parameter(torch.zeros(layers))  # uniform mix at the start, as in SUPERB
        self.norm = norm

    @torch.no_grad()
    def fit(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-layer statistics over the clips with audio of ``(x (n, L, D), mask (n,))`` chunks."""
        self.norm.fit((x.reshape(len(x), -1), mask.reshape(len(x), -1).any(1)) for x, mask in chunks)

    def weights(self) -> torch.Tensor:
        """The mixing weights (softmax of the logits), summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x.reshape(len(x), -1)).view(len(x), self.layers, self.dim)
        return torch.einsum("l,bld->bd", self.weights(), z)


def audio_rows(data: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch for the mix: every layer ``(B, L, D)`` and whether the clip has audio ``(B,)``."""
    return data[idx].float(), mask[idx].any(dim=1)


def frame_rows(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A face set's stored chunks ``(x (n, T, [V,] *row[:-1], D), mask (n, T, [V,] *row[:-1]))`` (masks
    widened to the data, as a batch source's norm_chunks gives them) as frames: ``(x (F, *row), mask
    (F,))``."""
    for x, mask in chunks:
        row = x.shape[-2:]
        yield x.reshape(-1, *row), mask.reshape(-1, row[0])[:, 0]


def check_weighted(spec: str, data: torch.Tensor, is_sequence: bool) -> None:
    """A weighted mix needs per-layer rows ``(N, L, D)`` with several layers."""
    if is_sequence or data.dim() != 3 or data.shape[1] < 2:
        raise FerError(f"--audio-layer weighted mixes the layers of a speech encoder; {spec} holds "
                       f"{tuple(data.shape[1:])} (not several layers)")


def layer_weights_from_checkpoint(path: Path, modality: str = "audio") -> list[float] | None:
    """The learned layer weights of ``modality`` in a fold checkpoint, or None when the run did not learn
    any."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    logits = (ck.get("model") or {}).get(STATE_KEYS[modality])
    return None if logits is None else torch.softmax(logits.float(), 0).tolist()


def write_layer_weights(run_dir: Path, fold: int, spec: str | None = None,
                        modality: str = "audio") -> Path | None:
    """Write ``[face_]layer_weights_fold<fold>.json`` from the fold's final checkpoint (None when not a
    weighted run)."""
    ck = Path(run_dir) / f"checkpoint_fold{fold}.pt"
    if not ck.is_file():
        return None
    w = layer_weights_from_checkpoint(ck, modality)
    if w is None:
        return None
    out = Path(run_dir) / f"{PREFIX[modality]}layer_weights_fold{fold}.json"
    first = "the input embedding" if modality == "audio" else "the embeddings"
    best = int(max(range(len(w)), key=w.__getitem__))
    doc: dict[str, Any] = {"fold": fold, modality: spec, "weights": w, "best_layer": best,
                           "note": f"softmax weights over the stored layers: index 0 = {first}, i = layer i"}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    return out
