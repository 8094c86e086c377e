"""fer.extract.frames for all-frame sets: every face frame in order, sampled above the cap; the 16-frame folder
and the video as recorded fallbacks (the padding with a mask is the extractor's: tests/extract/backbones/
test_face_frames.py)."""

import numpy as np
import pytest
from PIL import Image

from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.frames import read_all_frames
from fer.extract.synth.scene import write_mp4


@pytest.fixture
def folder(tmp_path):
    """10 frames named 1.jpg .. 10.jpg (natural order), frame i a flat grey of value 20 i."""
    d = tmp_path / "all"
    d.mkdir()
    for i in range(1, 11):
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(d / f"{i}.png")
    return d


def test_every_frame_in_order(folder):
    frames, info = read_all_frames(ClipRecord("1", faces_all=folder), max_frames=12, size=32)
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8 and info is None
    assert frames[:, 0, 0, 0].tolist() == [20 * i for i in range(1, 11)]


def test_longer_clips_keep_segment_centres_and_say_so(folder):
    frames, info = read_all_frames(ClipRecord("1", faces_all=folder), max_frames=4, size=16)
    assert frames.shape == (4, 16, 16, 3) and info == "sampled 4 of 10 frames"
    assert frames[:, 0, 0, 0].tolist() == [20 * (i + 1) for i in (1, 3, 6, 8)]  # centres of 4 segments of 10


def test_the_16_frame_folder_only_when_it_is_all_there_is_and_said(folder, tmp_path):
    frames, info = read_all_frames(ClipRecord("1", faces16=folder), max_frames=12, size=32)
    assert len(frames) == 10 and info == "no all-frames face folder: the 10 frames of the 16-frame folder"
    frames, info = read_all_frames(ClipRecord("1", faces16=folder), max_frames=4, size=16)
    assert frames.shape == (4, 16, 16, 3) and info.endswith("; sampled 4 of 10 frames")
    # an all-frames folder wins over the 16-frame one, and over the video
    frames, info = read_all_frames(ClipRecord("1", faces_all=folder, faces16=tmp_path, video=tmp_path / "v.mp4"),
                                   12, 32)
    assert len(frames) == 10 and info is None


def test_missing_folders_are_clip_errors(folder, tmp_path):
    with pytest.raises(ClipError, match="missing or empty"):
        read_all_frames(ClipRecord("1", faces_all=tmp_path / "gone"))
    # a face folder that is named but broken is the clip's fault, not a reason to read the video instead
    with pytest.raises(ClipError, match="missing or empty"):
        read_all_frames(ClipRecord("1", faces_all=tmp_path / "gone", video=tmp_path / "v.mp4"))
    with pytest.raises(ClipError, match="no face frames and no video"):
        read_all_frames(ClipRecord("1"))


def video(path, n, w=96, h=64):
    """An mp4 of n frames: a grey square of value 8 i in the middle between a red and a blue band."""
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : (w - h) // 2] = (255, 0, 0)
        f[:, (w + h) // 2:] = (0, 0, 255)
        f[:, (w - h) // 2: (w + h) // 2] = 8 * (i + 1)
        frames.append(f)
    write_mp4(path, frames, fps=10, audio=None, sr=16000)
    return path


def test_without_any_face_folder_the_video_full_frames_centre_square(tmp_path):
    v = video(tmp_path / "c.mp4", 12)
    frames, info = read_all_frames(ClipRecord("1", video=v), max_frames=20, size=32)
    assert frames.shape == (12, 32, 32, 3)  # every frame once: a short video is not stretched to the cap
    assert info == "no face folder: all 12 full frames of c.mp4, centre square crop (not face crops)"
    grey = frames[:, 4:-4, 4:-4].astype(int)  # the square crop holds the grey middle only (no red or blue band)
    assert np.abs(grey - grey[:, :, :, :1]).max() < 24
    np.testing.assert_allclose(grey.mean(axis=(1, 2, 3)), 8 * np.arange(1, 13), atol=6)
    frames, info = read_all_frames(ClipRecord("1", video=v), max_frames=4, size=32)
    assert len(frames) == 4 and "4 of 12 full frames" in info
    np.testing.assert_allclose(frames[:, 8:-8, 8:-8].mean(axis=(1, 2, 3)), [8 * (i + 1) for i in (1, 4, 7, 10)], atol=6)
