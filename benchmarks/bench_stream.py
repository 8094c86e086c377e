"""Streaming and frame sampling: what they cost the trainer (issue 12).

(a) Streaming vs in memory, same all-frame set, warm page cache: `fer train` run twice per repeat, once with the
    set read whole into memory and once with --stream (blocks read by background threads, shuffled within a
    buffer), back to back and interleaved. Training samples/s is the fit loop's own rate (history.csv, the last
    epoch: the first warms up); peak RSS is the run's own (resources.json: VmHWM reset at the run's start),
    shown against the set's size. The stream's budget is FER_MEMORY_BUDGET_GB = --budget-gb.
(b) The data path alone (no model): batches per second of each source over one epoch, the upper bound a fast
    GPU model would meet.
(c) Jitter vs fixed frames, in memory, same model: one epoch of the fit loop drawing a random frame per
    segment (and a random view: --augment jitter,flip) against the 16-frame set of the same clips (fixed
    frames: a plain row gather) and against the all-frame set's segment centres (no draw).

The set is random features shaped like DFEW's all-frame face cache (--frames frames x 2 views x --dim, float16),
made here with fer.cache in a temp folder; every clip has between 16 and --frames valid frames.

Prints a markdown table and writes it to benchmarks/results/stream.md.

usage: python benchmarks/bench_stream.py [--clips 3000] [--frames 64] [--dim 512] [--epochs 3] [--repeats 2]
                                        [--budget-gb 0.25] [--model default|small] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = {"default": [], "small": ["--layers", "2", "--ff", "512", "--hidden", "256"]}


def make_set(path: Path, n: int, frames: int, dim: int, seed: int = 0) -> tuple[str, str, int]:
    """An all-frame set (frames x 2 views x dim) and the 16-frame set of the same clips; returns their specs and
    the all-frame set's bytes."""
    from fer.cache import create_store
    from fer.cache.schema import NUM_CLASSES
    from fer.extract.media import uniform_indices

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    votes = np.zeros((n, NUM_CLASSES), np.float32)
    votes[np.arange(n), labels] = 8
    votes[np.arange(n), (labels + 3) % NUM_CLASSES] = 2
    folds = np.where(np.arange(5)[None, :] == rng.integers(0, 5, n)[:, None], 2, 1).astype(np.int8)
    store = create_store(path, [f"{i + 1:05d}" for i in range(n)], votes, folds, description="bench_stream")
    spec_all, spec16 = f"face.bench.all{frames}.flip", "face.bench.16f"
    w = store.writer(spec_all, row_shape=(frames, 2, dim), attrs={"modality": "face", "frames": "all",
                                                                  "max_frames": frames, "views": ["original", "hflip"]})
    w16 = store.writer(spec16, row_shape=(16, dim), attrs={"modality": "face"})
    valid = rng.integers(16, frames + 1, n)
    step = max(1, (64 << 20) // (frames * 2 * dim * 4))
    for a in range(0, n, step):
        r = np.arange(a, min(n, a + step))
        x = rng.standard_normal((len(r), frames, 2, dim), dtype=np.float32)
        mask = np.arange(frames)[None, :] < valid[r][:, None]
        x[~mask] = 0
        w.write_rows(r, x.astype(np.float16), mask)
        pick = np.stack([uniform_indices(int(k), 16) for k in valid[r]])
        w16.write_rows(r, x[np.arange(len(r))[:, None], pick, 0].astype(np.float16), np.ones((len(r), 16), bool))
    w.close()
    w16.close()
    store.close()
    return spec_all, spec16, n * frames * 2 * dim * 2


def warm(path: Path) -> None:
    """Read every file of the store once, so both sides start from a warm page cache."""
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def run_train(store: Path, out: Path, spec: str, args: argparse.Namespace, *, stream: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if stream:
        env["FER_MEMORY_BUDGET_GB"] = str(args.budget_gb)
    cmd = [sys.executable, "-m", "fer.cli", "train", str(store), "--face", spec, "--epochs", str(args.epochs),
           "--patience", "0", "--augment", "jitter,flip", "--device", "cpu", "--no-plots", "--out", str(out),
           "--batch-size", str(args.batch), *MODELS[args.model]] + (["--stream"] if stream else [])
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    res = json.loads((out / "resources.json").read_text())
    return {"rate": float(rows[-1]["samples_per_s"]), "peak": res["peak_rss_bytes"], "start": res["rss_start_bytes"],
            "buffers": res.get("buffer_bytes", 0)}


def bench_a(store: Path, spec: str, set_bytes: int, args: argparse.Namespace, work: Path) -> dict:
    mem, st = [], []
    for r in range(args.repeats):  # interleaved: the 2 cores are shared with other jobs
        mem.append(run_train(store, work / f"mem{r}", spec, args, stream=False))
        st.append(run_train(store, work / f"stream{r}", spec, args, stream=True))
        print(f"(a) memory {mem[-1]['rate']:.0f} samples/s, stream {st[-1]['rate']:.0f} samples/s; peak growth "
              f"{(mem[-1]['peak'] - mem[-1]['start']) / 1e6:.0f} / {(st[-1]['peak'] - st[-1]['start']) / 1e6:.0f} MB",
              flush=True)
    ratios = [s["rate"] / m["rate"] for m, s in zip(mem, st)]
    return {"mem": mem, "stream": st, "ratio": float(np.median(ratios)), "ratios": ratios, "set_bytes": set_bytes}


def bench_b(store: Path, spec: str, args: argparse.Namespace) -> dict:
    """Batches of one epoch through each source, no model (the data path's own rate)."""
    from fer.train import stream
    from fer.train.batches import MemorySource, frame_plans, sampling_blocks
    from fer.train.config import TrainConfig
    from fer.train.features import load_features
    from fer.train.sampling import epoch_order
    from fer.train.stream import StreamSource

    cfg = TrainConfig(face=spec, augment=("jitter", "flip"), batch_size=args.batch)
    cpu = torch.device("cpu")
    sources, state = {}, {}
    for name in ("memory", "stream", "buffers"):  # buffers: the stream reading whole rows (its path before mapping)
        streamed = name != "memory"
        feats = load_features(str(store), ("face",), specs={"face": spec}, stream=streamed, log=lambda s: None)
        plans = frame_plans(feats.sets, cfg)
        stream.MAP = name == "stream"
        sources[name] = (StreamSource(feats, cfg, plans, cpu, budget=int(args.budget_gb * 1e9), log=lambda s: None)
                         if streamed else MemorySource(feats.sets, cfg, plans, cpu))
        stream.MAP = True
        state[name] = (feats, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
                       sampling_blocks(feats, cfg.modalities)[0])
    out = {"mapped": bool(sources["stream"].describe()["mapped"]), "rates": {k: [] for k in sources}}
    for _ in range(args.epochs_b):  # interleaved, the sources one epoch each in turn: the machine's load varies
        for name, src in sources.items():
            feats, gen, draw, blocks = state[name]
            t0 = time.perf_counter()
            order = epoch_order(np.arange(feats.n), feats.labels, balance=False, gen=gen, blocks=blocks)
            n = sum(len(b.idx) for b in src.epoch(order, draw=draw))
            out["rates"][name].append(n / (time.perf_counter() - t0))
    for name, src in sources.items():
        src.close()
        out[name] = max(out["rates"][name])
        print(f"(b) {name}: {out[name]:.0f} samples/s through the source alone "
              f"(epochs: {', '.join(f'{r:.0f}' for r in out['rates'][name])})", flush=True)
    return out


def bench_c(store: Path, spec_all: str, spec16: str, args: argparse.Namespace) -> dict:
    """Epoch seconds of fit_fold's training pass: jitter+flip vs the 16-frame set vs the centres (in memory)."""
    from fer.train.batches import MemorySource, frame_plans
    from fer.train.config import TrainConfig
    from fer.train.features import load_features
    from fer.train.fit import train_epoch
    from fer.train.losses import make_loss
    from fer.train.model import FerModel
    from fer.train.sampling import epoch_order
    from fer.train.trainees import StackTrainee

    small = {"default": {}, "small": {"layers": 2, "ff": 512, "hidden": 256}}[args.model]
    variants = {"fixed 16-frame set": (spec16, ()), "all-frame centres": (spec_all, ()),
                "all-frame jitter+flip": (spec_all, ("jitter", "flip"))}
    feats = {s: load_features(str(store), ("face",), specs={"face": s}, log=lambda x: None) for s in (spec_all, spec16)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (spec, aug) in variants.items():  # interleaved
            f = feats[spec]
            cfg = TrainConfig(face=spec, augment=aug, batch_size=args.batch, **small)
            src = MemorySource(f.sets, cfg, frame_plans(f.sets, cfg), torch.device("cpu"))
            torch.manual_seed(0)
            model = FerModel(cfg, src.model_sets, num_classes=f.num_classes)
            trainee = StackTrainee([model], [cfg], [torch.Generator().manual_seed(2)], lambda model=model: model)
            loss_fn = make_loss("kl", num_classes=f.num_classes)
            dist, labels = torch.from_numpy(f.dist), torch.from_numpy(f.labels)
            gen, draw = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
            rows = np.arange(min(f.n, args.clips_c))
            for _ in range(2):  # the first epoch warms up
                t0 = time.perf_counter()
                train_epoch(trainee, src, epoch_order(rows, f.labels, balance=False, gen=gen), loss_fn, dist,
                            labels, draw=draw)
                dt = time.perf_counter() - t0
            times[name].append(dt)
            print(f"(c) {name}: epoch {dt:.2f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    # the sampling's own cost, less exposed to the shared machine's noise: the data path alone (best of 5 epochs)
    path = {}
    for name, (spec, aug) in variants.items():
        f = feats[spec]
        cfg = TrainConfig(face=spec, augment=aug, batch_size=args.batch)
        src = MemorySource(f.sets, cfg, frame_plans(f.sets, cfg), torch.device("cpu"))
        gen, draw = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        rows = np.arange(min(f.n, args.clips_c))
        def one_epoch(src=src, rows=rows, f=f, gen=gen, draw=draw):
            return sum(1 for _ in src.epoch(epoch_order(rows, f.labels, balance=False, gen=gen), draw=draw))

        path[name] = min(_timed(one_epoch) for _ in range(5))
        print(f"(c) {name}: data path alone {path[name] * 1e3:.1f} ms per epoch", flush=True)
    return {"best": best, "all": times, "clips": min(feats[spec16].n, args.clips_c), "path": path}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table(a: dict | None, b: dict | None, c: dict | None, args: argparse.Namespace) -> str:
    load = os.getloadavg()
    out = ["# Streaming and frame sampling (stage 2)\n",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average "
           f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end), torch {torch.__version__}, {args.threads} "
           f"torch threads, CPU only. Set: {args.clips} clips x {args.frames} frames x 2 views x {args.dim} float16 "
           f"(random, 16 to {args.frames} valid frames per clip), model {args.model}, batch {args.batch}, "
           "--augment jitter,flip.\n",
           "| measure | fer | baseline | ratio | target |", "|---|---:|---:|---:|---|"]
    if a:
        m = max(a["mem"], key=lambda r: r["rate"])
        s = max(a["stream"], key=lambda r: r["rate"])
        out.append(f"| (a) training samples/s, streamed vs in memory (warm page cache; best of each) | "
                   f"{s['rate']:.0f} | {m['rate']:.0f} | **{s['rate'] / m['rate']:.2f}x** | >= 0.8x |")
        out.append(f"| (a) same, median of the back-to-back pairs' ratios | | | {a['ratio']:.2f}x | >= 0.8x |")
        gs = [r["peak"] - r["start"] for r in a["stream"]]
        gm = [r["peak"] - r["start"] for r in a["mem"]]
        saved = min(gm) - max(gs)
        out.append(f"| (a) peak RSS growth during the run, streamed vs in memory (largest of each) | "
                   f"{max(gs) / 1e6:.0f} MB | {max(gm) / 1e6:.0f} MB | | |")
        out.append(f"| (a) memory streaming saves: in memory minus streamed (the set: {a['set_bytes'] / 1e6:.0f} MB, "
                   f"the stream buffers: {a['stream'][0]['buffers'] / 1e6:.0f} MB) | {saved / 1e6:.0f} MB | "
                   f"{a['set_bytes'] / 1e6:.0f} MB | {saved / a['set_bytes']:.2f}x of the set | ~ set minus buffers |")
    if b:
        out.append(f"| (b) the data path alone (no model), samples/s, streamed vs in memory | {b['stream']:.0f} | "
                   f"{b['memory']:.0f} | **{b['stream'] / b['memory']:.2f}x** | >= 0.8x |")
        out.append(f"| (b) same, the stream reading whole rows into its buffers (no mapping) vs in memory | "
                   f"{b['buffers']:.0f} | {b['memory']:.0f} | {b['buffers'] / b['memory']:.2f}x | |")
    if c:
        best = c["best"]
        j, f16, ctr = best["all-frame jitter+flip"], best["fixed 16-frame set"], best["all-frame centres"]
        out.append(f"| (c) epoch seconds ({c['clips']} clips, in memory): jitter+flip vs the fixed 16-frame set | "
                   f"{j:.2f} s | {f16:.2f} s | **{100 * (j / f16 - 1):+.1f}%** | <= +5% |")
        out.append(f"| (c) same, jitter+flip vs the all-frame set's centres (no draw) | {j:.2f} s | {ctr:.2f} s | "
                   f"{100 * (j / ctr - 1):+.1f}% | <= +5% |")
        pj, p16 = c["path"]["all-frame jitter+flip"], c["path"]["fixed 16-frame set"]
        out.append(f"| (c) the sampling's own cost: data path per epoch, jitter+flip minus the 16-frame set, over the "
                   f"16-frame training epoch | {1e3 * (pj - p16):.1f} ms | {1e3 * f16:.0f} ms | "
                   f"**{100 * (pj - p16) / f16:+.1f}%** | <= +5% |")
    out.append("")
    notes = ["Notes:"]
    if a:
        notes.append(f"- (a) {len(a['ratios'])} back-to-back pairs of `fer train` processes (ratios "
                     f"{', '.join(f'{x:.2f}' for x in a['ratios'])}), {args.epochs} epochs each, the last epoch's "
                     f"rate. The streamed run's budget was {args.budget_gb} GB (FER_MEMORY_BUDGET_GB). Peak RSS "
                     "growth is the run's VmHWM (reset when the run starts) minus its resident size before loading. "
                     "Both sides pay the same model costs (torch's first-step allocations, about 100 MB for any model, "
                     "the weights, optimizer state, best-epoch copy and checkpoint), so the difference is what holding "
                     "the set costs.")
    if b:
        how = ("drew its training frames from the mapped chunk files (only the drawn frames and views copied)"
               if b.get("mapped") else "read whole rows into its buffers (the set's chunks could not be mapped)")
        notes.append("- (b) Batches built (frames and views drawn, copied to the device: here the CPU) without running "
                     "a model: how fast each source could feed a model that costs nothing; best of "
                     f"{args.epochs_b} epochs, the sources taking turns. The "
                     f"streamed source {how}.")
    if c:
        notes.append(f"- (c) fer.train.fit.train_epoch (the fit loop's training pass) on the same model, best of "
                     f"{args.repeats} (all: {json.dumps({k: [round(x, 2) for x in v] for k, v in c['all'].items()})}).")
    return "\n".join(out + notes) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=3000)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--clips-c", type=int, default=1024, help="(c) clips per timed epoch")
    p.add_argument("--epochs-b", type=int, default=5, help="(b) epochs per source (the best counts; the first warms)")
    p.add_argument("--budget-gb", type=float, default=0.25, help="(a, b) the streamed side's memory budget")
    p.add_argument("--model", choices=list(MODELS), default="default")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="abc")
    p.add_argument("--dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_stream_", dir=args.dir))
    try:
        store = work / "set.zarr"
        spec_all, spec16, set_bytes = make_set(store, args.clips, args.frames, args.dim)
        warm(store)
        print(f"set: {set_bytes / 1e6:.0f} MB", flush=True)
        c = bench_c(store, spec_all, spec16, args) if "c" in args.only else None
        b = bench_b(store, spec_all, args) if "b" in args.only else None
        a = bench_a(store, spec_all, set_bytes, args, work) if "a" in args.only else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(a, b, c, args)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
