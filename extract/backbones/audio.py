"""Audio modality: the clip's soundtrack (16 kHz mono) through wav2vec2 or a log-mel front end.

- ``wav2vec2``: every layer's hidden states mean-pooled over the clip's valid frames, row
  ``(L+1, D)`` (the CNN+projection output then each Transformer layer), so the layer is chosen at
  training time. Mask ``(L+1,)``: all True, or all False when the clip has no audio.
- ``mel``: log-mel spectrogram, 64 bands, 25 ms window, 10 ms hop, fixed length (3 s -> 300
  frames), row ``(300, 64)``, mask over the frames the audio actually covers.

A clip with no audio stream, silent audio or less than one analysis window is valid: zero row,
mask all False, and a note in the feature set's ``row_info``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.extract.extractor import ClipError, Extractor
from fer.extract.media import read_audio
from fer.extract.datasets.records import ClipRecord
from fer.extract.backbones.weights import offline, random_init

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


def _audio_source(record: ClipRecord) -> Path | None:
    return record.audio or record.video


class _AudioBase(Extractor):
    """Reading a clip's audio, shared by both backends."""

    modality = "audio"
    max_seconds: float

    def _read(self, record: ClipRecord) -> tuple[np.ndarray | None, str | None]:
        """(waveform, None) for usable audio, else (None, why the row is empty)."""
        src = _audio_source(record)
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


# ---------------------------------------------------------------- wav2vec2
def default_wav2vec2_config() -> Any:
    """The architecture of DEFAULT_WAV2VEC2 (XLSR-53 / wav2vec2-large-lv60): built offline for
    ``--weights none`` so random-init runs have the real shapes (24 layers, 1024 wide)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_extract_activation="gelu",
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()[:60] or "model"


def _weights_file(folder_or_id: str, revision_hint: str | None = None) -> Path | None:
    """The weights file behind a local folder or a cached hub id, if it can be found."""
    names = ("model.safetensors", "pytorch_model.bin")
    p = Path(folder_or_id).expanduser()
    if p.is_dir():
        for n in names:
            if (p / n).is_file():
                return p / n
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for n in names:
            f = try_to_load_from_cache(folder_or_id, n, revision=revision_hint)
            if isinstance(f, str) and os.path.isfile(f):
                return Path(f)
    except Exception:
        return None
    return None


def _missing_model(model: str, e: BaseException) -> FerError:
    hf_home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    first = (str(e).splitlines() or [type(e).__name__])[0][:160]
    return FerError(
        f"wav2vec2 model {model!r} could not be loaded ({type(e).__name__}: {first}); it is not in the Hugging Face "
        f"cache ({hf_home}) or not reachable offline: run `fer weights fetch` on a machine with internet (then copy "
        f"its HF_HOME here and set HF_HOME), or pass --weights /path/to/folder saved with save_pretrained, "
        f"or --weights none for random init"
    )


def load_wav2vec2(source: str) -> tuple[Any, Any]:
    """``(Wav2Vec2Model, Wav2Vec2FeatureExtractor)`` from a hub id or a local folder via the real
    ``from_pretrained`` (HF cache, HF_HUB_OFFLINE honoured, never remote code)."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the extraction runner draws the only progress bar
    p = Path(source).expanduser()
    local = p.exists()
    if local and not (p / "config.json").is_file():
        raise FerError(f"{p} is not a wav2vec2 model folder (no config.json); save one with save_pretrained")
    src = str(p) if local else source
    try:
        # FER_OFFLINE too means cache only (HF_HUB_OFFLINE is honoured by huggingface_hub itself)
        model = Wav2Vec2Model.from_pretrained(src, trust_remote_code=False, local_files_only=local or offline())
    except (OSError, ValueError, EnvironmentError) as e:
        raise _missing_model(source, e) from None
    try:
        fe = Wav2Vec2FeatureExtractor.from_pretrained(src, local_files_only=local or offline())
    except (OSError, ValueError):
        fe = None  # some checkpoints ship no preprocessor config: derive it from the model config
    return model, fe


def _feature_extractor_for(config: Any) -> Any:
    from transformers import Wav2Vec2FeatureExtractor

    # As the hub's large (layer-norm) checkpoints say: normalise, and pass an attention mask.
    layer_norm = getattr(config, "feat_extract_norm", "group") == "layer"
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=layer_norm)


class Wav2Vec2Audio(_AudioBase):
    """Mean-pooled hidden states of every wav2vec2 layer, ``(L+1, D)`` per clip."""

    def __init__(self, weights: str | None = None, device: torch.device | str = "cpu", model: str | None = None,
                 max_seconds: float = 30.0, seed: int = 0):
        """
        ``weights``: None (the ``model`` checkpoint, default DEFAULT_WAV2VEC2), a hub id or a local
        folder saved with ``save_pretrained``, or ``none`` (random init, seeded, from ``model``'s
        config when it is a local folder, else the default architecture).
        ``max_seconds``: longer clips are cut to their first ``max_seconds`` (attention is quadratic).
        """
        if not 0.5 <= max_seconds <= 600:
            raise FerError(f"audio max_seconds must be in [0.5, 600], got {max_seconds}")
        self.max_seconds, self.seed = float(max_seconds), seed
        source = model or DEFAULT_WAV2VEC2
        if weights is not None and str(weights).lower() == "none":
            self.model, self.fe, self.weights, self.slug = self._random(source, seed)
        else:
            source = weights or source
            self.model, fe = load_wav2vec2(source)
            self.fe = fe or _feature_extractor_for(self.model.config)
            self.weights, self.slug = self._identity(source)
        self.model = self.model.float().eval()
        cfg = self.model.config
        self.layers, self.width = int(cfg.num_hidden_layers) + 1, int(cfg.hidden_size)
        # Group-norm feature encoders (wav2vec2-base) normalise over time, padding included, so they
        # must see each clip unpadded; layer-norm ones (large) take an attention mask and batch.
        self.batch_padded = getattr(cfg, "feat_extract_norm", "group") == "layer"
        self.min_samples = self._receptive_field()
        self.device = torch.device("cpu")
        self.to(device)

    def _random(self, source: str, seed: int) -> tuple[Any, Any, dict[str, Any], str]:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        p = Path(source).expanduser()
        if p.is_dir() and (p / "config.json").is_file():
            cfg, name = Wav2Vec2Config.from_pretrained(str(p)), p.name
        else:
            cfg, name = default_wav2vec2_config(), source.rsplit("/", 1)[-1]
        model = random_init(lambda: Wav2Vec2Model(cfg), seed)
        ident = {"id": f"random, seed {seed}", "sha256": None, "architecture": name}
        return model, _feature_extractor_for(cfg), ident, f"{_slug(name)}-none-s{seed}"

    def _identity(self, source: str) -> tuple[dict[str, Any], str]:
        p = Path(source).expanduser()
        commit = getattr(self.model.config, "_commit_hash", None)
        f = _weights_file(str(p) if p.is_dir() else source, commit)
        sha = sha256_file(f) if f else None
        if p.is_dir():
            ident = {"id": str(p.resolve()), "sha256": sha}
            return ident, f"{_slug(p.name)}-{sha[:8]}" if sha else _slug(p.name)
        return {"id": f"hf:{source}", "sha256": sha, "revision": commit}, _slug(source.rsplit("/", 1)[-1])

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
        s = f"audio.wav2vec2.{self.slug}.mean.16k"
        return s if self.max_seconds == 30.0 else f"{s}.max{self.max_seconds:g}s"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.layers, self.width)

    def provenance(self) -> dict[str, Any]:
        return {
            "modality": "audio",
            "backbone": "wav2vec2",
            "weights": self.weights,
            "layer": "all (row index 0 = feature projection, i = transformer layer i)",
            "sample_rate": SAMPLE_RATE,
            "max_seconds": self.max_seconds,
            "preprocessing": (
                "audio demuxed with PyAV (or read with soundfile), downmixed to mono and resampled to 16 kHz by "
                f"libswresample, cut to the first {self.max_seconds:g} s, zero-mean unit-variance per clip "
                "(Wav2Vec2FeatureExtractor)"
            ),
            "output": "hidden states of every layer, mean over the clip's valid frames; mask False = no usable audio",
            "silence_peak": SILENCE_PEAK,
        }

    def load(self, record: ClipRecord) -> tuple[np.ndarray | None, str | None]:
        x, note = self._read(record)
        if x is not None and x.size < self.min_samples:
            return None, f"audio shorter than one wav2vec2 frame ({x.size} samples)"
        if x is not None:
            x = np.asarray(self.fe(x, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0], np.float32)
        return x, note

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
            data[g] = self._pooled([items[i][0] for i in g])
            mask[g] = True
        return data, mask

    def _pooled(self, waves: list[np.ndarray]) -> torch.Tensor:
        dev = self.device
        lengths = torch.tensor([len(w) for w in waves])
        x = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(w)
        am = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
        x = x.to(dev)
        kwargs = {"attention_mask": am.to(dev)} if self.batch_padded else {}
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                out = self.model(x, output_hidden_states=True, **kwargs)
        else:
            out = self.model(x, output_hidden_states=True, **kwargs)
        hs = out.hidden_states
        frames = self.frame_lengths(lengths).to(dev)
        fm = (torch.arange(hs[0].shape[1], device=dev)[None] < frames[:, None]).float()  # (B, T)
        denom = fm.sum(1, keepdim=True).clamp(min=1)
        pooled = [(h.float() * fm[..., None]).sum(1) / denom for h in hs]  # each (B, D)
        return torch.stack(pooled, 1).cpu()


# ---------------------------------------------------------------- log-mel
def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """``(n_mels, n_fft // 2 + 1)`` triangular HTK mel filters, unnormalised (peak 1), float32."""
    fmax = sr / 2 if fmax is None else fmax
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    pts = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)), n_mels + 2, dtype=torch.float64))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MelAudio(_AudioBase):
    """Log-mel spectrogram at a fixed length; needs no weights."""

    def __init__(self, device: torch.device | str = "cpu", n_mels: int = 64, win_ms: float = 25.0,
                 hop_ms: float = 10.0, seconds: float = 3.0, fmin: float = 0.0, fmax: float | None = None,
                 log_eps: float = 1e-6):
        if not 8 <= n_mels <= 256:
            raise FerError(f"mel bands must be in [8, 256], got {n_mels}")
        if not (0 < hop_ms <= win_ms <= 100) or not 0.1 <= seconds <= 600:
            raise FerError(f"mel needs 0 < hop <= window <= 100 ms and 0.1 <= seconds <= 600, got {hop_ms}/{win_ms}/{seconds}")
        self.n_mels, self.win_ms, self.hop_ms, self.seconds = n_mels, float(win_ms), float(hop_ms), float(seconds)
        self.fmin, self.fmax, self.log_eps = fmin, fmax if fmax is not None else SAMPLE_RATE / 2, log_eps
        self.win = int(round(SAMPLE_RATE * win_ms / 1000))
        self.hop = int(round(SAMPLE_RATE * hop_ms / 1000))
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.samples = int(round(seconds * SAMPLE_RATE))
        self.frames = int(math.ceil(self.samples / self.hop))
        self.max_seconds = self.seconds  # decoding stops after the fixed length
        self.fb = mel_filterbank(n_mels, self.n_fft, SAMPLE_RATE, fmin, self.fmax)
        self.window = torch.hann_window(self.win)
        self.device = torch.device("cpu")
        self.to(device)

    def to(self, device: torch.device | str) -> "MelAudio":
        self.device = torch.device(device)
        self.fb, self.window = self.fb.to(self.device), self.window.to(self.device)
        return self

    @property
    def spec(self) -> str:
        s = f"audio.mel.{self.n_mels}.{self.win_ms:g}ms{self.hop_ms:g}ms.16k.{self.seconds:g}s"
        if (self.fmin, self.fmax) != (0.0, SAMPLE_RATE / 2):
            s += f".f{self.fmin:g}-{self.fmax:g}"
        return s

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.frames, self.n_mels)

    def provenance(self) -> dict[str, Any]:
        return {
            "modality": "audio",
            "backbone": "mel",
            "weights": {"id": "none (fixed filterbank)", "sha256": None},
            "sample_rate": SAMPLE_RATE,
            "input_size": {"seconds": self.seconds, "frames": self.frames},
            "preprocessing": (
                f"audio demuxed with PyAV (or soundfile), mono, 16 kHz, first {self.seconds:g} s zero-padded to "
                f"{self.samples} samples; STFT n_fft {self.n_fft}, Hann window {self.win}, hop {self.hop}, centred "
                f"(reflect); power; {self.n_mels} HTK triangular mel filters {self.fmin:g}-{self.fmax:g} Hz; "
                f"ln(mel + {self.log_eps:g})"
            ),
            "output": "frames past the end of the audio are zero with mask False; no/silent audio: all False",
            "silence_peak": SILENCE_PEAK,
        }

    def load(self, record: ClipRecord) -> tuple[np.ndarray | None, int, str | None]:
        x, note = self._read(record)
        if x is None:
            return None, 0, note
        n = min(x.size, self.samples)
        fixed = np.zeros(self.samples, np.float32)
        fixed[:n] = x[:n]
        return fixed, min(self.frames, int(math.ceil(n / self.hop))), note

    @torch.inference_mode()
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.zeros(len(items), self.frames, self.n_mels)
        mask = torch.zeros(len(items), self.frames, dtype=torch.bool)
        valid = [i for i, it in enumerate(items) if it[0] is not None]
        if not valid:
            return data, mask
        x = torch.from_numpy(np.stack([items[i][0] for i in valid])).to(self.device)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, F, T+1)
        logmel = torch.log(torch.matmul(self.fb, power) + self.log_eps).transpose(1, 2)[:, : self.frames]
        n = torch.tensor([items[i][1] for i in valid])
        m = torch.arange(self.frames)[None] < n[:, None]
        data[valid] = logmel.float().cpu() * m[..., None]
        mask[valid] = m
        return data, mask


# ---------------------------------------------------------------- factory
def make_audio_extractor(backend: str = "wav2vec2", weights: str | None = None, device: torch.device | str = "cpu",
                         **kw: Any) -> Extractor:
    """The audio extractor for ``backend``.

    wav2vec2: ``weights`` None (DEFAULT_WAV2VEC2) | hub id | local folder | ``none``; ``model``,
    ``max_seconds``, ``seed`` in ``kw``. mel: ``weights`` must be None/``none``; ``n_mels``, ``win_ms``,
    ``hop_ms``, ``seconds``, ``fmin``, ``fmax`` in ``kw``.
    """
    if backend == "wav2vec2":
        return Wav2Vec2Audio(weights=weights, device=device, **kw)
    if backend == "mel":
        if weights not in (None, "none"):
            raise FerError("the mel audio backend has no weights; leave --weights out")
        kw.pop("seed", None)
        return MelAudio(device=device, **kw)
    raise FerError(f"unknown audio backend {backend!r}; choose from {', '.join(BACKENDS)}")
