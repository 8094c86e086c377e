"""Does the synthetic dataset's class signal survive frozen random-init backbones?

Synthesizes a dataset, then fits a linear classifier (multinomial logistic regression) on:
  face   random-init ResNet-18 (fc removed) over the 16 face frames, mean-pooled over time
  audio  log-mel spectrogram (16 kHz mono, 64 mels) mean and std over time
  body   random-init ResNet-18 over 3 full frames of the video (a stand-in for pose)
  fusion the three concatenated
and prints test accuracy (WAR) and UAR on fold 1 and the mean over the 5 folds, next to the
majority-class rate. Usage::

    python benchmarks/check_synth_signal.py [--clips 300] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torchvision
from PIL import Image

from fer.cache.schema import NUM_CLASSES, NUM_FOLDS
from fer.extract.synth import synthesize

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def random_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    return net.eval()


@torch.no_grad()
def embed(net: torch.nn.Module, images: list[np.ndarray], size: int | None = None) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    if size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    return net((x - MEAN) / STD).numpy()


def face_features(root: Path, ids: list[str], net: torch.nn.Module) -> np.ndarray:
    feats = []
    for cid in ids:
        files = sorted((root / "Clip" / "clip_224x224_16f" / cid).glob("*.jpg"))
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        feats.append(embed(net, frames).mean(0))
    return np.stack(feats)


def body_features(root: Path, ids: list[str], net: torch.nn.Module) -> np.ndarray:
    feats = []
    for cid in ids:
        with av.open(str(root / "Clip" / "original" / f"{cid}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 5).round().astype(int)[2:]]
        feats.append(embed(net, picks, size=(224, 224)).mean(0))
    return np.stack(feats)


def _mel_bank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    def hz2mel(f):
        return 2595 * np.log10(1 + f / 700)

    pts = 700 * (10 ** (np.linspace(hz2mel(20), hz2mel(sr / 2), n_mels + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    bank = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        bank[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return bank


def audio_features(root: Path, ids: list[str]) -> np.ndarray:
    sr, n_fft, hop = 16000, 400, 160
    bank = _mel_bank(sr, n_fft, 64)
    win = np.hanning(n_fft)
    feats = []
    for cid in ids:
        with av.open(str(root / "Clip" / "original" / f"{cid}.mp4")) as c:
            rs = av.AudioResampler(format="flt", layout="mono", rate=sr)
            chunks = [r.to_ndarray().ravel() for f in c.decode(audio=0) for r in rs.resample(f)]
            chunks += [r.to_ndarray().ravel() for r in rs.resample(None)]
        x = np.concatenate(chunks)
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * win
        mel = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ bank.T + 1e-6)
        feats.append(np.concatenate([mel.mean(0), mel.std(0)]))
    return np.stack(feats)


def fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression (L-BFGS, L2) on standardized features."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a = torch.tensor((xtr - mu) / sd, dtype=torch.float64)
    b = torch.tensor(ytr)
    w = torch.zeros(a.shape[1], NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, b) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    t = torch.tensor((xte - mu) / sd, dtype=torch.float64)
    return (t @ w + bias).argmax(1).numpy()


def read_split(root: Path, part: str, k: int) -> tuple[list[str], np.ndarray]:
    with open(root / "EmoLabel_DataSplit" / f"{part}(single-labeled)" / f"set_{k}.csv") as f:
        rows = list(csv.DictReader(f))
    return [f"{int(r['video_name']):05d}" for r in rows], np.array([int(r["label"]) - 1 for r in rows])


def scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    war = float((y == pred).mean())
    uar = float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))
    return war, uar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    root = args.out or Path(tmp.name) / "synth"
    summary = synthesize(root, clips=args.clips, seed=args.seed)
    print(summary)

    ids = sorted({i for k in range(1, NUM_FOLDS + 1) for i in read_split(root, "test", k)[0]})
    index = {cid: n for n, cid in enumerate(ids)}
    t0 = time.perf_counter()
    net = random_resnet18()
    feats = {"face": face_features(root, ids, net), "audio": audio_features(root, ids),
             "body": body_features(root, ids, net)}
    feats["face+audio"] = np.concatenate([feats["face"], feats["audio"]], 1)
    feats["fusion"] = np.concatenate([feats["face"], feats["audio"], feats["body"]], 1)
    print(f"features for {len(ids)} single-labeled clips in {time.perf_counter() - t0:.1f} s")

    print(f"{'features':<11} {'fold1 WAR':>9} {'fold1 UAR':>9} {'5-fold WAR':>10} {'5-fold UAR':>10}")
    for name, x in feats.items():
        res = []
        for k in range(1, NUM_FOLDS + 1):
            tr, ytr = read_split(root, "train", k)
            te, yte = read_split(root, "test", k)
            pred = fit_predict(x[[index[i] for i in tr]], ytr, x[[index[i] for i in te]])
            res.append(scores(yte, pred))
        res = np.array(res)
        print(f"{name:<11} {res[0, 0]:9.3f} {res[0, 1]:9.3f} {res[:, 0].mean():10.3f} {res[:, 1].mean():10.3f}")
    _, y = read_split(root, "test", 1)
    all_y = np.concatenate([read_split(root, "test", k)[1] for k in range(1, NUM_FOLDS + 1)])
    print(f"chance: majority class {np.bincount(all_y).max() / len(all_y):.3f}, uniform {1 / NUM_CLASSES:.3f}")


if __name__ == "__main__":
    main()
