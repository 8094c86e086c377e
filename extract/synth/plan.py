"""What the synthetic dataset holds, decided before any pixel is drawn: classes, votes, folds or splits.

The plan is made in one process from the seed, so it never depends on how many workers
render the clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer.cache.schema import NUM_ANNOTATORS, NUM_CLASSES, NUM_FOLDS, SINGLE_LABEL_MIN_VOTES

# DFEW's single-labeled class totals (happy, sad, neutral, angry, surprise, disgust, fear).
DFEW_CLASS_TOTALS = np.array([2445, 1894, 2669, 2173, 1469, 145, 902], np.float64)
# DFEW: 11,697 of 16,372 clips are single-labeled.
AMBIGUOUS_SHARE = 1.0 - 11697 / 16372

# Whom annotators confuse a class with (rows: true class; weights over the others).
CONFUSE = np.array(
    [
        [0, 0.5, 3, 0.5, 2, 0.3, 0.5],  # happy
        [0.5, 0, 3, 0.8, 0.3, 0.8, 1.5],  # sad
        [1.5, 2.5, 0, 1.5, 0.8, 0.4, 0.6],  # neutral
        [0.4, 1.0, 1.5, 0, 0.7, 2.5, 0.8],  # angry
        [1.5, 0.3, 1.2, 0.6, 0, 0.4, 3.0],  # surprise
        [0.3, 1.2, 0.8, 3.0, 0.5, 0, 0.8],  # disgust
        [0.3, 1.5, 0.6, 0.8, 3.0, 0.6, 0],  # fear
    ],
    np.float64,
)


@dataclass
class ClipPlan:
    """One clip's ground truth, fixed before rendering."""

    index: int
    """1-based clip number; the id is its 5-digit zero-padded form."""
    votes: np.ndarray
    """(7,) int vote counts of the 10 simulated annotators."""
    primary: int
    """Class index (0-based) the clip mostly shows."""
    secondary: int
    """Second class mixed in (== primary for a clean single-labeled clip)."""
    mix: float
    """Weight of the primary class in the rendered expression, 0.5..1."""
    intensity: float
    """Expression strength 0..1; weak clips are harder."""
    test_fold: int
    """1..5: the fold whose test set holds this clip; 0 when not single-labeled (or the layout has splits)."""
    corrupt: str = ""
    """Kind of damage for the extra broken clips, else empty."""
    split: str = ""
    """train / val / test for layouts with one official split (FERV39k, class folders); empty for 5-fold ones."""

    @property
    def clip_id(self) -> str:
        return f"{self.index:05d}"

    @property
    def label(self) -> int:
        """1-based class label for single-labeled clips (DFEW's 1..7), else 0."""
        top = int(np.argmax(self.votes))
        return top + 1 if self.votes[top] >= SINGLE_LABEL_MIN_VOTES else 0


def _allocate(total: int, share: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``total`` by ``share`` (largest remainder), then lift every class to ``minimum``."""
    raw = share / share.sum() * total
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[k] += 1
    for k in range(len(counts)):
        while counts[k] < minimum:
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    return counts


def _other_votes(rng: np.random.Generator, votes: np.ndarray, n: int, exclude: list[int], row: int) -> None:
    """Spread ``n`` remaining votes over classes the annotators confuse with ``row``, no class above 6."""
    w = CONFUSE[row].copy()
    w[exclude] = 0
    for _ in range(n):
        ok = w * (votes < SINGLE_LABEL_MIN_VOTES - 1)
        votes[rng.choice(NUM_CLASSES, p=ok / ok.sum())] += 1


def single_votes(rng: np.random.Generator, c: int) -> np.ndarray:
    """Votes of a single-labeled clip of class ``c``: 7..10 for ``c``, the rest to confusable classes."""
    votes = np.zeros(NUM_CLASSES, int)
    votes[c] = rng.choice([7, 8, 9, 10], p=[0.3, 0.3, 0.25, 0.15])
    _other_votes(rng, votes, NUM_ANNOTATORS - votes[c], [c], c)
    return votes


def plan_dataset(n: int, seed: int, corrupt_kinds: list[str], *, class_totals: np.ndarray | None = None,
                 annotators: bool = True, splits: dict[str, float] | None = None) -> list[ClipPlan]:
    """Plan ``n`` clips plus one extra per corrupt kind.

    DFEW (``annotators``): about 29% ambiguous clips, 10 simulated annotators' votes, DFEW's class shares,
    5 stratified folds over the single-labeled clips. Otherwise (MAFW, FERV39k, class folders) every clip has
    one label (10 votes for its class) and ``class_totals`` gives the class shares; with ``splits`` (name ->
    share, e.g. train 0.7 / val 0.1 / test 0.2) each clip gets a stratified split, else a test fold 1..5.
    Every class gets a few clips when there are enough (at least one per fold's test set). Extra broken clips
    come last and are single-labeled.
    """
    if annotators:
        return _plan_annotated(n, seed, corrupt_kinds)
    totals = np.asarray(class_totals, np.float64)
    c_n = len(totals)
    rng = np.random.default_rng([seed, 0x5EED, c_n])
    parts = list(splits) if splits else []
    minimum = max(1, min(len(parts) or NUM_FOLDS, n // c_n // 3)) if n >= 2 * c_n else 0
    counts = _allocate(n, totals, minimum)
    plans: list[ClipPlan] = []
    for c, k in enumerate(counts):
        for _ in range(k):
            votes = np.zeros(c_n, int)
            votes[c] = NUM_ANNOTATORS
            plans.append(ClipPlan(0, votes, c, c, 1.0, float(rng.uniform(0.45, 1.0)), 0))
    order = rng.permutation(len(plans))
    plans = [plans[i] for i in order]
    for i, p in enumerate(plans):
        p.index = i + 1
    turn = 0
    for c in range(c_n):
        members = [p for p in plans if p.primary == c]
        for rank, j in enumerate(rng.permutation(len(members))):
            if splits:
                members[j].split = _split_of(rank, len(members), splits)
            else:
                members[j].test_fold = turn % NUM_FOLDS + 1
                turn += 1
    for j, kind in enumerate(corrupt_kinds):
        c = int(rng.choice(c_n, p=totals / totals.sum()))
        votes = np.zeros(c_n, int)
        votes[c] = NUM_ANNOTATORS
        plans.append(ClipPlan(n + j + 1, votes, c, c, 1.0, float(rng.uniform(0.5, 1.0)),
                              0 if splits else turn % NUM_FOLDS + 1, corrupt=kind, split="train" if splits else ""))
        turn += 1
    return plans


def _split_of(rank: int, total: int, splits: dict[str, float]) -> str:
    """The split of the ``rank``-th of ``total`` shuffled clips of one class: test and val first, so small
    classes still reach them, the rest to train."""
    names = sorted(splits, key=lambda s: s == "train")  # train last
    bounds, acc = [], 0
    for name in names:
        k = total if name == "train" else max(1 if total >= len(names) else 0, int(round(splits[name] * total)))
        acc += k
        bounds.append((acc, name))
    return next((name for b, name in bounds if rank < b), "train")


def _plan_annotated(n: int, seed: int, corrupt_kinds: list[str]) -> list[ClipPlan]:
    """DFEW: ambiguous and single-labeled clips from 10 simulated annotators, 5 stratified folds."""
    rng = np.random.default_rng([seed, 0x5EED])
    n_amb = int(round(n * AMBIGUOUS_SHARE)) if n >= 4 else 0
    n_single = n - n_amb
    minimum = min(NUM_FOLDS, n_single // NUM_CLASSES // 3) if n_single >= NUM_CLASSES else 0
    counts = _allocate(n_single, DFEW_CLASS_TOTALS, max(minimum, 1 if n_single >= 2 * NUM_CLASSES else 0))

    plans: list[ClipPlan] = []
    for c, k in enumerate(counts):
        for _ in range(k):
            v = single_votes(rng, c)
            # clearer expressions get more agreement; weak ones are harder to label and to learn
            inten = float(np.clip(rng.uniform(0.35, 0.85) + 0.05 * (v[c] - 7), 0.3, 1.0))
            plans.append(ClipPlan(0, v, c, c, 1.0, inten, 0))
    share = DFEW_CLASS_TOTALS / DFEW_CLASS_TOTALS.sum()
    for _ in range(n_amb):
        a = int(rng.choice(NUM_CLASSES, p=share))
        b = int(rng.choice(NUM_CLASSES, p=CONFUSE[a] / CONFUSE[a].sum()))
        votes = np.zeros(NUM_CLASSES, int)
        votes[a] = rng.integers(3, 7)
        votes[b] = rng.integers(2, min(votes[a], NUM_ANNOTATORS - votes[a]) + 1)
        _other_votes(rng, votes, NUM_ANNOTATORS - votes.sum(), [a, b], a)
        mix = votes[a] / (votes[a] + votes[b])
        plans.append(ClipPlan(0, votes, a, b, float(mix), float(rng.uniform(0.3, 0.85)), 0))

    order = rng.permutation(len(plans))
    plans = [plans[i] for i in order]
    for i, p in enumerate(plans):
        p.index = i + 1

    # stratified folds: within each class, shuffled clips take test folds 1..5 in turn, and the
    # turn carries over from class to class so fold sizes stay within one of each other
    turn = 0
    for c in range(NUM_CLASSES):
        members = [p for p in plans if p.label == c + 1]
        for j in rng.permutation(len(members)):
            members[j].test_fold = turn % NUM_FOLDS + 1
            turn += 1

    # broken clips: ordinary single-labeled clips that get damaged after rendering
    for j, kind in enumerate(corrupt_kinds):
        c = int(rng.choice(NUM_CLASSES, p=share))
        plans.append(ClipPlan(n + j + 1, single_votes(rng, c), c, c, 1.0, float(rng.uniform(0.5, 1.0)),
                              turn % NUM_FOLDS + 1, corrupt=kind))
        turn += 1
    return plans
