"""Loading backbone weights, and how they are named in a feature set's provenance. This module only loads: it
imports no other part of fer.extract, so every family module can use it (which family fetches what, and where
its weights are cached, is in fer.extract.backbones.families).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def fetch_torchvision(weights_enum: Any, *, what: str, download: bool = True,
                      fetch_cmd: str = "fer weights fetch") -> Path:
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


HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})(?:\.|$)")
"""The hash torchvision puts in its weight file names (``mobilenet_v2-b0353104.pth``): the first hex digits of
the file's sha256, which torch.hub checks when it downloads the file."""


def name_hash(name: str) -> str | None:
    """The sha256 prefix a torchvision-style file name carries (``b0353104``), or None."""
    m = HASH_IN_NAME.search(name)
    return m.group(1) if m else None


def hashed_tag(stem: str, sha256: str) -> str:
    """The spec token of a weights file: its stem and the first 8 hex digits of its sha256, said once when the
    stem already ends with them (``mobilenet_v2-b0353104``, not ``mobilenet_v2-b0353104-b0353104``)."""
    h = name_hash(stem)
    return stem if h and stem.endswith(f"-{h}") and sha256.startswith(h) else f"{stem}-{sha256[:8]}"


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
    return model, WeightsIdentity(str(path.resolve()), sha, hashed_tag(_safe_stem(path), sha))
