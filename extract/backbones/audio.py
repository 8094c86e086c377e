"""Audio modality: the clip's soundtrack (16 kHz mono) through a speech encoder or a log-mel front end.

- ``wav2vec2`` (default) and ``hf:<id or folder>`` (HuBERT, WavLM, data2vec-audio, Whisper's encoder,
  any wav2vec2): every layer's hidden states mean-pooled over the clip's valid frames, row ``(L+1, D)``
  (the input embedding then each Transformer layer), so the layer is chosen at training time.
  Mask ``(L+1,)``: all True, or all False when the clip has no audio.
- ``mel``: log-mel spectrogram, 64 bands, 25 ms window, 10 ms hop, fixed length (3 s -> 300
  frames), row ``(300, 64)``, mask over the frames the audio actually covers (fer.extract.backbones.mel).

This module holds the audio reading both share (``AudioBase``), the speech-encoder extractor, the
wav2vec2 and hf: family records and ``make_audio_extractor``.

A clip with no audio stream, silent audio or less than one analysis window is valid: zero row,
mask all False, and a note in the feature set's ``row_info``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.extract.backbones import precision as prec
from fer.extract.backbones.family import Family
from fer.extract.backbones.hf import fetch_hub, hub_cached
from fer.extract.backbones.hf_speech import SPEECH_HINT
from fer.extract.backbones.image import slug
from fer.extract.backbones.precision_check import settle
from fer.extract.config import check_family
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError, Extractor
from fer.extract.media import read_audio

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4
"""Audio whose absolute peak stays below this (-80 dBFS) counts as silence (mask False)."""

DEFAULT_WAV2VEC2 = "facebook/wav2vec2-large-xlsr-53"
# Why this checkpoint: it is 1024 wide (the paper's audio token width) and self-supervised only.
# ASR fine-tuned checkpoints (wav2vec2-large-960h*) train their top layers to map speech to English
# characters, which discards the prosody and voice quality that carry emotion; pre-trained-only models
# keep them (SUPERB emotion recognition favours them). XLSR-53 was pre-trained on 53 languages, and
# DFEW's movie clips come from films in many languages, where the English-only LibriLight model
# (wav2vec2-large-lv60) is a worse fit. Every layer is stored, so the best one is picked in training.

BACKENDS = ("wav2vec2", "mel")


def audio_source(record: ClipRecord) -> Path | None:
    """The file that holds the clip's audio: its own audio file, else its video."""
    return record.audio or record.video


class AudioBase(Extractor):
    """Reading a clip's audio, shared by both backends."""

    modality = "audio"
    max_seconds: float

    def _read(self, record: ClipRecord) -> tuple[np.ndarray | None, str | None]:
        """(waveform, None) for usable audio, else (None, why the row is empty)."""
        src = audio_source(record)
        if src is None:
            raise ClipError("no video or audio file for this clip")
        info: dict[str, Any] = {}
        x = read_audio(src, SAMPLE_RATE, max_seconds=self.max_seconds, info=info)
        if x is None:
            return None, "no audio stream"
        if x.size == 0:
            return None, "empty audio stream"
        if not np.isfinite(x).all():
            raise ClipError(f"audio of {src.name} decodes to NaN/inf samples")
        if float(np.abs(x).max()) < SILENCE_PEAK:
            return None, "silent audio"
        return x, (f"audio capped to its first {self.max_seconds:g} s" if info.get("capped") else None)

    def row_info(self, item: Any) -> str | None:
        return item[-1]


# ---------------------------------------------------------------- Hugging Face speech encoders
def default_wav2vec2_config() -> Any:
    """The architecture of DEFAULT_WAV2VEC2 (XLSR-53 / wav2vec2-large-lv60): built offline for
    ``--weights none`` so random-init runs have the real shapes (24 layers, 1024 wide)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_extract_activation="gelu",
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    )


class SpeechAudio(AudioBase):
    """Mean-pooled hidden states of every layer of a Hugging Face speech encoder, ``(L+1, D)`` per clip.

    wav2vec2-style encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) take the waveform through their own
    feature extractor; Whisper's encoder takes its log-mel features, padded to its fixed window (30 s),
    and is pooled over the frames the audio covers.
    """

    def __init__(self, backbone: str = "wav2vec2", weights: str | None = None, device: torch.device | str = "cpu",
                 model: str | None = None, max_seconds: float = 30.0, seed: int = 0, precision: str | None = None):
        """
        ``backbone``: ``wav2vec2`` (``weights`` None = the ``model`` checkpoint, default DEFAULT_WAV2VEC2, a hub
        id, a local folder saved with ``save_pretrained``, or ``none``: random init, seeded, from ``model``'s
        config when it is a local folder, else the default architecture), or ``hf:<id or folder>`` (any speech
        encoder; ``weights`` None or ``none``).
        ``max_seconds``: longer clips are cut to their first ``max_seconds`` (attention is quadratic;
        Whisper's window caps it too).
        """
        from fer.extract.backbones.hf import local_folder
        from fer.extract.backbones.hf_speech import hf_speech_encoder

        if not 0.5 <= max_seconds <= 600:
            raise FerError(f"audio max_seconds must be in [0.5, 600], got {max_seconds}")
        self.seed = seed
        if backbone == "wav2vec2":
            none = weights is not None and str(weights).lower() == "none"
            source = (model or DEFAULT_WAV2VEC2) if none or weights is None else str(weights)
            config = default_wav2vec2_config() if none and local_folder(source) is None else None
            enc = hf_speech_encoder(source, "none" if none else None, seed, backbone_arg="wav2vec2", config=config)
            self.family = "wav2vec2"  # fer's name for its default: the spec stays what it always was
        elif HF_SPEECH.matches(backbone):
            if model is not None:
                raise FerError("--model applies to the wav2vec2 backbone; with hf: the model is the part after hf:")
            enc = hf_speech_encoder(HF_SPEECH.model_name(backbone), weights, seed)
            self.family = slug(enc.model_type)
        else:
            raise FerError(f"unknown audio backend {backbone!r}; choose from {', '.join(BACKENDS)} "
                           f"or hf:<speech model> (e.g. {SPEECH_HINT})")
        self.backbone, self.encoder = backbone, enc
        self.model, self.fe, self.weights, self.slug = enc.model, enc.feature_extractor, enc.weights, enc.tag
        self.layers, self.width = enc.layers, enc.width
        cfg = self.model.config
        self.whisper = enc.kind == "whisper"
        if self.whisper:
            self.window_s = float(self.fe.n_samples) / SAMPLE_RATE
            max_seconds = min(float(max_seconds), self.window_s)
            self.batch_padded, self.min_samples = True, 1
        else:
            # Group-norm feature encoders (wav2vec2-base) normalise over time, padding included, so they
            # must see each clip unpadded; layer-norm ones (large) take an attention mask and batch.
            self.batch_padded = getattr(cfg, "feat_extract_norm", "group") == "layer"
            self.min_samples = self._receptive_field()
        self.max_seconds = float(max_seconds)
        self.requested_precision = precision
        self.precision_check: dict[str, Any] | None = None
        self.device = torch.device("cpu")
        self.to(device)

    def settle_precision(self, records: Sequence[ClipRecord], clips: int = 8,
                         started: Collection[str] = ()) -> None:
        settle(self, records, clips, started)

    def to(self, device: torch.device | str) -> SpeechAudio:
        self.device = torch.device(device)
        family = "hf-whisper" if self.whisper else "hf-speech"  # measured apart (benchmarks/results/precision.md)
        self.precision = prec.resolve_precision(self.requested_precision, self.device, family)
        prec.prepare_device(self.device, self.precision, fixed_shapes=self.whisper)
        self.model.to(self.device)
        return self

    def _receptive_field(self) -> int:
        n = 1
        for k, s in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            n = (n - 1) * s + k
        return n

    def frame_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for inputs of ``samples`` length (the conv stack's arithmetic)."""
        n = samples.clone()
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp(min=0)

    @property
    def spec(self) -> str:
        s = f"audio.{self.family}.{self.slug}.mean.16k"
        s = s if self.max_seconds == 30.0 else f"{s}.max{self.max_seconds:g}s"
        return s + prec.spec_suffix(self.precision)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.layers, self.width)

    def provenance(self) -> dict[str, Any]:
        if self.whisper:
            fe = self.fe
            how = (f"{type(fe).__name__}: {fe.feature_size} log-mel bands, hop {fe.hop_length}, padded to the "
                   f"model's {self.window_s:g} s window; encoder frames past the audio are left out of the mean")
        else:
            how = f"zero-mean unit-variance per clip ({type(self.fe).__name__})"
        return {
            "modality": "audio",
            "backbone": self.backbone,
            "model_type": self.encoder.model_type,
            "weights": self.weights,
            "layer": "all (row index 0 = the input embedding, i = transformer layer i)",
            "width": self.width,
            "sample_rate": SAMPLE_RATE,
            "max_seconds": self.max_seconds,
            **prec.provenance(self.precision, self.device, self.precision_check),
            "preprocessing": (
                "audio demuxed with PyAV (or read with soundfile), downmixed to mono and resampled to 16 kHz by "
                f"libswresample, cut to the first {self.max_seconds:g} s, {how}"
            ),
            "output": "hidden states of every layer, mean over the clip's valid frames; mask False = no usable audio",
            "silence_peak": SILENCE_PEAK,
        }

    def load(self, record: ClipRecord) -> tuple[Any, str | None]:
        x, note = self._read(record)
        if x is None:
            return None, note
        if self.whisper:
            out = self.fe(x, sampling_rate=SAMPLE_RATE, return_tensors="np", return_attention_mask=True)
            mel_frames = int(out.attention_mask[0].sum())
            # Whisper's second convolution halves the frame rate (stride 2, padding 1): ceil(frames / 2)
            return (np.asarray(out.input_features[0], np.float32), (mel_frames + 1) // 2), note
        if x.size < self.min_samples:
            return None, f"audio shorter than one {self.family} frame ({x.size} samples)"
        return np.asarray(self.fe(x, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0], np.float32), note

    @torch.inference_mode()
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.zeros(len(items), self.layers, self.width)
        mask = torch.zeros(len(items), self.layers, dtype=torch.bool)
        valid = [i for i, it in enumerate(items) if it[0] is not None]
        groups: list[list[int]]
        if self.batch_padded:
            groups = [valid] if valid else []
        else:
            by_len: dict[int, list[int]] = {}
            for i in valid:
                by_len.setdefault(len(items[i][0]), []).append(i)
            groups = list(by_len.values())
        for g in groups:
            data[g] = (self._whisper([items[i][0] for i in g]) if self.whisper
                       else self._pooled([items[i][0] for i in g]))
            mask[g] = True
        return data, mask

    def _mean_over_frames(self, hidden_states: Any, frames: torch.Tensor) -> torch.Tensor:
        dev = self.device
        if len(hidden_states) != self.layers:
            raise RuntimeError(f"the model returned {len(hidden_states)} hidden states, expected {self.layers}")
        frames = frames.to(dev)
        fm = (torch.arange(hidden_states[0].shape[1], device=dev)[None] < frames[:, None]).float()  # (B, T)
        denom = fm.sum(1, keepdim=True).clamp(min=1)
        pooled = [(h.float() * fm[..., None]).sum(1) / denom for h in hidden_states]  # each (B, D)
        return torch.stack(pooled, 1).cpu()

    def _pooled(self, waves: list[np.ndarray]) -> torch.Tensor:
        dev = self.device
        lengths = torch.tensor([len(w) for w in waves])
        x = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(w)
        am = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
        x = x.to(dev)
        kwargs = {"attention_mask": am.to(dev)} if self.batch_padded else {}
        with prec.autocast(dev, self.precision):
            out = self.model(x, output_hidden_states=True, **kwargs)
        return self._mean_over_frames(out.hidden_states, self.frame_lengths(lengths))

    def _whisper(self, items: list[tuple[np.ndarray, int]]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([f for f, _ in items])).to(self.device)
        with prec.autocast(self.device, self.precision):
            out = self.model(x, output_hidden_states=True)
        return self._mean_over_frames(out.hidden_states, torch.tensor([n for _, n in items]))


# ---------------------------------------------------------------- the families
def wav2vec2_extractor(name: str, weights: str | None, device: torch.device | str, **kw: Any) -> SpeechAudio:
    """fer's default audio backbone (``wav2vec2``): DEFAULT_WAV2VEC2, or the checkpoint ``weights`` names."""
    return SpeechAudio("wav2vec2", weights=weights, device=device, **kw)


def hf_speech_extractor(name: str, weights: str | None, device: torch.device | str, **kw: Any) -> SpeechAudio:
    """Any Hugging Face speech encoder, ``hf:<name>`` (a hub id or a folder)."""
    return SpeechAudio(f"{HF_SPEECH.prefix}{name}", weights=weights, device=device, **kw)


WAV2VEC2 = Family(
    name="wav2vec2", modalities=("audio",), pattern="wav2vec2", help="wav2vec2", build=wav2vec2_extractor,
    spec="audio.wav2vec2.<checkpoint name>.mean.16k[.max<S>s]", fetch=lambda _: fetch_hub(DEFAULT_WAV2VEC2),
    cached=lambda _: hub_cached(DEFAULT_WAV2VEC2),
    top="every layer's hidden states (the input embedding, then each Transformer layer), mean-pooled",
)
"""fer's default audio backbone: wav2vec2-large XLSR-53 (DEFAULT_WAV2VEC2), every layer."""

HF_SPEECH = Family(
    name="hf-speech", modalities=("audio",), pattern="hf:*",
    help="hf:<speech model id or folder> (HuBERT, WavLM, Whisper ...)", build=hf_speech_extractor,
    spec="audio.<model type>.<hub name | folder-sha8>.mean.16k[.max<S>s]", fetch=fetch_hub, cached=hub_cached,
    folders=True, top="every layer's hidden states, mean-pooled over the frames the audio covers",
)
"""Hugging Face speech encoders (HuBERT, WavLM, data2vec-audio, Whisper's encoder), ``hf:<id or folder>``."""


# ---------------------------------------------------------------- factory
def make_audio_extractor(backend: str = "wav2vec2", weights: str | None = None, device: torch.device | str = "cpu",
                         **kw: Any) -> Extractor:
    """The audio extractor for ``backend``.

    wav2vec2: ``weights`` None (DEFAULT_WAV2VEC2) | hub id | local folder | ``none``; ``model``,
    ``max_seconds``, ``seed``, ``precision`` in ``kw``. ``hf:<id or folder>``: any speech encoder, ``weights``
    None or ``none``. mel: ``weights`` must be None/``none``; ``n_mels``, ``win_ms``, ``hop_ms``, ``seconds``,
    ``fmin``, ``fmax`` in ``kw``.
    """
    # imported here, not at the top: mel.py builds on this module's AudioBase, so a top-level import would be circular
    from fer.extract.backbones.mel import MEL

    family = next((f for f in (WAV2VEC2, MEL, HF_SPEECH) if f.matches(backend)), None)
    if family is None:
        raise FerError(f"unknown audio backend {backend!r}; choose from {', '.join(BACKENDS)} or "
                       f"hf:<speech model> (e.g. {SPEECH_HINT})")
    check_family(family, backend, weights=weights, **kw)
    return family.build(family.model_name(backend), weights, device, **kw)
