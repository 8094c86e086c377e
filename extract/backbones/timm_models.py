"""timm image encoders (``timm:<model name>[.<pretrained tag>]``), headless (``num_classes=0``: the pooled
pre-logits feature), with the preprocessing of the model's pretrained config.

``--weights``: left out, the pretrained weights timm names for the model (its HF cache; offline a
cached file is used, never a download); ``none``: seeded random init; ``PATH``: a state dict of that
architecture, e.g. MAE-Face's ViT-B ``mae_face_pretrain_vit_base.pth`` with
``timm:vit_base_patch16_224.mae`` (whose pretrained config has MAE's ImageNet normalisation). A
checkpoint is loaded strictly: only the classifier head and an MAE decoder may be left over, an
absolute position embedding of another grid is resampled, and a checkpoint trained with global
average pooling (``fc_norm`` instead of ``norm``) builds the model that way; all of it is recorded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.extract.backbones.family import Cut, Family
from fer.extract.backbones.image import (
    ImageEncoder,
    check_layer,
    describe_classification,
    notice,
    probe_width,
    scaled_classification,
    slug,
    with_transforms,
)
from fer.extract.backbones.vit_cut import VIT_CUTS
from fer.extract.backbones.weights import (
    hashed_tag,
    hub_checkpoint_dir,
    load_checked,
    offline,
    random_init,
    read_state_dict,
)

LEFTOVER = ("head.", "decoder", "mask_token")
"""Checkpoint keys fer does not need: the classifier, and MAE's pre-training decoder."""


def _interpolation(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(str(name), InterpolationMode.BICUBIC)


def cached_pretrained(cfg: Any) -> Path | None:
    """The pretrained file of a timm pretrained config in the HF cache or TORCH_HOME, if there."""
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        names = ([cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None)
                 else ["model.safetensors", "pytorch_model.bin"])
        for n in names:
            f = try_to_load_from_cache(cfg.hf_hub_id, n)
            if isinstance(f, str) and Path(f).is_file():
                return Path(f)
    if getattr(cfg, "url", None):
        f = hub_checkpoint_dir() / Path(str(cfg.url)).name
        if f.is_file():
            return f
    return None


def _create(name: str, kw: dict[str, Any], **more: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kw, **more)
    except TypeError as e:  # e.g. img_size given to a convolutional model: it takes any size anyway
        if "img_size" in kw and "img_size" in str(e):
            kw.pop("img_size")
            return timm.create_model(name, **kw, **more)
        raise


def _fit_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], notes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop leftovers (head, MAE decoder) and resample an absolute position embedding of another grid."""
    left = sorted(k for k in state if k.startswith(LEFTOVER))
    if left:
        notes["ignored_keys"] = (f"{len(left)} keys not used by the encoder (classifier head / MAE decoder), "
                                 f"e.g. {left[0]}")
    state = {k: v for k, v in state.items() if not k.startswith(LEFTOVER)}
    own = model.state_dict()
    pe = state.get("pos_embed")
    if pe is not None and "pos_embed" in own and pe.shape != own["pos_embed"].shape and pe.dim() == 3:
        from timm.layers import resample_abs_pos_embed

        prefix = int(getattr(model, "num_prefix_tokens", 1))
        grid = list(model.patch_embed.grid_size)
        old = int(round(math.sqrt(pe.shape[1] - prefix)))
        state["pos_embed"] = resample_abs_pos_embed(pe, new_size=grid, num_prefix_tokens=prefix)
        notes["pos_embed"] = f"resampled from a {old}x{old} to a {grid[0]}x{grid[1]} patch grid (bicubic)"
    return state


def timm_encoder(name: str, weights: str | None = None, layer: str | None = None, size: int | None = None,
                 seed: int = 0, transforms: str | None = None) -> ImageEncoder:
    """A timm model by name (``vit_base_patch16_224.mae``): pretrained, ``none``, or a state dict PATH.
    Preprocessing: the pretrained config of the tag in the name (timm's default tag when the name has none,
    said in a notice for a PATH), or of the tag ``transforms`` names."""
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise FerError(f"unknown timm model {name!r}" + (f" (e.g. {', '.join(close)})" if close else ""))
    check_layer(layer, [c.name for c in TIMM.cuts[:1]], f"timm:{name}")  # block:K and all: vit_cut
    kw: dict[str, Any] = {"num_classes": 0}
    if size:
        kw["img_size"] = size
    w = (weights or "").strip()
    notes: dict[str, Any] = {}
    file: Path | None = None
    fetch = f"fer weights fetch --backbone timm:{name}"
    if w.lower() == "none":
        model = random_init(lambda: _create(name, kw, pretrained=False), seed)
        ident, tag = {"id": f"random, seed {seed}", "sha256": None}, f"none-s{seed}"
    elif not w or w.lower() == "pretrained":
        pcfg = timm.models.get_pretrained_cfg(name)  # without a tag: timm's default tag of the architecture
        file = cached_pretrained(pcfg) if pcfg is not None else None
        if file is None:
            where = getattr(pcfg, "hf_hub_id", None) or getattr(pcfg, "url", None) or "its source"
            if offline() or pcfg is None:
                raise FerError(f"timm:{name} pretrained weights ({where}) are not cached and this machine is offline: "
                               f"run `{fetch}` on a machine with internet and copy its HF_HOME/TORCH_HOME here, "
                               "or pass --weights PATH|none")
            try:
                model = _create(name, kw, pretrained=True)
            except Exception as e:
                raise FerError(f"could not get timm:{name} pretrained weights from {where} ({type(e).__name__}); "
                               f"run `{fetch}` where there is internet, or pass --weights PATH|none") from None
            file = cached_pretrained(pcfg)
        else:
            model = _create(name, kw, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        sha = sha256_file(file) if file else None
        ident = {"id": f"timm:{name}" + (f" ({pcfg.hf_hub_id})" if getattr(pcfg, "hf_hub_id", None) else ""),
                 "sha256": sha}
        tag = slug(getattr(pcfg, "tag", None) or "pretrained")
    else:
        path = file = Path(w).expanduser()
        if not path.is_file():
            raise FerError(f"--weights {w!r} is not a file; timm:{name} takes a state dict PATH, none, or nothing "
                           "(its pretrained weights)")
        state = read_state_dict(path, strip=("module.",))
        if "fc_norm.weight" in state and "norm.weight" not in state:
            kw["global_pool"] = "avg"  # fine-tuned with global pooling: timm's fc_norm layout
            notes["global_pool"] = "avg (the checkpoint has fc_norm, no norm)"
        model = random_init(lambda: _create(name, kw, pretrained=False), seed)
        state = _fit_checkpoint(model, state, notes)
        load_checked(model, state, source=str(path), what=f"timm:{name}")
        sha = sha256_file(path)
        ident = {"id": str(path.resolve()), "sha256": sha}
        tag = hashed_tag(slug(path.stem, 40), sha)
    model.eval()
    data, chosen, why = _pretrained_preprocessing(model, name, transforms, file)
    side = int(size or data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    mode = data.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise FerError(f"timm:{name} preprocesses with crop_mode {mode!r}, which fer does not reproduce; "
                       "choose another pretrained tag")
    resize: Any = [side, side] if mode == "squash" else int(math.floor(side / crop_pct))
    preprocess = scaled_classification(side, side, resize, data["mean"], data["std"],
                                       _interpolation(data["interpolation"]))
    out = probe_width(model, side, f"timm:{name}")
    if size and "img_size" in kw:
        notes["img_size"] = side
    return ImageEncoder(
        backbone=f"timm-{slug(name, 80)}", family="timm", model=model, preprocess=preprocess, weights=ident,
        tag=with_transforms(tag, chosen, str(model.pretrained_cfg.get("tag") or "")), size=side,
        out_shape=out, layer="pool", output="pooled pre-logits feature (num_classes=0)", channels_last=True,
        preprocessing=f"{describe_classification(preprocess)} (timm pretrained config "
                      f"{name.split('.')[0]}.{chosen}: crop_pct {crop_pct}, {mode})",
        extra={**({"timm": notes} if notes else {}), "transforms": {"pretrained_tag": chosen, "chosen": why}},
        transforms=chosen or None,
    )


def _pretrained_preprocessing(model: nn.Module, name: str, transforms: str | None,
                              file: Path | None) -> tuple[dict[str, Any], str, str]:
    """(timm data config, the pretrained tag it comes from, why): the model's own pretrained config (the tag
    in ``name``, else timm's default tag, with a notice when a checkpoint ``file`` was given), or the tag
    ``transforms`` names."""
    import timm
    from timm.data import resolve_model_data_config

    arch, own = name.split(".", 1)[0], str(model.pretrained_cfg.get("tag") or "")
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
    if transforms is not None:
        if transforms not in tags:
            raise FerError(f"--transforms {transforms} is not a pretrained tag of timm:{arch}; choose from "
                           f"{', '.join(tags) or 'none: it has no pretrained configs'}")
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{transforms}").to_dict()
        why = "named with --transforms" + (f" (the model name alone: {own})" if transforms != own else "")
        return resolve_model_data_config(model, pretrained_cfg=cfg), transforms, why
    data = resolve_model_data_config(model)
    if "." in name:
        return data, own, "the pretrained config of the tag in the model name"
    if file is not None and own:
        notice(f"timm:{name} names no pretrained tag: preprocessing {file.name} with the pretrained config "
               f"of timm's default tag {arch}.{own} (mean {list(data['mean'])}, crop_pct "
               f"{data.get('crop_pct')}); "
               f"name the tag the checkpoint was made with (timm:{arch}.<tag>) or pass --transforms TAG "
               f"({', '.join(tags)})")
    return data, own, f"the pretrained config of timm's default tag of {arch}"


def pretrained_cached(name: str) -> bool:
    """Whether the pretrained weights timm names for ``name`` are in the HF cache or TORCH_HOME (no
    download)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name has nothing cached
        cfg = None
    return cfg is not None and cached_pretrained(cfg) is not None


def fetch_pretrained(name: str) -> str:
    """Download timm's pretrained weights of ``name`` into its cache (HF cache / TORCH_HOME); says where."""
    if offline():
        raise FerError(f"cannot fetch timm:{name}: HF_HUB_OFFLINE/FER_OFFLINE is set; unset it on a machine "
                       "with internet")
    import timm

    try:
        timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise FerError(f"could not download timm:{name} weights ({type(e).__name__}: {first}); check the "
                       "network and the model name") from None
    return f"timm:{name} (HF cache / TORCH_HOME)"


TIMM = Family(
    name="timm", modalities=("face",), pattern="timm:*", help="timm:<model name>", build=timm_encoder,
    spec="face.timm-<model>.<weights>.pool.<size>.<frames>f", fetch=fetch_pretrained,
    cached=pretrained_cached,
    cuts=(Cut("pool", "pooled pre-logits feature"), *VIT_CUTS),
    top="the classifier head (num_classes=0), removed; the pretrained config's preprocessing",
    transforms="a pretrained tag of the architecture whose config preprocesses, e.g. mae",
)
"""timm image models by name, ``timm:<architecture>[.<pretrained tag>]``."""
