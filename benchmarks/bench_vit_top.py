"""Fine-tuning a ViT's top from the cache (`--layer block:K`, `fer train --finetune top [--lora R]`):
what it costs.

(a) One training step from the cache of block L-2 against an end-to-end step that trains the same two blocks:
    same model (a ViT with L = 12 blocks saved locally with random weights, ViT-S/16 shaped by default), same
    clips, same batch, same trainer model (fer's FerModel with the top rebuilt from the store's provenance,
    AdamW, KL loss). End to end: decode the clips' face JPEGs and resize them (the extractor's own load), the
    model's preprocessing, the frozen bottom (blocks 0..L-3) forward without gradients (generous: no autograd
    graph for the part that does not train), then the step. From the cache: the batch's rows read from the
    store (fp16 tokens), then the same step. Median of --steps steps after a warm-up; the memory a step
    adds (VmHWM reset after both sides ran once, above the RSS then); the end-to-end step's parts timed apart.
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
from fer.train.resources import peak_rss, reset_peak, rss_now
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
    root, store = work / "data", work / "a.zarr"
    synthesize(root, clips=max(args.clips, 7), seed=0, workers=1)
    vit = save_vit(work / "vit-a", args.width, args.heads, 12, 224, 16)
    spec, ex = extract(root, store, vit, "block:-2", args.frames)
    with open_store(store, "r") as s:
        prov = dict(s.set_attrs(spec))
    records = load_dataset(root).records[: args.clips]
    rows = np.arange(args.clips)
    mask = torch.ones(args.clips, args.frames, dtype=torch.bool)
    votes = torch.zeros(args.clips, 7)
    votes[:, 0] = 1.0
    loss_fn = make_loss(
        "kl", train_labels=np.zeros(args.clips, dtype=np.int64), num_classes=7, device=torch.device("cpu")
    )

    def trainer(lora: int):
        cfg = TrainConfig(face=spec, finetune="top", lora=lora, batch_size=args.clips, **HEAD)
        top = build_top("top", prov, lora=lora, log=lambda _: None)
        zero = ModalityData(
            spec,
            torch.zeros(1, args.frames, prov["cut"]["tokens"], prov["cut"]["width"]),
            torch.ones(1, args.frames, dtype=torch.bool),
            prov,
        )
        model = FerModel(cfg, {"face": zero}, num_classes=7, top=top).train()
        opt = make_optimizer(cfg, model)

        def step(tokens: torch.Tensor) -> None:
            loss = loss_fn(
                model({"face": tokens, "face_mask": mask}), votes, torch.zeros(args.clips, dtype=torch.long)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return model, step

    _, step = trainer(0)
    store_h = open_store(store, "r")

    def from_cache() -> None:
        step(torch.from_numpy(np.asarray(store_h.read(spec, rows=rows).data)).float())

    def end_to_end() -> None:
        frames = torch.cat([ex.load(r)[0] for r in records])  # decode + resize, as the extractor does
        with torch.no_grad():
            tokens = ex.model(ex.preprocess(frames.permute(0, 3, 1, 2)))
        step(tokens.view(args.clips, args.frames, *tokens.shape[1:]))

    def growth(fn) -> tuple[float, int]:
        """(median seconds, peak RSS above the RSS before the timed steps): the memory a step itself takes,
        once both sides have run (the optimizer's state and the allocator's pools exist before either is
        measured)."""
        fn()
        reset_peak()
        base = rss_now()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), peak_rss() - base

    from_cache()
    end_to_end()

    t_cache, m_cache = growth(from_cache)
    t_e2e, m_e2e = growth(end_to_end)
    frames = torch.cat([ex.load(r)[0] for r in records])
    t_decode = median_time(lambda: torch.cat([ex.load(r)[0] for r in records]), args.steps)
    with torch.no_grad():
        t_bottom = median_time(lambda: ex.model(ex.preprocess(frames.permute(0, 3, 1, 2))), args.steps)
    lora_model, lora_step = trainer(8)
    full_params = trainable_parameters(trainer(0)[0].top)
    t_lora = median_time(
        lambda: lora_step(torch.from_numpy(np.asarray(store_h.read(spec, rows=rows).data)).float()),
        args.steps,
    )
    store_h.close()
    n_lora = trainable_parameters(lora_model.top)
    images = args.clips * args.frames
    target = 0.8 * 12 / 2
    return [
        "| measure | from the cache | end to end | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| (a) one training step, {args.clips} clips x {args.frames} frames = {images} images, "
        "blocks 10-11 of 12 "
        f"trained | {t_cache:.2f} s | {t_e2e:.2f} s | **{t_e2e / t_cache:.1f}x** faster | "
        f">= {target:.1f}x (0.8 x L/2) |",
        f"| (a) of the end-to-end step: decode + resize {t_decode:.2f} s, preprocessing + frozen blocks 0-9 "
        f"{t_bottom:.2f} s | | | | |",
        f"| (a) peak memory a step adds (RSS above the RSS before the steps) | {m_cache / 2**20:.0f} MiB | "
        f"{m_e2e / 2**20:.0f} MiB | {m_e2e / max(m_cache, 1):.2f}x | |",
        f"| (b) step from the cache: LoRA rank 8 vs all weights of the top | {t_lora:.2f} s | "
        f"{t_cache:.2f} s | "
        f"{t_cache / t_lora:.2f}x | |",
        f"| (b) trainable parameters of the top: LoRA rank 8 vs all weights | "
        f"{n_lora:,} | {full_params:,} | {full_params / n_lora:.0f}x fewer | |",
    ]


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
