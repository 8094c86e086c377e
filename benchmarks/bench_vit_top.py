"""Fine-tuning a ViT's top from the cache (`--layer block:K`, `fer train --finetune top [--lora R]`):
what it costs.

(a) One training step from the cache of block L-2 against an end-to-end step that trains the same two blocks:
    same model (a ViT with L = 12 blocks saved locally with random weights, ViT-S/16 shaped by default), same
    clips, same batch, same trainer model (fer's FerModel with the top rebuilt from the store's provenance,
    AdamW, KL loss). End to end: decode the clips' face JPEGs and resize them (the extractor's own load), the
    model's preprocessing, the frozen bottom (blocks 0..L-3) forward without gradients (generous: no autograd
    graph for the part that does not train), then the step. From the cache: the batch's rows read from the
    store (fp16 tokens), then the same step. Median of --steps steps after a warm-up; each side runs in
    a process of its own, whose peak RSS (VmHWM) is reported; the end-to-end step's parts are timed apart.
(b) LoRA (rank 8) against the full top, from the cache: step time and trainable parameters.
(c) The synthetic set (`fer data synth`, 200 clips, DFEW layout, fold 1): a tiny random ViT (112 px, patch
    16, 4 blocks, width 64, weights drawn with std 0.1) as a frozen pooled feature, --layer all with
    --face-layer weighted, the top two blocks trained (--finetune top) and LoRA rank 8 on them; test WAR/UAR.
    Random weights on synthetic faces: these numbers say the paths run and learn, nothing about DFEW.

Prints markdown tables and writes them to benchmarks/results/vit_top.md.

usage: python benchmarks/bench_vit_top.py [--width 384] [--heads 6] [--clips 2] [--frames 8] [--steps 3]
                                          [--epochs 15] [--synth-image 112] [--synth-patch 16]
                                          [--synth-width 64] [--synth-init 0.1] [--threads 2] [--only abc]
                                          [--out benchmarks/results/vit_top.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer.cache import open_store
from fer.extract.backbones.registry import make_extractor
from fer.extract.datasets import load_dataset
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.train.config import TrainConfig
from fer.train.features import ModalityData
from fer.train.fit import make_optimizer
from fer.train.losses import make_loss
from fer.train.model import FerModel
from fer.train.resources import peak_rss
from fer.train.run import train_run
from fer.train.tops import build_top, trainable_parameters

HEAD = {"layers": 1, "heads": 2, "ff": 256, "hidden": 128}


def save_vit(folder: Path, width: int, heads: int, layers: int, image: int, patch: int,
             init: float = 0.02) -> Path:
    """An HF ViT with random weights (normal, std ``init``) and its image processor, saved as a user saves
    theirs."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        image_size=image,
        patch_size=patch,
        initializer_range=init,
    )
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": image, "width": image}).save_pretrained(folder)
    return folder


def extract(root: Path, store: Path, vit: Path, layer: str, frames: int) -> tuple[str, object]:
    ex = make_extractor("face", f"hf:{vit}", None, "cpu", layer=layer, frames=frames, precision="fp32")
    run_extraction(load_dataset(root), ex, store, batch_size=4, workers=0, progress=False)
    return ex.spec, ex


def median_time(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ (a) and (b)
def step_bench(args, work: Path) -> list[str]:
    """Set up once (synthetic clips, the saved ViT, its block L-2 cache), then time each side in a fresh
    process of its own, so each side's peak memory is its own."""
    root, store = work / "data", work / "a.zarr"
    synthesize(root, clips=max(args.clips, 7), seed=0, workers=1)
    save_vit(work / "vit-a", args.width, args.heads, 12, 224, 16)
    extract(root, store, work / "vit-a", "block:-2", args.frames)
    out = {}
    for side in ("cache", "e2e", "lora"):
        cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--clips", str(args.clips),
               "--frames", str(args.frames), "--steps", str(args.steps), "--threads", str(args.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    c, e, lo = out["cache"], out["e2e"], out["lora"]
    images = args.clips * args.frames
    target = 0.8 * 12 / 2
    mib = 2**20
    return [
        "| measure | from the cache | end to end | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| (a) one training step, {args.clips} clips x {args.frames} frames = {images} images, blocks 10-11 "
        f"of 12 trained | {c['step']:.2f} s | {e['step']:.2f} s | **{e['step'] / c['step']:.1f}x** faster | "
        f">= {target:.1f}x (0.8 x L/2) |",
        f"| (a) parts of the end-to-end step: decode + resize {e['decode']:.2f} s; preprocessing + frozen "
        f"blocks 0-9 {e['bottom']:.2f} s | | | | |",
        f"| (a) peak RSS of the process (its own: one side per process) | {c['peak'] / mib:.0f} MiB | "
        f"{e['peak'] / mib:.0f} MiB | {e['peak'] / c['peak']:.2f}x | |",
        f"| (b) step from the cache: LoRA rank 8 vs all weights of the top | {lo['step']:.2f} s | "
        f"{c['step']:.2f} s | {c['step'] / lo['step']:.2f}x | |",
        f"| (b) trainable parameters of the top: LoRA rank 8 vs all weights | {lo['params']:,} | "
        f"{c['params']:,} | {c['params'] / lo['params']:.0f}x fewer | |",
    ]


def one_side(args) -> dict:
    """One side of (a)/(b) in this process: the median step and this process's peak RSS."""
    work = Path(args.work)
    root, store, vit = work / "data", work / "a.zarr", work / "vit-a"
    with open_store(store, "r") as s:
        spec = next(x for x in s.specs() if ".block" in x)
        prov = dict(s.set_attrs(spec))
        tokens = torch.from_numpy(np.asarray(s.read(spec, rows=np.arange(args.clips)).data))
    records = load_dataset(root).records[: args.clips]
    lora = 8 if args.side == "lora" else 0
    cfg = TrainConfig(face=spec, finetune="top", lora=lora, batch_size=args.clips, **HEAD)
    top = build_top("top", prov, lora=lora, log=lambda _: None)
    present = torch.ones(1, args.frames, dtype=torch.bool)
    zero = ModalityData(spec, torch.zeros(1, *tokens.shape[1:]), present, prov)
    model = FerModel(cfg, {"face": zero}, num_classes=7, top=top).train()
    opt = make_optimizer(cfg, model)
    mask = torch.ones(args.clips, args.frames, dtype=torch.bool)
    votes = torch.zeros(args.clips, 7)
    votes[:, 0] = 1.0
    labels = torch.zeros(args.clips, dtype=torch.long)
    loss_fn = make_loss("kl", train_labels=np.zeros(args.clips, dtype=np.int64), num_classes=7,
                        device=torch.device("cpu"))

    def step(x: torch.Tensor) -> None:
        loss = loss_fn(model({"face": x, "face_mask": mask}), votes, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result: dict = {"params": trainable_parameters(model.top)}
    if args.side == "e2e":
        ex = make_extractor("face", f"hf:{vit}", None, "cpu", layer="block:-2", frames=args.frames,
                            precision="fp32")

        def decode() -> torch.Tensor:
            return torch.cat([ex.load(r)[0] for r in records])  # decode + resize, as the extractor does

        def bottom(frames: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ex.model(ex.preprocess(frames.permute(0, 3, 1, 2)))

        def run() -> None:
            step(bottom(decode()).view(args.clips, args.frames, *tokens.shape[2:]))

        frames = decode()
        result["decode"] = median_time(decode, args.steps)
        result["bottom"] = median_time(lambda: bottom(frames), args.steps)
    else:
        with open_store(store, "r") as s:

            def run() -> None:
                step(torch.from_numpy(np.asarray(s.read(spec, rows=np.arange(args.clips)).data)).float())

            result["step"] = median_time(run, args.steps)
    if "step" not in result:
        result["step"] = median_time(run, args.steps)
    result["peak"] = peak_rss()
    return result


# ------------------------------------------------------------------ (c)
def synth_table(args, work: Path) -> list[str]:
    root, store = work / "synth", work / "c.zarr"
    synthesize(root, clips=200, seed=0, workers=1)
    vit = save_vit(work / "vit-c", args.synth_width, 4, 4, args.synth_image, args.synth_patch,
                   args.synth_init)
    specs = {layer: extract(root, store, vit, layer, 16)[0] for layer in ("pool", "all", "block:-2")}
    common = {
        "folds": (1,),
        "epochs": args.epochs,
        "batch_size": 16,
        "lr": 3e-4,
        "monitor": "loss",
        "plots": False,
        **HEAD,
        "heads": 4,
    }
    runs = [
        ("frozen pooled feature (`--layer pool`)", {"face": specs["pool"]}),
        (
            "every block, learned mix (`--layer all --face-layer weighted`)",
            {"face": specs["all"], "face_layer": "weighted"},
        ),
        (
            "top two blocks trained (`--layer block:-2 --finetune top`)",
            {"face": specs["block:-2"], "finetune": "top"},
        ),
        (
            "LoRA rank 8 on the top two blocks (`--finetune top --lora 8`)",
            {"face": specs["block:-2"], "finetune": "top", "lora": 8},
        ),
    ]
    lines = [
        "| face input (tiny random ViT, 4 blocks) | test WAR | test UAR | seconds |",
        "|---|---:|---:|---:|",
    ]
    for i, (name, kw) in enumerate(runs):
        t0 = time.perf_counter()
        m = train_run(TrainConfig(out=str(work / f"run{i}"), **common, **kw), str(store), log=lambda _: None)
        f = m["folds"]["1"]
        lines.append(
            f"| {name} | {100 * f['war']:.1f} | {100 * f['uar']:.1f} | {time.perf_counter() - t0:.0f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    # at HF's default init (std 0.02) the random blocks barely mix the tokens and every row sits at chance; a
    # wider init (0.1) gives the class token something to carry on these synthetic faces
    ap.add_argument("--synth-image", type=int, default=112)
    ap.add_argument("--synth-patch", type=int, default=16)
    ap.add_argument("--synth-width", type=int, default=64)
    ap.add_argument("--synth-init", type=float, default=0.1)
    ap.add_argument("--only", default="abc")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vit_top.md"))
    ap.add_argument("--side", choices=("cache", "e2e", "lora"), help=argparse.SUPPRESS)  # one side of (a)/(b)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(one_side(args)))
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = [
        "# ViT top from the cache (`--layer block:K`, `--finetune top`)\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average {load} at the "
        f"start), torch {torch.__version__}, {args.threads} torch threads, CPU only. ViT: {12} blocks, width "
        f"{args.width}, {args.heads} heads, 224 px, patch 16 (197 tokens), random weights, fp32.\n",
    ]
    with tempfile.TemporaryDirectory(prefix="fer-vit-bench-") as tmp:
        if set(args.only) & set("ab"):
            text += step_bench(args, Path(tmp))
        if "c" in args.only:
            text += ["", f"(c) The synthetic set, fold 1, {args.epochs} epochs, same head for every row:", ""]
            text += synth_table(args, Path(tmp))
    out = "\n".join(text) + "\n"
    print(out)
    Path(args.out).write_text(out)
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
