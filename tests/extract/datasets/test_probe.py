"""Cheap media checks on real files: whole, truncated, empty, foreign, with and without audio."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fer.extract.datasets.probe import check_image, probe_video


def write_mp4(path: Path, frames: int = 8, audio: bool = True, faststart: bool = False, size: int = 32) -> Path:
    """A tiny H.264 clip (with an AAC track unless ``audio`` is False)."""
    c = av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {})
    v = c.add_stream("libx264", rate=8)
    v.width = v.height = size
    v.pix_fmt = "yuv420p"
    a = c.add_stream("aac", rate=16000) if audio else None
    if a is not None:
        a.layout = "mono"
    for i in range(frames):
        img = np.full((size, size, 3), 20 * i % 255, np.uint8)
        c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
    c.mux(v.encode())
    if a is not None:
        wave = (0.3 * np.sin(np.arange(16000) / 8.0)).astype(np.float32)[None]
        fr = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        fr.sample_rate = 16000
        c.mux(a.encode(fr))
        c.mux(a.encode())
    c.close()
    return path


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_whole_video_with_audio(tmp_path: Path):
    p = probe_video(write_mp4(tmp_path / "a.mp4", frames=8))
    assert p.error is None and p.has_video and p.has_audio
    assert (p.n_frames, p.width, p.height, p.fps) == (8, 32, 32, 8.0)
    assert p.duration == pytest.approx(1.0, abs=0.1)


def test_video_without_audio(tmp_path: Path):
    p = probe_video(write_mp4(tmp_path / "a.mp4", audio=False))
    assert p.error is None and p.has_video and not p.has_audio


@pytest.mark.parametrize("faststart", [False, True])
@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.99])
def test_truncated_video_is_detected(tmp_path: Path, faststart: bool, fraction: float):
    p = probe_video(truncate(write_mp4(tmp_path / "a.mp4", faststart=faststart), fraction))
    assert p.error is not None and "truncated" in p.error


def test_truncated_video_in_another_container_is_detected(tmp_path: Path):
    # no MP4 box walk for .mkv names: the packet count against the index must catch it
    src = truncate(write_mp4(tmp_path / "a.mp4", frames=16, faststart=True), 0.6)
    p = probe_video(src.rename(tmp_path / "a.mkv"))
    assert p.error is not None and "truncated" in p.error


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"\x00\x01garbage" * 300, "unreadable video"),
])
def test_broken_video_files(tmp_path: Path, content: bytes, reason: str):
    (tmp_path / "a.mp4").write_bytes(content)
    assert reason in probe_video(tmp_path / "a.mp4").error


def test_missing_video(tmp_path: Path):
    assert "cannot read" in probe_video(tmp_path / "nope.mp4").error


@pytest.mark.parametrize("decode", [True, False])
def test_check_image(tmp_path: Path, decode: bool):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    png = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(png)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:-400])
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[:-30])
    empty = tmp_path / "empty.jpg"
    empty.touch()
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all")
    assert check_image(good, decode=decode) is None and check_image(png, decode=decode) is None
    assert check_image(cut, decode=decode) == "truncated image"
    assert check_image(cut_png, decode=decode) is not None
    assert check_image(empty, decode=decode) == "empty file (0 bytes)"
    assert check_image(text, decode=decode) == "not an image"


def test_audio_files_whole_and_truncated(tmp_path: Path):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    p = probe_video(wav)
    assert p.error is None and p.has_audio and not p.has_video and p.duration == pytest.approx(0.5)
    wav.write_bytes(wav.read_bytes()[:6000])
    assert "truncated" in probe_video(wav).error
