"""The record of one backbone family: how ``--backbone`` names it, what it builds, how its weights are fetched
and found, its spec name, and where its model can be cut.

Each family module declares its record(s) beside its builder (``torchvision_models.TORCHVISION``,
``hf.HF_VISION``, ``mel.MEL`` ...); fer.extract.backbones.families lists them in one table, and every
question of the form "which family is this backbone?" is a lookup in that table. This module imports no
other part of fer, so any family module can import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WILDCARD = "*"


def cut_matches(name: str, layer: str) -> bool:
    """True when ``--layer layer`` is the cut ``name``; a name ending in ``:K`` stands for every integer K,
    negative from the end, optionally followed by ``:<variant>`` (``block:3``, ``block:-2`` and
    ``block:11:proj`` are the cut ``block:K``)."""
    if name.endswith(":K"):
        head, _, k = layer.partition(":")
        return head == name[:-2] and re.fullmatch(r"-?\d+(:[a-z]+)?", k) is not None
    return layer == name


@dataclass(frozen=True)
class Cut:
    """A place where a family's model can be cut: what ``--layer NAME`` stores, and what lies above it."""

    name: str
    """The ``--layer`` value and spec token: ``pool``, ``layer3`` ...; a name ending in ``:K`` (``block:K``)
    stands for every integer K, negative from the end, optionally followed by ``:<variant>`` (``block:0``,
    ``block:-2``, ``block:11:proj``)."""
    output: str
    """What one frame's row holds when the model is cut here, e.g. ``pooled 512-d vector``."""
    above: str = ""
    """The part of the model above the cut: what a trainer would run (or fine-tune) on rows cut here, e.g.
    ``layer4 + global average pool`` for ResNet-18's ``layer3``; empty for the model's own output."""

    def matches(self, layer: str) -> bool:
        """True when ``layer`` is this cut (``block:3`` is the cut ``block:K``)."""
        return cut_matches(self.name, layer)


@dataclass(frozen=True)
class Family:
    """One backbone family, as the family table holds it.

    ``build`` by modality: a face family builds an image encoder (fer.extract.backbones.image),
    ``build(name, weights, layer, size, seed) -> ImageEncoder``, which the face extractor runs over the
    frames; a pose or audio family builds the extractor itself,
    ``build(name, weights, device, **options) -> Extractor``. ``name`` is what follows the family's prefix
    (``openai/clip-vit-base-patch16`` of ``hf:openai/clip-vit-base-patch16``), or the whole backbone name.
    """

    name: str
    """The family's name, e.g. ``torchvision``, ``timm``, ``hf-vision``, ``mel``; unique in the table."""
    modalities: tuple[str, ...]
    """The modalities it serves: ``("face",)``, ``("audio",)``, ``("pose",)``."""
    pattern: str
    """How a ``--backbone`` name is matched: ``resnet18`` (exactly that name, any case), ``timm:*`` (the
    prefix, any case, then the model name kept as written), or ``*`` (any name without a prefix that no other
    family of the modality claims). Exact names win over prefixes, prefixes over ``*``."""
    help: str
    """The family's part of ``--backbone``'s help, e.g. ``timm:<model name>``."""
    build: Callable[..., Any]
    """Builds the encoder (face) or the extractor (pose, audio); see the class docstring."""
    spec: str
    """The feature-set name it writes, with ``<placeholders>``, e.g.
    ``face.timm-<model>.<weights>.<layer>.<size>.<frames>f``; the face extractor may add ``.flip`` and the
    precision (``.bf16``) after it."""
    fetch: Callable[[str], str] | None = None
    """``fetch(name)``: download the default weights of backbone ``name`` into their cache (``fer weights
    fetch --backbone``) and say where they are; FerError when it cannot. None: there is nothing to fetch."""
    cached: Callable[[str], bool] | None = None
    """``cached(name)``: whether those default weights are in the local cache, without a download
    (``--weights auto``). None: the family needs no weights, or manages its own."""
    cuts: tuple[Cut, ...] = ()
    """Where every model of the family can be cut (``--layer``), the default first; empty: the family has no
    ``--layer`` choice."""
    top: str = ""
    """The model's top as fer takes it: what is removed or what the output is, e.g. ``fc (the ImageNet
    classifier), removed``."""
    transforms: str | None = None
    """What ``--transforms`` names for this family (whose preprocessing to use when the weights do not say),
    e.g. ``an entry of the model's weights enum (IMAGENET1K_V1)``; None: the family takes no ``--transforms``.
    A family that takes it gets ``transforms=NAME`` as a keyword of ``build`` when one is given."""
    folders: bool = False
    """The name after the prefix may be a local folder (recorded absolute, so ``fer predict`` finds it)."""
    only: tuple[tuple[str, str | None, str], ...] = ()
    """Options of its modality the family takes one value of, as ``(option, value, why)``: e.g.
    ``("precision", "fp32", "it runs in fp32 only")``; value None: the option does not apply at all. Another
    value given (``auto`` aside) is a one-line error (fer.extract.config.check_family); None suits options
    that are unset by default (--size, --weights), not --seed."""

    @property
    def prefix(self) -> str | None:
        """``timm:`` for the pattern ``timm:*``; None for an exact name or ``*``."""
        return self.pattern[:-1].lower() if self.pattern.endswith(":*") else None

    @property
    def rank(self) -> int:
        """Matching order: 0 an exact name, 1 a prefix, 2 the wildcard."""
        return 2 if self.pattern == WILDCARD else (1 if self.prefix else 0)

    def matches(self, backbone: str) -> bool:
        """True when ``backbone`` (as normalised by the table) names a model of this family."""
        if self.prefix:
            return backbone.lower().startswith(self.prefix)
        if self.pattern == WILDCARD:
            return ":" not in backbone
        return backbone.lower() == self.pattern.lower()

    def model_name(self, backbone: str) -> str:
        """What the builder is given: the part after the prefix, or the backbone name itself."""
        return backbone[len(self.prefix):] if self.prefix else backbone

    def cut(self, layer: str | None) -> Cut | None:
        """The cut ``layer`` names (the default cut for None), or None when the family has no such cut."""
        if not self.cuts:
            return None
        return self.cuts[0] if layer is None else next((c for c in self.cuts if c.matches(layer)), None)
