"""Does augmentation help? Test WAR/UAR over 5 folds of the synthetic DFEW data (issue 12's table).

One synthetic dataset (`fer data synth`, 200 clips by default), two face feature sets of the same backbone:
the 16-frame cache (`fer extract -m face`) and the all-frame cache with mirrored views (`fer extract -m face
--frames all --max-frames 64 --flip`). Then `fer train` over all 5 folds with the demo's settings, for:

  16f                   the 16-frame set, as the demo trains it
  16f + balance         with --balance
  all                   the all-frame set at its segment centres (same frames as 16f, both views at test)
  all + jitter          --augment jitter
  all + jitter,flip     --augment jitter,flip
  all + jitter,flip + balance

and `fer report` prints the table (written to benchmarks/results/augment.md), whatever it shows. Rerunning
resumes: finished runs are kept (the data, the store and every run folder live under --dir).

usage: python benchmarks/bench_augment.py [--clips 200] [--dir bench_augment] [--epochs 40] [--weights auto]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = ["--fold", "all", "--batch-size", "16", "--lr", "3e-4", "--layers", "2", "--ff", "512", "--monitor", "loss",
         "--no-plots"]
RUNS = {
    "16f": ("16f", []),
    "16f-balance": ("16f", ["--balance"]),
    "all": ("all", []),
    "all-jitter": ("all", ["--augment", "jitter"]),
    "all-jitter-flip": ("all", ["--augment", "jitter,flip"]),
    "all-jitter-flip-balance": ("all", ["--augment", "jitter,flip", "--balance"]),
}


def fer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer.cli", *map(str, args)], check=True, text=True)


def face_specs(store: Path) -> dict[str, str]:
    """The store's face sets: the all-frame one (provenance frames: all) and the fixed 16-frame one."""
    from fer.cache import open_store

    out = {}
    with open_store(store) as s:
        for spec in s.specs():
            info = s.info(spec)
            if info.get("modality") == "face":
                out["all" if str(info.get("frames", "")).lower() == "all" else "16f"] = spec
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "fer-bench-augment"),
                   help="data, store and runs (kept: a rerun resumes)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--weights", default="auto", help="face backbone weights for both sets (auto: pretrained if cached)")
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "augment.md"))
    args = p.parse_args()
    work = Path(args.dir)
    data, store, runs = work / "data", work / "features.zarr", work / "runs"
    if not (data / "synth.json").is_file():
        fer("data", "synth", data, "--clips", args.clips, "--seed", 0)
    fer("extract", data, "-m", "face", "--weights", args.weights, "--store", store, "--no-progress")
    try:
        fer("extract", data, "-m", "face", "--weights", args.weights, "--frames", "all",
            "--max-frames", args.max_frames, "--flip", "--store", store, "--no-progress")
    except subprocess.CalledProcessError as e:
        raise SystemExit("the all-frame extraction failed: this needs `fer extract --frames all --flip` "
                         "(issue 12, phase 2)") from e
    specs = face_specs(store)
    if set(specs) != {"16f", "all"}:
        raise SystemExit(f"expected one 16-frame and one all-frame face set in {store}, found {specs}")
    for name, (which, extra) in RUNS.items():
        out = runs / name
        if (out / "metrics.json").is_file():
            continue
        resume = ["--resume"] if (out / "config.json").is_file() else []
        fer("train", store, "--face", specs[which], "--epochs", args.epochs, *TRAIN, *extra, "--out", out, *resume)
    fer("report", *[runs / n for n in RUNS], "--markdown", "--out", args.out)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
