"""Modality + backend name -> Extractor, for the CLI. Pose and audio backends import lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from fer.cache.errors import FerError
from fer.extract.config import check_options

if TYPE_CHECKING:  # torch is imported when an extractor is built, so argument errors come back fast
    import torch

    from fer.extract.extractor import Extractor

DEFAULT_BACKBONE = {"face": "resnet18", "pose": "keypointrcnn", "audio": "wav2vec2"}
"""Backbone used when ``--backbone`` is not given."""


def _face(backend: str, weights: str | None, device: torch.device, layer: str | None = None,
          size: int | None = None, frames: int | str | None = None, seed: int = 0, precision: str | None = None,
          max_frames: int | None = None, flip: bool = False, **_: Any) -> Extractor:
    from fer.extract.backbones.face import FaceExtractor

    return FaceExtractor(weights=weights, layer=layer, size=size, frames=frames or 16, device=device, seed=seed,
                         backbone=backend, precision=precision, max_frames=max_frames, flip=flip)


def _pose(backend: str, weights: str | None, device: torch.device, frames: int | None = None,
          **kw: Any) -> Extractor:
    try:
        from fer.extract.backbones.pose import make_pose_extractor
    except ImportError as e:
        raise FerError(f"the pose backends are not available ({e})") from None
    size = kw.pop("size", None)
    if size and backend == "keypointrcnn":  # the detector's short side; long side keeps torchvision's 800:1333
        kw.setdefault("min_size", size)
        kw.setdefault("max_size", max(size, round(size * 1333 / 800)))
    if backend != "keypointrcnn":
        kw.pop("seed", None)  # only the torchvision model has a random init
    if (kw.pop("precision", None) or "auto") not in ("auto", "fp32"):
        raise FerError("the pose backends run in fp32 only; leave --precision out")
    return make_pose_extractor(backend, weights or "coco", frames or 3, device, **kw)


def _audio(backend: str, weights: str | None, device: torch.device, **kw: Any) -> Extractor:
    try:
        from fer.extract.backbones.audio import make_audio_extractor
    except ImportError as e:
        raise FerError(f"the audio backends are not available ({e})") from None
    if backend == "mel":
        kw.pop("seed", None)  # mel has no weights
    return make_audio_extractor(backend, weights, device, **kw)


FACTORIES: dict[str, Callable[..., Extractor]] = {"face": _face, "pose": _pose, "audio": _audio}

AUDIO_BACKBONES = ("wav2vec2", "mel", "hf:<speech model id or folder>")


def _absolute(value: str | None) -> str | None:
    """A path that exists, made absolute (so `fer predict` finds it from any folder); anything else as is."""
    from pathlib import Path

    if not value or value.lower() in ("none", "auto", "imagenet", "coco"):
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def normalize_backbone(backbone: str) -> str:
    """Lower-case a backbone name, but keep what follows ``hf:``/``timm:`` as written (paths, hub ids)."""
    b = backbone.strip()
    prefix, sep, rest = b.partition(":")
    if sep and prefix.lower() in ("hf", "timm"):
        if not rest.strip():
            raise FerError(f"--backbone {backbone!r} names no model after {prefix.lower()}:")
        return f"{prefix.lower()}:{rest.strip()}"
    return b.lower()


def local_cuda_index(local_rank: str | None, count: int) -> int:
    """The GPU of this process: LOCAL_RANK modulo the visible GPUs (0 without LOCAL_RANK). Launchers that show
    each process only its own GPU (SLURM --gpus-per-task) give every rank one visible device, index 0."""
    if local_rank is None or local_rank == "":
        return 0
    try:
        rank = int(local_rank)
    except ValueError:
        raise FerError(f"LOCAL_RANK={local_rank!r} is not an integer") from None
    if count < 1:
        raise FerError("no CUDA GPU is visible; use --device cpu or auto")
    return rank % count


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the local CUDA device when there is one (LOCAL_RANK under torchrun, modulo the visible
    GPUs), else CPU. A CUDA device is also made the current one (torch.cuda.set_device)."""
    import os

    import torch

    d = (device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FerError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise FerError(f"unknown --device {device!r}; choose auto, cpu, cuda or cuda:N") from None
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", local_cuda_index(os.environ.get("LOCAL_RANK"), count))
        elif dev.index >= count:
            raise FerError(f"--device {device} asks for GPU {dev.index} but {count} GPU(s) are visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use cuda:0..{count - 1}")
        # the current device too, so libraries that use "the current device" (and new contexts) land here
        torch.cuda.set_device(dev)
        return dev
    if d != "cpu":
        raise FerError(f"unknown --device {device!r}; choose auto, cpu or cuda")
    return torch.device("cpu")


def make_extractor(
    modality: str,
    backbone: str | None = None,
    weights: str | None = None,
    device: str | torch.device = "auto",
    **kw: Any,
) -> Extractor:
    """Build the extractor for ``modality`` (face|pose|audio) and ``backbone`` (default per modality).

    ``backbone``: face ``resnet18`` | a torchvision model name | ``hf:<id|folder>`` | ``timm:<name>``; audio
    ``wav2vec2`` | ``mel`` | ``hf:<id|folder>``; pose ``keypointrcnn`` | ``openpifpaf``.
    Extra keywords (``layer``, ``size``, ``frames``, ``seed``, ``precision``: $FER_PRECISION or auto by
    default; face only: ``frames="all"``, ``max_frames``, ``flip``) go to the modality's factory.
    """
    if modality not in FACTORIES:
        raise FerError(f"unknown modality {modality!r}; choose from {', '.join(FACTORIES)}")
    backend = normalize_backbone(backbone or DEFAULT_BACKBONE[modality])
    if backend.startswith("hf:"):
        backend = "hf:" + str(_absolute(backend[3:]))
    weights = _absolute(weights)
    if kw.get("model"):
        kw["model"] = _absolute(kw["model"])
    if modality == "pose" and backend.startswith(("hf:", "timm:")):
        raise FerError(f"--backbone {backend} is not a pose backend; choose keypointrcnn or openpifpaf")
    if modality == "audio" and backend.startswith("timm:"):
        raise FerError(f"--backbone {backend} is an image model; audio takes {', '.join(AUDIO_BACKBONES)}")
    kw = {k: v for k, v in kw.items() if v is not None and not (k == "flip" and v is False)}
    check_options(modality, **kw)  # which option applies to which modality: said once, in fer.extract.config
    dev = resolve_device(device) if isinstance(device, str) else device
    weights = resolve_auto_weights(modality, backend, weights)
    extractor = FACTORIES[modality](backend, weights, dev, **kw)
    # recorded in the feature set's provenance, so `fer predict` can rebuild exactly this extractor;
    # the precision as resolved (never auto), so the rebuilt one computes in the precision training saw
    extractor.build_args = {"modality": modality, "backbone": backend, "weights": weights, **kw}
    if getattr(extractor, "precision", None):
        extractor.build_args["precision"] = extractor.precision
    if getattr(extractor, "all_frames", False):  # the cap as resolved, so a changed default cannot change a rebuild
        extractor.build_args.update(frames="all", max_frames=extractor.max_frames)
    return extractor


def extractor_from_provenance(provenance: dict[str, Any], device: str | torch.device = "auto") -> Extractor:
    """Rebuild the extractor a feature set was made with (FerError when its provenance cannot say)."""
    args = provenance.get("extractor")
    if not isinstance(args, dict) or "modality" not in args:
        spec = provenance.get("spec", "this feature set")
        raise FerError(f"{spec} does not record how it was extracted (made by an older fer): re-extract it")
    args = dict(args)
    args.setdefault("precision", "fp32")  # sets made before fer recorded a precision were fp32 on the CPU
    if args.get("modality") == "audio":  # older fer recorded --size/--frames for audio, where they meant nothing
        args = {k: v for k, v in args.items() if k not in ("size", "frames")}
    return make_extractor(device=device, **args)


def resolve_auto_weights(modality: str, backend: str, weights: str | None) -> str | None:
    """``auto``: the pretrained weights when they are in the local cache, else random init, said loudly."""
    if (weights or "").lower() != "auto":
        return weights
    from fer.extract.backbones.weights import pretrained_available

    found, how_to = pretrained_available(modality, backend)
    if found:
        return None
    import sys

    print(f"warning: pretrained {modality} weights ({backend}) are not in the local cache (offline?): using RANDOM "
          f"weights (seeded; the spec says so). {how_to}", file=sys.stderr)
    return "none"
