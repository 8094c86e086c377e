"""The backbone families the benchmarks measure, at their real sizes, built offline.

Each family is measured with its pretrained weights when they are in the local cache (TORCH_HOME,
HF_HOME), else with seeded random weights of the same architecture (the hub is unreachable on the
development machines): timings depend on the architecture only; for the bf16 cosines the table says
which weights were used, since pretrained weights can hold larger activations than random ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Family:
    """One row of the benchmark tables."""

    name: str
    modality: str
    backbone: str
    """``--backbone`` when pretrained weights are cached."""
    offline: Callable[[Path], str] | None = None
    """Writes a config-only folder for random init when they are not, returns its ``--backbone``."""
    kw: dict[str, Any] | None = None


def _hf_folder(folder: Path, config: Any, processor: Any) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return f"hf:{folder}"


def _clip_b16(folder: Path) -> str:
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    return _hf_folder(folder, CLIPVisionConfig(patch_size=16, projection_dim=512), CLIPImageProcessor())


def _dinov2_base(folder: Path) -> str:
    from transformers import BitImageProcessor, Dinov2Config

    proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                             resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _hf_folder(folder, Dinov2Config(), proc)


def _hubert_base(folder: Path) -> str:
    from transformers import HubertConfig, Wav2Vec2FeatureExtractor

    return _hf_folder(folder, HubertConfig(), Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False))


def _wavlm_base_plus(folder: Path) -> str:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig

    return _hf_folder(folder, WavLMConfig(), Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True))


def _whisper_base(folder: Path) -> str:
    from transformers import WhisperConfig, WhisperFeatureExtractor

    cfg = WhisperConfig(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)
    return _hf_folder(folder, cfg, WhisperFeatureExtractor(feature_size=80))


FAMILIES = [
    Family("ResNet-18 (fer default)", "face", "resnet18"),
    Family("torchvision ConvNeXt-T", "face", "convnext_tiny"),
    Family("torchvision ViT-B/16", "face", "vit_b_16"),
    Family("HF CLIP ViT-B/16 vision", "face", "hf:openai/clip-vit-base-patch16", _clip_b16),
    Family("HF DINOv2-B/14", "face", "hf:facebook/dinov2-base", _dinov2_base),
    Family("timm ViT-B/16 (MAE)", "face", "timm:vit_base_patch16_224.mae"),
    Family("wav2vec2-large XLSR-53 (fer default)", "audio", "wav2vec2"),
    Family("HF HuBERT-base", "audio", "hf:facebook/hubert-base-ls960", _hubert_base),
    Family("HF WavLM-base+", "audio", "hf:microsoft/wavlm-base-plus", _wavlm_base_plus),
    Family("HF Whisper-base encoder", "audio", "hf:openai/whisper-base", _whisper_base),
]


def pick(names: str | None) -> list[Family]:
    """Families whose name or backbone contains one of the comma-separated ``names`` (all when None)."""
    if not names:
        return FAMILIES
    keys = [k.strip().lower() for k in names.split(",") if k.strip()]
    return [f for f in FAMILIES if any(k in f.name.lower() or k in f.backbone.lower() for k in keys)]


def build(family: Family, tmp: Path, precision: str, **kw: Any) -> Any:
    """The family's extractor on the CPU: pretrained when cached, else random init (seed 0)."""
    from fer.extract.backbones.families import pretrained_available
    from fer.extract.backbones.registry import make_extractor

    backbone, weights = family.backbone, None
    if not pretrained_available(family.modality, backbone)[0]:
        weights = "none"
        if family.offline is not None:
            backbone = family.offline(tmp / family.name.replace(" ", "_").replace("/", "-"))
    return make_extractor(family.modality, backbone, weights, "cpu", precision=precision, **{**(family.kw or {}), **kw})


def weights_used(extractor: Any) -> str:
    """``pretrained`` or ``random`` for the table."""
    w = extractor.provenance().get("weights") or {}
    return "random" if str(w.get("id", "")).startswith("random") else "pretrained"


def dataset(data: Path | None, clips: int, tmp: Path) -> Any:
    """The dataset at ``data``, or ``clips`` synthetic clips written under ``tmp``; cut to ``clips`` clips."""
    from fer.extract.datasets import load_dataset
    from fer.extract.synth import synthesize

    if data is None:
        data = tmp / "synth"
        synthesize(data, clips=clips, seed=0, workers=1)
    ds = load_dataset(data)
    ds.records = ds.records[:clips]
    return ds
