"""Models trained together as one batched model against one after another (fer.train.stacked).

(a) `fer train --fold all`: the 5 folds of one setting trained together (the default) against the same 5 folds
    one after another (--folds-together 1), same numbers (checked here: the same selected epochs and test
    predictions).
(b) `fer sweep`: a 12-point grid of learning rate x dropout x seed on one fold, grouped into one batched
    training (the default) against the 12 points one after another.

Both on a synthetic store written here with fer.cache (16 face tokens per clip, DFEW-like votes), a small
model (the "many ablations" case: a 1-layer Transformer), wall time of the whole train_run / sweep (model
build, training, validation, checkpoints, test pass, run folders), the features loaded once beforehand. Peak
memory: the process's peak RSS during each (reset before it), and on CUDA the peak of allocated device memory.

    python benchmarks/bench_batched.py [--device cpu] [--clips 700] [--epochs 3] [--threads 2]
                                       [--out benchmarks/results/batched.md]

Prints a markdown table of ratios and writes it to --out. benchmarks/bench_gpu.py calls ``measure`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer.cache.schema import NUM_CLASSES
from fer.train.config import TrainConfig
from fer.train.features import load_features
from fer.train.resources import peak_rss, reset_peak
from fer.train.run import train_run
from fer.train.sweep import sweep

RESULTS = Path(__file__).parent / "results" / "batched.md"
GRID = {"lr": [1e-3, 3e-4], "dropout": [0.0, 0.1, 0.3], "seed": [1, 2]}
"""The 12-point sweep of (b)."""


def make_store(path: Path, n: int, dim: int, seed: int = 0) -> Path:
    """n clips of 16 x ``dim`` face tokens carrying their class, in 5 folds, with 10 votes each."""
    from fer.tests.train.synth_store import clip_index

    rng = np.random.default_rng(seed)
    store, labels = clip_index(path, n, rng, "bench_batched", attrs={"has_votes": True})
    means = rng.standard_normal((NUM_CLASSES, dim)).astype(np.float32)
    x = means[labels][:, None, :] * 0.5 + rng.standard_normal((n, 16, dim), dtype=np.float32)
    w = store.writer("face.bench.none.pool.224", row_shape=(16, dim), attrs={"modality": "face", "backbone": "bench"})
    w.write_rows(np.arange(n), x.astype(np.float16), np.ones((n, 16), bool))
    w.close()
    store.close()
    return path


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, int]:
    """(seconds, peak bytes) of fn(): host RSS on the CPU, allocated device memory on CUDA."""
    reset_peak()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - t0, int(torch.cuda.max_memory_allocated())
    return time.perf_counter() - t0, peak_rss()


def predictions(run: Path) -> dict[str, tuple[int, np.ndarray]]:
    m = json.loads((run / "metrics.json").read_text())
    return {k: (f["best_epoch"], np.load(run / f"predictions_fold{k}.npz")["probs"]) for k, f in m["folds"].items()}


def same(a: Path, b: Path) -> bool:
    """The same selected epochs and predicted classes, probabilities within 1e-4."""
    pa, pb = predictions(a), predictions(b)
    return pa.keys() == pb.keys() and all(
        pa[k][0] == pb[k][0] and np.array_equal(pa[k][1].argmax(1), pb[k][1].argmax(1))
        and float(np.abs(pa[k][1] - pb[k][1]).max()) < 1e-4 for k in pa)


def measure(device: str, clips: int, epochs: int, dim: int, work: Path) -> dict[str, Any]:
    """(a) and (b) on ``device``; the seconds and peak memory of each side and whether the numbers match."""
    dev = torch.device(device)
    store = make_store(work / "s.zarr", clips, dim)
    feats = load_features(str(store), ("face",), log=lambda _: None)
    model = dict(layers=1, heads=4, ff=512, hidden=256, batch_size=64, epochs=epochs, patience=0, lr=1e-3,
                 device=device, plots=False)
    quiet = lambda _: None  # noqa: E731
    out: dict[str, Any] = {"device": device, "clips": clips, "epochs": epochs, "dim": dim}
    # warm-up (allocator, kernels) on one fold, so neither side pays it
    train_run(TrainConfig(out=str(work / "warm"), folds=(1,), **{**model, "epochs": 1}), str(store),
              features=feats, log=quiet)
    for name, k in (("folds_alone", 1), ("folds_together", 0)):
        cfg = TrainConfig(out=str(work / name), folds=(), folds_together=k, **model)
        out[name] = timed(lambda cfg=cfg: train_run(cfg, str(store), features=feats, log=quiet), dev)
        print(f"(a) {name}: {out[name][0]:.1f} s, peak {out[name][1] / 2**20:.0f} MiB", flush=True)
    out["folds_same"] = same(work / "folds_alone", work / "folds_together")
    for name, k in (("sweep_alone", 1), ("sweep_together", 0)):
        base = TrainConfig(folds=(1,), folds_together=k, **model)
        out[name] = timed(lambda base=base, name=name: sweep(str(store), GRID, base, work / name, log=quiet), dev)
        print(f"(b) {name}: {out[name][0]:.1f} s, peak {out[name][1] / 2**20:.0f} MiB", flush=True)
    points = sorted(p.name for p in (work / "sweep_alone").iterdir() if p.is_dir())
    out["points"] = len(points)
    out["sweep_same"] = all(same(work / "sweep_alone" / p, work / "sweep_together" / p) for p in points)
    return out


def table(r: dict[str, Any], threads: int) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    what = "allocated device memory" if r["device"].startswith("cuda") else "process RSS"
    lines = ["# Models trained together (one batched model) against one after another", "",
             f"Device {r['device']}, {platform.machine()}, {os.cpu_count()} CPUs (torch threads {threads}, "
             f"load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}. Synthetic store of "
             f"{r['clips']} clips (16 x {r['dim']} face tokens, 5 folds); model: 1 layer, 4 heads, ff 512, "
             f"hidden 256, batch 64; {r['epochs']} epochs, no early stopping. Wall time of the whole train_run / "
             f"sweep (features loaded once before). Peak memory: {what}.", "",
             "| | one after another | together | ratio | peak memory (alone / together) | same numbers |",
             "|---|---:|---:|---:|---|---|"]
    for key, label in (("folds", "5 folds of `fer train --fold all`"),
                       ("sweep", f"{r['points']}-point sweep lr x dropout x seed (fold 1)")):
        (ta, ma), (tt, mt) = r[f"{key}_alone"], r[f"{key}_together"]
        lines.append(f"| {label} | {ta:.1f} s | {tt:.1f} s | **{ta / tt:.2f}x** | {mib(ma)} / {mib(mt)} | "
                     f"{r[f'{key}_same']} |")
    per = r["sweep_together"][0] / r["points"]
    lines += ["", f"Per ablation in the grouped sweep: {per:.2f} s ({r['sweep_alone'][0] / r['points']:.2f} s "
                  "one after another)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=700)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dim", type=int, default=256, help="face token width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="temp folder for the store and runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        r = measure(a.device, a.clips, a.epochs, a.dim, Path(tmp))
    md = table(r, a.threads)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md)


if __name__ == "__main__":
    main()
