"""PNG figures for a run folder: confusion matrices, precision-recall curves, training curves.

Everything is read back from the run folder's files (metrics.json, predictions_fold<k>.npz,
history.csv), so plots can be redrawn for any finished run without the store or the model.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import DFEW_CLASSES

_PRED_RE = re.compile(r"^predictions_fold(\d+)\.npz$")


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest precision and recall at every distinct score threshold, highest first.

    Returns (precision, recall, thresholds); tied scores form one threshold, so the curve does not
    depend on the order of equal scores. Recall is NaN when there are no positives.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} differ in shape")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    # the last index of each run of equal scores is where that threshold's counts are complete
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.array([], dtype=int)
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1.0)
    n_pos = float(p.sum())
    recall = tp / n_pos if n_pos > 0 else np.full_like(tp, np.nan)
    return precision, recall, s[last]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (no interpolation).

    NaN when there are no positives (the class is absent from the test set).
    """
    precision, recall, _ = precision_recall_curve(scores, positive)
    if recall.size == 0 or np.isnan(recall).any():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _class_names(metrics: dict | None) -> list[str]:
    if metrics and metrics.get("class_names"):
        return list(metrics["class_names"])
    return list(DFEW_CLASSES)  # runs written before stores named their classes were DFEW's


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, out: Path) -> Path:
    """Row-normalised confusion matrix (colour = share of the true class) with the counts written in."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * k, 0.6 + 0.8 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_pr(probs: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, out: Path) -> Path:
    """One precision-recall curve per class (one-vs-rest), average precision in the legend."""
    plt = _pyplot()
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    aps = []
    for c, name in enumerate(class_names[: probs.shape[1]]):
        pos = labels == c
        if not pos.any():
            continue  # absent class: no curve (and it is left out of mAP like it is out of UAR)
        precision, recall, _ = precision_recall_curve(probs[:, c], pos)
        ap = average_precision(probs[:, c], pos)
        aps.append(ap)
        # past full recall, lower thresholds only add false positives: stop the drawn curve there
        full = int(np.argmax(recall >= 1.0))
        precision, recall = precision[: full + 1], recall[: full + 1]
        # start the step curve at recall 0 with the first point's precision
        ax.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post",
                label=f"{name} (AP {ap:.2f}, n={int(pos.sum())})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    m = f", mAP {np.mean(aps):.3f}" if aps else ""
    ax.set_title(f"{title}{m}")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def read_history(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """history.csv as {fold: {column: array over epochs}} (empty cells become NaN)."""
    folds: dict[int, dict[str, list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                fold = int(row["fold"])
            except (KeyError, TypeError, ValueError):
                raise FerError(f"{path} is not a run history (a row without a fold number); "
                               "rerun `fer train`") from None
            cols = folds.setdefault(fold, {})
            for key, value in row.items():
                if key == "fold" or key is None:
                    continue
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    v = float("nan")
                cols.setdefault(key, []).append(v)
    return {k: {c: np.asarray(v) for c, v in cols.items()} for k, cols in sorted(folds.items())}


def plot_curves(history: dict[int, dict[str, np.ndarray]], title: str, out: Path) -> Path:
    """Train/val loss and val WAR/UAR per epoch, one line per fold."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.0))
    panels = [
        (axes[0], [("train_loss", "-", "train"), ("val_loss", "--", "val")], "loss"),
        (axes[1], [("val_war", "-", "")], "val WAR (%)"),
        (axes[2], [("val_uar", "-", "")], "val UAR (%)"),
    ]
    for ax, series, ylabel in panels:
        for i, (fold, cols) in enumerate(history.items()):
            color = f"C{i % 10}"
            epochs = cols.get("epoch", np.arange(1, len(next(iter(cols.values()), [])) + 1))
            for col, style, tag in series:
                if col not in cols or np.all(np.isnan(cols[col])):
                    continue
                y = cols[col] * (100.0 if col in ("val_war", "val_uar") else 1.0)
                label = f"fold {fold}" + (f" {tag}" if tag else "")
                ax.plot(epochs, y, style, color=color, marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_layer_weights(weights: dict[int, list[float]], title: str, out: Path) -> Path:
    """The learned audio layer weights (``--audio-layer weighted``): one group of bars per layer, one bar per fold."""
    plt = _pyplot()
    n = max(len(w) for w in weights.values())
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * n + 2), 3.6))
    width = 0.8 / max(len(weights), 1)
    for i, (fold, w) in enumerate(sorted(weights.items())):
        ax.bar(np.arange(len(w)) + (i - (len(weights) - 1) / 2) * width, w, width, label=f"fold {fold}",
               color=f"C{i % 10}")
    ax.axhline(1.0 / n, color="gray", lw=0.8, ls="--", label="uniform")
    ax.set_xlabel("layer (0 = input embedding)")
    ax.set_ylabel("weight")
    ax.set_xticks(range(n))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(run_dir: Path) -> list[Path]:
    """Draw every figure the run folder's files allow into run_dir/plots/; returns the PNG paths.

    confusion_fold<k>.png from metrics.json, pr_fold<k>.png from predictions_fold<k>.npz,
    curves.png from history.csv, layer_weights.png from layer_weights_fold<k>.json. A folder with none of these
    files is not a run -> FerError.
    """
    run_dir = Path(run_dir)
    metrics_path, history_path = run_dir / "metrics.json", run_dir / "history.csv"
    pred_paths = sorted((p for p in run_dir.glob("predictions_fold*.npz") if _PRED_RE.match(p.name)),
                        key=lambda p: int(_PRED_RE.match(p.name).group(1)))
    if not run_dir.is_dir() or not (metrics_path.exists() or history_path.exists() or pred_paths):
        raise FerError(f"{run_dir} is not a run folder (no metrics.json, history.csv or predictions); "
                       "give a folder written by `fer train`")
    metrics = None
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as e:
            raise FerError(f"{metrics_path} is not valid JSON ({e}); rerun `fer train`") from None
    names = _class_names(metrics)
    name = run_dir.name
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    written: list[Path] = []

    for fold, m in sorted(((metrics or {}).get("folds") or {}).items(), key=lambda kv: int(kv[0])):
        if m.get("confusion") is None:
            continue
        written.append(plot_confusion(np.asarray(m["confusion"]), names,
                                      f"{name} fold {fold}: WAR {100 * m.get('war', float('nan')):.1f}, "
                                      f"UAR {100 * m.get('uar', float('nan')):.1f}",
                                      plots / f"confusion_fold{fold}.png"))
    for p in pred_paths:
        fold = int(_PRED_RE.match(p.name).group(1))
        with np.load(p, allow_pickle=False) as z:
            probs, labels = z["probs"], z["labels"]
        written.append(plot_pr(probs, labels, names, f"{name} fold {fold}", plots / f"pr_fold{fold}.png"))
    if history_path.exists():
        history = read_history(history_path)
        if history:
            written.append(plot_curves(history, f"{name}: training curves", plots / "curves.png"))
    for modality, prefix in (("audio", ""), ("face", "face_")):
        layer_weights = {}
        for p in sorted(run_dir.glob(f"{prefix}layer_weights_fold*.json")):
            doc = json.loads(p.read_text())
            layer_weights[int(doc["fold"])] = [float(x) for x in doc["weights"]]
        if layer_weights:
            written.append(plot_layer_weights(layer_weights, f"{name}: learned {modality} layer weights",
                                              plots / f"{prefix}layer_weights.png"))
    return written
