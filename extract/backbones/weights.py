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


def fetch_torchvision(weights_enum: Any, *, what: str, download: bool = True, fetch_cmd: str = "fer weights fetch") -> Path:
    """Return the cached file of a torchvision weights enum, downloading it when allowed.

    Offline (or the download fails) and not cached: FerError saying which file to put where.
    """
    path = torchvision_file(weights_enum)
    if path.is_file():
        return path
    how = (
        f"put {path.name} (from {weights_enum.url}) into {path.parent}/ "
        f"(TORCH_HOME/hub/checkpoints), or run `{fetch_cmd}` on a machine with internet and copy "
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


def load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str,
                 optional_missing: tuple[str, ...] = (), discard: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly, except for the keys the caller expects to differ.

    ``optional_missing``: key prefixes the state may lack (e.g. ``fc.`` of a backbone saved without its head);
    ``discard``: key prefixes of parts the caller removes afterwards (a classifier head): never loaded,
    never required. Anything else that does not fit is a one-line FerError naming a key.
    """
    state = {k: v for k, v in state.items() if not k.startswith(discard)} if discard else state
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != tuple(shapes[k])]
    if wrong:
        raise FerError(f"{source} does not fit {what}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                       f"expected {tuple(shapes[wrong[0]])}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(optional_missing + discard)]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        kind = "lacks" if missing else "has unexpected"
        raise FerError(f"{source} does not fit {what}: it {kind} keys such as {', '.join(bad)}")


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
    discard: Callable[[torch.nn.Module], tuple[str, ...]] | None = None,
    fetch_cmd: str = "fer weights fetch",
) -> tuple[torch.nn.Module, WeightsIdentity]:
    """Build a torchvision model from ``--weights`` (``imagenet``-style alias, enum name, ``none``, PATH).

    ``build(weights_enum_or_None)`` makes the model; ``weights_cls`` is its torchvision weights enum;
    ``default`` the alias (``imagenet``, ``coco``) meaning ``weights_cls.DEFAULT``;
    ``optional_missing`` key prefixes a loaded state dict may lack (e.g. ``fc.`` for a fine-tuned backbone);
    ``discard(model)`` the key prefixes of the built model that the caller removes (its classifier head);
    ``fetch_cmd`` the command named when the weights are not cached.
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
        file = fetch_torchvision(enum, what=what, fetch_cmd=fetch_cmd)
        model = random_init(lambda: build(None), seed)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FerError(f"{what} weights file {file} is unreadable or truncated ({type(e).__name__}); "
                           f"delete it and run `{fetch_cmd}`, or copy it again from {enum.url}") from None
        load_checked(model, state, source=str(file), what=what, discard=discard(model) if discard else ())
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
    load_checked(model, state, source=str(path), what=what, optional_missing=optional_missing,
                 discard=discard(model) if discard else ())
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


def _hf(name: str, model_id: Callable[[], str]) -> WeightSource:
    def fetch() -> str:
        mid = model_id()
        if offline():
            raise FerError(f"cannot fetch {mid}: HF_HUB_OFFLINE/FER_OFFLINE is set; unset it on a machine with internet")
        try:
            from huggingface_hub import snapshot_download

            # configs (model, image processor, feature extractor) and the weights in one format
            folder = snapshot_download(mid, allow_patterns=["*.json", "*.safetensors", "*.txt"])
            if not any(Path(folder).glob("*.safetensors")):
                folder = snapshot_download(mid, allow_patterns=["*.json", "*.bin", "*.txt"])
        except Exception as e:
            raise FerError(f"could not download {mid} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "check the network, or copy an HF cache (HF_HOME) from a machine that has it") from None
        return f"{mid} (HF cache {folder})"

    return WeightSource(name, fetch)


def _timm(name: str) -> WeightSource:
    def fetch() -> str:
        if offline():
            raise FerError(f"cannot fetch timm:{name}: HF_HUB_OFFLINE/FER_OFFLINE is set; unset it on a machine with internet")
        import timm

        try:
            timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as e:
            raise FerError(f"could not download timm:{name} weights ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:200]}); check the network and the model name") from None
        return f"timm:{name} (HF cache / TORCH_HOME)"

    return WeightSource(f"face.timm:{name}", fetch)


def default_wav2vec2_id() -> str:
    """The audio backend's default wav2vec2 model id (owned by fer.extract.backbones.audio)."""
    from fer.extract.backbones.audio import DEFAULT_WAV2VEC2

    return DEFAULT_WAV2VEC2


def _torchvision_default(name: str) -> Any:
    """The DEFAULT weights enum of a torchvision classification model (FerError for an unknown name)."""
    from fer.extract.backbones.torchvision_models import classification_models

    if name not in classification_models():
        raise FerError(f"unknown backbone {name!r}: not a torchvision classification model, nor hf:<id> or timm:<name>")
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def backbone_source(backbone: str, modality: str | None = None) -> WeightSource:
    """What `fer weights fetch --backbone NAME` downloads: ``resnet18`` or any torchvision classification
    model, ``hf:<id>`` (config, processor and weights into the HF cache), ``timm:<name>``, ``wav2vec2``,
    ``keypointrcnn``."""
    from fer.extract.backbones.registry import normalize_backbone

    b = normalize_backbone(backbone)
    if b.startswith("hf:"):
        if Path(b[3:]).expanduser().exists():
            raise FerError(f"{b[3:]} is a local folder: nothing to fetch")
        return _hf(f"{modality or 'model'}.{b}", lambda: b[3:])
    if b.startswith("timm:"):
        return _timm(b[5:])
    if b == "wav2vec2":
        return SOURCES["audio"][0]
    if b == "keypointrcnn":
        return SOURCES["pose"][0]
    if b in ("mel", "openpifpaf"):
        raise FerError(f"{b} has no weights to fetch")
    enum = _torchvision_default(b)
    return WeightSource(f"face.{b}", lambda: str(fetch_torchvision(enum, what=f"torchvision {b}",
                                                                   fetch_cmd=f"fer weights fetch --backbone {b}")))


def pretrained_available(modality: str, backend: str) -> tuple[bool, str]:
    """Whether ``backend``'s default pretrained weights are in the local cache (no download), and how to get them."""
    how = (f"Get them with `fer weights fetch --backbone {backend}` on a machine with internet and copy its TORCH_HOME "
           "(~/.cache/torch) and HF_HOME (~/.cache/huggingface) here.")
    if backend in ("mel", "openpifpaf"):
        return True, ""  # mel needs no weights; openpifpaf manages its own
    if backend.startswith("hf:") or (modality == "audio" and backend == "wav2vec2"):
        from huggingface_hub import try_to_load_from_cache

        source = backend[3:] if backend.startswith("hf:") else default_wav2vec2_id()
        if Path(source).expanduser().is_dir():
            return True, how
        return isinstance(try_to_load_from_cache(source, "config.json"), str), how
    if backend.startswith("timm:"):
        import timm

        from fer.extract.backbones.timm_models import _cached_pretrained

        try:
            cfg = timm.models.get_pretrained_cfg(backend[5:])
        except Exception:
            cfg = None
        return cfg is not None and _cached_pretrained(cfg) is not None, how
    if modality == "face":
        enum = _torchvision_default(backend)
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
    "audio": [_hf("audio.wav2vec2", default_wav2vec2_id)],
}
"""Default weights per modality, in the order `fer weights fetch` gets them."""


def fetch_all(modalities: list[str] | None = None, echo: Callable[[str], None] = print,
              backbones: list[str] | None = None) -> dict[str, str]:
    """Download every default weight set (or those of ``modalities``, or the named ``backbones``);
    returns name -> where or error.

    Keeps going after a failure so one unreachable host does not block the others; raises FerError at
    the end when any failed.
    """
    mods = modalities or list(SOURCES)
    unknown = [m for m in mods if m not in SOURCES]
    if unknown:
        raise FerError(f"unknown modality {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    if backbones:
        todo = [backbone_source(b, modalities[0] if modalities and len(modalities) == 1 else None) for b in backbones]
    else:
        todo = [src for m in mods for src in SOURCES[m]]
    results: dict[str, str] = {}
    failed = []
    for src in todo:
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
