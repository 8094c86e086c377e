"""CPU bf16 autocast against fp32, per backbone family: speed and faithfulness of the pooled features.

    python benchmarks/bench_precision.py [--families resnet,clip] [--clips 4] [--frames 8] [--threads 2]

For each family the same extractor is built twice (``--precision fp32`` and ``bf16``) with the same
weights, and both run ``embed`` on the same decoded synthetic clips (face frames, or audio), alternated
and repeated so a drift in the shared machine's load hits both alike (best of ``--repeats``). Reported:
images/s (face) or clips/s (audio), the speedup, and the cosine of every pooled feature vector (each
frame's for faces, each clip's every layer for audio) to fp32: the minimum and the mean.

The rule fer applies (fer.extract.backbones.precision.CPU_BF16_FAMILIES): bf16 by default on CPUs with
native bf16 only where it is at least 1.5x faster AND every feature stays within cosine 0.999 of fp32.
Results go to benchmarks/results/precision.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from backbone_families import build, dataset, pick, weights_used  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "precision.md"
MIN_SPEEDUP, MIN_COSINE = 1.5, 0.999


def _time(ex, items, batch: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    outs = [ex.embed(items[i:i + batch])[0] for i in range(0, len(items), batch)]
    return time.perf_counter() - t0, torch.cat(outs)


def measure(family, records, tmp: Path, frames: int, batch: int, repeats: int) -> dict:
    """fp32 vs bf16 on one family: best-of-``repeats`` times, cosines of the pooled features."""
    kw = {"frames": frames} if family.modality == "face" else {}
    t0 = time.perf_counter()
    fp32 = build(family, tmp, "fp32", **kw)
    bf16 = build(family, tmp, "bf16", **kw)
    build_s = time.perf_counter() - t0
    items = [fp32.load(r) for r in records]
    with torch.inference_mode():
        fp32.embed(items[:1]), bf16.embed(items[:1])  # warm-up: oneDNN kernels, allocator
        t32, t16 = [], []
        for _ in range(repeats):
            s, a = _time(fp32, items, batch)
            t32.append(s)
            s, b = _time(bf16, items, batch)
            t16.append(s)
    # one vector per frame (face) or per clip and layer (audio): (..., D)
    cos = torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]).double(),
                                                b.reshape(-1, b.shape[-1]).double(), dim=1)
    cos = cos[a.reshape(-1, a.shape[-1]).abs().sum(1) > 0]  # rows without audio are zero in both
    units = len(items) * (frames if family.modality == "face" else 1)
    r = {"family": family.name, "modality": family.modality, "spec": fp32.spec, "weights": weights_used(fp32),
         "fp32_per_s": units / min(t32), "bf16_per_s": units / min(t16), "cos_min": float(cos.min()),
         "cos_mean": float(cos.mean()), "units": units, "build_s": build_s,
         "unit": "img/s" if family.modality == "face" else "clips/s", "pool_family": fp32.provenance().get("family")}
    r["speedup"] = r["bf16_per_s"] / r["fp32_per_s"]
    r["bf16_by_default"] = r["speedup"] >= MIN_SPEEDUP and r["cos_min"] >= MIN_COSINE
    return r


def to_markdown(rows: list[dict], args: argparse.Namespace, native: bool) -> str:
    lines = [
        "# CPU bf16 autocast vs fp32, per backbone family",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
        f"{args.threads} threads, "
        f"oneDNN native bf16: {'yes (AVX512-BF16/AMX)' if native else 'no (emulated: slow)'}; "
        f"{args.clips} synthetic clips, {args.frames} face frames per clip, batch {args.batch} clips, best of "
        f"{args.repeats} alternated runs; load average {os.getloadavg()[0]:.1f} at the end. Cosine: every pooled "
        "feature vector (each frame; each clip's every layer for audio) against fp32. "
        f"bf16 by default = speedup >= {MIN_SPEEDUP} and min cosine >= {MIN_COSINE}.",
        "",
        "| family | weights | fp32 | bf16 | speedup | cosine min | cosine mean | bf16 by default |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | {r['weights']} | {r['fp32_per_s']:.2f} {r['unit']} | {r['bf16_per_s']:.2f} "
                     f"{r['unit']} | {r['speedup']:.2f}x | {r['cos_min']:.5f} | {r['cos_mean']:.5f} | "
                     f"{'yes' if r['bf16_by_default'] else 'no'} |")
    lines += ["", "Specs (fp32 names; bf16 adds `.bf16`): " + ", ".join(f"`{r['spec']}`" for r in rows), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma list of name parts (resnet,convnext,clip,...); default all")
    ap.add_argument("--data", type=Path, help="a DFEW-layout root; default: synthesize --clips clips")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8, help="face frames per clip")
    ap.add_argument("--batch", type=int, default=4, help="clips per embed call")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fer.extract.backbones.precision import cpu_bf16_native

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        records = dataset(args.data, args.clips, Path(tmp)).records
        for fam in pick(args.families):
            r = measure(fam, records, Path(tmp), args.frames, args.batch, args.repeats)
            print(f"{r['family']:<40} fp32 {r['fp32_per_s']:7.2f} {r['unit']}  bf16 {r['bf16_per_s']:7.2f}  "
                  f"x{r['speedup']:.2f}  cos min {r['cos_min']:.5f}  -> {'bf16' if r['bf16_by_default'] else 'fp32'}",
                  flush=True)
            rows.append(r)
    md = to_markdown(rows, args, cpu_bf16_native())
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)


if __name__ == "__main__":
    main()
