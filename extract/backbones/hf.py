"""Hugging Face encoders, from a hub id or a local folder saved with ``save_pretrained``: the loading helpers
every Hugging Face family shares (sources, identity, strict loading, hub fetch and cache) and the vision
encoder (CLIP's vision tower, DINOv2, ViT, ...); the speech encoders built on these helpers are
fer.extract.backbones.hf_speech.

Loading goes through transformers' own ``from_pretrained`` (the HF cache; ``HF_HUB_OFFLINE`` and
``FER_OFFLINE`` mean cache only; never remote code). Preprocessing is the model's own: its image
processor (run on the extractor's device) or, for speech, its feature extractor. ``--weights none`` builds the
architecture from the model's config with seeded random weights.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.extract.backbones.family import Cut, Family
from fer.extract.backbones.image import ImageEncoder, check_layer, slug, with_transforms
from fer.extract.backbones.vit_cut import VIT_CUTS
from fer.extract.backbones.weights import offline, random_init


# ---------------------------------------------------------------- shared: sources, identity, errors
@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers (the runner draws the only progress bar)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def local_folder(source: str) -> Path | None:
    """The folder ``source`` names, or None for a hub id; FerError for a folder without config.json."""
    p = Path(source).expanduser()
    if not p.exists():
        return None
    if not (p / "config.json").is_file():
        raise FerError(f"{p} is not a Hugging Face model folder (no config.json); save one with save_pretrained")
    return p


def missing_model(source: str, e: BaseException, backbone: str) -> FerError:
    """The one-line error for a model that is neither a local folder nor in the HF cache (offline)."""
    hf_home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    first = (str(e).splitlines() or [type(e).__name__])[0][:160]
    return FerError(
        f"model {source!r} could not be loaded ({type(e).__name__}: {first}); it is not in the Hugging Face "
        f"cache ({hf_home}) or not reachable offline: run `fer weights fetch --backbone {backbone}` on a machine "
        f"with internet (then copy its HF_HOME here and set HF_HOME), or give a folder saved with save_pretrained, "
        f"or --weights none for random init"
    )


def weights_file(folder_or_id: str, revision: str | None = None) -> Path | None:
    """The weights file behind a local folder or a cached hub id, if it can be found."""
    names = ("model.safetensors", "pytorch_model.bin")
    p = Path(folder_or_id).expanduser()
    if p.is_dir():
        return next((p / n for n in names if (p / n).is_file()), None)
    try:
        from huggingface_hub import try_to_load_from_cache

        for n in names:
            f = try_to_load_from_cache(folder_or_id, n, revision=revision)
            if isinstance(f, str) and os.path.isfile(f):
                return Path(f)
    except Exception:
        return None
    return None


def identity(source: str, model: Any) -> tuple[dict[str, Any], str]:
    """(provenance weights entry, spec tag) of a loaded model: a folder by path and sha256, a hub id by
    id, revision and sha256 (its tag is the id's name, as fer always named wav2vec2 sets)."""
    folder = local_folder(source)
    commit = getattr(model.config, "_commit_hash", None)
    f = weights_file(str(folder) if folder else source, commit)
    sha = sha256_file(f) if f else None
    if folder is not None:
        ident = {"id": str(folder.resolve()), "sha256": sha}
        return ident, f"{slug(folder.name)}-{sha[:8]}" if sha else slug(folder.name)
    return {"id": f"hf:{source}", "sha256": sha, "revision": commit}, slug(source.rsplit("/", 1)[-1])


def random_identity(source: str, seed: int) -> tuple[dict[str, Any], str]:
    """(weights entry, tag) of random init from ``source``'s config."""
    name = Path(source).name if local_folder(source) else source.rsplit("/", 1)[-1]
    return {"id": f"random, seed {seed}", "sha256": None, "architecture": name}, f"{slug(name)}-none-s{seed}"


def load_config(source: str, backbone: str) -> Any:
    """``AutoConfig`` of a folder or (cached) hub id."""
    from transformers import AutoConfig

    folder = local_folder(source)
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(str(folder or source), local_files_only=bool(folder) or offline(),
                                              trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise missing_model(source, e, backbone) from None


def from_pretrained(cls: Any, source: str, backbone: str,
                    allowed_missing: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """``cls.from_pretrained(source)`` with a strict check: a key the checkpoint lacks (beyond the
    ``allowed_missing`` prefixes, parts fer does not use) or a mismatched shape is a FerError, since
    transformers would fill it with random numbers. Returns the model and the keys it lacked."""
    folder = local_folder(source)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(str(folder or source), local_files_only=bool(folder) or offline(),
                                              trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise missing_model(source, e, backbone) from None
    missing = sorted(info.get("missing_keys") or [])
    bad = [k for k in missing if not k.startswith(allowed_missing)]
    mismatched = list(info.get("mismatched_keys") or [])
    if bad or mismatched:
        what = f"lacks {', '.join(bad[:3])}" if bad else f"has other shapes for {', '.join(map(str, mismatched[:3]))}"
        raise FerError(f"{source} does not fit {cls.__name__}: the checkpoint {what} (they would be random)")
    return model, missing


def fetch_hub(model_id: str) -> str:
    """Download a hub model's configs (model, image processor, feature extractor) and weights in one format
    into the HF cache; says where. FerError for a local folder (nothing to fetch) or when it cannot."""
    if Path(model_id).expanduser().exists():
        raise FerError(f"{model_id} is a local folder: nothing to fetch")
    if offline():
        raise FerError(f"cannot fetch {model_id}: HF_HUB_OFFLINE/FER_OFFLINE is set; unset it on a machine "
                       "with internet")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(model_id, allow_patterns=["*.json", "*.bin", "*.txt"])
    except Exception as e:
        raise FerError(f"could not download {model_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                       "check the network, or copy an HF cache (HF_HOME) from a machine that has it"
                       ) from None
    return f"{model_id} (HF cache {folder})"


def hub_cached(source: str) -> bool:
    """Whether ``source`` is a local folder or a hub id whose config is in the HF cache (no download)."""
    from huggingface_hub import try_to_load_from_cache

    if Path(source).expanduser().is_dir():
        return True
    return isinstance(try_to_load_from_cache(source, "config.json"), str)


# ---------------------------------------------------------------- vision
CLIP_TYPES = ("clip", "clip_vision_model")
POOLER_TYPES = CLIP_TYPES + ("dinov2", "siglip", "siglip_vision_model")
"""Models whose ``pooler_output`` is the normalised CLS embedding (ViT's pooler is a trained dense+tanh
for classification only, so ViT-like models give the final CLS token instead)."""


class HFImageModel(nn.Module):
    """A transformers vision model as ``(N, 3, S, S) -> (N, D)``: pooled/CLS embedding or CLIP's projection."""

    def __init__(self, model: nn.Module, take: str, interpolate: bool):
        super().__init__()
        self.model, self.take, self.interpolate = model, take, interpolate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=x, **kw)
        if self.take == "proj":
            return out.image_embeds
        if self.take == "pooler" or out.last_hidden_state.dim() != 3:
            return out.pooler_output.flatten(1)
        return out.last_hidden_state[:, 0]


class HFImageProcess(nn.Module):
    """The model's own image processor (transformers' torchvision backend) on uint8 frames on the device."""

    def __init__(self, processor: Any, overrides: dict[str, Any]):
        super().__init__()
        self.processor, self.overrides = processor, overrides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.processor(images=x, return_tensors="pt", **self.overrides)["pixel_values"]
        return out.to(x.device, torch.float32)


def _native_side(processor: Any) -> tuple[int, int]:
    """(input side after crop, resize side) the processor uses at its own resolution."""
    def side(d: Any) -> int | None:
        if d is None:
            return None
        get = d.get if isinstance(d, dict) else (lambda k: getattr(d, k, None))
        return get("shortest_edge") or get("height")

    crop = side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    resize = side(getattr(processor, "size", None))
    if crop is None and resize is None:
        raise FerError(f"{type(processor).__name__} names no image size; save the model's image processor config")
    return int(crop or resize), int(resize or crop)


def _describe_processor(processor: Any, overrides: dict[str, Any]) -> str:
    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std")
    parts = []
    for k in keys:
        v = overrides.get(k, getattr(processor, k, None))
        v = {a: b for a, b in dict(v).items() if b} if hasattr(v, "items") or hasattr(v, "keys") else v
        if hasattr(v, "__dict__") and not isinstance(v, (int, float, str)):
            v = {a: b for a, b in vars(v).items() if b}
        parts.append(f"{k}={list(v) if isinstance(v, tuple) else v}")
    return f"{type(processor).__name__} on the device: " + ", ".join(parts)


def _canonical(source: str) -> str:
    """A model source as recorded: a folder made absolute, a hub id as is."""
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source


def _image_processor(source: str, transforms: str | None) -> tuple[Any, str, str]:
    """(the image processor, where it comes from, why): the one saved beside the model, or the one of the
    model (hub id or folder) ``transforms`` names."""
    from transformers import AutoImageProcessor

    own = _canonical(source)
    named = None if transforms is None else _canonical(transforms)
    where = named or own
    local = Path(where).exists()
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(where, local_files_only=local or offline())
    except (OSError, ValueError) as e:
        what = f"--transforms {transforms}" if named else f"hf:{source}"
        how = "name a folder or cached hub id that holds one" if named else (
            "save the processor with save_pretrained, or name a model whose processor to use with --transforms "
            "<id or folder>")
        raise FerError(f"{what} has no image processor config (preprocessor_config.json) to take the "
                       f"preprocessing from ({type(e).__name__}); {how}") from None
    why = "the image processor saved with the model" if named in (None, own) else "named with --transforms"
    return processor, where, why


def hf_vision_encoder(source: str, weights: str | None = None, layer: str | None = None, size: int | None = None,
                      seed: int = 0, transforms: str | None = None) -> ImageEncoder:
    """A Hugging Face vision encoder for ``hf:<source>``; ``layer`` pool (default) or proj (CLIP's image
    embedding); preprocessing by the image processor saved with the model, or by the one of the model
    ``transforms`` names."""
    from transformers import AutoModel, CLIPVisionModel, CLIPVisionModelWithProjection

    backbone_arg = f"hf:{source}"
    cfg = load_config(source, backbone_arg)
    mtype = str(cfg.model_type)
    is_clip = mtype in CLIP_TYPES
    cuts = [c.name for c in HF_VISION.cuts[:2]]  # the model's own outputs; block:K and all: vit_cut cuts it
    layer = check_layer(layer, cuts if is_clip else cuts[:1], f"{backbone_arg} ({mtype})")
    cls = (CLIPVisionModelWithProjection if layer == "proj" else CLIPVisionModel) if is_clip else AutoModel
    w = (weights or "").strip().lower()
    if w and w != "none":
        raise FerError(f"--weights {weights} does not apply to {backbone_arg}: point hf: at the model folder or id, "
                       "or use --weights none for random init")
    missing: list[str] = []
    if w == "none":
        if is_clip:
            from transformers import CLIPVisionConfig

            vcfg = cfg.vision_config if mtype == "clip" else cfg
            cfg = vcfg if isinstance(vcfg, CLIPVisionConfig) else CLIPVisionConfig(**vcfg.to_dict())
        elif hasattr(cfg, "vision_config"):
            raise FerError(f"{backbone_arg} is a {mtype} model with a vision tower fer does not know; "
                           "use a vision model (CLIP, DINOv2, ViT, ...)")
        model = random_init(lambda: AutoModel.from_config(cfg) if cls is AutoModel else cls(cfg), seed)
        ident, tag = random_identity(source, seed)
    else:
        model, missing = from_pretrained(cls, source, backbone_arg, allowed_missing=("pooler.",))
        ident, tag = identity(source, model)
    model = model.float().eval()
    processor, processor_source, why = _image_processor(source, transforms)
    crop, resize = _native_side(processor)
    size = size or crop
    overrides: dict[str, Any] = {}
    if size != crop:  # the model's own recipe at another input side: same resize-to-crop ratio
        overrides = {"size": {"shortest_edge": int(round(size * resize / crop))},
                     "crop_size": {"height": size, "width": size}, "do_center_crop": True}
    take = "proj" if layer == "proj" else ("pooler" if mtype in POOLER_TYPES else "cls")
    interpolate = size != int(getattr(getattr(model, "config", cfg), "image_size", size)) and \
        "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    wrapped = HFImageModel(model, take, interpolate).eval()
    with torch.inference_mode():
        width = int(wrapped(torch.zeros(1, 3, size, size)).shape[-1])
    family = mtype.replace("_vision_model", "")
    output = {"proj": "CLIP projected image embedding (image_embeds)",
              "pooler": "pooled embedding (pooler_output: normalised CLS token)",
              "cls": "CLS token of the last hidden state"}[take]
    extra: dict[str, Any] = {"model_type": mtype, "model_class": type(model).__name__,
                             "transforms": {"processor": processor_source, "chosen": why}}
    if missing:
        extra["unused_missing_keys"] = missing[:20]
    return ImageEncoder(
        backbone=f"hf-{slug(family)}", family="hf-vision", model=wrapped,
        preprocess=HFImageProcess(processor, overrides),
        weights=ident, tag=with_transforms(tag, processor_source, _canonical(source)), size=size,
        out_shape=(width,), layer=layer, preprocessing=_describe_processor(processor, overrides),
        output=output, extra=extra, transforms=processor_source,
    )


HF_VISION = Family(
    name="hf-vision", modalities=("face",), pattern="hf:*",
    help="hf:<model id or folder> (CLIP, DINOv2, ViT)",
    build=hf_vision_encoder, spec="face.hf-<model type>.<hub name | folder-sha8>.<layer>.<size>.<frames>f",
    fetch=fetch_hub, cached=hub_cached, folders=True,
    cuts=(Cut("pool", "pooled embedding (CLS token, or the model's normalised pooler output)"),
          Cut("proj", "CLIP models only: the projected image embedding (image_embeds)"), *VIT_CUTS),
    top="the model's own output; its image processor's preprocessing",
    transforms="a model (hub id or folder) whose image processor to use",
)
"""Hugging Face vision encoders, ``hf:<hub id or folder saved with save_pretrained>``."""
