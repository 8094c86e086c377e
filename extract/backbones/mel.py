"""The ``mel`` audio backend: the clip's soundtrack as a log-mel spectrogram, a fixed front end with no
weights. It holds the HTK mel scale (``hz_to_mel``, ``mel_to_hz``) and triangular filterbank, the ``MelAudio``
extractor (64 bands, 25 ms window, 10 ms hop, fixed length: 3 s -> row ``(300, 64)``, masked over the frames
the audio covers), its builder and its family record ``MEL``; reading the audio and the empty-row rules are
fer.extract.backbones.audio's ``AudioBase``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fer.cache.errors import FerError
from fer.extract.backbones.audio import SAMPLE_RATE, SILENCE_PEAK, AudioBase
from fer.extract.backbones.family import Family
from fer.extract.datasets.records import ClipRecord


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


class MelAudio(AudioBase):
    """Log-mel spectrogram at a fixed length; needs no weights."""

    def __init__(self, device: torch.device | str = "cpu", n_mels: int = 64, win_ms: float = 25.0,
                 hop_ms: float = 10.0, seconds: float = 3.0, fmin: float = 0.0, fmax: float | None = None,
                 log_eps: float = 1e-6):
        if not 8 <= n_mels <= 256:
            raise FerError(f"mel bands must be in [8, 256], got {n_mels}")
        if not (0 < hop_ms <= win_ms <= 100) or not 0.1 <= seconds <= 600:
            raise FerError(f"mel needs 0 < hop <= window <= 100 ms and 0.1 <= seconds <= 600, "
                           f"got {hop_ms}/{win_ms}/{seconds}")
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

    def to(self, device: torch.device | str) -> MelAudio:
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


def mel_extractor(name: str, weights: str | None, device: torch.device | str, seed: int | None = None,
                  precision: str | None = None, **kw: Any) -> MelAudio:
    """Log-mel: no weights (``seed`` is ignored), fp32 only (MEL.only, checked before it is built)."""
    return MelAudio(device=device, **kw)


MEL = Family(
    name="mel", modalities=("audio",), pattern="mel", help="mel", build=mel_extractor,
    spec="audio.mel.<bands>.<window>ms<hop>ms.16k.<seconds>s", top="a log-mel spectrogram; no weights",
    only=(("weights", "none", "the mel audio backend has no weights"),
          ("precision", "fp32", "the mel audio backend runs in fp32 only")),
)
"""Log-mel spectrogram: a fixed front end, no weights."""
