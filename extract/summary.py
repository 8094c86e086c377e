"""What a per-clip run did: the counts every run keeps (RunSummary), ``fer extract``'s own (ExtractSummary),
and the closing lines the CLI prints (reasons of failed clips, how to retry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fer.cache.layout import one_line as fold_line
from fer.extract.datasets.records import Dataset

REASON_CHARS = 300
"""A failure reason is cut to this many characters (the summary prints it, the store keeps it)."""


def one_line(text: object) -> str:
    """A clip's failure reason as the summary prints and the store keeps it."""
    return fold_line(text, limit=REASON_CHARS)


@dataclass(kw_only=True)
class RunSummary:
    """The counts every per-clip run keeps (fer extract, fer data faces); subclasses add what they wrote."""

    shard: tuple[int, int] = (0, 1)
    """0-based (k, n)."""
    owned: int = 0
    """Rows (clips) this shard owns."""
    skipped: int = 0
    """Rows already done before this run."""
    todo: int = 0
    """Rows this run tried (after --limit)."""
    done: int = 0
    """Rows written by this run."""
    failed: dict[str, str] = field(default_factory=dict)
    """clip id -> one-line reason, for rows that failed in this run."""
    seconds: float = 0.0
    """Wall time of the loop (after the model is loaded)."""
    wait_s: float = 0.0
    """Time the main loop waited for decoded clips (decoding not hidden behind compute)."""
    load_s: float = 0.0
    """Time spent decoding clips, summed over workers (CPU seconds of ``load``)."""
    model_s: float = 0.0
    """Time in the model (for faces: detection, tracking and alignment)."""
    interrupted: bool = False
    """Stopped by Ctrl-C / SIGTERM; finished rows were flushed."""
    engine: str = ""
    """Where the clips were decoded and run when not in this process (``--engine ray``): one summary line."""

    @property
    def clips_per_s(self) -> float:
        n = self.done + len(self.failed)
        return n / self.seconds if self.seconds > 0 else 0.0

    def _where(self, what: str) -> str:
        k, n = self.shard
        return what + (f" (shard {k + 1}/{n})" if n > 1 else "")

    def _counts(self, rate: str) -> str:
        """The 'done, skipped, failed, left' line, and ``rate`` (e.g. '1.2 clips/s') when rows were tried."""
        return (f"done {self.done}, skipped {self.skipped} (already done), failed {len(self.failed)}, "
                f"left {max(self.owned - self.skipped - self.done, 0)}"
                + (f"; {rate} over {self.seconds:.1f} s" if self.todo else ""))


@dataclass(kw_only=True)
class ExtractSummary(RunSummary):
    """What one ``fer extract`` run did; ``str()`` gives the closing lines the CLI prints."""

    spec: str
    """The feature set written."""
    store: str
    """Store path."""
    row_info: dict[str, str] = field(default_factory=dict)
    """clip id -> note on how the clip was read (e.g. frames repeated)."""
    workers: int = 0
    """Decoding workers used (0: the main process decoded)."""
    write_s: float = 0.0
    """Time the writer thread spent writing (overlaps compute)."""
    source: str = ""
    """The dataset as read: its root, layout, clips, classes and folds."""

    def __str__(self) -> str:
        lines = [self.source] if self.source else []
        lines += [self._where(f"feature set {self.spec} in {self.store}"),
                  self._counts(f"{self.clips_per_s:.2f} clips/s")]
        if self.todo and self.seconds > 0:
            lines.append(
                f"time: model {self.model_s:.1f} s, waiting for decode {self.wait_s:.1f} s, "
                f"decoding {self.load_s:.1f} s "
                + ("in Ray tasks" if self.engine else f"in {self.workers} worker(s)" if self.workers
                   else "in the main process")
                + f", writing {self.write_s:.1f} s in background"
            )
        if self.engine:
            lines.append(self.engine)
        if self.row_info:  # e.g. frames sampled to the cap, or read from the video: said, not only stored
            cid, note = next(iter(self.row_info.items()))
            clips = f"{len(self.row_info)} clip{'s were' if len(self.row_info) > 1 else ' was'}"
            lines.append(f"noted how {clips} read, e.g. {cid}: {note} "
                         "(every note: `fer cache info` row_info)")
        lines += failure_lines(self.failed, "in the store: `fer cache info`")
        return "\n".join(lines)


def failure_lines(failed: dict[str, str], where: str, shown: int = 5) -> list[str]:
    """The closing lines on failed clips: the first few reasons, where the rest are, how to retry."""
    lines = [f"  failed {cid}: {reason}" for cid, reason in list(failed.items())[:shown]]
    if len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more (all reasons are {where})")
    if failed:
        lines.append("rerun the same command to retry the failed clips only")
    return lines


def describe(dataset: Dataset) -> str:
    """One line naming the dataset as read: root, layout, clips, classes, folds."""
    folds = len(dataset.fold_names)
    return (f"dataset {dataset.root} ({dataset.kind} layout): {len(dataset.records)} clips, "
            f"{len(dataset.class_names)} classes, {folds} fold{'s' if folds != 1 else ''}")
