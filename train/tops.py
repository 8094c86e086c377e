"""``--finetune``: the trainable top of a face backbone, rebuilt from the weights its cache was made with.

A face set cut inside a backbone says where (its provenance): ResNet-18's layer3 maps (the top is layer4 and
the average pool) or a vision transformer's tokens entering block K (``cut.kind == "block"``: the top is
blocks K..L-1 and the tail, fer.nets.vit). ``--finetune top`` trains whichever top the set has;
``--finetune layer4`` is its ResNet name. The top's weights come from the very weights the cache was made
with: the provenance names them (a folder, hub id, file or random seed) and their sha256; a changed file is a
one-line error. ``--lora R`` trains LoRA adapters of rank R (peft) on the top blocks' linear projections
(attention and MLP) instead of all their weights.

A top maps one frame's stored row to its pooled feature: ``(F, *row) -> (F, width)``. ``export()`` is what
the fold checkpoint keeps for ``fer extract --weights RUN/checkpoint_foldK.pt``: ResNet-18 whole, or the
adapted blocks under the model's own key names (LoRA merged in), with the base weights they came from.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.nets.vit import Parts, VitTop, hf_parts, timm_parts

Log = Callable[[str], None]
LORA_HINT = "pip install peft (or: pip install 'fer-cache[lora]')"


def face_cut(provenance: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``cut`` a face set was made at (``kind`` block | all), or None for pooled vectors and layer3
    maps."""
    cut = provenance.get("cut")
    return dict(cut) if isinstance(cut, Mapping) else None


class ResNetTop(nn.Module):
    """ResNet-18's layer4 and a spatial mean over layer3 maps ``(F, 256, H, W) -> (F, 512)``."""

    standardize = False  # its outputs train from the first step as they always have (no input norm)
    width = 512

    def __init__(self, layer4: nn.Module, resnet: nn.Module | None = None):
        super().__init__()
        self.layer4 = layer4
        self.exported = [
            resnet or layer4
        ]  # a list: the whole network is exported, only layer4 trains with the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a mean over the map, not AdaptiveAvgPool2d: its CUDA backward is nondeterministic
        return self.layer4(x).mean(dim=(2, 3))

    def export(self) -> dict[str, Any]:
        """The whole ResNet-18 with the fine-tuned layer4 (shared with the model)."""
        return {"backbone": {k: v.detach().cpu() for k, v in self.exported[0].state_dict().items()}}


class TrainedVitTop(nn.Module):
    """A ViT's top (fer.nets.vit.VitTop) as the trainer holds it: full blocks or LoRA on them."""

    standardize = True  # its untrained output is the pooled feature: standardised like a frozen pooled set

    def __init__(self, top: VitTop, width: int, provenance: Mapping[str, Any], lora: int = 0):
        super().__init__()
        self.vit, self.width, self.lora = top, width, lora
        self.base = {
            "extractor": dict(provenance.get("extractor") or {}),
            "weights": provenance.get("weights"),
        }
        self.cut = face_cut(provenance) or {}
        self.exported = [self]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def export(self) -> dict[str, Any]:
        """The adapted blocks and tail under the model's own names (LoRA merged in), the LoRA weights
        themselves,
        and the base weights and cut they came from."""
        out: dict[str, Any] = {"backbone_base": self.base, "backbone_cut": self.cut, "lora_rank": self.lora}
        if self.lora:
            from peft import get_peft_model_state_dict
            from peft.tuners.lora import LoraLayer

            out["lora"] = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(self.vit).items()}
            merged = copy.deepcopy(self.vit).cpu()
            for m in merged.modules():
                if isinstance(m, LoraLayer):
                    m.merge()
            state = {
                k.replace(".base_layer.", "."): v for k, v in merged.state_dict().items() if ".lora_" not in k
            }
        else:
            state = self.vit.state_dict()
        out["backbone"] = {k: v.detach().cpu() for k, v in self.vit.native_state(state).items()}
        return out


def add_lora(top: VitTop, rank: int, seed: int) -> VitTop:
    """LoRA adapters of ``rank`` on every linear projection of the top's blocks (attention q/k/v/out or
    qkv/proj,
    MLP fc1/fc2 ...); the rest of the top is frozen. Seeded: same seed, same adapters."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise FerError(f"--lora needs the peft library, which is not installed: {LORA_HINT}") from None
    targets = [f"blocks.{name}" for name, m in top.blocks.named_modules() if isinstance(m, nn.Linear)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets), top
        )


def trainable_parameters(module: nn.Module) -> int:
    """Parameters that train (LoRA: the adapters only)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------- rebuilding the backbone from provenance
def _weights(provenance: Mapping[str, Any]) -> tuple[str, str | None]:
    """(weights id, sha256) a face set's provenance names."""
    w = provenance.get("weights", "none")
    if isinstance(w, Mapping):
        return str(w.get("id") or "none"), w.get("sha256")
    return str(w or "none"), provenance.get("weights_sha256")


def _check_sha(file: Path | None, sha: str | None, what: str) -> None:
    if sha is None:
        return
    if file is None or not file.is_file():
        raise FerError(
            f"the weights the cache was made with ({what}) are not on this machine: restore them, or "
            "re-extract the face set"
        )
    if sha256_file(file) != sha:
        raise FerError(
            f"{file} changed since the cache was made (sha256 differs): restore the original weights "
            "or re-extract the face set"
        )


def _hf_file(source: str, revision: str | None) -> Path | None:
    """model.safetensors / pytorch_model.bin of a folder or a cached hub id."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if Path(source).is_dir():
            f: Any = Path(source) / name
        else:
            from huggingface_hub import try_to_load_from_cache

            f = try_to_load_from_cache(source, name, revision=revision)
        if isinstance(f, (str, Path)) and Path(f).is_file():
            return Path(f)
    return None


def _hf_model(source: str, provenance: Mapping[str, Any], seed: int) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    name = str(provenance.get("model_class", "AutoModel"))
    if not re.fullmatch(r"[A-Za-z0-9]+(Model|ModelWithProjection)", name) or not hasattr(transformers, name):
        raise FerError(
            f"the face set names model class {name!r}, which this transformers cannot build: re-extract it"
        )
    cls = getattr(transformers, name)
    wid, sha = _weights(provenance)
    local = Path(source).is_dir()
    try:
        if wid.startswith("random"):
            cfg = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
            clip = str(cfg.model_type) in ("clip", "clip_vision_model")
            if clip:
                from transformers import CLIPVisionConfig

                vcfg = cfg.vision_config if str(cfg.model_type) == "clip" else cfg
                cfg = vcfg if isinstance(vcfg, CLIPVisionConfig) else CLIPVisionConfig(**vcfg.to_dict())
            with torch.random.fork_rng(
                devices=[]
            ):  # as fer.extract built it: the same class, config and seed
                torch.manual_seed(seed)
                return cls(cfg) if clip else AutoModel.from_config(cfg)
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # no load report: the pooler a ViT's top never uses may be absent
        try:
            model = cls.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        finally:
            hf_logging.set_verbosity(level)
    except (OSError, ValueError) as e:
        raise FerError(
            f"cannot load {source} ({type(e).__name__}), the model the face set was made with: restore it "
            f"{'' if local else 'in the Hugging Face cache '}or re-extract the face set"
        ) from None
    _check_sha(_hf_file(source, (provenance.get("weights") or {}).get("revision")), sha, source)
    return model


def _timm_cached(name: str) -> Path | None:
    """The file of timm's pretrained weights for ``name`` in the HF cache or TORCH_HOME, if it is there."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        for n in [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                      "pytorch_model.bin"]:
            f = try_to_load_from_cache(cfg.hf_hub_id, n)
            if isinstance(f, str) and Path(f).is_file():
                return Path(f)
    f = Path(torch.hub.get_dir()) / "checkpoints" / Path(str(getattr(cfg, "url", None) or "-")).name
    return f if f.is_file() else None


def _timm_model(name: str, args: Mapping[str, Any], provenance: Mapping[str, Any]) -> nn.Module:
    import timm

    kw: dict[str, Any] = {"num_classes": 0}
    if args.get("size"):
        kw["img_size"] = int(args["size"])
    w, seed = str(args.get("weights") or "").strip(), int(args.get("seed") or 0)
    _, sha = _weights(provenance)
    if w.lower() == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, **kw)
    if not w or w.lower() == "pretrained":  # the cached file the cache was made with, never a download
        file = _timm_cached(name)
        _check_sha(file, sha, f"timm:{name} pretrained")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kw)
    path = Path(w).expanduser()
    _check_sha(path, sha, str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "backbone"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "fc_norm.weight" in state and "norm.weight" not in state:
        kw["global_pool"] = "avg"
    model = timm.create_model(name, pretrained=False, **kw)
    own = model.state_dict()
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False
    )
    return model


def rebuild_parts(provenance: Mapping[str, Any]) -> Parts:
    """The backbone a face set was made with, from its provenance, taken apart (fer.nets.vit)."""
    args = dict(provenance.get("extractor") or {})
    backbone, family = str(args.get("backbone", "")), provenance.get("family")
    cut = face_cut(provenance) or {}
    with torch.no_grad():
        if family == "hf-vision" and backbone.startswith("hf:"):
            model = _hf_model(backbone[3:], provenance, int(args.get("seed") or 0)).float().eval()
            return hf_parts(model, proj=cut.get("pooled") == "proj")
        if family == "timm" and backbone.startswith("timm:"):
            return timm_parts(_timm_model(backbone[5:], args, provenance).eval())
    raise FerError(
        f"the face set's backbone {backbone or '?'} ({family}) has no top fer can rebuild: re-extract it"
    )


def build_top(
    finetune: str | None, provenance: Mapping[str, Any], *, lora: int = 0, seed: int = 0, log: Log = print
) -> nn.Module | None:
    """The trainable top for ``--finetune`` (None without it) over a face set with this provenance."""
    if finetune is None:
        return None
    cut = face_cut(provenance)
    if cut is None or cut.get("kind") != "block":
        if str(provenance.get("layer")) == "layer3" and finetune in ("top", "layer4"):
            if lora:
                raise FerError(
                    "--lora adapts a vision transformer's blocks; ResNet-18's layer4 trains whole: "
                    "leave --lora out"
                )
            net = build_backbone(provenance, log)
            return ResNetTop(net.layer4, net)
        raise FerError(
            f"--finetune {finetune} trains the top of a backbone cut inside, and this face set holds "
            f"{provenance.get('layer', 'pooled')} features: extract `--layer block:-2` (a ViT) or "
            "`--layer layer3` (ResNet-18)"
        )
    if finetune != "top":
        raise FerError(
            f"the face set holds a ViT's tokens entering block {cut.get('block')}: "
            "train it with --finetune top"
        )
    parts = rebuild_parts(provenance)
    k = int(cut["block"])
    if parts.depth != int(cut.get("blocks", parts.depth)):
        raise FerError(
            f"the rebuilt backbone has {parts.depth} blocks, the face set was cut from one with "
            f"{cut.get('blocks')}: the weights changed; re-extract the face set"
        )
    top = VitTop(parts, k)
    for p in top.parameters():
        p.requires_grad_(True)
    if lora:
        top = add_lora(top, lora, seed)
    width = int(cut.get("pooled_width") or cut.get("width"))
    out = TrainedVitTop(top, width, provenance, lora)
    how = f"LoRA rank {lora}" if lora else "all weights"
    log(
        f"top: blocks {k}..{parts.depth - 1} and the tail of {parts.layout} ({how}: "
        f"{trainable_parameters(out):,} trainable parameters)"
    )
    return out


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def build_backbone(provenance: Mapping[str, Any], log: Callable[[str], None] = print) -> nn.Module:
    """The ResNet-18 the layer3 cache was made with (its layer4 is then fine-tuned).

    The provenance's weights id names them, as fer.extract records it: ``random, seed S`` (random init:
    torch.manual_seed(S) then resnet18()), ``torchvision:ResNet18_Weights.NAME`` (the torch hub cache,
    offline), or a local file path (state dict, or a checkpoint with a ``backbone``/``model``/``state_dict``
    entry), checked against the recorded sha256.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    wid, sha = _weights(provenance)
    if wid.lower() in ("none", "random", "") or wid.lower().startswith("random"):
        m = re.search(r"seed\s*(-?\d+)", wid)
        seed = int(m.group(1)) if m else int(provenance.get("seed", 0) or 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = resnet18(weights=None)
        log(f"layer4: random init (seed {seed}), as the cache's backbone was")
        return net
    path = Path(wid).expanduser()
    if path.is_file():
        if sha:
            if sha256_file(path) != sha:
                raise FerError(
                    f"{path} changed since the cache was made (sha256 differs): "
                    "restore the original weights file or re-extract the layer3 features"
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("backbone", "state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
        state = {_strip_prefix(k): v for k, v in state.items()}
        net = resnet18(weights=None)
        missing, _ = net.load_state_dict(state, strict=False)
        if any(k.startswith("layer4.") for k in missing):
            raise FerError(
                f"{path} holds no ResNet-18 layer4 weights: the cache's provenance names the wrong file"
            )
        log(f"layer4: initialised from {path}")
        return net
    name = wid.split(".")[-1] if wid.startswith("torchvision:") else wid
    name = "IMAGENET1K_V1" if name.lower() in ("imagenet", "default") else name
    try:
        net = resnet18(weights=ResNet18_Weights[name])
    except Exception as e:  # offline without the cached file, or an unknown id
        raise FerError(
            f"cannot load the ResNet-18 weights {wid} the cache was made with ({type(e).__name__}): "
            "run `fer weights fetch` on a machine with internet and copy TORCH_HOME here"
        ) from None
    log(f"layer4: initialised from torchvision {name}")
    return net
