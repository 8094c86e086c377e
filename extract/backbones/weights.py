"""Where backbone weights come from, and how they are named in a feature set's provenance.

``--weights`` takes one of:

- ``imagenet`` (or a torchvision enum name such as ``IMAGENET1K_V1``): the torchvision weights,
  cached in ``TORCH_HOME/hub/checkpoints/`` by torch's normal loader; offline and not cached is a
  one-line FerError naming the file, its URL and where to put it.
- ``none``: random initialisation from a recorded seed (tests, dry runs).
- ``PATH``: a state dict file, or a checkpoint written by ``fer train`` (a dict holding a
  ``"backbone"`` state dict), always read with ``torch.load(weights_only=True)``.

The identity that goes into provenance is ``{"id": ..., "sha256": ...}`` or
``{"id": "random, seed S", "sha256": None}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file

OFFLINE_ENV = ("FER_OFFLINE", "HF_HUB_OFFLINE", "TORCH_HUB_OFFLINE")
"""Any of these set to 1/true: never try a download, fail at once with the how-to message."""


@dataclass(frozen=True)
class WeightsIdentity:
    """What produced the numbers: recorded in the feature set's attrs and in its spec name."""

    id: str
    """``torchvision:ResNet18_Weights.IMAGENET1K_V1``, an absolute file path, or ``random, seed S``."""
    sha256: str | None
    """SHA-256 of the weights file; None for random init."""
    tag: str
    """Short readable token for the spec name: ``imagenet``, ``none-s0``, ``<stem>-<sha8>``."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256}


def offline() -> bool:
    """True when the environment asks for no network access."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


def hub_checkpoint_dir() -> Path:
    """``TORCH_HOME/hub/checkpoints``: where torchvision's loader caches weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_file(weights_enum: Any) -> Path:
    """The cache path torchvision uses for one weights enum value."""
    return hub_checkpoint_dir() / os.path.basename(weights_enum.url)


def fetch_torchvision(weights_enum: Any, *, what: str, download: bool = True) -> Path:
    """Return the cached file of a torchvision weights enum, downloading it when allowed.

    Offline (or the download fails) and not cached: FerError saying which file to put where.
    """
    path = torchvision_file(weights_enum)
    if path.is_file():
        return path
    how = (
        f"put {path.name} (from {weights_enum.url}) into {path.parent}/ "
        f"(TORCH_HOME/hub/checkpoints), or run `fer weights fetch` on a machine with internet and copy "
        f"its TORCH_HOME here, or pass --weights PATH|none"
    )
    if not download or offline():
        raise FerError(f"{what} weights are not cached and this machine is offline: {how}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights_enum.url, str(path), progress=False)
    except Exception as e:  # network errors come in many types (URLError, socket, SSL, HTTP)
        path.unlink(missing_ok=True)
        raise FerError(f"could not download {what} weights ({type(e).__name__}: {e}): {how}") from None
    return path


def _safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-") or "weights"
    return stem[:40]


def read_state_dict(path: Path, strip: tuple[str, ...] = ("module.", "backbone.")) -> dict[str, torch.Tensor]:
    """A state dict from a file: a bare state dict, a ``fer train`` checkpoint (``"backbone"``), or
    a common wrapper (``"state_dict"``, ``"model"``); the ``strip`` key prefixes are removed (a detector,
    whose ``backbone.`` keys are real, strips only ``module.``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FerError(f"cannot read weights file {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                       "expected a torch state dict or a `fer train` checkpoint") from None
    if isinstance(obj, dict):
        for key in ("backbone", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FerError(f"{path} holds no state dict (a dict of tensors, or a checkpoint with a 'backbone' entry)")
    out = {}
    for k, v in obj.items():
        for prefix in strip:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def random_init(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Build a module with random weights from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def resolve_torchvision(
    weights: str,
    *,
    build: Callable[[Any], torch.nn.Module],
    weights_cls: Any,
    default: str,
    what: str,
    seed: int = 0,
    optional_missing: tuple[str, ...] = (),
    strip: tuple[str, ...] = ("module.", "backbone."),
) -> tuple[torch.nn.Module, WeightsIdentity]:
    """Build a torchvision model from ``--weights`` (``imagenet``-style alias, enum name, ``none``, PATH).

    ``build(weights_enum_or_None)`` makes the model; ``weights_cls`` is its torchvision weights enum;
    ``default`` the alias (``imagenet``, ``coco``) meaning ``weights_cls.DEFAULT``;
    ``optional_missing`` key prefixes a loaded state dict may lack (e.g. ``fc.`` for a fine-tuned backbone).
    """
    w = (weights or default).strip()
    if w.lower() == "none":
        model = random_init(lambda: build(None), seed)
        return model, WeightsIdentity(f"random, seed {seed}", None, f"none-s{seed}")
    enum = None
    if w.lower() == default.lower():
        enum = weights_cls.DEFAULT
    elif w in getattr(weights_cls, "__members__", {}):
        enum = weights_cls[w]
    if enum is not None:
        file = fetch_torchvision(enum, what=what)
        model = random_init(lambda: build(None), seed)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            raise FerError(f"{what} weights file {file} is unreadable or truncated ({type(e).__name__}); "
                           f"delete it and run `fer weights fetch`, or copy it again from {enum.url}") from None
        tag = default.lower() if enum == weights_cls.DEFAULT else w.lower()
        return model, WeightsIdentity(f"torchvision:{weights_cls.__name__}.{enum.name}", sha256_file(file), tag)
    path = Path(w).expanduser()
    if not path.exists():
        names = ", ".join([default, "none", *getattr(weights_cls, "__members__", {})])
        raise FerError(f"--weights {w!r} is neither a file nor one of: {names}")
    if path.is_dir():
        raise FerError(f"--weights {path} is a folder; give the state dict or checkpoint file inside it")
    state = read_state_dict(path, strip)
    model = random_init(lambda: build(None), seed)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != tuple(shapes[k])]
    if wrong:
        raise FerError(f"{path} does not fit {what}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                       f"expected {tuple(shapes[wrong[0]])}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(optional_missing)]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        kind = "lacks" if missing else "has unexpected"
        raise FerError(f"{path} does not fit {what}: it {kind} keys such as {', '.join(bad)}")
    sha = sha256_file(path)
    return model, WeightsIdentity(str(path.resolve()), sha, f"{_safe_stem(path)}-{sha[:8]}")


# ---------------------------------------------------------------- fetch ahead of time
@dataclass(frozen=True)
class WeightSource:
    """One default weight set `fer weights fetch` knows how to download."""

    name: str
    """Short name, e.g. ``face.resnet18``."""
    fetch: Callable[[], str]
    """Download (or find in the cache) and return where it lives."""


def _tv(name: str, enum_path: str, what: str) -> WeightSource:
    def fetch() -> str:
        import importlib

        mod, cls, member = enum_path.rsplit(".", 2)
        enum = getattr(getattr(importlib.import_module(mod), cls), member)
        return str(fetch_torchvision(enum, what=what))

    return WeightSource(name, fetch)


def _hf(name: str) -> WeightSource:
    def fetch() -> str:
        model_id = default_wav2vec2_id()
        if offline():
            raise FerError(f"cannot fetch {model_id}: HF_HUB_OFFLINE/FER_OFFLINE is set; unset it on a machine with internet")
        try:
            from transformers import AutoFeatureExtractor, Wav2Vec2Model

            Wav2Vec2Model.from_pretrained(model_id)
            AutoFeatureExtractor.from_pretrained(model_id)
        except Exception as e:
            raise FerError(f"could not download {model_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "check the network, or copy an HF cache (HF_HOME) from a machine that has it") from None
        return f"{model_id} (HF cache)"

    return WeightSource(name, fetch)


def default_wav2vec2_id() -> str:
    """The audio backend's default wav2vec2 model id (owned by fer.extract.backbones.audio)."""
    from fer.extract.backbones.audio import DEFAULT_WAV2VEC2

    return DEFAULT_WAV2VEC2


def pretrained_available(modality: str, backend: str) -> tuple[bool, str]:
    """Whether ``backend``'s default pretrained weights are in the local cache (no download), and how to get them."""
    how = ("Get them with `fer weights fetch` on a machine with internet and copy its TORCH_HOME "
           "(~/.cache/torch) and HF_HOME (~/.cache/huggingface) here.")
    if backend in ("mel", "openpifpaf"):
        return True, ""  # mel needs no weights; openpifpaf manages its own
    if modality == "audio":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(default_wav2vec2_id(), "config.json"), str), how
    if modality == "face":
        from torchvision.models import ResNet18_Weights as enum_cls

        enum = enum_cls.IMAGENET1K_V1
    else:
        from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights as enum_cls

        enum = enum_cls.COCO_V1
    return torchvision_file(enum).is_file(), how


SOURCES: dict[str, list[WeightSource]] = {
    "face": [_tv("face.resnet18", "torchvision.models.ResNet18_Weights.IMAGENET1K_V1", "ResNet-18 ImageNet")],
    "pose": [
        _tv(
            "pose.keypointrcnn",
            "torchvision.models.detection.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
            "Keypoint R-CNN COCO",
        )
    ],
    "audio": [_hf("audio.wav2vec2")],
}
"""Default weights per modality, in the order `fer weights fetch` gets them."""


def fetch_all(modalities: list[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Download every default weight set (or those of ``modalities``); returns name -> where or error.

    Keeps going after a failure so one unreachable host does not block the others; raises FerError at
    the end when any failed.
    """
    mods = modalities or list(SOURCES)
    unknown = [m for m in mods if m not in SOURCES]
    if unknown:
        raise FerError(f"unknown modality {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    results: dict[str, str] = {}
    failed = []
    for m in mods:
        for src in SOURCES[m]:
            try:
                results[src.name] = src.fetch()
                echo(f"ok      {src.name}: {results[src.name]}")
            except FerError as e:
                results[src.name] = f"error: {e}"
                failed.append(src.name)
                echo(f"failed  {src.name}: {e}")
    if failed:
        raise FerError(f"{len(failed)} weight set(s) not fetched ({', '.join(failed)}); see the lines above")
    return results
