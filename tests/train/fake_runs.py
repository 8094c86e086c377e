"""Hand-made, well-formed run folders (RUN_FORMAT.md) and a tiny real store, for the plots/report/sweep/CLI tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fer.cache import create_store
from fer.cache.schema import CLASS_NAMES, NUM_CLASSES


def make_run(root: Path, name: str, *, wars=(0.5, 0.6), uars=None, fusion="fc", loss="kl",
             modalities=("face", "audio"), epochs=3, seed=0, val_uars=None, protocol=None) -> Path:
    """Write config.json, history.csv, metrics.json and predictions_fold<k>.npz for len(wars) folds.

    val_uars: per-fold validation UAR written into metrics.json (val WAR = val UAR + 0.05, val loss = 1 - val
    UAR); None leaves them out (a run written before metrics.json held them: history.csv has them); protocol
    "literature" writes no validation at all."""
    rng = np.random.default_rng(seed)
    uars = tuple(w - 0.1 for w in wars) if uars is None else uars
    run = Path(root) / name
    run.mkdir(parents=True)
    folds = list(range(1, len(wars) + 1))
    (run / "config.json").write_text(json.dumps({"modalities": list(modalities), "fusion": fusion, "loss": loss,
                                                 "epochs": epochs, "folds": folds, "store": "x.zarr",
                                                 **({"protocol": protocol} if protocol else {})}))
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "epoch", "train_loss", "val_loss", "val_war", "val_uar", "lr", "samples_per_s", "seconds"])
        for k in folds:
            for e in range(1, epochs + 1):
                w.writerow([k, e, 2.0 / e, 2.2 / e, 0.3 + 0.05 * e, 0.25 + 0.05 * e, 1e-4, 1000.0, 0.5])
    fm = {}
    for k, war, uar in zip(folds, wars, uars):
        n = 40
        labels = rng.integers(0, NUM_CLASSES, n)
        probs = rng.dirichlet(np.ones(NUM_CLASSES), n).astype(np.float32)
        probs[np.arange(n), labels] += 0.5
        probs /= probs.sum(1, keepdims=True)
        pred = probs.argmax(1)
        cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
        np.add.at(cm, (labels, pred), 1)
        ids = np.array([f"{k}{i:05d}" for i in range(n)])
        np.savez(run / f"predictions_fold{k}.npz", ids=ids, probs=probs, labels=labels.astype(np.int64))
        fm[str(k)] = {"war": war, "uar": uar, "per_class_recall": [uar] * NUM_CLASSES, "confusion": cm.tolist(),
                      "n_test": n, "best_epoch": epochs, "epochs_run": epochs, "seconds": 10.0}
        if protocol == "literature":
            fm[str(k)].update(val_war=None, val_uar=None, val_loss=None, n_val=0)
        elif val_uars is not None:
            v = val_uars[k - 1]
            fm[str(k)].update(val_war=v + 0.05, val_uar=v, val_loss=1 - v, n_val=12)
    metrics = {"folds": fm, "mean": {"war": float(np.mean(wars)), "uar": float(np.mean(uars))},
               "std": {"war": float(np.std(wars)), "uar": float(np.std(uars))}, "class_names": list(CLASS_NAMES),
               "modalities": list(modalities), "fusion": fusion, "loss": loss}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def make_store(path, n=70, seed=0):
    """Tiny store: face 16x512 features that carry the class, votes, folds 1 and 2 (train/test)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    votes = np.zeros((n, NUM_CLASSES), np.float32)
    votes[np.arange(n), labels] = 8
    votes[np.arange(n), (labels + 1) % NUM_CLASSES] = 2
    folds = np.zeros((n, 5), np.int8)
    for k in range(2):
        test = (np.arange(n) // NUM_CLASSES) % 5 == k
        folds[:, k] = np.where(test, 2, 1)
    ids = np.array([f"{i:05d}" for i in range(n)])
    store = create_store(path, ids, votes, folds, description="sweep test")
    centers = rng.normal(0, 1, (NUM_CLASSES, 512)).astype(np.float32)
    data = (centers[labels][:, None, :] + 0.5 * rng.normal(0, 1, (n, 16, 512))).astype(np.float16)
    w = store.writer("face.test.16", row_shape=(16, 512), attrs={"modality": "face", "backbone": "test"})
    w.write_rows(np.arange(n, dtype=np.int64), data, np.ones((n, 16), bool))
    w.close()
    store.close()
    return path
