"""The CUDA path in one command: extraction and training speed on a GPU, and GPU features against CPU fp32.

    python benchmarks/bench_gpu.py [--clips 64] [--out benchmarks/results/gpu.md]

On a machine with CUDA it measures, on synthetic clips (offline: random weights, the same compute as the
pretrained ones):

1. face extraction clips/s through `fer extract` (DataLoader decoding, autocast, background writes) against
   the bare backbone on frames already on the GPU, for ResNet-18 and a CLIP ViT-B/16 vision tower;
2. that the GPU's features match fp32 CPU features of the same clips (cosine per frame, min and mean);
3. the trainer: samples/s of `fer train` from the cache (default model), and its epoch time;
4. a 2-process torchrun extraction into one store (ranks own disjoint chunks) against one process;
5. models trained together as one batched model on the GPU (bench_batched.py's measure on CUDA): the 5 folds
   of `fer train --fold all` together against one after another, a 12-point sweep grouped against
   sequential, and the peak of allocated device memory of each.

It writes a markdown table (default benchmarks/results/gpu.md). Without CUDA it says so in one line and
exits 0, so it is safe to run anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "gpu.md"


def _synth(root: Path, clips: int) -> Path:
    from fer.extract.synth import synthesize

    synthesize(root, clips=clips, seed=0)
    return root


def _clip_dir(work: Path) -> str:
    """A CLIP ViT-B/16 vision tower (random weights) saved locally: GPU machines here are offline."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    d = work / "clip-vit-b16"
    if not d.is_dir():
        cfg = CLIPVisionConfig(patch_size=16, image_size=224)  # ViT-B/16's shapes
        CLIPVisionModel(cfg).save_pretrained(d)
        CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(d)
    return f"hf:{d}"


def bench_extract(data: Path, backbone: str, clips: int, batch: int, workers: int, work: Path) -> dict:
    """Pipeline clips/s vs the bare backbone on decoded clips already on the GPU; features vs CPU fp32."""
    from fer.extract.backbones.registry import make_extractor
    from fer.extract.datasets import load_dataset
    from fer.extract.runner import run_extraction

    ds = load_dataset(data)
    ds.records = ds.records[:clips]
    n = len(ds.records)
    ex = make_extractor("face", backbone, "none", "cuda")
    items = [ex.load(r) for r in ds.records]
    gpu_items = [tuple(x.cuda(non_blocking=True) if torch.is_tensor(x) else x for x in it) if isinstance(it, tuple)
                 else it for it in items]

    def bare() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, batch):
                ex.embed(gpu_items[i:i + batch])
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    bare()  # warm-up: cuDNN autotune, allocator
    before = bare()
    s = run_extraction(ds, ex, work / f"{backbone.replace(':', '_').replace('/', '_')}.zarr", batch_size=batch,
                       workers=workers, progress=False)
    after = bare()
    bare_s = (before + after) / 2
    # the same clips on the CPU in fp32: what a CPU machine (or a CPU shard) would have stored
    cpu = make_extractor("face", backbone, "none", "cpu", precision="fp32")
    with torch.inference_mode():
        g = torch.cat([ex.embed(items[i:i + batch])[0].float().cpu() for i in range(0, min(n, 16), batch)])
        c = torch.cat([cpu.embed(items[i:i + batch])[0].float().cpu() for i in range(0, min(n, 16), batch)])
    cos = torch.nn.functional.cosine_similarity(g.flatten(0, -2), c.flatten(0, -2), dim=-1)
    return {"backbone": backbone, "spec": ex.spec, "clips": n, "bare_clips_s": n / bare_s,
            "pipeline_clips_s": s.clips_per_s, "ratio": s.clips_per_s / (n / bare_s),
            "cos_min": float(cos.min()), "cos_mean": float(cos.mean())}


def bench_train(store: Path, work: Path) -> dict:
    """samples/s and epoch time of `fer train` from the cache on the GPU (default model, DFEW-sized batches)."""
    out = work / "run"
    cmd = [sys.executable, "-m", "fer.cli", "train", str(store), "--fold", "1", "--epochs", "3", "--device", "cuda",
           "--no-plots", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    import csv

    rows = list(csv.DictReader(open(out / "history.csv")))
    return {"samples_s": float(np.median([float(r["samples_per_s"]) for r in rows])),
            "epoch_s": float(np.median([float(r["seconds"]) for r in rows])), "wall_s": wall}


def bench_torchrun(data: Path, work: Path) -> dict:
    """A 2-process torchrun extraction (one store, disjoint chunks) against one process, same clips."""
    def run(prefix: list[str], store: Path) -> float:
        t0 = time.perf_counter()
        subprocess.run([*prefix, "-m", "fer.cli", "extract", str(data), "-m", "face", "--weights", "none",
                        "--device", "cuda", "--store", str(store), "--no-progress", "--chunk-mb", "0.5"],
                       check=True, capture_output=True, text=True)
        return time.perf_counter() - t0

    one = run([sys.executable], work / "one.zarr")
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], work / "two.zarr")
    from fer.cache import open_store

    with open_store(work / "one.zarr") as a, open_store(work / "two.zarr") as b:
        spec = a.specs()[0]
        same = bool(np.array_equal(a.read(spec).done, b.read(spec).done) and b.read(spec).done.all())
    return {"one_s": one, "two_s": two, "speedup": one / two, "complete": same}


def bench_batched(work: Path) -> dict | None:
    """bench_batched.py's two comparisons on CUDA; None (said in one line) if they fail."""
    from bench_batched import measure  # beside this script

    try:
        return measure("cuda", clips=700, epochs=3, dim=512, work=work / "batched")
    except Exception as e:  # the other figures must not be lost with it
        print(f"bench_gpu: batched training skipped ({type(e).__name__}: {e})")
        return None


def to_markdown(rows: list[dict], train: dict | None, tr: dict | None, clips: int,
                batched: dict | None = None) -> str:
    name = torch.cuda.get_device_name(0)
    lines = [f"# The CUDA path on {name}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs, {platform.machine()}; "
             f"{clips} synthetic clips, random weights (same compute as pretrained).", "",
             "| face backbone | spec | bare clips/s | `fer extract` clips/s | ratio | "
             "cosine to CPU fp32 (min / mean) |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | `{r['spec']}` | {r['bare_clips_s']:.1f} | {r['pipeline_clips_s']:.1f} | "
                     f"{r['ratio']:.2f} | {r['cos_min']:.4f} / {r['cos_mean']:.4f} |")
    if train:
        lines += ["", f"`fer train` from the cache (default model, fold 1): {train['samples_s']:.0f} samples/s, "
                      f"{train['epoch_s']:.2f} s per epoch, {train['wall_s']:.1f} s for 3 epochs with start-up."]
    if tr:
        lines += ["", f"torchrun, 2 processes on one store: {tr['two_s']:.1f} s against {tr['one_s']:.1f} s for one "
                      f"({tr['speedup']:.2f}x); every row done: {tr['complete']}."]
    if batched:
        from bench_batched import table

        lines += ["", *table(batched, torch.get_num_threads()).splitlines()[2:]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing to measure (run it on a GPU machine)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = _synth(work / "data", a.clips)
        rows = [bench_extract(data, "resnet18", a.clips, a.batch_size, a.workers, work)]
        try:
            rows.append(bench_extract(data, _clip_dir(work), a.clips, a.batch_size, a.workers, work))
        except Exception as e:  # a backbone family this fer does not have yet must not hide the rest
            print(f"bench_gpu: CLIP ViT-B/16 skipped ({type(e).__name__}: {e})")
        store = work / "resnet18.zarr"
        train = bench_train(store, work)
        tr = bench_torchrun(data, work)
        (work / "batched").mkdir()
        batched = bench_batched(work)
    md = to_markdown(rows, train, tr, a.clips, batched)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md)
    print(json.dumps({"rows": rows, "train": train, "torchrun": tr, "batched": batched}))


if __name__ == "__main__":
    main()
