"""Which part of a dataset one process owns: ``--shard k/n``, or RANK/WORLD_SIZE under torchrun.

Shards own whole store chunks of rows (``fer extract``) or every n-th clip (``fer data faces``, chunks of
one), so processes started side by side never write the same chunk (fer.cache.layout.owned_rows).
"""

from __future__ import annotations

import os

import numpy as np

from fer.cache import layout as L
from fer.cache.errors import FerError


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` with 1-based k (``1/2``, ``2/2``) -> 0-based ``(k-1, n)``; FerError when malformed."""
    try:
        k_s, n_s = text.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise FerError(f"--shard {text!r} is not k/n (e.g. 1/2 for the first of two shards)") from None
    if n < 1 or not 1 <= k <= n:
        m = max(n, 2)
        raise FerError(f"--shard {text}: k must be between 1 and n (1-based), e.g. 1/{m} .. {m}/{m}")
    return k - 1, n


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """A 0-based ``(k, n)`` as given to the runners; FerError unless 0 <= k < n."""
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise FerError(f"shard {k}/{n} is invalid: need 0 <= k < n")
    return k, n


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` under torchrun (or any launcher setting both), else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        r, w = int(rank), int(world)
    except ValueError:
        raise FerError(f"RANK={rank!r} / WORLD_SIZE={world!r} are not integers") from None
    if w < 1 or not 0 <= r < w:
        raise FerError(f"RANK={r} is outside WORLD_SIZE={w}")
    return r, w


def pick_shard(text: str | None) -> tuple[int, int]:
    """The shard of this process: ``--shard`` when given, else the launcher's ranks, else the whole (0, 1)."""
    return parse_shard(text) if text else (shard_from_env() or (0, 1))


def owned_items(count: int, shard: tuple[int, int], chunk_rows: int = 1) -> np.ndarray:
    """Indices of the items ``shard`` owns among ``count``: every n-th chunk of ``chunk_rows`` items."""
    return L.owned_rows(count, chunk_rows, check_shard(shard))
