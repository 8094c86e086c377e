"""Extraction throughput per backbone family: `fer extract` (run_extraction) against the bare model.

    python benchmarks/bench_backbones.py [--families resnet,clip] [--clips 16] [--frames 16] [--workers N]
                                         [--precision auto] [--with-precision-table]

For each family (benchmarks/backbone_families.py: ResNet-18, torchvision ConvNeXt-T and ViT-B/16, HF CLIP
ViT-B/16 and DINOv2-B, timm ViT-B/16, wav2vec2-large, HuBERT, WavLM, Whisper-base) one extractor is
built; the bare figure is its ``embed`` alone over clips already decoded in memory (mean of a run
before and one after the pipeline, which cancels a drift in the shared machine's load); the pipeline
figure is the whole runner (DataLoader decoding in workers, model, background chunk writes into a
fresh Zarr store). Target: pipeline / bare >= 0.9. ``--with-precision-table`` also runs
bench_precision.py (the CPU bf16/fp32 table). Results: benchmarks/results/backbones.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from backbone_families import build, dataset, pick, weights_used  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "backbones.md"


def bench_family(family, dataset, tmp: Path, frames: int, batch: int, workers: int, precision: str) -> dict:
    """Bare embed on in-memory clips vs run_extraction on the same clips, same extractor."""
    from fer.extract.runner import run_extraction

    kw = {"frames": frames} if family.modality == "face" else {}
    t0 = time.perf_counter()
    ex = build(family, tmp, precision, **kw)
    build_s = time.perf_counter() - t0
    n = len(dataset.records)
    items = [ex.load(r) for r in dataset.records]

    def bare() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for i in range(0, n, batch):
                ex.embed(items[i:i + batch])
            return time.perf_counter() - t

    with torch.inference_mode():
        ex.embed(items[:batch])  # warm-up
    before = bare()
    s = run_extraction(dataset, ex, tmp / f"{len(os.listdir(tmp))}.zarr", batch_size=batch, workers=workers,
                       progress=False)
    assert s.done == n, s
    after = bare()
    bare_s = (before + after) / 2
    return {"family": family.name, "spec": ex.spec, "weights": weights_used(ex), "precision": ex.precision, "clips": n,
            "bare": n / bare_s, "bare_before": n / before, "bare_after": n / after, "pipeline": s.clips_per_s,
            "ratio": s.clips_per_s / (n / bare_s), "wait_s": s.wait_s, "model_s": s.model_s, "runner_s": s.seconds,
            "build_s": build_s}


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Extraction throughput per backbone family: `fer extract` vs the bare model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, CPU only, "
        f"{args.threads} torch threads, {args.workers} decoding worker(s), batch {args.batch_size} clips, "
        f"{args.frames} face frames per clip, --precision {args.precision}; {args.clips} synthetic clips; load average "
        f"{os.getloadavg()[0]:.1f} at the end. Bare = `embed` on clips already decoded in memory (mean of before and "
        "after the pipeline run); pipeline = `run_extraction` (decode (in the workers, or the main process with "
        "0), model, background writes). Target: ratio >= 0.9.",
        "",
        "| family | weights | precision | bare clips/s | pipeline clips/s | ratio | waiting for decode |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | {r['weights']} | {r['precision']} | {r['bare']:.3f} "
                     f"({r['bare_before']:.3f} / {r['bare_after']:.3f}) | {r['pipeline']:.3f} | {r['ratio']:.2f} | "
                     f"{r['wait_s']:.2f} s of {r['runner_s']:.1f} s |")
    lines += ["", "Specs: " + ", ".join(f"`{r['spec']}`" for r in rows), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma list of name parts (resnet,convnext,clip,...); default all")
    ap.add_argument("--data", type=Path, help="a DFEW-layout root; default: synthesize --clips clips")
    ap.add_argument("--clips", type=int, default=16, help="at least ~16: with fewer, worker start-up dominates")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers [default: fer extract's own choice]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--with-precision-table", action="store_true", help="also run bench_precision.py")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.workers is None:
        from fer.extract.loading import default_workers

        args.workers = default_workers(torch.device("cpu"))  # what `fer extract` takes on this machine
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = dataset(args.data, args.clips, Path(tmp))
        work = Path(tmp) / "work"
        work.mkdir()
        for fam in pick(args.families):
            r = bench_family(fam, ds, work, args.frames, args.batch_size, args.workers, args.precision)
            print(f"{r['family']:<40} {r['precision']:<5} bare {r['bare']:7.3f} clips/s  "
                  f"pipeline {r['pipeline']:7.3f}  "
                  f"(model {r['model_s']:.1f} s, bare {r['clips'] / r['bare']:.1f} s)  "
                  f"ratio {r['ratio']:.2f}", flush=True)
            rows.append(r)
    md = to_markdown(rows, args)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    if args.with_precision_table:
        cmd = [sys.executable, str(Path(__file__).parent / "bench_precision.py"), "--threads", str(args.threads)]
        if args.families:
            cmd += ["--families", args.families]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
