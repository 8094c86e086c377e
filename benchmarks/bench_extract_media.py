"""Clips/s of the pose and audio backends on this CPU, split into decoding (load) and model (embed).

Input: the synthetic DFEW-layout dataset (`fer.extract.synth.synthesize`), written to a temporary
folder unless --data points at one. Random weights throughout (no hub access here): timings depend on
the architecture, not the values, except Keypoint R-CNN's keypoint head, which runs once per
detection above min_score (noted in the table).

    python benchmarks/bench_extract_media.py [--clips 12] [--threads 2] [--out benchmarks/results/extract_media.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def time_backend(ext, records, batch: int) -> dict:
    items, t_load = [], 0.0
    failed = 0
    for r in records:
        t = time.perf_counter()
        try:
            items.append(ext.load(r))
        except Exception:  # a corrupt clip: skipped, as the runner would
            failed += 1
        t_load += time.perf_counter() - t
    ext.embed(items[:1])  # warm-up (allocator, lazy inits), not timed
    t_model = 0.0
    masks = []
    for i in range(0, len(items), batch):
        t = time.perf_counter()
        _, m = ext.embed(items[i:i + batch])
        t_model += time.perf_counter() - t
        masks.append(m)
    n = len(items)
    total = t_load + t_model
    found = float(torch.cat(masks).float().mean()) if masks else 0.0
    return {"clips": n, "failed": failed, "load_s": t_load, "model_s": t_model, "clips_per_s": n / total,
            "decode_share": t_load / total, "model_share": t_model / total, "mask_true": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: synthesize one)")
    ap.add_argument("--clips", type=int, default=12, help="clips for mel; wav2vec2 and pose use fewer")
    ap.add_argument("--heavy-clips", type=int, default=4, help="clips for wav2vec2-large and Keypoint R-CNN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract_media.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fer.extract.backbones.audio import make_audio_extractor
    from fer.extract.backbones.pose import make_pose_extractor
    from fer.extract.datasets import load_dataset
    from fer.extract.synth import synthesize

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name) / "synth"
        synthesize(root, clips=args.clips, seed=0, corrupt=0, workers=1)
    records = [r for r in load_dataset(root).records if r.video is not None][: args.clips]
    heavy = records[: args.heavy_clips]

    import av

    with av.open(str(heavy[0].video)) as c:
        v, a = c.streams.video[0], (c.streams.audio[0] if c.streams.audio else None)
        media = (f"{v.codec_context.name} {v.width}x{v.height} @ {float(v.average_rate):g} fps, "
                 f"{float(c.duration or 0) / 1e6:.1f} s, audio {a.codec_context.name if a else '-'} "
                 f"{a.sample_rate if a else ''} Hz {a.layout.name if a else ''}")

    rows = []
    runs = [
        ("audio mel", lambda: make_audio_extractor("mel"), records, 8),
        ("audio wav2vec2 (large config, random)", lambda: make_audio_extractor("wav2vec2", weights="none"), heavy, 2),
        ("pose keypointrcnn (random, 512-864)", lambda: make_pose_extractor("keypointrcnn", weights="none"), heavy, 2),
    ]
    for name, build, recs, batch in runs:
        t = time.perf_counter()
        ext = build()
        t_build = time.perf_counter() - t
        res = time_backend(ext, recs, batch)
        res.update(name=name, spec=ext.spec, batch=batch, build_s=t_build)
        rows.append(res)
        print(f"{name}: {res['clips_per_s']:.2f} clips/s, decode {res['decode_share']:.0%}, "
              f"model {res['model_share']:.0%}")
        del ext

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Pose and audio extraction on this CPU",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"torch {torch.__version__}, {args.threads} threads, 1-min load average at the end {load:.1f} "
        "(above 2 means other jobs shared the cores and the figures are pessimistic). "
        f"Input: synthetic DFEW-layout clips ({media}). "
        "Serial, one process: decode (`load`) then model (`embed`) per batch; the extraction runner overlaps "
        "the two with DataLoader workers, so its throughput approaches 1 / max(decode, model) per clip.",
        "",
        "| backend | spec | clips | batch | clips/s | decode s | model s | decode share | model share | mask true |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | `{r['spec']}` | {r['clips']} | {r['batch']} | {r['clips_per_s']:.2f} | "
                     f"{r['load_s']:.2f} | {r['model_s']:.2f} | {r['decode_share']:.0%} | {r['model_share']:.0%} | "
                     f"{r['mask_true']:.0%} |")
    lines += [
        "",
        "Model build time (not counted above): " + ", ".join(f"{r['name']} {r['build_s']:.1f} s" for r in rows) + ".",
        "Random weights: Keypoint R-CNN's keypoint head runs once per detection scoring >= min_score (0.5), "
        "so with COCO weights and one or two people per frame its model time differs; 'mask true' is the "
        "share of frames (pose) or tokens (audio) with something found.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
