"""Your own videos, end to end through the real CLI with no face folders given: class folders of videos of a
real photograph -> `fer data faces` -> `fer extract` on its manifest -> `fer train` -> `fer predict VIDEO`."""

import json

import numpy as np
import pytest

from fer.cache import open_store
from fer.extract.synth import photo as V
from fer.tests.cli import fer_ok as fer

SPEC = "face.resnet18.none-s0.pool.32.16f"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """ROOT/{train,test}/{happy,sad}/clip.mp4: happy faces move right, sad ones are mirrored and move left."""
    base = tmp_path_factory.mktemp("e2e_faces") / "videos"
    bg = V.background(7)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("happy", "sad"):
            for i in range(n):
                maps = V.moving_maps(6)
                frames = [V.paint(bg, [m]) for m in maps]
                if cls == "sad":
                    frames = [f[:, ::-1].copy() for f in frames]
                V.write_video(base / split / cls / f"{cls}{i}.mp4", frames)
    return base


def test_own_videos_through_faces_extract_train_predict(root, tmp_path):
    out, store, run = tmp_path / "faces", tmp_path / "f.zarr", tmp_path / "run"
    fer("data", "faces", root, out, "--size", 64, "--frames", 6, "--no-progress")
    assert (out / "train" / "happy" / "happy0" / "00006.jpg").is_file()
    fer("extract", out / "manifest.csv", "-m", "face", "--weights", "none", "--size", 32, "--store", store,
        "--workers", 0, "--no-progress")
    with open_store(store) as s:
        assert list(s.class_names) == ["happy", "sad"] and len(s.ids) == 10
        prov = s.info(SPEC)
    assert prov["face_preprocessing"]["detector"]["name"] == "mtcnn"
    assert prov["face_preprocessing"]["size"] == 64 and "clips" not in prov["face_preprocessing"]
    fer("train", store, "-m", "face", "--fusion", "none", "--epochs", 2, "--layers", 1, "--heads", 2, "--ff", 32,
        "--batch-size", 4, "--no-plots", "--out", run)
    assert json.loads((run / "metrics.json").read_text())["folds"]
    pred = json.loads(fer("predict", root / "test" / "sad" / "sad0.mp4", "--run", run, "--json").stdout)
    assert set(pred["probs"]) == {"happy", "sad"} and np.isclose(sum(pred["probs"].values()), 1, atol=1e-4)
