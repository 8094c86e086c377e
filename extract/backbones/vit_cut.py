"""Vision transformers cut at a block for the face cache: ``--layer block:K``, ``--layer all``, and a backbone
adapted by ``fer train --finetune top`` (``--weights RUN/checkpoint_foldK.pt``).

- ``block:K`` (``block:K:proj`` for a CLIP top that ends in its projection): each frame's hidden states
  entering block K, every token, ``(tokens, D)`` per frame, stored fp16; ``fer train --finetune top`` trains
  blocks K..L-1 and the tail from them (fer.nets.vit).
- ``all``: the pooled feature after the embeddings and after every block (the model's own tail on each
  hidden state: final norm of the class token, timm's pooling), ``(L + 1, D)`` per frame, for
  ``fer train --face-layer N|weighted``. Index L is the ``pool`` set's feature.

The encoder is first built as for ``pool`` (or ``proj``) by its family's builder (hf, timm_models), so the
weights, preprocessing and provenance are the same; the cut only changes what its model returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.extract.backbones.family import Cut
from fer.extract.backbones.image import ImageEncoder, slug
from fer.nets.vit import (
    ALL,
    Parts,
    describe,
    hf_parts,
    parse_cut,
    pooled_width,
    resolve_block,
    run_block,
    timm_parts,
)

VIT_CUTS = (
    Cut("block:K", "the tokens entering block K (hidden_states[K], every token), (tokens, D) per frame",
        above="blocks K..L-1 + final norm and pooling (+ CLIP's projection with block:K:proj): "
              "fer train --finetune top [--lora R]"),
    Cut("all", "the pooled feature of the embeddings and after every block, (L + 1, D) per frame",
        above="fer train --face-layer N|weighted picks one block or mixes them"),
)
"""Where the vision transformer families (hf-vision, timm) can be cut besides their own outputs."""


def is_cut(layer: str | None) -> bool:
    """True for a layer this module makes: ``block:K[:proj]`` or ``all``."""
    return parse_cut(layer or "") is not None or str(layer or "").strip().lower() == ALL


def base_layer(layer: str) -> str:
    """The layer the encoder is first built with: ``proj`` for ``block:K:proj``, else ``pool``."""
    cut = parse_cut(layer)
    return "proj" if cut is not None and cut[1] else "pool"


def model_parts(enc: ImageEncoder, proj: bool = False) -> Parts:
    """The blocks of a pool/proj encoder's model; FerError for a family without blocks."""
    if enc.family == "hf-vision":
        return hf_parts(enc.model.model, proj=proj, interpolate=enc.model.interpolate)
    if enc.family == "timm":
        return timm_parts(enc.model)
    raise FerError(
        f"--layer block:K and all cut a vision transformer (hf: CLIP, DINOv2, ViT, DeiT; timm ViTs such as "
        f"MAE-Face); {enc.backbone} has no blocks to cut (resnet18 caches --layer layer3 instead)"
    )


class Bottom(nn.Module):
    """Frames -> the hidden states entering block K: ``(N, tokens, D)``."""

    def __init__(self, model: nn.Module, parts: Parts, k: int):
        super().__init__()
        self.model, self.k = model, k  # the whole model, so moving it moves the stem's modules too
        self.stem, self.blocks = parts.stem, parts.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for i in range(self.k):
            h = run_block(self.blocks[i], h)
        return h


class EveryBlock(nn.Module):
    """Frames -> the pooled feature of the embeddings and of every block's output: ``(N, L + 1, D)``."""

    def __init__(self, model: nn.Module, parts: Parts):
        super().__init__()
        self.model, self.stem, self.blocks, self.tail = model, parts.stem, parts.blocks, parts.tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = [self.tail(h)]
        for block in self.blocks:
            h = run_block(block, h)
            out.append(self.tail(h))
        return torch.stack(out, dim=1)


def cut_encoder(enc: ImageEncoder, layer: str) -> ImageEncoder:
    """``enc`` (built for pool/proj) returning what ``layer`` asks for: block:K tokens, or every block
    pooled."""
    cut = parse_cut(layer)
    parts = model_parts(enc, proj=bool(cut and cut[1]))
    what = f"{enc.backbone} ({parts.layout})"
    if cut is None:
        model: nn.Module = EveryBlock(enc.model, parts).eval()
        token = ALL
    else:
        k = resolve_block(cut[0], parts.depth, what)
        model = Bottom(enc.model, parts, k).eval()
        token = f"block{k}" + ("-proj" if cut[1] else "")
    with torch.inference_mode():
        out = tuple(model(torch.zeros(1, 3, enc.size, enc.size)).shape[1:])
    if cut is None:
        info: dict[str, Any] = {
            "kind": ALL,
            "blocks": parts.depth,
            "layout": parts.layout,
            "width": out[-1],
            "rows": f"the pooled feature ({enc.output}) of the embeddings (index 0) and after each "
            f"of the {parts.depth} blocks (index i); index {parts.depth} is the pool set's",
        }
        output = f"every block's pooled feature: {enc.output} of hidden_states[0..{parts.depth}]"
    else:
        pooled = "proj" if cut[1] else "pool"
        info = describe(parts, k, out[0], out[1], pooled)
        info["pooled_width"] = pooled_width(parts, out[1])
        output = f"{info['rows']} (fp16); its top gives {enc.output}"
    extra = {**enc.extra, "cut": info, "width": out[-1]}
    return ImageEncoder(
        backbone=enc.backbone,
        family=enc.family,
        model=model,
        preprocess=enc.preprocess,
        weights=enc.weights,
        tag=enc.tag,
        size=enc.size,
        out_shape=out,
        layer=token,
        preprocessing=enc.preprocessing,
        output=output,
        channels_last=False,
        extra=extra,
    )


# ---------------------------------------------------------------- adapted by `fer train --finetune top`
def trained_checkpoint(weights: str | None) -> dict[str, Any] | None:
    """The `fer train` fold checkpoint ``weights`` names (one with a fine-tuned backbone), else None."""
    if not weights or not Path(weights).expanduser().is_file():
        return None
    try:
        ck = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
    except Exception:
        return None  # not a checkpoint: the family's own loader says what is wrong with it
    return ck if isinstance(ck, dict) and "finetuned_on_fold" in ck and "backbone" in ck else None


def adapted_base(ck: dict[str, Any], backbone: str, path: str) -> dict[str, Any] | None:
    """For a checkpoint whose backbone is a ViT top: the build arguments of the backbone it was adapted from
    (checked against ``backbone``); None for a checkpoint holding a whole backbone (ResNet-18)."""
    base = ck.get("backbone_base")
    if not isinstance(base, dict):
        return None
    args = dict(base.get("extractor") or {})
    if args.get("backbone") != backbone:
        raise FerError(
            f"{path} adapted the top of {args.get('backbone')}, not {backbone}: extract with "
            f"--backbone {args.get('backbone')} --weights {path}"
        )
    return args


def adapt(enc: ImageEncoder, ck: dict[str, Any], path: str) -> ImageEncoder:
    """``enc`` (the base backbone) with a checkpoint's adapted top loaded into its own modules; its weights
    identity becomes the checkpoint's, the base kept under ``base``."""
    base = dict(ck["backbone_base"].get("weights") or {})
    if base.get("sha256") != enc.weights.get("sha256") or (
        base.get("sha256") is None and base.get("id") != enc.weights.get("id")
    ):
        raise FerError(
            f"{path} was adapted from weights {base.get('id')} (sha256 {str(base.get('sha256'))[:12]}), and "
            f"{enc.backbone} now loads {enc.weights.get('id')}: restore the weights the run was trained from"
        )
    model = enc.model.model if enc.family == "hf-vision" else enc.model
    own = model.state_dict()
    state, dropped = {}, []
    for k, v in ck["backbone"].items():
        name = (
            k if k in own else k.removeprefix("vision_model.")
        )  # a CLIP tower with or without its projection
        if name in own and tuple(own[name].shape) == tuple(v.shape):
            state[name] = v
        elif k.startswith("visual_projection."):
            dropped.append(k)  # adapted with CLIP's projection, extracted without it
        else:
            raise FerError(f"{path} does not fit {enc.backbone}: {k} is not one of its weights of that shape")
    model.load_state_dict(state, strict=False)
    sha = sha256_file(Path(path))
    cut = ck.get("backbone_cut") or {}
    extra = {
        **enc.extra,
        "finetuned_on_fold": int(ck["finetuned_on_fold"]),
        "adapted": {
            "blocks": f"{cut.get('block')}..{int(cut.get('blocks', 0)) - 1}",
            "keys": len(state),
            "lora_rank": ck.get("lora_rank") or None,
            "unused": dropped[:4],
        },
    }
    ident = {"id": str(Path(path).resolve()), "sha256": sha, "base": enc.weights}
    return ImageEncoder(
        backbone=enc.backbone,
        family=enc.family,
        model=enc.model,
        preprocess=enc.preprocess,
        weights=ident,
        tag=f"{slug(Path(path).stem, 40)}-{sha[:8]}",
        size=enc.size,
        out_shape=enc.out_shape,
        layer=enc.layer,
        preprocessing=enc.preprocessing,
        output=enc.output,
        channels_last=enc.channels_last,
        extra=extra,
    )
