"""The whole job through the real CLI: synth -> extract (face, pose, audio) -> train -> report -> predict."""

import json

import numpy as np
import pytest

from fer.cache.schema import CLASS_NAMES
from fer.tests.cli import fer_ok as fer


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    root, store, run = base / "data", base / "features.zarr", base / "runs" / "fc"
    fer("data", "synth", root, "--clips", 14, "--seed", 3)
    common = ["--store", store, "--workers", 1, "--no-progress"]
    fer("extract", root, "-m", "face", "--weights", "auto", "--size", 64, *common)
    fer("extract", root, "-m", "audio", "--backbone", "mel", *common)
    fer("extract", root, "-m", "pose", "--weights", "none", "--size", 64, "--frames", 1, *common)
    fer("train", store, "--modalities", "face,pose,audio", "--fusion", "fc", "--fold", 1, "--epochs", 2,
        "--layers", 1, "--heads", 2, "--ff", 32, "--no-plots", "--out", run)
    return root, store, run


def test_extract_train_report(pipeline):
    root, store, run = pipeline
    ls = fer("cache", "ls", store).stdout
    assert "face.resnet18.none-s0.pool.64.16f" in ls and "audio.mel" in ls and "pose.keypointrcnn" in ls
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"1"}
    assert "fc" in fer("report", run).stdout


def test_predict_a_dataset_clip_and_a_bare_video(pipeline):
    root, _, run = pipeline
    out = json.loads(fer("predict", "00002", "--root", root, "--run", run, "--json").stdout)
    assert out["clip"] == "00002" and out["top"] in CLASS_NAMES
    assert np.isclose(sum(out["probs"].values()), 1.0, atol=1e-4)
    text = fer("predict", root / "Clip" / "original" / "00002.mp4", "--run", run).stdout
    assert text.splitlines()[0].startswith("00002: ") and len(text.splitlines()) == 1 + len(CLASS_NAMES)


def test_predict_matches_the_cached_features_of_the_same_clip(pipeline):
    """fer predict rebuilds the extractors from provenance: same clip, same features as in the store."""
    from fer.cache import open_store
    from fer.extract.clip import clip_features, clip_record
    from fer.train.predict import run_features

    root, store, run = pipeline
    feats = run_features(run)
    inputs = clip_features(clip_record("00002", root=root), feats, device="cpu")
    with open_store(store) as s:
        row = list(s.ids).index("00002")
        for modality, meta in feats.items():
            cached = s.read(meta["spec"], rows=np.array([row]))
            np.testing.assert_allclose(inputs[modality][0].numpy(), cached.data.astype(np.float32),
                                       rtol=1e-2, atol=1e-2)


def test_predict_bad_input_is_one_line(pipeline, tmp_path):
    root, _, run = pipeline
    for args, msg in [(("nope.mp4", "--run", run), "neither a file nor a folder"),
                      (("00002", "--run", tmp_path), "not a run folder"),
                      (("99999", "--root", root, "--run", run), "not in the dataset")]:
        p = fer("predict", *args, check=2)
        assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
