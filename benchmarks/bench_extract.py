"""Face extraction throughput: `run_extraction` vs the bare backbone on frames already in memory.

    python benchmarks/bench_extract.py [--clips 24] [--batch-size 8] [--workers N] [--threads 2]

Both sides use the same extractor (ResNet-18, 224x224, 16 frames), batch size and torch threads.
The bare figure is ``embed`` alone over pre-decoded clips; the pipeline figure is the whole runner
(DataLoader decoding in workers, model, background chunk writes into a fresh Zarr store). The ratio
shows how much of decoding and writing the pipeline hides (target >= 0.8). Results go to
benchmarks/results/extract_face.md. Weights are random (``none``): the compute is identical to ImageNet's.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "extract_face.md"


def bench_face(data: Path, clips: int, batch_size: int, workers: int, threads: int, size: int = 224) -> dict:
    """Time the bare backbone, the decode alone, and the full runner on the same clips."""
    from fer.extract.backbones.face import FaceExtractor
    from fer.extract.datasets import load_dataset
    from fer.extract.runner import run_extraction

    torch.set_num_threads(threads)
    ds = load_dataset(data)
    ds.records = [r for r in ds.records if r.faces16 is not None][:clips]
    n = len(ds.records)
    ex = FaceExtractor(weights="none", size=size)

    # decoding alone, one process (what the workers have to keep up with)
    t0 = time.perf_counter()
    items = [ex.load(r) for r in ds.records]
    decode_s = time.perf_counter() - t0

    def bare() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                ex.embed(items[i : i + batch_size])
            return time.perf_counter() - t0

    with torch.inference_mode():
        ex.embed(items[:batch_size])  # warm-up: allocator, oneDNN kernels
    # bare, pipeline, bare again: the CPUs are shared, so the bare figure is the mean of the runs
    # before and after the pipeline's, which cancels a slow drift in the machine's load
    bare_before = bare()
    with tempfile.TemporaryDirectory() as tmp:
        s = run_extraction(ds, ex, Path(tmp) / "bench.zarr", batch_size=batch_size, workers=workers, progress=False)
    assert s.done == n, s
    bare_after = bare()
    bare_s = (bare_before + bare_after) / 2

    return {
        "clips": n,
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
        "size": size,
        "bare_clips_s": n / bare_s,
        "bare_before_clips_s": n / bare_before,
        "bare_after_clips_s": n / bare_after,
        "pipeline_clips_s": s.clips_per_s,
        "ratio": s.clips_per_s / (n / bare_s),
        "decode_ms_per_clip": 1000 * decode_s / n,
        "model_ms_per_clip": 1000 * bare_s / n,
        "decode_share": decode_s / (decode_s + bare_s),
        "runner_model_s": s.model_s,
        "runner_wait_s": s.wait_s,
        "runner_write_s": s.write_s,
        "runner_s": s.seconds,
        "load": os.getloadavg()[0],
    }


def to_markdown(r: dict) -> str:
    return "\n".join([
        "# Face extraction throughput (ResNet-18, 16 frames per clip)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"CPU only; {r['clips']} synthetic clips at {r['size']}x{r['size']}, batch {r['batch_size']} clips, "
        f"{r['threads']} torch threads, {r['workers']} decoding worker(s). One run; load average "
        f"{r['load']:.1f} during the run (the CPUs were shared), so absolute clips/s are low, "
        "the ratio is what matters.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| bare backbone (frames already decoded in memory; mean of before/after) | {r['bare_clips_s']:.3f} clips/s "
        f"({r['bare_before_clips_s']:.3f} before, {r['bare_after_clips_s']:.3f} after) |",
        "| `run_extraction` (decode (workers, or the main process with 0) + model + chunk writes) "
        f"| {r['pipeline_clips_s']:.3f} clips/s |",
        f"| ratio pipeline / bare (target >= 0.8) | {r['ratio']:.2f} |",
        f"| decoding, one process | {r['decode_ms_per_clip']:.1f} ms/clip |",
        f"| model | {r['model_ms_per_clip']:.1f} ms/clip |",
        f"| share of time decoding vs model | {100 * r['decode_share']:.1f}% / {100 * (1 - r['decode_share']):.1f}% |",
        f"| runner time outside the model (load-independent overhead) | "
        f"{100 * (1 - r['runner_model_s'] / r['runner_s']):.1f}% |",
        f"| runner: model / waiting for decode / writing (background) | {r['runner_model_s']:.1f} s / "
        f"{r['runner_wait_s']:.2f} s / {r['runner_write_s']:.2f} s of {r['runner_s']:.1f} s |",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="A DFEW-layout root; default: synthesize --clips clips in a temp folder.")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers [default: fer extract's own choice]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.workers is None:
        from fer.extract.loading import default_workers

        a.workers = default_workers(torch.device("cpu"))  # what `fer extract` takes on this machine
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from fer.extract.synth import synthesize

            data = Path(tmp) / "synth"
            synthesize(data, clips=a.clips, seed=0)
        r = bench_face(data, a.clips, a.batch_size, a.workers, a.threads, a.size)
    md = to_markdown(r)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md)


if __name__ == "__main__":
    main()
