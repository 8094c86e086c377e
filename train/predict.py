"""Class probabilities for new clips from a finished run: the run's fold models, averaged."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.train.batches import MemorySource, frame_plans
from fer.train.config import TrainConfig
from fer.train.features import ModalityData
from fer.train.fit import predict
from fer.train.model import FerModel
from fer.train.tops import build_top


def run_features(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """modality -> {"spec", "provenance"} of the feature sets the run was trained on."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.is_file():
        raise FerError(f"{run_dir} is not a run folder (no config.json): pass the folder `fer train --out` wrote")
    feats = json.loads(cfg_path.read_text()).get("features")
    if not feats:
        raise FerError(f"{cfg_path} names no feature sets: the run was written by an older fer; retrain it")
    return feats


def run_classes(run_dir: str | Path) -> tuple[str, ...]:
    """The class names a run was trained on, in the order of its outputs (DFEW's for runs before format 2)."""
    from fer.cache.schema import DFEW_CLASSES

    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.is_file():
        raise FerError(f"{run_dir} is not a run folder (no config.json): pass the folder `fer train --out` wrote")
    return tuple(json.loads(cfg_path.read_text()).get("class_names") or DFEW_CLASSES)


def _checkpoints(run_dir: Path, fold: int | None) -> list[Path]:
    paths = sorted(run_dir.glob("checkpoint_fold*.pt"))
    if fold is not None:
        paths = [p for p in paths if p.stem == f"checkpoint_fold{fold}"]
    if not paths:
        which = f"fold {fold}" if fold is not None else "any fold"
        raise FerError(f"{run_dir} holds no checkpoint for {which}: finish the run (`fer train ... --resume`) first")
    return paths


def predict_probs(run_dir: str | Path, inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                  *, fold: int | None = None) -> np.ndarray:
    """(n, C) class probabilities (the run's classes) for clips whose features are ``inputs``
    (modality -> (data, mask)).

    Every finished fold model of the run votes (probabilities averaged), unless ``fold`` picks one.
    The inputs must come from the same feature specs as the run (``run_features``).
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__})
    feats = run_features(run_dir)
    missing = [m for m in cfg.modalities if m not in inputs]
    if missing:
        raise FerError(f"the run needs features for {', '.join(missing)}")
    sets = {m: ModalityData(feats[m]["spec"], inputs[m][0], inputs[m][1].bool(), feats[m].get("provenance", {}))
            for m in cfg.modalities}
    classes = run_classes(run_dir)
    n = int(next(iter(sets.values())).data.shape[0])
    rows = np.arange(n)
    # the run's frame plan (segment centres of an all-frame set, its evaluated views averaged), on the CPU
    source = MemorySource(sets, cfg, frame_plans(sets, cfg), torch.device("cpu"))
    probs = []
    # the frozen bottom made the inputs (clip_features, from the face set's provenance); a fine-tuned top is
    # rebuilt from the same weights once, and each fold's adapted weights are loaded into it
    top = None
    if cfg.finetune:
        top = build_top(cfg.finetune, sets["face"].provenance, lora=cfg.lora, log=lambda _: None)
    for path in _checkpoints(run_dir, fold):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not ck.get("complete"):
            continue  # an interrupted fold: its last epoch is not a selected model
        model = FerModel(cfg, source.model_sets, num_classes=len(classes), top=top)
        # runs from before tops kept ResNet-18's layer4 under "layer4."
        state = {("top." + k if k.startswith("layer4.") else k): v for k, v in ck["model"].items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise FerError(f"{path} does not fit the run's config ({len(classes)} classes, its feature widths): "
                           f"the run folder was changed after training ({str(e).splitlines()[0][:120]})") from None
        with torch.inference_mode():
            probs.append(torch.softmax(predict(model, source, rows, cfg).float(), dim=1).numpy())
    if not probs:
        raise FerError(f"{run_dir} has no finished fold yet: finish it with `fer train ... --resume`")
    return np.mean(probs, axis=0)


def format_prediction(clip_id: str, probs: np.ndarray, class_names: tuple[str, ...]) -> str:
    """Human-readable: the top class, then every class's probability, most likely first."""
    order = np.argsort(-probs)
    width = max(9, max(len(c) for c in class_names))
    lines = [f"{clip_id}: {class_names[order[0]]} ({100 * probs[order[0]]:.1f}%)"]
    lines += [f"  {class_names[i]:<{width}} {100 * probs[i]:5.1f}%" for i in order]
    return "\n".join(lines)
