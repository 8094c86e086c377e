"""MTCNN on a real photograph: one face, sensible landmarks, batched = one frame at a time, clear failures."""

import numpy as np
import pytest
import torch
from PIL import Image

from fer.cache.errors import FerError
from fer.extract.faces import detect
from fer.extract.faces.detect import MTCNN, detector_identity
from fer.extract.synth import photo as V


@pytest.fixture(scope="module")
def det():
    return MTCNN()


@pytest.fixture(scope="module")
def frames():
    """Four frames of the moving face plus one without a face."""
    bg = V.background(5)
    maps = V.moving_maps(4)
    return np.stack([V.paint(bg, [m]) for m in maps] + [bg]), maps


def test_the_photo_shows_one_face_with_landmarks_in_place(det):
    img = np.asarray(Image.open(V.photo_path()).convert("RGB"))
    faces = det.detect(img[None])[0]
    assert len(faces) == 1 and faces.scores[0] > 0.99
    le, re, nose, ml, mr = faces.landmarks[0]
    x1, y1, x2, y2 = faces.boxes[0]
    assert le[0] < nose[0] < re[0] and ml[0] < mr[0]  # left to right, as seen
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])  # eyes above nose above mouth
    assert all(x1 <= p[0] <= x2 and y1 <= p[1] <= y2 for p in faces.landmarks[0])


def test_eyes_found_where_the_face_was_painted(det, frames):
    imgs, maps = frames
    found = det.detect(imgs)
    for f, m in zip(found, maps):
        assert len(f) == 1
        np.testing.assert_allclose(f.landmarks[0][:2], V.landmarks(m)[:2], atol=3.0)
    assert len(found[-1]) == 0  # the empty background


def test_batched_matches_one_frame_per_call(det, frames):
    imgs, _ = frames
    together = det.detect(imgs, batch=5)
    alone = [det.detect(imgs[i:i + 1])[0] for i in range(len(imgs))]
    for a, b in zip(together, alone):
        assert len(a) == len(b)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_large_frames_are_downscaled_for_detection_and_mapped_back(frames):
    imgs, maps = frames
    big = torch.nn.functional.interpolate(torch.from_numpy(imgs[:1]).permute(0, 3, 1, 2).float(), scale_factor=3,
                                          mode="bilinear").round().clamp(0, 255).byte().permute(0, 2, 3, 1)
    small = MTCNN(max_side=400).detect(big)[0]  # 768 px wide -> detected at 400
    assert len(small) == 1
    np.testing.assert_allclose(small.landmarks[0][:2], (V.landmarks(maps[0])[:2] + 0.5) * 3 - 0.5, atol=6.0)


def test_identity_names_the_weights_and_their_hashes():
    ident = detector_identity()
    assert ident["name"] == "mtcnn" and ident["weights"].startswith("facenet-pytorch ")
    assert set(ident["sha256"]) == {"pnet", "rnet", "onet"}
    assert all(len(h) == 64 for h in ident["sha256"].values())


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(detect.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FerError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        MTCNN()


def test_damaged_weights_file_is_one_line(monkeypatch, tmp_path):
    for n in detect.NETS:
        (tmp_path / f"{n}.pt").write_bytes(b"not a state dict")
    monkeypatch.setattr(detect, "weights_dir", lambda: tmp_path)
    with pytest.raises(FerError, match="cannot load the face detector weights"):
        MTCNN()


def test_frames_must_be_bhwc(det):
    with pytest.raises(ValueError, match="expected frames"):
        det.detect(np.zeros((3, 32, 32), np.uint8))
