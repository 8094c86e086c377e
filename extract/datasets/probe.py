"""Cheap media checks: is a video container whole, does it hold video and audio, is a jpg decodable.

These do not decode whole clips (that is the extractor's job); they catch the usual ways files
break in the wild: empty, not media at all, truncated downloads, a missing audio track.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

_MP4_EXTS = {".mp4", ".m4v", ".mov", ".m4a", ".3gp"}
# Box types an MP4/MOV file can start with; anything else is not walked as MP4.
_MP4_FIRST_BOXES = {"ftyp", "styp", "moov", "mdat", "free", "skip", "wide", "pdin", "uuid", "meta", "sidx"}
# Bytes an intact file of this PIL format ends with (JPEG EOI; PNG IEND chunk type).
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


@dataclass
class VideoProbe:
    """What a quick look at one video file found."""

    has_video: bool = False
    """The container has a video stream with at least one packet."""
    has_audio: bool = False
    """The container has an audio stream with at least one packet."""
    n_frames: int = 0
    """Video frames (from the container index, else counted packets)."""
    duration: float = 0.0
    """Seconds, from the container (0 when unknown)."""
    fps: float = 0.0
    """Average video frame rate (0 when unknown)."""
    width: int = 0
    """Video frame width in pixels."""
    height: int = 0
    """Video frame height in pixels."""
    error: str | None = None
    """Why the file cannot be used (None when it looks whole)."""


def _mp4_truncation(path: Path, size: int) -> str | None:
    """Walk the top-level MP4 boxes; they must tile the file exactly.

    A download cut short leaves the last box (usually ``mdat``) claiming more bytes than the file
    has. FFmpeg opens such files silently when the index comes first (``faststart``), so this is
    the reliable test, and it reads only a few bytes per box.
    """
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                return f"truncated: {size - pos} stray bytes at the end"
            box_size, kind = struct.unpack(">I4s", head[:8])
            name = kind.decode("latin-1")
            if (pos == 0 and name not in _MP4_FIRST_BOXES) or not (name.isascii() and name.isprintable()):
                # not an MP4 box structure: leave the verdict to FFmpeg
                return None
            if box_size == 1:  # 64-bit size follows
                if len(head) < 16:
                    return f"truncated inside the '{name}' box header"
                box_size = struct.unpack(">Q", head[8:16])[0]
            elif box_size == 0:  # box runs to the end of the file
                return None
            if box_size < 8:
                return f"corrupt: box '{name}' at byte {pos} has size {box_size}"
            if pos + box_size > size:
                return f"truncated: box '{name}' needs {pos + box_size} bytes, the file has {size}"
            pos += box_size
    return None


def _riff_truncation(path: Path, size: int) -> str | None:
    """A WAV/AVI (RIFF) file states its own length in bytes 4..8: a shorter file was cut short."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF":
        return None
    declared = struct.unpack("<I", head[4:8])[0] + 8
    if declared > size and declared != 0xFFFFFFFF + 8:  # streaming writers put 0xFFFFFFFF
        return (f"truncated: the {head[8:12].decode('latin-1').strip()} header says {declared} bytes, "
                f"the file has {size}")
    return None


def probe_video(path: Path) -> VideoProbe:
    """Open a video (or audio file) with PyAV, read its streams and demux every packet (no decoding except the
    first video frame), and report what it holds and whether it looks whole."""
    import av

    path = Path(path)
    out = VideoProbe()
    try:
        size = os.path.getsize(path)
    except OSError as e:
        out.error = f"cannot read: {e.strerror or e}"
        return out
    if size == 0:
        out.error = "empty file (0 bytes)"
        return out
    try:
        out.error = _mp4_truncation(path, size) if path.suffix.lower() in _MP4_EXTS else _riff_truncation(path, size)
    except OSError as e:
        out.error = f"cannot read: {e.strerror or e}"
    if out.error:
        return out
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0] if c.streams.video else None
            aus = c.streams.audio[0] if c.streams.audio else None
            if vs is None and aus is None:
                out.error = "no video or audio stream"
                return out
            if c.duration:
                out.duration = c.duration / 1_000_000
            if vs is not None:
                out.width, out.height = vs.codec_context.width, vs.codec_context.height
                out.fps = float(vs.average_rate) if vs.average_rate else 0.0
            streams = [s for s in (vs, aus) if s is not None]
            counts = {s.index: 0 for s in streams}
            first = None
            for packet in c.demux(*streams):
                if packet.size == 0:  # flush packets carry no data
                    continue
                counts[packet.stream.index] += 1
                if first is None and vs is not None and packet.stream.index == vs.index:
                    first = packet
            # A container whose index promises more packets than the file holds was cut short.
            for s in streams:
                if s.frames and counts[s.index] < s.frames:
                    out.error = f"truncated: {s.type} stream has {counts[s.index]} of {s.frames} packets"
            if vs is not None:
                out.n_frames = vs.frames or counts[vs.index]
                out.has_video = counts[vs.index] > 0
            out.has_audio = aus is not None and counts[aus.index] > 0
            if vs is not None and not out.has_video:
                out.error = out.error or "video stream has no frames"
            if first is not None and out.error is None:
                frames = list(vs.codec_context.decode(first)) + list(vs.codec_context.decode(None))
                if not frames:
                    out.error = "the first video frame does not decode"
    except av.FFmpegError as e:
        out.error = f"unreadable video: {_short_av_error(e)}"
    except (OSError, ValueError, IndexError, RuntimeError) as e:
        out.error = f"unreadable video: {type(e).__name__}: {e}"
    return out


def _short_av_error(e: Exception) -> str:
    """FFmpeg's message without the file path (the report already names the file)."""
    msg = getattr(e, "strerror", None) or str(e)
    log = getattr(e, "log", None)
    if log and isinstance(log, tuple) and len(log) >= 3 and log[2]:
        msg = f"{msg} ({str(log[2]).strip()})"
    return msg


def check_image(path: Path, decode: bool = True) -> str | None:
    """None when ``path`` is a readable image, else a short reason.

    ``decode=True`` decodes at 1/8 scale (JPEG draft mode): cheap, yet it walks all the compressed
    data, so truncated files are caught (``Image.verify`` misses them). ``decode=False`` reads only
    the header and checks that a JPEG ends with its end-of-image marker (a PNG with ``IEND``):
    ten times cheaper, and still catches empty, foreign and truncated files.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            fmt = im.format
            if decode:
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        if not decode and fmt in _END_MARKERS:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64))
                if _END_MARKERS[fmt] not in f.read():
                    return "truncated image"
    except UnidentifiedImageError:
        return "not an image"
    except OSError as e:
        msg = str(e)
        return "truncated image" if "truncated" in msg else f"unreadable image: {e.strerror or msg}"
    except (ValueError, SyntaxError) as e:  # PIL raises these on some corrupt headers
        return f"corrupt image: {e}"
    return None
