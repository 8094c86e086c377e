"""fer.extract.frames for all-frame sets: every face frame in order, padded with a mask, sampled above the cap."""

import numpy as np
import pytest
from PIL import Image

from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.frames import read_all_face_frames


@pytest.fixture
def folder(tmp_path):
    """10 frames named 1.jpg .. 10.jpg (natural order), frame i a flat grey of value 20 i."""
    d = tmp_path / "all"
    d.mkdir()
    for i in range(1, 11):
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(d / f"{i}.png")
    return d


def test_every_frame_in_order_then_zero_padding(folder):
    frames, mask, info = read_all_face_frames(ClipRecord("1", faces_all=folder), max_frames=12, size=32)
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8 and info is None
    assert mask.tolist() == [True] * 10 + [False] * 2
    assert frames[:10, 0, 0, 0].tolist() == [20 * i for i in range(1, 11)] and not frames[10:].any()


def test_longer_clips_keep_segment_centres_and_say_so(folder):
    frames, mask, info = read_all_face_frames(ClipRecord("1", faces_all=folder), max_frames=4, size=16)
    assert mask.all() and frames.shape == (4, 16, 16, 3) and info == "sampled 4 of 10 frames"
    assert frames[:, 0, 0, 0].tolist() == [20 * (i + 1) for i in (1, 3, 6, 8)]  # centres of 4 segments of 10


def test_missing_folders_are_clip_errors(folder, tmp_path):
    with pytest.raises(ClipError, match="no folder of every face frame"):
        read_all_face_frames(ClipRecord("1", faces16=folder))
    with pytest.raises(ClipError, match="missing or empty"):
        read_all_face_frames(ClipRecord("1", faces_all=tmp_path / "gone"))
