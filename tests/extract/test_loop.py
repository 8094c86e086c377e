"""The one clip loop's pieces on their own: the todo list, the loop's interrupt and bug handling, and the
background writes (fer extract and fer data faces run on them; their own tests cover the whole runs)."""

import os
import signal

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.loading import clip_batches
from fer.extract.loop import ClipWork, plan_todo, run_clip_loop
from fer.extract.shards import owned_items
from fer.extract.summary import RunSummary
from fer.extract.writes import BackgroundWrites


class Squares:
    """Loads a clip as the square of its number; clip 'bad' is a bad clip, 'bug' a bug."""

    def load(self, rec):
        if rec.clip_id == "bad":
            raise ClipError("unreadable")
        if rec.clip_id == "bug":
            raise AttributeError("no such thing")
        return int(rec.clip_id) ** 2


class Collect(ClipWork):
    def __init__(self, summary, stop_at=None, signal_at=None):
        self.summary, self.stop_at, self.signal_at = summary, stop_at, signal_at
        self.got, self.finished = [], False

    def process(self, batch, first):
        for b in batch:
            if b.clip_id == self.stop_at:
                raise KeyboardInterrupt
            if b.clip_id == self.signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            if b.ok:
                self.got.append(b.item)
                self.summary.done += 1
            else:
                self.summary.failed[b.clip_id] = b.reason

    def finish(self):
        self.finished = True


def records(*ids):
    return [ClipRecord(clip_id=i, votes=np.ones(1)) for i in ids]


def run(recs, work, summary, **kw):
    rows = np.arange(len(recs))
    batches = clip_batches(Squares(), recs, rows, batch_size=2, workers=0)
    run_clip_loop(batches, work, summary, total=len(rows), progress=False, **kw)


def test_the_todo_list_is_owned_less_finished_capped_by_limit():
    s = RunSummary()
    todo = plan_todo(s, owned_items(10, (1, 3)), lambda i: i == 4, limit=2)
    assert list(todo) == [1, 7] and (s.owned, s.skipped, s.todo) == (3, 1, 2)
    s = RunSummary()
    done = np.zeros(10, bool)
    done[[0, 1]] = True
    assert list(plan_todo(s, owned_items(10, (0, 2), chunk_rows=2), done)) == [4, 5, 8, 9]
    assert (s.owned, s.skipped, s.todo) == (6, 2, 4)


def test_a_bad_clip_is_recorded_and_the_rest_run():
    s = RunSummary()
    work = Collect(s)
    run(records("1", "bad", "3", "bug"), work, s)
    assert work.got == [1, 9] and s.failed == {"bad": "unreadable", "bug": "AttributeError: no such thing"}
    assert work.finished and not s.interrupted and s.seconds > 0


def test_every_clip_of_the_first_batch_failing_unexpectedly_is_a_bug():
    s = RunSummary()
    work = Collect(s)
    with pytest.raises(FerError, match="every clip of the first batch failed.*AttributeError"):
        run(records("bug", "bug", "1"), work, s)
    assert work.finished  # what was finished is still written
    run(records("bug", "bug", "1"), Collect(RunSummary()), RunSummary(), strict_loads=False)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_the_loop_and_finish_writes(how):
    s = RunSummary()
    work = Collect(s, **({"stop_at": "5"} if how == "ctrl-c" else {"signal_at": "5"}))
    before = signal.getsignal(signal.SIGTERM)
    run(records("1", "2", "3", "4", "5", "6"), work, s)
    assert s.interrupted and work.finished and work.got[:4] == [1, 4, 9, 16] and 36 not in work.got
    assert signal.getsignal(signal.SIGTERM) == before


def test_background_writes_absorb_one_items_fault_and_stop_on_others():
    w = BackgroundWrites(1, absorb=(OSError,))
    done, failed = [], []

    def disk_full(i):
        if i == 1:
            raise OSError(28, "No space left on device")
        done.append(i)

    for i in range(3):
        w.submit(disk_full, i, on_error=lambda e, i=i: failed.append((i, e.errno)))
    w.close()
    assert done == [0, 2] and failed == [(1, 28)]

    w = BackgroundWrites(5)
    calls = []

    def broken(i):
        calls.append(i)
        raise ValueError("store damaged")

    with pytest.raises(ValueError, match="damaged"):
        for i in range(3):
            w.submit(broken, i)
        w.close()
    assert calls == [0] and w.stopped  # later writes are skipped: they would only fail again
