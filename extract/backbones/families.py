"""The table of backbone families: which family a ``--backbone`` name belongs to, and everything asked of it
(build, weights fetch and cache, help line, cuts) through one lookup.

Each record is declared beside its builder (fer.extract.backbones.family.Family); this module only lists
them. Adding a family is one module that declares a ``Family`` and one line in FAMILIES below (or, from a
plugin or a test, one ``register(...)`` call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fer.cache.errors import FerError
from fer.extract.backbones.audio import HF_SPEECH, WAV2VEC2
from fer.extract.backbones.family import Family
from fer.extract.backbones.hf import HF_VISION
from fer.extract.backbones.mel import MEL
from fer.extract.backbones.pose import KEYPOINTRCNN, OPENPIFPAF
from fer.extract.backbones.timm_models import TIMM
from fer.extract.backbones.torchvision_models import RESNET18, TORCHVISION

FAMILIES: list[Family] = [
    RESNET18,
    TORCHVISION,
    HF_VISION,
    TIMM,
    KEYPOINTRCNN,
    OPENPIFPAF,
    WAV2VEC2,
    MEL,
    HF_SPEECH,
]
"""Every backbone family fer knows, in the order the help lists them."""

DEFAULT_BACKBONE = {"face": "resnet18", "pose": "keypointrcnn", "audio": "wav2vec2"}
"""Backbone used when ``--backbone`` is not given."""

MODALITY_NOUN = {"face": "an image model", "pose": "a pose model", "audio": "an audio model"}


def register(family: Family) -> Family:
    """Add a family to the table (a plugin's, a test's); FerError when its name is taken."""
    if any(f.name == family.name for f in FAMILIES):
        raise FerError(f"a backbone family named {family.name!r} is already registered")
    FAMILIES.append(family)
    return family


def unregister(name: str) -> None:
    """Remove the family ``name`` from the table (nothing when it is not there)."""
    FAMILIES[:] = [f for f in FAMILIES if f.name != name]


def prefixes() -> set[str]:
    """The name prefixes of the table's families (``hf:``, ``timm:`` ...)."""
    return {f.prefix for f in FAMILIES if f.prefix}


def normalize_backbone(backbone: str) -> str:
    """Lower-case a backbone name, but keep what follows a family's prefix (``hf:``, ``timm:``) as written
    (paths, hub ids)."""
    b = backbone.strip()
    prefix, sep, rest = b.partition(":")
    if sep and f"{prefix.lower()}:" in prefixes():
        if not rest.strip():
            raise FerError(f"--backbone {backbone!r} names no model after {prefix.lower()}:")
        return f"{prefix.lower()}:{rest.strip()}"
    return b.lower()


def _matching(backbone: str, modality: str | None) -> list[Family]:
    """The families that claim ``backbone`` (normalised), most specific first."""
    found = [f for f in FAMILIES if f.matches(backbone) and (modality is None or modality in f.modalities)]
    return sorted(found, key=lambda f: f.rank)


def choices(modality: str, fetchable: bool = False) -> str:
    """What ``--backbone`` takes for ``modality``, e.g. ``wav2vec2 (default) | mel | hf:<speech model ...>``
    (``fetchable``: only the families with weights to fetch)."""
    default = DEFAULT_BACKBONE.get(modality)
    return " | ".join(f.help + (" (default)" if f.pattern == default else "")
                      for f in FAMILIES if modality in f.modalities and (f.fetch or not fetchable))


def family_of(modality: str, backbone: str) -> Family:
    """The family of ``backbone`` (normalised) for ``modality``; a one-line FerError when none is."""
    found = _matching(backbone, modality)
    if found:
        return found[0]
    # which other modality claims the name (the wildcard claims any plain name: no evidence)
    other = {m for f in _matching(backbone, None) if f.rank < 2 for m in f.modalities}
    if other:
        (one,) = other if len(other) == 1 else (None,)
        kind = MODALITY_NOUN.get(one, f"a {one} model") if one else f"not a {modality} backbone"
        raise FerError(f"--backbone {backbone} is {kind}; {modality} takes {choices(modality)}")
    raise FerError(f"unknown {modality} backend {backbone!r}; choose from {choices(modality)}")


def backbone_help(fetchable: bool = False) -> str:
    """``--backbone``'s help: each modality's families (``fetchable``: those with weights to fetch)."""
    parts = [(m, choices(m, fetchable)) for m in DEFAULT_BACKBONE]
    return "; ".join(f"{m}: {c}" for m, c in parts if c) + "."


# ---------------------------------------------------------------- weights: fetch ahead, find in the caches
@dataclass(frozen=True)
class WeightSource:
    """One weight set `fer weights fetch` gets."""

    name: str
    """Short name, e.g. ``face.resnet18``."""
    fetch: Callable[[], str]
    """Download (or find in the cache) and return where it lives."""


def weight_source(backbone: str, modality: str | None = None) -> WeightSource:
    """What `fer weights fetch --backbone NAME` downloads: the default weights of NAME's family (a name two
    modalities share, such as ``hf:<id>``, is fetched the same way for both)."""
    b = normalize_backbone(backbone)
    found = _matching(b, modality)
    if not found:
        if modality:
            family_of(modality, b)  # raises the modality's one-line reason
        raise FerError(f"unknown backbone {b!r}; choose from {backbone_help(fetchable=True)}")
    family = found[0]
    if family.fetch is None:
        raise FerError(f"{b} has no weights to fetch")
    mods = {m for f in found for m in f.modalities}
    label = modality or (family.modalities[0] if len(mods) == 1 else "model")
    fetch, name = family.fetch, family.model_name(b)
    return WeightSource(f"{label}.{b}", lambda: fetch(name))


def pretrained_available(modality: str, backend: str) -> tuple[bool, str]:
    """Whether ``backend``'s default pretrained weights are in the local cache (no download), and how to get
    them."""
    how = (f"Get them with `fer weights fetch --backbone {backend}` on a machine with internet and copy its "
           "TORCH_HOME (~/.cache/torch) and HF_HOME (~/.cache/huggingface) here.")
    family = family_of(modality, normalize_backbone(backend))
    if family.cached is None:
        return True, ""  # needs no weights, or manages its own
    return family.cached(family.model_name(backend)), how


def fetch_all(modalities: list[str] | None = None, echo: Callable[[str], None] = print,
              backbones: list[str] | None = None) -> dict[str, str]:
    """Download the default backbone's weights of every modality (or of ``modalities``), or those of the named
    ``backbones``; returns name -> where or error.

    Keeps going after a failure so one unreachable host does not block the others; raises FerError at
    the end when any failed.
    """
    mods = modalities or list(DEFAULT_BACKBONE)
    unknown = [m for m in mods if m not in DEFAULT_BACKBONE]
    if unknown:
        raise FerError(f"unknown modality {unknown[0]!r}; choose from {', '.join(DEFAULT_BACKBONE)}")
    if backbones:
        only = modalities[0] if modalities and len(modalities) == 1 else None
        todo = [weight_source(b, only) for b in backbones]
    else:
        todo = [weight_source(DEFAULT_BACKBONE[m], m) for m in mods]
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
