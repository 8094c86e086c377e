"""Hugging Face speech encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper's encoder) loaded for pooling:
the model that returns every layer's hidden states, with the feature extractor it ships (or one derived from
its config when it ships none), as a ``SpeechEncoder``. Loading, identity and random init go through
fer.extract.backbones.hf's shared helpers; fer.extract.backbones.audio turns the encoder into an extractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fer.cache.errors import FerError
from fer.extract.backbones.hf import (
    from_pretrained,
    identity,
    load_config,
    local_folder,
    quiet_transformers,
    random_identity,
)
from fer.extract.backbones.weights import offline, random_init

SPEECH_HINT = "hf:facebook/hubert-base-ls960, hf:microsoft/wavlm-base-plus, hf:openai/whisper-base"


@dataclass
class SpeechEncoder:
    """A speech model that returns every layer's hidden states, with its own feature extractor."""

    model: nn.Module
    """wav2vec2-style model, or Whisper's encoder."""
    feature_extractor: Any
    kind: str
    """``conv`` (a strided CNN on the waveform: wav2vec2, HuBERT, WavLM, data2vec-audio) or ``whisper`` (log-mel)."""
    model_type: str
    weights: dict[str, Any]
    tag: str
    layers: int
    """Hidden states per clip: the input embedding then each Transformer layer."""
    width: int
    extra: dict[str, Any] = field(default_factory=dict)


def _speech_classes(cfg: Any) -> tuple[Any, str]:
    from transformers import AutoModel, WhisperModel

    if cfg.model_type == "whisper":
        return WhisperModel, "whisper"
    if hasattr(cfg, "conv_kernel") and hasattr(cfg, "conv_stride"):
        return AutoModel, "conv"
    raise FerError(f"model type {cfg.model_type!r} is not a speech encoder fer can pool (wav2vec2, HuBERT, WavLM, "
                   f"data2vec-audio, Whisper ...); e.g. {SPEECH_HINT}")


def conv_feature_extractor(config: Any) -> Any:
    """A Wav2Vec2FeatureExtractor matching ``config`` for checkpoints that ship none."""
    from transformers import Wav2Vec2FeatureExtractor

    # As the hub's large (layer-norm) checkpoints say: normalise, and pass an attention mask.
    layer_norm = getattr(config, "feat_extract_norm", "group") == "layer"
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=layer_norm)


def _derived_feature_extractor(cfg: Any, kind: str) -> Any:
    from transformers import WhisperFeatureExtractor

    if kind == "whisper":
        return WhisperFeatureExtractor(feature_size=int(cfg.num_mel_bins))
    return conv_feature_extractor(cfg)


def _feature_extractor(source: str, cfg: Any, kind: str) -> Any:
    from transformers import AutoFeatureExtractor

    folder = local_folder(source)
    try:
        with quiet_transformers():
            return AutoFeatureExtractor.from_pretrained(str(folder or source),
                                                        local_files_only=bool(folder) or offline())
    except (OSError, ValueError):  # some checkpoints ship no preprocessor config: derive it from the model config
        return _derived_feature_extractor(cfg, kind)


def hf_speech_encoder(source: str, weights: str | None = None, seed: int = 0, backbone_arg: str | None = None,
                      config: Any = None) -> SpeechEncoder:
    """A Hugging Face speech encoder from ``source`` (hub id or folder); ``weights`` None or ``none``.

    ``config`` (for ``none``): the architecture to build when ``source`` has none available offline.
    """
    from transformers import AutoModel

    backbone_arg = backbone_arg or f"hf:{source}"
    w = (weights or "").strip().lower()
    if w and w != "none":
        raise FerError(f"--weights {weights} does not apply to {backbone_arg}: point it at the model folder or id, "
                       "or use --weights none for random init")
    cfg = config if (w == "none" and config is not None) else load_config(source, backbone_arg)
    cls, kind = _speech_classes(cfg)
    if w == "none":
        model = random_init(lambda: cls.from_config(cfg) if cls is AutoModel else cls(cfg), seed)
        ident, tag = random_identity(source, seed)
    else:
        # masked_spec_embed is the SpecAugment mask vector: used in training only, absent from some checkpoints
        model, _ = from_pretrained(cls, source, backbone_arg, allowed_missing=("masked_spec_embed",))
        ident, tag = identity(source, model)
        cfg = model.config
    # random init from a built-in config reads nothing from the hub: its feature extractor is derived
    fe = (_feature_extractor(source, cfg, kind) if w != "none" or local_folder(source)
          else _derived_feature_extractor(cfg, kind))
    if kind == "whisper":
        model = model.get_encoder()
        layers, width = int(cfg.encoder_layers) + 1, int(cfg.d_model)
    else:
        layers, width = int(cfg.num_hidden_layers) + 1, int(cfg.hidden_size)
    return SpeechEncoder(model=model.float().eval(), feature_extractor=fe, kind=kind, model_type=str(cfg.model_type),
                         weights=ident, tag=tag, layers=layers, width=width)
