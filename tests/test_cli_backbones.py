"""`fer extract --backbone/--precision`, `fer weights fetch --backbone` and `fer train --audio-layer weighted`
on the CLI."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.cli import app
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_backbones") / "dfew"
    synthesize(root, clips=10, seed=4, workers=1)
    return root


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_hf_backbone_with_precision_then_weighted_audio_training(root, tmp_path):
    clip, hubert, store = tm.clip_vision(tmp_path / "clip"), tm.hubert(tmp_path / "hubert"), tmp_path / "s.zarr"
    common = ["--store", store, "--workers", 0, "--no-progress"]
    r = invoke("extract", root, "-m", "face", "--backbone", f"hf:{clip}", "--frames", 2, "--precision", "bf16", *common)
    assert r.exit_code == 0, r.output
    r = invoke("extract", root, "-m", "audio", "--backbone", f"HF:{hubert}", "--precision", "fp32", *common)
    assert r.exit_code == 0, r.output
    with open_store(store) as s:
        specs = s.specs()
    face = next(x for x in specs if x.startswith("face."))
    assert face.startswith("face.hf-clip.clip-") and face.endswith(".pool.32.2f.bf16")
    assert any(x.startswith("audio.hubert.hubert-") and x.endswith(".mean.16k") for x in specs)
    out = tmp_path / "run"
    r = invoke("train", store, "-m", "face,audio", "--fusion", "fc", "--audio-layer", "weighted", "--epochs", 1,
               "--layers", 1, "--heads", 2, "--ff", 16, "--hidden", 16, "--no-plots", "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "layer_weights_fold1.json").is_file()
    r = invoke("train", store, "-m", "face,audio", "--fusion", "fc", "--audio-layer", "middle", "--out", tmp_path / "x")
    assert isinstance(r.exception, FerError) and "give a layer index" in str(r.exception)


def test_bad_precision_and_offline_fetch_are_one_line_errors(root, tmp_path):
    r = invoke("extract", root, "-m", "face", "--weights", "none", "--precision", "fp64",
               "--store", tmp_path / "a.zarr")
    assert isinstance(r.exception, FerError) and "unknown --precision 'fp64'" in str(r.exception)
    p = subprocess.run([sys.executable, "-m", "fer.cli", "weights", "fetch", "--backbone", "timm:vit_tiny_patch16_224",
                        "--backbone", "hf:facebook/dinov2-small"], capture_output=True, text=True,
                       env={**os.environ, "FER_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                            "TORCH_HOME": str(tmp_path / "torch")})
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "2 weight set(s) not fetched" in p.stderr
    assert "failed  face.timm:vit_tiny_patch16_224" in p.stdout and "failed  model.hf:facebook/dinov2-small" in p.stdout
