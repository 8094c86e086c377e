"""What each training step draws: the face frames (fixed, segment centres or jittered), the view, the clips.

A face feature set is either *fixed-frame* (T tokens per clip, used as they are: the 16-frame cache) or
*all-frame* (its provenance says ``frames: "all"``: every face frame up to ``max_frames``, padded, with the
mask marking the valid ones). From an all-frame set the model sees ``segments`` tokens: the valid frames are
split into that many equal segments (TSN), and each token is the centre frame of its segment, or with
``--augment jitter`` a random frame inside it, drawn again every epoch. A set whose provenance lists
``views`` (e.g. ["original", "hflip"]) holds each frame in every view on the axis after the frames:
data (N, T, V, D...), mask (N, T). Training uses view 0, or with ``--augment flip`` a random view per clip;
evaluation runs every view and averages the predictions.

Segments use exact integers: with n valid frames and S segments, segment s covers the frames that overlap
[s n / S, (s + 1) n / S); its centre is ((2s + 1) n) // (2S) (the same rule as the extractor's 16 frames);
a jittered draw is (s n + r) // S with r uniform in 0..n-1, so each frame is drawn in proportion to its
overlap with the segment. Fewer valid frames than segments repeat frames, as the 16-frame cache does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError


def set_views(provenance: Mapping[str, Any]) -> int:
    """Views stored per frame (1, or 2 with mirrored faces): the length of the provenance's ``views``."""
    views = provenance.get("views")
    return len(views) if isinstance(views, (list, tuple)) and len(views) > 1 else 1


def is_all_frames(provenance: Mapping[str, Any]) -> bool:
    """True when a set holds every face frame of each clip (``frames: "all"``), not a fixed number."""
    return str(provenance.get("frames", "")).lower() == "all"


def centre_ranks(n: torch.Tensor, segments: int) -> torch.Tensor:
    """(B, S) ranks among the valid frames: the centre of each segment of each clip's n (B,) valid frames."""
    s = torch.arange(segments, device=n.device)
    return ((2 * s + 1)[None, :] * n[:, None]) // (2 * segments)


def jitter_ranks(n: torch.Tensor, segments: int, draw: torch.Generator | None) -> torch.Tensor:
    """(B, S) ranks: one uniformly drawn frame inside each segment (see the module note)."""
    s = torch.arange(segments, device=n.device)
    u = torch.rand(n.shape[0], segments, generator=draw, device=n.device)
    r = torch.minimum((u * n[:, None]).long(), (n[:, None] - 1).clamp_min(0))
    return (s[None, :] * n[:, None] + r) // segments


@dataclass(frozen=True)
class FramePlan:
    """How one face set's rows become the model's tokens."""

    segments: int | None = None
    """Tokens drawn from the valid frames (an all-frame set); None: the stored tokens as they are."""
    views: int = 1
    """Views stored per frame (axis 2 of the data when > 1)."""
    jitter: bool = False
    """Training draws a random frame per segment (else the centre)."""
    flip: bool = False
    """Training draws a random view per clip (else view 0)."""
    flip_test: bool = True
    """Evaluation averages the predictions of every stored view (else it uses view 0, the original)."""

    @classmethod
    def for_set(cls, spec: str, provenance: Mapping[str, Any], row_shape: tuple[int, ...], augment: tuple[str, ...],
                segments: int, store: str = "STORE", *, flip_test: bool | None = None) -> FramePlan:
        """The plan for a face set and the asked augmentations; FerError saying what to extract when it
        cannot. ``flip_test``: True averages every stored view at evaluation (an error without mirrored
        views), False uses the original only, None averages whatever views the set has."""
        views, every = set_views(provenance), is_all_frames(provenance)
        if "jitter" in augment and not every:
            raise FerError(f"--augment jitter draws from every frame of a clip, and {spec} holds {row_shape[0]} fixed "
                           f"frames: extract all of them with `fer extract ROOT -m face --frames all --store {store}`")
        if "flip" in augment and views < 2:
            raise FerError(f"--augment flip needs the mirrored view of every frame, and {spec} has none: extract "
                           f"them with `fer extract ROOT -m face --frames all --flip --store {store}`")
        if flip_test and views < 2:
            raise FerError(f"--test-flip on averages the mirrored view of every frame, and {spec} has none: "
                           f"extract them with `fer extract ROOT -m face --flip --store {store}`, or use "
                           "--test-flip auto")
        if views > 1 and (len(row_shape) < 3 or row_shape[1] != views):
            raise FerError(f"{spec} names {views} views but its rows are {tuple(row_shape)}, not (T, {views}, ...): "
                           "the set is damaged; extract it again")
        return cls(segments=segments if every else None, views=views, jitter="jitter" in augment,
                   flip="flip" in augment, flip_test=flip_test is not False)

    @property
    def test_views(self) -> int:
        """Views evaluated per clip (their predictions are averaged)."""
        return self.views if self.flip_test else 1

    def tokens(self, stored_frames: int) -> int:
        """Tokens per clip the model sees."""
        return self.segments if self.segments is not None else stored_frames

    def token_shape(self, row_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(tokens, *feature shape) of one clip as the model sees it."""
        feat = row_shape[2:] if self.views > 1 else row_shape[1:]
        return (self.tokens(row_shape[0]), *feat)

    def positions(self, mask: torch.Tensor, *, train: bool, draw: torch.Generator | None) -> torch.Tensor:
        """(B, S) frame positions for clips with (B, T) valid-frame masks (valid frames need not be a prefix)."""
        t = mask.shape[1]
        n = mask.sum(1)
        ar = torch.arange(t, device=mask.device)
        valid_first = torch.where(mask, ar, ar + t).argsort(dim=1)  # valid positions in order, then the rest
        ranks = jitter_ranks(n, self.segments, draw) if train and self.jitter else centre_ranks(n, self.segments)
        return valid_first.gather(1, ranks.clamp(0, t - 1))

    def draw_views(self, b: int, *, train: bool, draw: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(B,) the view of each training clip: random with flip, else 0."""
        if train and self.flip:
            return torch.randint(0, self.views, (b,), generator=draw, device=device)
        return torch.zeros(b, dtype=torch.long, device=device)

    def gather(self, data: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, *, train: bool,
               draw: torch.Generator | None = None, view: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens of ``rows`` (on data's device): (B, S, D...) in the stored dtype and (B, S) bool.

        ``view`` fixes the view (evaluation); None draws it (training; view 0 without flip).
        """
        m = mask[rows]
        pos, v = self.choose(m, train=train, draw=draw, view=view)
        return self.take(data, rows, pos, v), self.present(m)

    def choose(self, m: torch.Tensor, *, train: bool, draw: torch.Generator | None = None,
               view: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(frame positions (B, S), or None for the stored frames as they are; the view of each clip (B,)) for
        clips with (B, T) valid-frame masks ``m``: every draw of a batch, in gather's order (the view first)."""
        b = m.shape[0]
        if view is None:
            v = self.draw_views(b, train=train, draw=draw, device=m.device)
        else:
            v = torch.full((b,), view, dtype=torch.long, device=m.device)
        return (None if self.segments is None else self.positions(m, train=train, draw=draw)), v

    def take(self, data: Any, rows: Any, pos: Any, v: Any) -> Any:
        """Tokens of ``rows`` at frames ``pos`` (None: every stored frame) and views ``v``, from torch tensors or
        numpy arrays alike (a streamed set's rows mapped from disk)."""
        if pos is None:
            if self.views == 1:
                return data[rows]
            frames = np.arange(data.shape[1]) if isinstance(data, np.ndarray) else torch.arange(
                data.shape[1], device=data.device)
            return data[rows[:, None], frames[None, :], v[:, None]]
        return data[rows[:, None], pos, v[:, None]] if self.views > 1 else data[rows[:, None], pos]

    def present(self, m: torch.Tensor) -> torch.Tensor:
        """(B, S) tokens present, from the (B, T) valid-frame masks: a clip without a valid frame stays absent."""
        if self.segments is None:
            return m
        return m.any(1, keepdim=True).expand(m.shape[0], self.segments)


BLOCK_BYTES = 4 << 20
"""Stored bytes (every chosen set, data and mask) of one sampling block: the consecutive store rows an epoch
keeps together, so that a streamed epoch reads them in one span."""
WINDOW_BLOCKS = 32
"""Blocks whose rows an epoch shuffles together (the shuffle window); a stream holds one window at a time."""
MIN_BLOCKS = 8
"""A small set is cut into at least this many blocks, so that blocks still move within an epoch."""


def block_rows(row_bytes: int, n_rows: int) -> int:
    """Rows per sampling block for rows of ``row_bytes`` stored bytes among ``n_rows`` store rows.

    A function of the data alone (never of the memory budget or of how the data is held), so that the epoch
    order, and with it every number of a run, is the same in memory and streamed.
    """
    return int(max(1, min(BLOCK_BYTES // max(int(row_bytes), 1), -(-int(n_rows) // MIN_BLOCKS))))


def epoch_order(rows: np.ndarray, labels: np.ndarray, *, balance: bool, gen: torch.Generator,
                blocks: np.ndarray | None = None) -> torch.Tensor:
    """The training rows of one epoch in the order they are trained on (a CPU int64 tensor; with ``balance``,
    rows repeat): a function of the generator's state, the rows, their labels and their blocks only.

    balance: the epoch keeps its length n and every class present gets n // C clips (the remainder to
    randomly chosen classes): a class with fewer clips repeats each one floor or ceil times (every copy in a
    fresh order), a larger one contributes a different random subset each epoch.

    blocks: (n,) the sampling block of every loaded row (fer.train.batches.sampling_blocks): the epoch then
    visits its blocks in a random order, WINDOW_BLOCKS at a time, with the rows of each window in a random
    order (what a streamed epoch can read a span at a time). None: one shuffle of every row.
    """
    order = _drawn(np.asarray(rows, dtype=np.int64), labels, balance=balance, gen=gen)
    return order if blocks is None else by_window(order, np.asarray(blocks), gen)


def by_window(order: torch.Tensor, blocks: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """``order`` (already shuffled) regrouped by window: its blocks in a random order, cut into windows of
    WINDOW_BLOCKS, each window's rows in their order within ``order`` (a random order, since ``order`` is)."""
    blk = blocks[order.numpy()]
    present = np.unique(blk)
    rank = np.empty(int(present[-1]) + 1 if len(present) else 0, dtype=np.int64)
    rank[present[torch.randperm(len(present), generator=gen).numpy()]] = np.arange(len(present))
    window = rank[blk] // WINDOW_BLOCKS
    return order[torch.from_numpy(np.argsort(window, kind="stable"))]


def _drawn(rows: np.ndarray, labels: np.ndarray, *, balance: bool, gen: torch.Generator) -> torch.Tensor:
    """The epoch's rows shuffled; with ``balance``, drawn to equal class counts (see epoch_order)."""
    r = torch.from_numpy(rows)
    if not balance:
        return r[torch.randperm(len(r), generator=gen)]
    y = torch.from_numpy(np.asarray(labels)[rows])
    classes = torch.unique(y)
    c, n = len(classes), len(r)
    counts = torch.full((c,), n // c, dtype=torch.long)
    counts[torch.randperm(c, generator=gen)[: n % c]] += 1
    parts = []
    for cls, m in zip(classes.tolist(), counts.tolist()):
        members = r[y == cls]
        reps = -(-m // len(members))
        keys = torch.rand(reps, len(members), generator=gen).argsort(dim=1)  # each copy in its own order
        parts.append(members[keys.flatten()[:m]])
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=gen)]
