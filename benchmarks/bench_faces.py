"""Clips/s of `fer data faces` against the bare face detector, and the detector batched against a per-frame loop.

Input: short videos of a real photograph (matplotlib's grace_hopper.jpg) whose face moves, grows and
turns (`fer.extract.synth.photo`), written to a temporary folder. Three measurements in one run:

- detector, per-frame loop: one frame per detector call, as the peers' MTCNN scripts do, on frames
  already decoded in memory;
- detector, batched: the frames of a clip ``--batch`` at a time, frames in memory;
- `fer data faces` end to end (`run_faces`: decoding in DataLoader workers, detection, tracking,
  alignment, jpg writing, manifest), on the same clips, the same detector object.

    python benchmarks/bench_faces.py [--clips 6] [--frames 48] [--width 640 --height 360] [--batch 8]
                                     [--threads N] [--repeat 3] [--out benchmarks/results/faces.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def make_clips(folder: Path, clips: int, frames: int, size: tuple[int, int]) -> Path:
    """``clips`` videos of a moving face and a manifest listing them; returns the manifest."""
    from fer.extract.synth.photo import make_moving

    lines = ["clip_id,video,label"]
    for i in range(clips):
        make_moving(folder / f"clip{i:03d}.mp4", n=frames, size=size)
        lines.append(f"clip{i:03d},clip{i:03d}.mp4,{('happy', 'sad', 'neutral')[i % 3]}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=48, help="frames per clip (every one is aligned: --frames all)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--batch", type=int, default=None, help="frames per detector pass [default: fer data faces' own]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: fer data faces' own choice]")
    ap.add_argument("--workers", type=int, default=None, help="decoding workers of fer data faces [default: its own]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "faces.md")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the best time of each is kept")
    args = ap.parse_args()

    from fer.cache.devices import resolve_device
    from fer.extract.datasets import load_dataset
    from fer.extract.faces.detect import MTCNN
    from fer.extract.faces.pipeline import decode_clip
    from fer.extract.faces.runner import cpu_threads, default_batch, run_faces
    from fer.extract.loading import default_workers

    device = resolve_device(args.device)
    batch = args.batch or default_batch(device)
    workers = default_workers() if args.workers is None else args.workers
    # one thread count for all three measurements: fer data faces' own unless --threads says otherwise
    threads = args.threads or cpu_threads(workers)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        manifest = make_clips(tmp / "clips", args.clips, args.frames, (args.width, args.height))
        dataset = load_dataset(manifest)
        decoded = [decode_clip(r.video, None).frames for r in dataset.records]
        n_frames = sum(len(f) for f in decoded)
        det = MTCNN(device)
        det.detect(decoded[0][:batch], batch=batch)  # warm-up: allocator, kernels

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        # interleaved repeats, best of each: the machine may be shared, and a slow spell should hit all three
        t_loop = t_bare = t_faces = float("inf")
        for r in range(args.repeat):
            t_loop = min(t_loop, timed(lambda: [det.detect(f[i:i + 1]) for f in decoded for i in range(len(f))]))
            t_bare = min(t_bare, timed(lambda: [det.detect(f, batch=batch) for f in decoded]))
            summary = run_faces(dataset, tmp / f"faces{r}", size=224, frames=None, device=device, workers=workers,
                                batch=batch, progress=False, detector=det, threads=threads)
            assert summary.done == args.clips, str(summary)
            t_faces = min(t_faces, summary.seconds)

    rate = lambda t: args.clips / t  # noqa: E731
    rows = [
        ("detector, one frame per call (frames in memory)", t_loop),
        (f"detector, {batch} frames per call (frames in memory)", t_bare),
        ("`fer data faces` end to end (decode, detect, track, align, write jpgs)", t_faces),
    ]
    threads = torch.get_num_threads()
    lines = [
        "# fer data faces: throughput",
        "",
        f"{args.clips} clips x {args.frames} frames of {args.width}x{args.height} H.264 "
        f"(a real photo's face moving, growing, turning); every frame aligned to 224 px; "
        f"device {device}{'' if device.type == 'cuda' else f' ({os.cpu_count()} cores, torch threads {threads})'}; "
        f"decoding workers {workers}; {platform.processor() or platform.machine()}.",
        "",
        "| what | clips/s | frames/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {rate(t):.2f} | {n_frames / t:.1f} |" for name, t in rows]
    lines += [
        "",
        f"- `fer data faces` / bare batched detector: **{t_bare / t_faces:.2f}x** (target >= 0.8x)",
        f"- batched detector / per-frame loop: **{t_loop / t_bare:.2f}x**",
        f"- `fer data faces` / per-frame loop: **{t_loop / t_faces:.2f}x**",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
