"""torchvision image encoders: ResNet-18 (fer's default, with its intermediate maps) and any classification
model of torchvision's registry (``torchvision.models.list_models``), headless.

ResNet-18 keeps fer's own preprocessing (frames resized to ``--size``, ImageNet standardisation, no
crop), so its spec names and numbers stay what they always were. Every other model takes the
preprocessing of its weights' own ``transforms()`` (resize, centre crop, normalise) and gives the
pooled feature before its classifier (the input of the logits layer).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.extract.backbones.family import Cut, Family
from fer.extract.backbones.image import (
    ImageEncoder,
    Uint8Normalize,
    check_layer,
    describe_classification,
    notice,
    probe_width,
    scaled_classification,
    with_transforms,
)
from fer.extract.backbones.weights import (
    WeightsIdentity,
    fetch_torchvision,
    name_hash,
    resolve_torchvision,
    torchvision_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHANNELS = {"pool": 512, "layer3": 256, "layer2": 128}


# ---------------------------------------------------------------- ResNet-18 (fer's default)
def _conv_out(s: int, k: int, stride: int, pad: int) -> int:
    return (s + 2 * pad - k) // stride + 1


def map_size(size: int, layer: str) -> int:
    """Spatial side of ``layer``'s output map for a ``size`` x ``size`` input."""
    s = _conv_out(_conv_out(size, 7, 2, 3), 3, 2, 1)  # conv1, maxpool
    for _ in range({"layer2": 1, "layer3": 2}[layer]):
        s = _conv_out(s, 3, 2, 1)
    return s


class ResNetTrunk(nn.Module):
    """ResNet-18 up to ``layer``: pooled 512-d features, or the ``layer2``/``layer3`` map."""

    def __init__(self, resnet: nn.Module, layer: str):
        super().__init__()
        blocks = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
        if layer in ("layer3", "pool"):
            blocks.append("layer3")
        if layer == "pool":
            blocks.append("layer4")
        self.body = nn.Sequential(*(getattr(resnet, b) for b in blocks))
        self.pool = layer == "pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return torch.flatten(x.mean(dim=(2, 3)), 1) if self.pool else x


def build_resnet18(weights: str = "imagenet", seed: int = 0) -> tuple[nn.Module, WeightsIdentity]:
    """A torchvision ResNet-18 with ``--weights`` resolved (see fer.extract.backbones.weights); fc kept."""
    from torchvision.models import ResNet18_Weights, resnet18

    return resolve_torchvision(
        weights,
        build=lambda w: resnet18(weights=w),
        weights_cls=ResNet18_Weights,
        default="imagenet",
        what="ResNet-18 ImageNet",
        seed=seed,
        optional_missing=("fc.",),  # a fine-tuned backbone saved without its classifier head
        fetch_cmd="fer weights fetch --backbone resnet18",
    )


def resnet18_encoder(weights: str | None = None, layer: str | None = None, size: int | None = None,
                     seed: int = 0) -> ImageEncoder:
    """fer's default face encoder: ResNet-18, pooled 512-d or the layer3/layer2 map."""
    layer = check_layer(layer, [c.name for c in RESNET18.cuts], "resnet18")
    size = size or 224
    resnet, ident = build_resnet18(weights or "imagenet", seed)
    if layer == "pool":
        out: tuple[int, ...] = (512,)
    else:
        s = map_size(size, layer)
        out = (_CHANNELS[layer], s, s)
    return ImageEncoder(
        backbone="resnet18", family="resnet18", model=ResNetTrunk(resnet, layer).eval(),
        preprocess=Uint8Normalize(IMAGENET_MEAN, IMAGENET_STD), weights=ident.as_dict(), tag=ident.tag,
        size=size, out_shape=out, layer=layer,
        preprocessing=f"/255, ImageNet mean {list(IMAGENET_MEAN)} std {list(IMAGENET_STD)} (no crop)",
        output="global average pool, fc removed" if layer == "pool" else f"{layer} output map",
        channels_last=True,  # ~25% faster oneDNN convolutions on CPU (measured), tensor cores on GPU
    )


# ---------------------------------------------------------------- any torchvision classification model
def classification_models() -> list[str]:
    """Names of torchvision's classification models (its model registry)."""
    import torchvision.models as tvm
    from torchvision.models import list_models

    return list_models(module=tvm)


def default_weights(name: str) -> Any:
    """The DEFAULT weights enum value of torchvision classification model ``name`` (FerError for an unknown
    name)."""
    if name not in classification_models():
        raise FerError(f"unknown backbone {name!r}: not a torchvision classification model, nor hf:<id> or "
                       "timm:<name>")
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def fetch_default(name: str) -> str:
    """Download (or find in TORCH_HOME) the DEFAULT weights file of model ``name``; returns its path."""
    return str(fetch_torchvision(default_weights(name), what=f"torchvision {name}",
                                 fetch_cmd=f"fer weights fetch --backbone {name}"))


def default_cached(name: str) -> bool:
    """Whether the DEFAULT weights file of model ``name`` is in TORCH_HOME's cache."""
    return torchvision_file(default_weights(name)).is_file()


def _builder_kwargs(name: str, enum: Any) -> dict[str, Any]:
    """The constructor arguments torchvision's builder sets when it loads ``enum`` (torchvision/models/*.py),
    so a model built without weights has exactly the architecture the weights file was saved from."""
    kw: dict[str, Any] = {"num_classes": len(enum.meta["categories"])}
    if name.startswith("vit_"):
        kw["image_size"] = enum.meta["min_size"][0]
    elif name == "maxvit_t":
        kw["input_size"] = enum.meta["min_size"]
    elif name in ("googlenet", "inception_v3"):
        kw.update(transform_input=True, aux_logits=True, init_weights=False)
    return kw


def head_name(model: nn.Module, num_classes: int) -> str:
    """The module that makes the logits: the last Linear with ``num_classes`` outputs (``fc``,
    ``classifier.3``, ``heads.head`` ...), or SqueezeNet's final 1x1 convolution block (``classifier``)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
              and not n.startswith("AuxLogits")]
    if linear:
        return linear[-1]
    cls = getattr(model, "classifier", None)
    if isinstance(cls, nn.Sequential) and any(isinstance(m, nn.Conv2d) and m.out_channels == num_classes for m in cls):
        return "classifier"
    raise FerError(f"cannot find the classifier of {type(model).__name__} to remove it")


def drop_head(model: nn.Module, name: str) -> None:
    """Replace the logits layer with identity (SqueezeNet: with the global average pool it ends in)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.AdaptiveAvgPool2d(1) if name == "classifier" and not isinstance(
        getattr(parent, child), nn.Linear) else nn.Identity())
    for aux in ("AuxLogits", "aux1", "aux2"):  # auxiliary classifiers of Inception/GoogLeNet: training only
        if isinstance(getattr(model, aux, None), nn.Module):
            setattr(model, aux, None)


# ---------------------------------------------------------------- which weights entry's transforms
def recognise(weights_cls: Any, sha256: str) -> Any | None:
    """The entry of ``weights_cls`` whose file this is: torchvision names each file with the first hex digits
    of its sha256 (``mobilenet_v2-b0353104.pth``), so a file whose real sha256 starts with an entry's hash is
    that entry's file, whatever it is called now. None when no entry's hash matches."""
    return next((e for e in weights_cls if (h := url_hash(e)) and sha256.startswith(h)), None)


def url_hash(entry: Any) -> str | None:
    """The hash in the file name of a weights entry's URL (``b0353104``)."""
    return name_hash(os.path.basename(entry.url))


def named_entry(weights_cls: Any, name: str) -> Any:
    """The entry ``--transforms NAME`` names (any case; ``default``/``imagenet``: DEFAULT); FerError
    otherwise."""
    if name.lower() in ("default", "imagenet"):
        return weights_cls.DEFAULT
    entry = next((e for e in weights_cls if e.name.lower() == name.lower()), None)
    if entry is None:
        raise FerError(f"--transforms {name} is not an entry of {weights_cls.__name__}; choose from "
                       f"{', '.join(e.name for e in weights_cls)}")
    return entry


def _resize_crop(entry: Any) -> str:
    t = entry.transforms()
    return f"resize {list(t.resize_size)[0]}, crop {list(t.crop_size)[0]}"


def own_entry(weights_cls: Any, ident: WeightsIdentity) -> tuple[Any, str, str | None]:
    """(the entry whose transforms fit these weights, why, a notice for the user or None): a loaded entry's
    own; a file recognised by its sha256 (``recognise``) that entry's; random init or an unrecognised file
    the DEFAULT entry's, the latter with a notice naming them and ``--transforms``."""
    cls = weights_cls.__name__
    if ident.id.startswith("torchvision:"):
        return weights_cls[ident.id.rsplit(".", 1)[1]], "the transforms of the weights entry loaded", None
    if ident.sha256 is None:
        return weights_cls.DEFAULT, "the default entry's transforms (random weights)", None
    entry = recognise(weights_cls, ident.sha256)
    if entry is not None:
        return entry, (f"recognised: the file's sha256 starts with {url_hash(entry)}, the hash in the name "
                       f"of {cls}.{entry.name}'s file"), None
    default, file = weights_cls.DEFAULT, os.path.basename(ident.id)
    h = name_hash(file)
    named = next((e for e in weights_cls if h and url_hash(e) == h), None)
    like = f"; it is named like {named.name}'s file but its content differs" if named is not None else ""
    note = (f"{file} is none of torchvision's {cls} files (its sha256 {ident.sha256[:8]} matches none of "
            f"their hashes{like}): preprocessing with the transforms of {cls}.{default.name} "
            f"({_resize_crop(default)}); pass --transforms NAME for another entry's "
            f"({', '.join(e.name for e in weights_cls)})")
    return default, f"the default entry's transforms: the file is not recognised as one of {cls}'s", note


def torchvision_encoder(name: str, weights: str | None = None, layer: str | None = None, size: int | None = None,
                        seed: int = 0, transforms: str | None = None) -> ImageEncoder:
    """Any torchvision classification model by name: its weights enum's DEFAULT (``imagenet``), another enum
    member, ``none`` or a state dict PATH; the pre-logits pooled feature. Preprocessing: the transforms of
    the weights entry loaded, or recognised by a file's sha256 (``own_entry``), or the entry ``transforms``
    names."""
    from torchvision.models import get_model, get_model_weights

    models = classification_models()
    if name not in models:
        close = [m for m in models if m.split("_")[0] == name.split("_")[0]][:6] or models[:6]
        raise FerError(f"unknown face backbone {name!r}: not a torchvision classification model (e.g. "
                       f"{', '.join(close)}); use hf:<model> for Hugging Face or timm:<model> for timm models")
    cuts = [c.name for c in TORCHVISION.cuts]
    check_layer(layer, cuts, f"{name} (intermediate maps are a resnet18 option)")
    weights_cls = get_model_weights(name)
    default = weights_cls.DEFAULT
    kw = _builder_kwargs(name, default)
    heads: list[str] = []

    def discard(model: nn.Module) -> tuple[str, ...]:
        heads.append(head_name(model, kw["num_classes"]))
        return (heads[-1] + ".",)

    model, ident = resolve_torchvision(
        weights or "imagenet", build=lambda w: get_model(name, weights=None, **kw), weights_cls=weights_cls,
        default="imagenet", what=f"torchvision {name}", seed=seed, discard=discard,
        fetch_cmd=f"fer weights fetch --backbone {name}",
    )
    drop_head(model, heads[-1] if heads else head_name(model, kw["num_classes"]))
    model.eval()
    automatic, why, note = own_entry(weights_cls, ident)
    entry = automatic if transforms is None else named_entry(weights_cls, transforms)
    if entry is not automatic:
        why = f"named with --transforms (the weights alone: {automatic.name})"
    if note and transforms is None:
        notice(note)
    native = entry.transforms()
    size = size or int(native.crop_size[0])
    preprocess = scaled_classification(size, int(native.crop_size[0]), list(native.resize_size), native.mean,
                                       native.std, native.interpolation, bool(native.antialias))
    out = probe_width(model, size, f"torchvision {name}")
    return ImageEncoder(
        backbone=name, family="torchvision", model=model, preprocess=preprocess, weights=ident.as_dict(),
        tag=with_transforms(ident.tag, entry.name, automatic.name), size=size, out_shape=out, layer="pool",
        preprocessing=f"{describe_classification(preprocess)} (the transforms of {weights_cls.__name__}."
                      f"{entry.name}{', scaled to the input size' if size != native.crop_size[0] else ''})",
        output=f"pooled feature before the classifier ({heads[-1] if heads else 'head'} removed)",
        channels_last=True, transforms=entry.name,
        extra={"transforms": {"entry": f"{weights_cls.__name__}.{entry.name}", "chosen": why}},
    )


def _resnet18(name: str, weights: str | None, layer: str | None, size: int | None, seed: int) -> ImageEncoder:
    return resnet18_encoder(weights, layer, size, seed)


RESNET18 = Family(
    name="resnet18", modalities=("face",), pattern="resnet18", help="resnet18", build=_resnet18,
    spec="face.resnet18.<weights>.<layer>.<size>.<frames>f", fetch=fetch_default, cached=default_cached,
    cuts=(Cut("pool", "pooled 512-d vector (global average pool after layer4)"),
          Cut("layer3", "layer3's 256 x S/16 x S/16 map", above="layer4 + global average pool"),
          Cut("layer2", "layer2's 128 x S/8 x S/8 map", above="layer3 + layer4 + global average pool")),
    top="fc (the ImageNet classifier), removed; fer's own preprocessing (resize to --size, no crop)",
)
"""fer's default face backbone: torchvision's ResNet-18, with its intermediate maps."""

TORCHVISION = Family(
    name="torchvision", modalities=("face",), pattern="*",
    help="any torchvision classification model (convnext_tiny, vit_b_16 ...)", build=torchvision_encoder,
    spec="face.<model>.<weights>.pool.<size>.<frames>f", fetch=fetch_default, cached=default_cached,
    cuts=(Cut("pool", "pooled feature before the classifier"),),
    top="the classifier's last layer (the logits), removed; the weights' own transforms()",
    transforms="an entry of the model's weights enum whose transforms() to use, e.g. IMAGENET1K_V1",
)
"""Every other name: a classification model of torchvision's registry."""
