"""fer.train.sampling: segment frames (centres, jitter), views, and class-balanced epochs."""

import math

import numpy as np
import pytest
import torch

from fer.cache.errors import FerError
from fer.extract.media import uniform_indices
from fer.train.sampling import FramePlan, centre_ranks, epoch_order


def _masks(b=64, t=20, seed=0):
    """(B, T) valid-frame masks with 0..T valid frames each, not all prefixes (gaps in the middle too)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) < torch.rand(b, 1, generator=g)
    mask[0] = False  # no valid frame at all
    mask[1] = True  # all valid
    mask[2] = torch.arange(t) < 3  # fewer valid frames than segments
    return mask


def test_jitter_stays_inside_each_segment_and_on_valid_frames():
    plan = FramePlan(segments=8, jitter=True)
    mask = _masks()
    n = mask.sum(1)
    draw = torch.Generator().manual_seed(1)
    s = torch.arange(8)
    seen = torch.zeros(mask.shape, dtype=torch.bool)
    for _ in range(200):
        pos = plan.positions(mask, train=True, draw=draw)
        assert pos.shape == (64, 8)
        ok = n > 0
        assert mask[ok][:, :, None].gather(1, pos[ok][:, :, None]).all()  # always a valid frame
        # its rank among the valid frames lies in the segment: frames overlapping [s n/S, (s+1) n/S)
        rank = mask.long().cumsum(1).gather(1, pos) - 1
        lo = (s[None] * n[:, None]) // 8
        hi = -(-((s[None] + 1) * n[:, None]) // 8) - 1
        assert ((rank >= lo) & (rank <= hi))[ok].all()
        seen[torch.arange(64)[:, None], pos] = True
    assert torch.equal(seen[ok], mask[ok])  # and every valid frame gets drawn


def test_jitter_draws_in_proportion_to_overlap():
    # 5 frames, 2 segments: segment 0 covers [0, 2.5) -> frames 0, 1 fully and frame 2 half
    plan = FramePlan(segments=2, jitter=True)
    mask = torch.ones(20000, 5, dtype=torch.bool)
    pos = plan.positions(mask, train=True, draw=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(pos, minlength=5).double() / len(pos)
    torch.testing.assert_close(freq, torch.tensor([0.4, 0.4, 0.2, 0.0, 0.0], dtype=torch.double), atol=0.02, rtol=0)


def test_evaluation_uses_segment_centres_deterministically():
    plan = FramePlan(segments=16, jitter=True, flip=True, views=2)
    mask = torch.zeros(4, 64, dtype=torch.bool)
    for i, k in enumerate((64, 40, 16, 5)):
        mask[i, :k] = True
    a = plan.positions(mask, train=False, draw=torch.Generator().manual_seed(0))
    b = plan.positions(mask, train=False, draw=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    for i, k in enumerate((64, 40, 16, 5)):
        assert a[i].tolist() == uniform_indices(k, 16).tolist()  # the extractor's 16-frame rule
    assert torch.equal(centre_ranks(torch.tensor([7]), 3), torch.tensor([[1, 3, 5]]))
    # views: evaluation asks for each one; training without flip uses view 0
    assert plan.draw_views(3, train=False, draw=None, device=torch.device("cpu")).tolist() == [0, 0, 0]
    assert FramePlan(views=2).draw_views(50, train=True, draw=None, device=torch.device("cpu")).eq(0).all()
    flips = plan.draw_views(400, train=True, draw=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert 150 < int(flips.sum()) < 250


def test_gather_picks_frames_and_views():
    t, v, d = 10, 2, 3
    data = torch.arange(4 * t * v * d, dtype=torch.float32).view(4, t, v, d)
    mask = torch.ones(4, t, dtype=torch.bool)
    mask[3] = False
    plan = FramePlan(segments=5, views=2)
    x, present = plan.gather(data, mask, torch.tensor([2, 3]), train=False, view=1)
    assert x.shape == (2, 5, d) and present.tolist() == [[True] * 5, [False] * 5]
    assert torch.equal(x[0], data[2, [1, 3, 5, 7, 9], 1])
    fixed = FramePlan(views=2)  # a fixed-frame set with views: every stored frame of the asked view
    x, m = fixed.gather(data, mask, torch.tensor([0]), train=False, view=0)
    assert torch.equal(x[0], data[0, :, 0]) and m.shape == (1, t)


def test_plan_refuses_what_the_set_cannot_give():
    with pytest.raises(FerError, match=r"holds 16 fixed frames: extract all of them with `fer extract ROOT -m face "
                                       r"--frames all --store s.zarr`"):
        FramePlan.for_set("face.x.16f", {"modality": "face"}, (16, 512), ("jitter",), 16, "s.zarr")
    with pytest.raises(FerError, match=r"has none: extract them with `fer extract ROOT -m face --frames all --flip"):
        FramePlan.for_set("face.x.all", {"frames": "all"}, (64, 512), ("jitter", "flip"), 16)
    plan = FramePlan.for_set("face.x.all", {"frames": "all", "views": ["original", "hflip"]}, (64, 2, 512),
                             ("flip",), 8)
    assert plan == FramePlan(segments=8, views=2, jitter=False, flip=True)
    assert plan.token_shape((64, 2, 512)) == (8, 512)
    assert FramePlan.for_set("face.x", {}, (16, 256, 2, 2), (), 16).token_shape((16, 256, 2, 2)) == (16, 256, 2, 2)


def test_balance_evens_the_class_counts_of_each_epoch():
    labels = np.array([0] * 60 + [1] * 25 + [2] * 9 + [3] * 6)
    rows = np.arange(100)
    gen = torch.Generator().manual_seed(0)
    plain = epoch_order(rows, labels, balance=False, gen=gen)
    assert sorted(plain.tolist()) == list(range(100))
    assert np.bincount(labels[plain.numpy()]).tolist() == [60, 25, 9, 6]
    epochs = [epoch_order(rows, labels, balance=True, gen=gen).numpy() for _ in range(3)]
    for order in epochs:
        assert len(order) == 100
        assert sorted(np.bincount(labels[order]).tolist()) == [25, 25, 25, 25]
        copies = np.bincount(order, minlength=100)
        assert set(copies[labels == 3]) <= {4, 5} and set(copies[labels == 2]) <= {2, 3}  # 25/6, 25/9
        assert set(copies[labels == 0]) <= {0, 1} and copies[labels == 0].sum() == 25  # subsampled
    majority_seen = [set(o[labels[o] == 0]) for o in epochs]
    assert majority_seen[0] != majority_seen[1]  # a different subset each epoch
    # 98 clips over 4 classes: the remainder goes to two of them, one clip each
    odd = epoch_order(np.arange(98), labels[:98], balance=True, gen=gen).numpy()
    counts = np.bincount(labels[odd])
    assert counts.sum() == 98 and counts.max() - counts.min() <= 1
    assert math.isclose(counts.mean(), 24.5)
