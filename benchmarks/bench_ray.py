"""`--engine ray` on a local Ray instance against the one-process runner, on this machine.

    python benchmarks/bench_ray.py [--data ROOT] [--clips 48] [--mel-clips 192] [--out results/ray.md]

Two workloads on the synthetic DFEW-layout dataset (written to a temporary folder unless --data names one):
ResNet-18 faces (224x224, 16 frames, batch 8, random weights: the compute of ImageNet's) and log-mel audio
(batch 8; decoding is almost all of it). Each runs into a fresh store with the one-process runner (default
workers for this machine), then on Ray (`RayEngine`, default actors), then with the one-process runner again:
the one-process figure is the mean of the two, which cancels a slow drift in the shared machine's load.

Start-up is reported apart, not hidden: ``ray.init`` of the local instance, and the pipeline's start (from
the run's start to its first batch back: the actor process starting, the model sent to it). While the actor
starts, decoding runs ahead, so the batches right after the first come back fast; the Ray rate is therefore
the steady one over the second half of the batches, and the ratio compares it with the one-process rate
(target >= 0.8).

Scheduling overhead: empty batches of 8 rows through the same two stages (a decoding task whose loader returns
nothing, an actor whose model does nothing): what Ray costs per batch and per clip with no work to hide it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ray.md"


def timed_engine():
    """A RayEngine that notes when each batch comes back (and how many clips it holds)."""
    from fer.extract.ray_engine import RayEngine

    class Timed(RayEngine):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()
            self.arrivals: list[tuple[float, int]] = []

        def results(self, session, ds, summary):
            for batch in super().results(session, ds, summary):
                self.arrivals.append((time.perf_counter(), len(batch)))
                yield batch

    return Timed()


def scheduling_overhead(ds, batches: int = 64, batch: int = 8) -> dict:
    """Seconds per empty batch through Ray's decoding task and model actor, after the first is back."""
    import numpy as np

    from fer.extract.ray_tasks import ModelActor, absolute
    from fer.ray_session import ray_session

    class Nothing:
        def load(self, record):
            return None

    class NoModel:
        def to(self, device):
            return self

    class Idle(ModelActor):
        def run(self, batch):
            pass

    engine = timed_engine()
    records = absolute(ds.records)
    rows = np.arange(len(records))
    items = [np.resize(rows, batch) for _ in range(batches)]
    with ray_session() as session:
        pipe = engine.pipeline(items, Nothing(), records, str(ds.root), Idle, (NoModel(), 0.0, 1), 0.0,
                               (1, 1))
        t0 = time.perf_counter()
        n = sum(1 for _ in engine.results(session, pipe, _Sink()))
    (t_first, _), (t_last, _) = engine.arrivals[0], engine.arrivals[-1]
    per_batch = (t_last - t_first) / max(n - 1, 1)
    return {"start_s": t_first - t0, "per_batch_ms": 1000 * per_batch,
            "per_clip_ms": 1000 * per_batch / batch}


class _Sink:
    """Takes the model time the engine adds up (nothing to report here)."""

    model_s = 0.0


def one_process(ds, extractor, tmp: Path, name: str, batch: int) -> float:
    """Clips/s of the one-process runner (its own loop time) into a fresh store."""
    from fer.extract.loading import default_workers
    from fer.extract.runner import run_extraction

    s = run_extraction(ds, extractor, tmp / f"{name}.zarr", batch_size=batch,
                       workers=default_workers(extractor.device), progress=False)
    return s.clips_per_s


def on_ray(ds, extractor, tmp: Path, batch: int) -> dict:
    """Start-up and steady clips/s of the Ray engine into a fresh store."""
    from fer.extract.runner import run_extraction

    engine = timed_engine()
    t_start = time.perf_counter()
    s = run_extraction(ds, extractor, tmp / "ray.zarr", batch_size=batch, progress=False, engine=engine)
    arrivals = engine.arrivals
    half = len(arrivals) // 2
    (t_first, _), (t_mid, _), (t_last, _) = arrivals[0], arrivals[half - 1], arrivals[-1]
    clips = s.done + len(s.failed)
    steady = float("nan")
    if half and t_last > t_mid:
        steady = sum(n for _, n in arrivals[half:]) / (t_last - t_mid)
    return {"pipeline_start_s": t_first - t_start, "steady": steady, "overall": clips / (t_last - t_start),
            "actors": len(engine.pids)}


def bench(name: str, ds, extractor, tmp: Path, batch: int = 8) -> dict:
    before = one_process(ds, extractor, tmp, f"{name}-a", batch)
    ray = on_ray(ds, extractor, tmp / name, batch)
    after = one_process(ds, extractor, tmp, f"{name}-b", batch)
    one = (before + after) / 2
    return {"name": name, "spec": extractor.spec, "clips": len(ds.records), "one": one, "one_before": before,
            "one_after": after, **ray, "ratio": ray["steady"] / one}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: synthesize one)")
    ap.add_argument("--clips", type=int, default=48, help="clips for ResNet-18 faces")
    ap.add_argument("--mel-clips", type=int, default=192, help="clips for mel audio")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import ray
    import torch

    from fer.extract.backbones.audio import make_audio_extractor
    from fer.extract.backbones.face import FaceExtractor
    from fer.extract.datasets import load_dataset
    from fer.extract.synth import synthesize
    from fer.ray_session import ray_session

    with tempfile.TemporaryDirectory(prefix="fer-bench-ray-") as tmp_s:
        tmp = Path(tmp_s)
        root = args.data
        if root is None:
            root = tmp / "data"
            synthesize(root, clips=max(args.clips, args.mel_clips), seed=0)
        full = load_dataset(root)
        t0 = time.perf_counter()
        with ray_session():  # the local instance the runs below use (as `fer extract --engine ray` starts it)
            start_s = time.perf_counter() - t0
            rows = []
            faces = load_dataset(root)
            faces.records = faces.records[:args.clips]
            rows.append(bench("ResNet-18 faces", faces, FaceExtractor(weights="none", size=224), tmp))
            mel = load_dataset(root)
            mel.records = mel.records[:args.mel_clips]
            rows.append(bench("mel audio", mel, make_audio_extractor("mel", None, torch.device("cpu")), tmp))
            overhead = scheduling_overhead(mel)
    load = os.getloadavg()[0]
    lines = [
        "# `--engine ray` on a local Ray instance against the one-process runner",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work; 1-min load average "
        f"at the end {load:.1f}: above the core count the figures are pessimistic), "
        f"torch {torch.__version__}, ray {ray.__version__}. Dataset: "
        f"{full.root.name if args.data else 'synthetic DFEW layout'}. "
        "Batch 8, default workers and actors (one model actor and one decoding CPU on 2 cores).",
        "",
        f"Start-up, apart from the rates: the local Ray instance (`ray.init`) took {start_s:.1f} s; the "
        "pipeline's start (first batch back: actor process, model sent) is per workload below.",
        "",
        "| workload | spec | clips | one process clips/s | Ray steady clips/s (2nd half) | ratio | "
        "pipeline start s | Ray clips/s incl. start |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | `{r['spec']}` | {r['clips']} | {r['one']:.2f} "
                     f"({r['one_before']:.2f} / {r['one_after']:.2f}) | {r['steady']:.2f} | "
                     f"{r['ratio']:.2f}x | {r['pipeline_start_s']:.1f} | {r['overall']:.2f} |")
    lines += ["", "One process: the mean of the runs before and after Ray's (in brackets). Ray steady: the "
              "clips of the second half of the batches over the time they took to come back.", "",
              f"Scheduling overhead (empty batches of 8 through a decoding task and a model actor): "
              f"{overhead['per_batch_ms']:.1f} ms a batch, {overhead['per_clip_ms']:.2f} ms a clip "
              f"(pipeline start {overhead['start_s']:.1f} s)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
