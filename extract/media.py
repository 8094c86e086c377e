"""Decode video frames and audio from clip files (PyAV; soundfile for wav/flac).

Every problem a clip can have (missing, empty, truncated, undecodable) becomes a
``ClipError`` with a one-line reason, so the runner can record it and move on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from fer.extract.extractor import ClipError

HARD_MAX_SIDE = 4096
"""Frames larger than this on their long side are always downscaled (guards memory on odd inputs)."""
SEEK_MIN_FRAMES = 1800
"""Clips with more frames than this (about a minute at 30 fps) are sampled by seeking, not by decoding all."""
TRUNCATED_FRACTION = 0.5
"""A stream that decodes to less than this share of its declared length is reported as truncated."""
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ClipError(f"file not found: {path}")
    if path.is_dir():
        raise ClipError(f"expected a media file, found a folder: {path}")
    if path.stat().st_size == 0:
        raise ClipError(f"empty file (0 bytes): {path.name}")


def _open(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise ClipError(f"cannot open {path.name}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) if isinstance(e, av.error.FFmpegError) else None
    msg = (msg or str(e)).replace("\n", " ").strip()
    return msg or type(e).__name__


def uniform_indices(n: int, k: int) -> np.ndarray:
    """Indices of k frames out of n: the centre of each of k equal segments (repeats when n < k)."""
    if n <= 0 or k <= 0:
        raise ValueError("n and k must be positive")
    return ((2 * np.arange(k) + 1) * n) // (2 * k)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    cap = min(max_side, HARD_MAX_SIDE) if max_side else HARD_MAX_SIDE
    if max(w, h) <= cap:
        return w, h
    s = cap / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if (frame.width, frame.height) == (w, h):
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def _count_packets(path: Path) -> int:
    with _open(path) as c:
        s = c.streams.video[0]
        try:
            return sum(1 for p in c.demux(s) if p.size)
        except av.error.FFmpegError:
            return 0


def _decode_frames(path: Path, on_frame: Callable[[av.VideoFrame], bool]) -> None:
    """Decode the video front to back (threaded), handing each frame to ``on_frame`` until it returns False.
    A broken packet ends the usable stream; the caller judges whether enough decoded."""
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for frame in c.decode(s):
                if not on_frame(frame):
                    break
        except (av.error.FFmpegError, EOFError):
            pass


def read_video_frames(path: str | Path, k: int, max_side: int | None = None, *,
                      info: dict | None = None) -> np.ndarray:
    """Decode k frames sampled uniformly over the clip: uint8 ``(k, H, W, 3)`` RGB.

    Frames whose long side exceeds ``max_side`` (and always beyond 4096 px) are downscaled
    keeping the aspect ratio. The frame count comes from the container, else from counting
    packets, so missing duration metadata is fine. Short clips are decoded front to back up
    to the last needed frame; long ones (over ``SEEK_MIN_FRAMES``) by seeking.
    ``info``, when given, receives ``source_frames`` (the clip's frame count the sample was
    drawn from) and ``indices`` (the sampled frame numbers, (k,) int).
    """
    path = Path(path)
    if k < 1:
        raise ValueError("k must be >= 1")
    info = {} if info is None else info
    n = _frame_count(path)
    info["source_frames"], info["indices"] = n, uniform_indices(n, k)
    if n > SEEK_MIN_FRAMES:
        frames = _read_by_seek(path, n, k, max_side)
        if frames is not None:
            return frames
    frames, decoded = _read_sequential(path, uniform_indices(n, k), max_side)
    if frames is not None:
        return frames
    # The stream ended (or broke) before the last wanted frame: resample from what decodes.
    if decoded < max(1, TRUNCATED_FRACTION * n):
        raise ClipError(f"truncated or undecodable video: {decoded} of {n} frames decode in {path.name}")
    frames, _ = _read_sequential(path, uniform_indices(decoded, k), max_side)
    if frames is None:
        raise ClipError(f"video decoding is not repeatable in {path.name}")
    info["source_frames"], info["indices"] = decoded, uniform_indices(decoded, k)
    return frames


def _frame_count(path: Path) -> int:
    """Video frames of a clip: the container's count, else counted packets; ClipError when none."""
    with _open(path) as c:
        if not c.streams.video:
            raise ClipError(f"no video stream in {path.name}")
        declared = int(c.streams.video[0].frames or 0)
    n = declared or _count_packets(path)
    if n <= 0:
        raise ClipError(f"no video frames in {path.name}")
    return n


def read_all_video_frames(path: str | Path, max_side: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Decode every frame of the clip front to back: uint8 ``(n, H, W, 3)`` RGB.

    ``max_side`` caps the long side as in ``read_video_frames``; ``max_bytes`` caps the whole clip in
    memory: frames are downscaled further so the clip fits, and a clip that cannot fit even at
    160 px (a very long video) is a ClipError that says to sample frames instead.
    """
    path = Path(path)
    n = _frame_count(path)
    out: list[np.ndarray] = []
    size = None
    total = 0

    def keep(frame: av.VideoFrame) -> bool:
        nonlocal size, total
        if size is None:
            size = _target_size(frame.width, frame.height, max_side)
            if max_bytes:
                fit = (max_bytes / (3 * n * size[0] * size[1])) ** 0.5
                if fit < 1 and max(size) * fit < 160:
                    raise ClipError(f"{n} frames of {path.name} do not fit in {max_bytes / 2**30:.1f} GiB; "
                                    "sample fewer frames (e.g. --frames 64)")
                if fit < 1:
                    size = _target_size(frame.width, frame.height, int(max(size) * fit))
        img = _to_rgb(frame, size)
        total += img.nbytes
        if max_bytes and total > max_bytes:
            raise ClipError(f"{path.name} holds more frames than it declares ({n}) and does not fit in "
                            f"{max_bytes / 2**30:.1f} GiB; sample fewer frames (e.g. --frames 64)")
        out.append(img)
        return True

    _decode_frames(path, keep)
    if len(out) < max(1, TRUNCATED_FRACTION * n):
        raise ClipError(f"truncated or undecodable video: {len(out)} of {n} frames decode in {path.name}")
    return np.stack(out)


def _read_sequential(path: Path, idx: np.ndarray, max_side: int | None) -> tuple[np.ndarray | None, int]:
    """Decode frames front to back, keeping those at ``idx``; (frames or None, frames decoded)."""
    want: dict[int, list[int]] = {}
    for pos, i in enumerate(idx.tolist()):
        want.setdefault(i, []).append(pos)
    last = int(idx.max())
    out: list[np.ndarray | None] = [None] * len(idx)
    size = None
    j = 0

    def keep(frame: av.VideoFrame) -> bool:
        nonlocal size, j
        if j in want:
            size = size or _target_size(frame.width, frame.height, max_side)
            img = _to_rgb(frame, size)
            for pos in want[j]:
                out[pos] = img
        j += 1
        return j <= last

    _decode_frames(path, keep)
    if any(o is None for o in out):
        return None, j
    return np.stack(out), j  # type: ignore[arg-type]


def _read_by_seek(path: Path, n: int, k: int, max_side: int | None) -> np.ndarray | None:
    """Seek to each wanted frame's time; None when the stream has no usable timing."""
    with _open(path) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        if not rate or s.time_base is None:
            return None
        fps = float(rate)
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        s.thread_type = "AUTO"
        out = []
        size = None
        for i in uniform_indices(n, k).tolist():
            t = start + i / fps
            try:
                c.seek(int(t / s.time_base), stream=s, backward=True, any_frame=False)
                got = None
                for frame in c.decode(s):
                    got = frame
                    if frame.pts is not None and float(frame.pts * s.time_base) >= t - 0.5 / fps:
                        break
            except (av.error.FFmpegError, EOFError):
                got = None
            if got is None:
                return None
            size = size or _target_size(got.width, got.height, max_side)
            out.append(_to_rgb(got, size))
        return np.stack(out)


def read_audio(
    path: str | Path, sr: int = 16000, max_seconds: float | None = None, info: dict | None = None
) -> np.ndarray | None:
    """Mono float32 waveform at ``sr`` Hz, ``(S,)``; None when the file has no audio stream.

    Containers are demuxed with PyAV; wav/flac/ogg are read with soundfile. Multi-channel
    audio is downmixed and resampled with PyAV's ``AudioResampler`` (flt, mono, ``sr``).
    Decoding stops after ``max_seconds`` (long clips are capped to their first part).
    An audio stream with no samples gives an empty array (treated like silence downstream).
    ``info``, when given, receives ``capped`` (True when the clip was longer than ``max_seconds``).
    """
    info = {} if info is None else info
    info["capped"] = False
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        return _read_soundfile(path, sr, max_seconds, info)
    limit = None if max_seconds is None else int(round(max_seconds * sr))
    with _open(path) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        declared = float(s.duration * s.time_base) if s.duration and s.time_base else None
        if declared is None and c.duration:
            declared = c.duration / 1e6
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks: list[np.ndarray] = []
        total = 0
        broken = None
        try:
            for frame in c.decode(s):
                for o in resampler.resample(frame):
                    a = o.to_ndarray().reshape(-1)
                    chunks.append(a)
                    total += a.size
                if limit is not None and total >= limit and _past_limit(total, limit, declared, s, sr):
                    info["capped"] = True
                    break
            else:
                for o in resampler.resample(None):
                    a = o.to_ndarray().reshape(-1)
                    chunks.append(a)
                    total += a.size
        except (av.error.FFmpegError, EOFError) as e:
            broken = _reason(e)
    x = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if limit is not None:
        x = x[:limit]
    expected = declared * sr if declared else 0.0
    if limit is not None:
        expected = min(expected, limit)
    if expected and x.size < TRUNCATED_FRACTION * expected:
        why = f" ({broken})" if broken else ""
        raise ClipError(f"truncated or undecodable audio: {x.size / sr:.2f} s of {expected / sr:.2f} s decode "
                        f"in {path.name}{why}")
    if broken and x.size == 0:
        raise ClipError(f"undecodable audio in {path.name}: {broken}")
    return np.ascontiguousarray(x)


def _past_limit(total: int, limit: int, declared: float | None, stream: Any, sr: int) -> bool:
    """Whether the clip has audio past ``limit`` samples, so capping it loses some. Encoders add a codec frame
    or two of priming and padding (AAC: 1024 samples each), which the decoded length and, in some containers,
    the declared duration include: so a clip of exactly the limit counts as capped only when the declared
    duration or the decoded length passes the limit by more than two codec frames and 10 ms."""
    frame = getattr(stream.codec_context, "frame_size", 0) or 1024
    slack = 2 * frame * sr // (stream.rate or sr) + sr // 100
    return (declared is not None and declared * sr > limit + slack) or total > limit + slack


def _read_soundfile(path: Path, sr: int, max_seconds: float | None, info: dict) -> np.ndarray:
    import soundfile as sf

    _check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            frames = -1 if max_seconds is None else int(math.ceil(max_seconds * rate))
            x = f.read(frames=frames, dtype="float32", always_2d=True)
            info["capped"] = frames >= 0 and f.frames > frames
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise ClipError(f"cannot read audio {path.name}: {_reason(e)}") from None
    if x.shape[1] > 1 and x.shape[1] not in _LAYOUTS:
        x = x.mean(axis=1, keepdims=True)
    if x.shape[0] and (rate != sr or x.shape[1] > 1):
        x = resample(x.T, rate, sr)
    else:
        x = x[:, 0]
    if max_seconds is not None:
        x = x[: int(round(max_seconds * sr))]
    return np.ascontiguousarray(x, dtype=np.float32)


_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Downmix and resample ``(channels, S)`` (or ``(S,)``) float32 audio to mono ``sr_out`` with
    PyAV's (libswresample) resampler, the same downmix the container path uses."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=_LAYOUTS[x.shape[0]])
    frame.sample_rate = sr_in
    frame.pts = 0
    r = av.AudioResampler(format="flt", layout="mono", rate=sr_out)
    out = [o.to_ndarray().reshape(-1) for o in r.resample(frame)]
    out += [o.to_ndarray().reshape(-1) for o in r.resample(None)]
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)
