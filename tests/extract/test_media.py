"""Media decoding on real files the tests encode with PyAV (mp4/mkv, H.264/MPEG-4, AAC, wav)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from fer.extract import media
from fer.extract.extractor import ClipError
from fer.extract.media import read_audio, read_video_frames, uniform_indices


def make_clip(path: Path, n: int = 30, fps: int = 15, size=(96, 64), vcodec: str = "mpeg4",
              audio_sr: int | None = 44100, channels: int = 2, freq: float = 440.0, video: bool = True,
              options: dict | None = None) -> Path:
    """A clip whose frame i is grey level 8 * i, with a sine soundtrack (AAC) of the same duration."""
    c = av.open(str(path), "w", options=options or {})
    vs = c.add_stream(vcodec, rate=fps) if video else None
    if vs is not None:
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
    layout = "stereo" if channels == 2 else "mono"
    st = c.add_stream("aac", rate=audio_sr, layout=layout) if audio_sr else None
    if vs is not None:
        for i in range(n):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[...] = min(255, 8 * i)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    if st is not None:
        t = np.arange(int(n / fps * audio_sr)) / audio_sr
        x = np.repeat((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None], channels, 0)
        for i in range(0, x.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="fltp", layout=layout)
            f.sample_rate, f.pts = audio_sr, i
            for p in st.encode(f):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    c.close()
    return path


def peak_hz(x: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * sr / x.size)


def test_uniform_indices_are_segment_centres():
    assert uniform_indices(30, 3).tolist() == [5, 15, 25]
    assert uniform_indices(16, 16).tolist() == list(range(16))
    assert uniform_indices(2, 3).tolist() == [0, 1, 1]


def test_frames_sampled_uniformly(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", n=30)
    frames = read_video_frames(clip, 4)
    assert frames.shape == (4, 64, 96, 3) and frames.dtype == np.uint8
    want = 8 * uniform_indices(30, 4)
    got = frames[:, 32, 48, 0].astype(int)
    assert np.all(np.abs(got - want) <= 3), (got, want)


def test_h264_downscaled_and_short_clip_repeats(tmp_path):
    clip = make_clip(tmp_path / "h.mp4", n=2, size=(160, 96), vcodec="libx264", audio_sr=None)
    frames = read_video_frames(clip, 3, max_side=80)
    assert frames.shape == (3, 48, 80, 3)
    assert np.array_equal(frames[1], frames[2])  # 2 frames, 3 wanted: the last one repeats


def test_missing_frame_count_metadata(tmp_path):
    clip = make_clip(tmp_path / "a.mkv", n=20, audio_sr=None)
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames == 0  # matroska declares no frame count
    frames = read_video_frames(clip, 2)
    got = frames[:, 0, 0, 0].astype(int)
    assert np.all(np.abs(got - 8 * uniform_indices(20, 2)) <= 3)


def test_sampling_info_and_every_frame(tmp_path):
    clip = make_clip(tmp_path / "a.mkv", n=20, audio_sr=None)  # no declared frame count: counted
    info: dict = {}
    read_video_frames(clip, 4, info=info)
    assert info["source_frames"] == 20 and info["indices"].tolist() == uniform_indices(20, 4).tolist()
    every = media.read_all_video_frames(clip)
    assert every.shape == (20, 64, 96, 3)
    grey = every.mean(axis=(1, 2, 3))  # frame i is grey 8 * i, give or take the codec's rounding
    assert np.all(np.diff(grey) > 0) and np.all(np.abs(grey - 8 * np.arange(20)) <= 6)  # every frame, in order


def test_every_frame_fits_the_memory_cap_or_fails_in_one_line(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", n=20, size=(320, 240), audio_sr=None)
    small = media.read_all_video_frames(clip, max_bytes=20 * 160 * 120 * 3)  # half the side fits
    assert len(small) == 20 and small.nbytes <= 20 * 160 * 120 * 3 and small.shape[2] >= 150
    with pytest.raises(ClipError, match="sample fewer frames"):
        media.read_all_video_frames(clip, max_bytes=20 * 100 * 75 * 3)


def test_seek_path_matches_sequential(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "a.mp4", n=40, audio_sr=None)
    seq = read_video_frames(clip, 3)
    monkeypatch.setattr(media, "SEEK_MIN_FRAMES", 10)
    sought = read_video_frames(clip, 3)
    assert sought.shape == seq.shape
    assert np.abs(sought.astype(int) - seq.astype(int)).max() <= 3


@pytest.mark.parametrize("rate", [44100, 48000])
def test_audio_resampled_to_16k_mono(tmp_path, rate):
    clip = make_clip(tmp_path / "a.mp4", n=30, fps=15, audio_sr=rate)  # 2 s stereo AAC
    x = read_audio(clip, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - 32000) < 1200  # AAC adds up to one priming frame (1024 samples at the source rate)
    assert abs(peak_hz(x) - 440.0) < 2.0
    assert 0.2 < np.abs(x).max() < 1.0


def test_wav_read_with_soundfile_and_capped(tmp_path):
    t = np.arange(22050 * 2) / 22050
    sf.write(tmp_path / "s.wav", np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1) * 0.5, 22050)
    x = read_audio(tmp_path / "s.wav")
    assert x.shape == (32000,) and abs(peak_hz(x) - 440.0) < 2.0
    info: dict = {}
    y = read_audio(tmp_path / "s.wav", max_seconds=0.5, info=info)
    assert y.shape == (8000,) and info["capped"]


def test_container_audio_capped(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", n=30, fps=15)
    info: dict = {}
    x = read_audio(clip, max_seconds=1.0, info=info)
    assert x.shape == (16000,) and info["capped"]


@pytest.mark.parametrize("ext", ["mp4", "mkv", "aac"])
def test_aac_of_exactly_the_cap_is_not_noted_as_capped(tmp_path, ext):
    # AAC's priming and padding make a 3.0 s clip decode (and in mkv/adts, declare) a little longer
    for frames, capped in ((45, False), (48, True)):  # 3.0 s and 3.2 s at 15 fps
        info: dict = {}
        x = read_audio(make_clip(tmp_path / f"a{frames}.{ext}", n=frames, fps=15, video=False), max_seconds=3.0,
                       info=info)
        assert x.shape == (48000,) and info["capped"] is capped, (frames, ext)


def test_video_only_has_no_audio(tmp_path):
    clip = make_clip(tmp_path / "v.mp4", audio_sr=None)
    assert read_audio(clip) is None


@pytest.mark.parametrize("kind", ["truncated", "empty", "missing", "garbage"])
def test_bad_files_raise_clip_error(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "truncated":
        data = make_clip(tmp_path / "ok.mp4").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"not a video at all" * 100)
    for read in (lambda p: read_video_frames(p, 3), read_audio):
        with pytest.raises(ClipError) as e:
            read(path)
        assert "\n" not in str(e.value) and str(e.value)


def test_truncated_streamable_mp4(tmp_path):
    """moov up front (faststart): the file opens, and the missing tail is found while decoding."""
    clip = make_clip(tmp_path / "fs.mp4", n=60, audio_sr=None, options={"movflags": "faststart"})
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.25)])
    with pytest.raises(ClipError, match="truncated"):
        read_video_frames(cut, 3)
