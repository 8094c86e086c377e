"""Modality + backend name -> Extractor, for the CLI: the modality's option checks, then the family table
(fer.extract.backbones.families, imported when an extractor is built) builds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fer.cache.devices import resolve_device
from fer.cache.errors import FerError
from fer.extract.config import check_family, check_options

if TYPE_CHECKING:  # torch is imported when an extractor is built, so argument errors come back fast
    import torch

    from fer.extract.backbones.family import Family
    from fer.extract.extractor import Extractor


def _family(modality: str, backend: str) -> Family:
    from fer.extract.backbones.families import family_of

    return family_of(modality, backend)


def _face(backend: str, weights: str | None, device: torch.device, layer: str | None = None,
          size: int | None = None, frames: int | str | None = None, seed: int = 0, precision: str | None = None,
          max_frames: int | None = None, flip: bool = False, transforms: str | None = None,
          **_: Any) -> Extractor:
    from fer.extract.backbones.face import FaceExtractor

    return FaceExtractor(weights=weights, layer=layer, size=size, frames=frames or 16, device=device, seed=seed,
                         backbone=backend, precision=precision, max_frames=max_frames, flip=flip,
                         transforms=transforms)


def _pose(backend: str, weights: str | None, device: torch.device, **kw: Any) -> Extractor:
    kw.pop("precision", None)  # fp32 only: KEYPOINTRCNN.only, OPENPIFPAF.only, checked by make_extractor
    family = _family("pose", backend)
    return family.build(family.model_name(backend), weights, device, **kw)


def _audio(backend: str, weights: str | None, device: torch.device, **kw: Any) -> Extractor:
    family = _family("audio", backend)
    return family.build(family.model_name(backend), weights, device, **kw)


FACTORIES: dict[str, Callable[..., Extractor]] = {"face": _face, "pose": _pose, "audio": _audio}


def _absolute(value: str | None) -> str | None:
    """A path that exists, made absolute (so `fer predict` finds it from any folder); anything else as is."""
    from pathlib import Path

    if not value or value.lower() in ("none", "auto", "imagenet", "coco"):
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value




def make_extractor(
    modality: str,
    backbone: str | None = None,
    weights: str | None = None,
    device: str | torch.device = "auto",
    **kw: Any,
) -> Extractor:
    """Build the extractor for ``modality`` (face|pose|audio) and ``backbone`` (default per modality).

    ``backbone``: a name of one of the modality's families (fer.extract.backbones.families: face
    ``resnet18`` | a torchvision model name | ``hf:<id|folder>`` | ``timm:<name>``; audio ``wav2vec2`` |
    ``mel`` | ``hf:<id|folder>``; pose ``keypointrcnn`` | ``openpifpaf``).
    Extra keywords (``layer``, ``size``, ``frames``, ``seed``, ``precision``: $FER_PRECISION or auto by
    default; face only: ``frames="all"``, ``max_frames``, ``flip``) go to the modality's factory.
    """
    from fer.extract.backbones.families import DEFAULT_BACKBONE, normalize_backbone

    if modality not in FACTORIES:
        raise FerError(f"unknown modality {modality!r}; choose from {', '.join(FACTORIES)}")
    backend = normalize_backbone(backbone or DEFAULT_BACKBONE[modality])
    family = _family(modality, backend)  # a name of another modality's family is a one-line error here
    if family.folders and family.prefix:
        backend = family.prefix + str(_absolute(family.model_name(backend)))
    weights = _absolute(weights)
    for key in ("model", "transforms"):  # model folders, recorded absolute
        if kw.get(key):
            kw[key] = _absolute(kw[key])
    kw = {k: v for k, v in kw.items() if v is not None and not (k == "flip" and v is False)}
    # which option applies to which modality, and to which family (its record): fer.extract.config
    check_options(modality, **kw)
    check_family(family, backend, weights=weights, **kw)
    dev = resolve_device(device) if isinstance(device, str) else device
    weights = resolve_auto_weights(modality, backend, weights)
    extractor = FACTORIES[modality](backend, weights, dev, **kw)
    # recorded in the feature set's provenance, so `fer predict` can rebuild exactly this extractor;
    # the precision as resolved (never auto), so the rebuilt one computes in the precision training saw
    extractor.build_args = {"modality": modality, "backbone": backend, "weights": weights, **kw}
    if getattr(extractor, "precision", None):
        extractor.build_args["precision"] = extractor.precision
    transforms = getattr(getattr(extractor, "encoder", None), "transforms", None)
    if transforms:  # as chosen, so a rebuild preprocesses the same way even where the defaults have changed
        extractor.build_args["transforms"] = transforms
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
    from fer.extract.backbones.families import pretrained_available

    found, how_to = pretrained_available(modality, backend)
    if found:
        return None
    import sys

    print(f"warning: pretrained {modality} weights ({backend}) are not in the local cache (offline?): using RANDOM "
          f"weights (seeded; the spec says so). {how_to}", file=sys.stderr)
    return "none"
