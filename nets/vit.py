"""Vision transformers cut at a block: the bottom that makes the cached tokens, the top that trains on them.

A ViT is ``stem -> blocks[0..L-1] -> tail``. ``block:K`` (0 <= K <= L, negative counts from the end) cuts
it in front of block K: the bottom (stem and blocks 0..K-1, frozen, run once by ``fer extract``) gives
the hidden states *entering* block K, every token (class, patches, registers) as Hugging Face's
``hidden_states[K]`` has them (CLIP: after its pre-layernorm); the top (blocks K..L-1 and the tail: the
final norm, the pooling, CLIP's projection when the pooled set was ``proj``) turns them into the pooled
feature the whole model gives. ``parts`` takes a loaded model apart; the pieces are the model's own
modules (shared, not copied), so a checkpoint's keys map back to the model's own state-dict names
(``Parts.native``).

Families: Hugging Face CLIP vision towers, DINOv2 (with or without registers), ViT and DeiT (the models
whose blocks are called ``block(hidden_states, attention_mask)`` and whose pooled feature is the final
LayerNorm of the class token), and timm's VisionTransformer (MAE-Face among its checkpoints).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError

HF_TYPES = ("clip", "clip_vision_model", "dinov2", "dinov2_with_registers", "vit", "deit")
"""Hugging Face model types with the block structure fer can cut."""
CLIP_TYPES = ("clip", "clip_vision_model")
ALL = "all"
"""``--layer all``: the pooled feature after every block (and of the embeddings), like the audio layers."""


def parse_cut(layer: str) -> tuple[int, bool] | None:
    """``block:K`` -> (K as written, False); ``block:K:proj`` -> (K, True) (CLIP's projection in the top); any
    other layer -> None. FerError for a malformed ``block:`` layer."""
    text = str(layer or "").strip().lower()
    if not text.startswith("block:"):
        return None
    parts = text.split(":")
    proj = len(parts) == 3 and parts[2] == "proj"
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and not proj):
            raise ValueError
        return int(parts[1]), proj
    except ValueError:
        raise FerError(
            f"--layer {layer!r}: write block:K (K counted from 0, negative from the end, e.g. block:-2), "
            "or block:K:proj for CLIP's projected embedding"
        ) from None


def resolve_block(k: int, blocks: int, what: str) -> int:
    """Block index ``k`` (negative: from the end) as 0..L; FerError naming the range otherwise."""
    if not -blocks <= k <= blocks:
        raise FerError(
            f"--layer block:{k} is out of range: {what} has {blocks} blocks (block:0..{blocks}, "
            f"or -1..-{blocks} from the end)"
        )
    return k % blocks if k < 0 else k


class ClsTail(nn.Module):
    """Hugging Face tail: the final LayerNorm of the class token (per token, so it equals the norm of every
    token then the class token), then CLIP's projection when there is one."""

    def __init__(self, norm: nn.Module, proj: nn.Module | None = None):
        super().__init__()
        self.norm, self.proj = norm, proj

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.norm(h[:, 0])
        return self.proj(y) if self.proj is not None else y


class TimmTail(nn.Module):
    """timm tail: ``norm``, then the model's own pooling (class token, average, attention pool) and
    ``fc_norm``,
    the pre-logits feature a headless timm ViT returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.norm, self.fc_norm, self.attn_pool = model.norm, model.fc_norm, model.attn_pool
        self.global_pool, self.num_prefix_tokens = model.global_pool, model.num_prefix_tokens
        self.pool_include_prefix = getattr(model, "pool_include_prefix", False)
        self._pool = type(model).pool  # timm's own pooling code, run on these attributes

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self._pool(self, self.norm(h)))


@dataclass
class Parts:
    """A vision transformer taken apart (its own modules, shared with the model)."""

    layout: str
    """``hf-clip``, ``hf-<model type>`` or ``timm-vit``."""
    stem: Callable[[torch.Tensor], torch.Tensor]
    """Model input (N, 3, S, S) -> hidden_states[0] (N, tokens, D)."""
    blocks: nn.ModuleList | nn.Sequential
    tail: nn.Module
    """hidden_states[L] (N, tokens, D) -> the pooled feature (N, D')."""
    native: dict[str, str] = field(default_factory=dict)
    """Top-local key prefix -> the model's own state-dict prefix, for ``blocks.<i>.`` (i = the model's block
    index) and the tail's parts."""

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def native_key(self, key: str) -> str:
        """A key of a top (``blocks.<i>....`` with i the model's own index, ``tail.norm....``) as the model
        names it."""
        return native_key(self.native, key)


def native_key(native: dict[str, str], key: str) -> str:
    """``key`` with its longest top-local prefix in ``native`` replaced by the model's own."""
    for local, own in sorted(native.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(local):
            return own + key[len(local) :]
    raise KeyError(key)


def _prefixed(root: nn.Module, module: nn.Module, what: str) -> str:
    for name, m in root.named_modules():
        if m is module:
            return f"{name}." if name else ""
    raise FerError(f"internal: {what} is not part of the model")


def hf_parts(model: nn.Module, proj: bool = False, interpolate: bool = False) -> Parts:
    """A Hugging Face vision model (CLIPVisionModel[WithProjection], Dinov2Model, ViTModel, ...) taken
    apart."""
    mtype = str(getattr(model.config, "model_type", ""))
    if mtype not in HF_TYPES:
        raise FerError(
            f"{type(model).__name__} ({mtype}) cannot be cut at a block: fer knows the blocks of "
            f"{', '.join(HF_TYPES)} (Hugging Face) and timm ViTs; use --layer pool"
        )
    clip = mtype in CLIP_TYPES
    tower = getattr(model, "vision_model", model)  # CLIPVisionModelWithProjection keeps the tower inside
    projection = getattr(model, "visual_projection", None) if proj else None
    if proj and projection is None:
        raise FerError(
            f"{type(model).__name__} has no projection: block:K:proj needs a CLIP vision tower saved with "
            "its projection (CLIPVisionModelWithProjection)"
        )
    n = int(model.config.num_hidden_layers)
    lists = [m for m in tower.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise FerError(
            f"cannot find the {n} blocks of {type(model).__name__}: its layout is not one fer knows"
        )
    blocks = lists[0]
    emb = tower.embeddings
    pre = tower.pre_layrnorm if clip else None
    norm = tower.post_layernorm if clip else tower.layernorm
    kw = (
        {"interpolate_pos_encoding": True}
        if interpolate and "interpolate_pos_encoding" in inspect.signature(emb.forward).parameters
        else {}
    )

    def stem(x: torch.Tensor) -> torch.Tensor:
        h = emb(x, **kw)
        return pre(h) if pre is not None else h

    tail = ClsTail(norm, projection)
    native = {
        "blocks.": _prefixed(model, blocks, "the blocks"),
        "tail.norm.": _prefixed(model, norm, "the norm"),
    }
    if projection is not None:
        native["tail.proj."] = _prefixed(model, projection, "the projection")
    return Parts(
        layout=f"hf-{mtype.replace('_vision_model', '')}", stem=stem, blocks=blocks, tail=tail, native=native
    )


def timm_parts(model: nn.Module) -> Parts:
    """A timm VisionTransformer (headless) taken apart."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise FerError(
            f"timm {type(model).__name__} cannot be cut at a block: fer knows timm's VisionTransformer "
            "(vit_*, deit_*, MAE-Face ...); use --layer pool"
        )

    def stem(x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    tail = TimmTail(model)
    native = {"blocks.": "blocks.", "tail.norm.": "norm.", "tail.fc_norm.": "fc_norm."}
    if model.attn_pool is not None:
        native["tail.attn_pool."] = "attn_pool."
    return Parts(layout="timm-vit", stem=stem, blocks=model.blocks, tail=tail, native=native)


class VitTop(nn.Module):
    """Blocks K..L-1 and the tail of a ViT: ``(F, tokens, D)`` cached tokens of F frames -> ``(F, D')``
    pooled.

    Untrained, it gives exactly what the whole model gives on the frames. Its keys (``blocks.<i>.`` with i the
    model's own block index, ``tail....``) map to the model's own names through ``native_key``.
    """

    def __init__(self, parts: Parts, k: int):
        super().__init__()
        self.k, self.depth, self.layout = k, parts.depth, parts.layout
        self.blocks = nn.ModuleDict({str(i): parts.blocks[i] for i in range(k, parts.depth)})
        self.tail = parts.tail
        self.native = dict(parts.native)  # not the parts: they hold the bottom's blocks, the top keeps none

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            h = run_block(block, h)
        return self.tail(h)

    def native_state(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``state`` (default: this top's own) with the model's own key names."""
        state = self.state_dict() if state is None else state
        return {self.native_key(k): v for k, v in state.items()}

    def native_key(self, key: str) -> str:
        """One of this top's keys as the model names it."""
        return native_key(self.native, key)


def run_block(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One block on hidden states: Hugging Face layers take (hidden_states, attention_mask) and may return a
    tuple; timm blocks take the tokens alone."""
    out = block(h) if not _is_hf(block) else block(h, None)
    return out[0] if isinstance(out, tuple) else out


def _is_hf(block: nn.Module) -> bool:
    return type(block).__module__.startswith("transformers.")


def pooled_width(parts: Parts, width: int) -> int:
    """Width of the tail's output (the pooled feature) for hidden states of ``width``."""
    with torch.inference_mode():
        return int(parts.tail(torch.zeros(1, 2, width)).shape[-1])


def describe(parts: Parts, k: int, tokens: int, width: int, pooled: str) -> dict[str, Any]:
    """The provenance ``cut`` entry of a ``block:K`` set: what the rows hold and what their top is."""
    return {
        "kind": "block",
        "block": k,
        "blocks": parts.depth,
        "tokens": tokens,
        "width": width,
        "pooled": pooled,
        "layout": parts.layout,
        "rows": f"hidden states entering block {k} of {parts.depth} (Hugging Face hidden_states[{k}]): "
        "every token",
    }
