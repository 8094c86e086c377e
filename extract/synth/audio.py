"""Synthetic voices for the synthetic dataset: prosody carries the class.

A buzz of harmonics follows a pitch contour and is gated into syllables; breath or rasp noise
is mixed in. Classes differ in pitch level and contour, pitch tremor, syllable rate, loudness,
noisiness and brightness: cues that a log-mel spectrogram or a random-init wav2vec2 picks up.
Pairs that look alike in the face (fear/surprise, angry/disgust, sad/neutral) sound different.
"""

from __future__ import annotations

import numpy as np

AUDIO_PARAMS = ("pitch", "contour", "swing", "tremor", "rate", "loud", "noise", "bright")
NEUTRAL_AUDIO = np.array([1.00, 0.0, 2.0, 0.00, 3.5, 0.40, 0.05, 0.5], np.float32)

# Apex prosody per class (rows: happy, sad, neutral, angry, surprise, disgust, fear).
# pitch: multiple of the speaker's base f0; contour: semitones of rise (+) or fall (-) over the
# clip; swing: semitones of per-syllable intonation; tremor: vibrato depth in semitones;
# rate: syllables per second; loud: amplitude; noise: breath/rasp share; bright: spectral tilt
# (higher = more high harmonics).
AUDIO_APEX = np.array(
    [
        [1.35, 2.0, 5.0, 0.00, 4.5, 0.60, 0.05, 0.70],  # happy: high, bouncy
        [0.80, -4.0, 0.8, 0.00, 1.8, 0.22, 0.15, 0.15],  # sad: low, falling, slow, quiet, dull
        [1.00, 0.0, 2.0, 0.00, 3.5, 0.40, 0.05, 0.50],  # neutral
        [1.15, -3.0, 3.0, 0.00, 6.0, 0.95, 0.35, 1.00],  # angry: loud, fast, harsh
        [1.55, 9.0, 3.0, 0.00, 2.8, 0.70, 0.08, 0.60],  # surprise: steep rise
        [0.78, -1.0, 1.0, 0.00, 1.5, 0.45, 0.60, 0.30],  # disgust: low, slow, noisy "ugh"
        [1.60, 0.0, 1.5, 1.20, 6.5, 0.30, 0.45, 0.30],  # fear: high, trembling, fast, breathy
        # MAFW's four more (rows 7..10)
        [0.85, -2.0, 4.0, 0.00, 2.2, 0.55, 0.25, 0.80],  # contempt: low, drawn-out, sneering
        [1.30, 1.5, 1.0, 0.70, 5.5, 0.35, 0.30, 0.40],  # anxiety: high-ish, quick, shaky
        [0.90, -6.0, 0.6, 0.30, 1.2, 0.20, 0.50, 0.20],  # helplessness: sighing fall, breathy
        [0.85, -3.0, 1.2, 0.00, 2.4, 0.30, 0.10, 0.30],  # disappointment: flat falling
    ],
    np.float32,
)


def synth_voice(p: np.ndarray, duration: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A mono float32 waveform in [-1, 1] of ``duration`` seconds at ``sr`` Hz for prosody ``p``."""
    pitch, contour, swing, tremor, rate, loud, noise, bright = (float(x) for x in p)
    n = int(round(duration * sr))
    t = np.arange(n, dtype=np.float64) / sr
    base = rng.choice([rng.uniform(100, 140), rng.uniform(180, 240)])  # speaker: low or high voice

    # syllables: onsets at ~rate per second with jitter, each a raised-cosine bump
    rate = max(rate, 0.5)
    env = np.zeros(n)
    semis = np.zeros(n)
    pos = rng.uniform(0.0, 0.15)
    while pos < duration:
        length = rng.uniform(0.55, 0.8) / rate
        a, b = int(pos * sr), min(int((pos + length) * sr), n)
        if b > a:
            env[a:b] = np.maximum(env[a:b], np.sin(np.linspace(0, np.pi, b - a)) * rng.uniform(0.7, 1.0))
            semis[a:b] += rng.normal(0.0, 1.0) * swing * 0.5 + swing * 0.5 * np.sin(np.linspace(0, np.pi, b - a))
        pos += length + rng.uniform(0.15, 0.5) / rate
    semis += contour * (t / duration - 0.5)
    semis += tremor * np.sin(2 * np.pi * rng.uniform(6.0, 9.0) * t)
    f0 = base * pitch * 2.0 ** (semis / 12.0)

    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = np.zeros(n)
    tilt = 2.2 - 1.6 * np.clip(bright, 0.0, 1.2)
    for k in range(1, 16):
        mask = (k * f0) < (0.45 * sr)
        voiced += mask * np.sin(k * phase) / k**tilt
    voiced /= np.max(np.abs(voiced)) + 1e-9
    # breath/rasp: white noise, brighter for harsher voices (first difference tilts it up)
    wn = rng.standard_normal(n + 1)
    hiss = wn[1:] * bright + (wn[1:] - wn[:-1]) * (1 - min(bright, 1.0))
    hiss /= np.std(hiss) + 1e-9
    sig = env * ((1 - noise) * voiced + noise * 0.35 * hiss)
    sig = loud * sig + rng.uniform(0.002, 0.02) * rng.standard_normal(n)  # room noise
    return np.clip(sig, -1.0, 1.0).astype(np.float32)
