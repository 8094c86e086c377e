"""`fer extract --frames all --flip` -> `fer train --augment jitter,flip --balance` -> `fer predict`, through the
real CLI, and the one-line refusals of the frame options."""

import json

import numpy as np
import pytest

from fer.cache import open_store
from fer.extract.synth import synthesize
from fer.tests.cli import fer  # the real `fer` in a subprocess, one thread, offline

SPEC = "face.resnet18.none-s0.pool.32.all24f.flip"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_frames") / "dfew"
    synthesize(root, clips=8, seed=0, workers=1)
    return root


def test_extract_every_frame_with_mirrors_then_train_augmented_then_predict(root, tmp_path):
    store = tmp_path / "s.zarr"
    p = fer("extract", root, "-m", "face", "--weights", "none", "--size", 32, "--frames", "all", "--max-frames", 24,
            "--flip", "--batch-size", 4, "--workers", 1, "--store", store, "--no-progress", check=0)
    assert SPEC in p.stdout
    with open_store(store) as s:
        fs = s.read(SPEC)
    assert fs.data.shape == (8, 24, 2, 512) and fs.mask.shape == (8, 24) and not fs.mask.all() and fs.mask[:, 0].all()
    run = tmp_path / "run"
    fer("train", store, "--augment", "jitter,flip", "--balance", "--fold", 1, "--epochs", 2, "--layers", 1,
        "--heads", 2, "--ff", 16, "--hidden", 16, "--no-plots", "--out", run, check=0)
    config = json.loads((run / "config.json").read_text())
    assert config["augment"] == ["jitter", "flip"] and config["features"]["face"]["spec"] == SPEC
    written = np.load(run / "predictions_fold1.npz")
    clip = str(written["ids"][0])
    pred = json.loads(fer("predict", clip, "--root", root, "--run", run, "--fold", 1, "--json", check=0).stdout)
    probs = np.array(list(pred["probs"].values()))
    assert abs(probs.sum() - 1) < 1e-4
    # recomputed features (fp32) against the run's own evaluation of the stored fp16 row: the same clip, the same way
    np.testing.assert_allclose(probs, written["probs"][0], atol=2e-3)
    # a folder of the clip's face frames (no dataset) is read as every frame of the clip
    faces = root / "Clip" / "clip_224x224" / clip
    again = json.loads(fer("predict", faces, "--run", run, "--fold", 1, "--json", check=0).stdout)
    np.testing.assert_allclose(list(again["probs"].values()), probs, atol=1e-5)


@pytest.mark.parametrize("args, says", [
    (["-m", "face", "--frames", "16", "--max-frames", "8"], "--max-frames caps --frames all"),
    (["-m", "face", "--frames", "all", "--layer", "layer3"], "--frames all stores pooled vectors only"),
    (["-m", "audio", "--backbone", "mel", "--flip"], "--flip applies to the face modality only"),
])
def test_frame_options_refused(root, tmp_path, args, says):
    p = fer("extract", root, *args, "--weights", "none", "--store", tmp_path / "s.zarr", "--no-progress", check=2)
    assert says in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_frame_count_that_is_no_number_is_a_usage_error(root, tmp_path):
    p = fer("extract", root, "-m", "face", "--frames", "some", "--store", tmp_path / "s.zarr", check=2)  # a usage error
    assert "neither 'all' nor a positive number" in p.stderr
