"""The table of backbone families: a family registered from this file alone (a toy image encoder) runs
`fer extract` and `fer train` end to end, and every "which family is this?" question is one lookup."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.cli import app
from fer.extract.backbones import families
from fer.extract.backbones.family import Cut, Family
from fer.extract.backbones.image import ImageEncoder, Uint8Normalize
from fer.extract.backbones.weights import random_init
from fer.extract.synth import synthesize

CLIPS = 10


class ToyNet(nn.Module):
    """One strided convolution and a global average pool: (N, 3, S, S) -> (N, width)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def toy_encoder(name: str, weights: str | None, layer: str | None, size: int | None,
                seed: int) -> ImageEncoder:
    """``toy:<width>``: random weights only (``--weights none`` or nothing)."""
    if weights not in (None, "none"):
        raise FerError("the toy family has no weights; leave --weights out")
    width, size = int(name), size or 32
    return ImageEncoder(
        backbone="toy", family="toy", model=random_init(lambda: ToyNet(width), seed).eval(),
        preprocess=Uint8Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        weights={"id": f"random, seed {seed}", "sha256": None}, tag=f"none-s{seed}", size=size,
        out_shape=(width,), layer=layer or "pool", preprocessing="/255, mean 0.5 std 0.25",
        output="mean of a 4x4/4 convolution",
    )


TOY = Family(name="toy", modalities=("face",), pattern="toy:*", help="toy:<width>", build=toy_encoder,
             spec="face.toy.<weights>.pool.<size>.<frames>f", cuts=(Cut("pool", "mean over the map"),),
             top="a 4x4 convolution, mean-pooled")


@pytest.fixture
def toy():
    families.register(TOY)
    try:
        yield TOY
    finally:
        families.unregister(TOY.name)
    assert TOY not in families.FAMILIES


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "dfew"
    synthesize(root, clips=CLIPS, seed=1, workers=1)
    return root


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "400"})


def test_a_family_registered_from_a_test_extracts_and_trains(toy, root, tmp_path):
    store, out = tmp_path / "toy.zarr", tmp_path / "run"
    r = invoke("extract", root, "-m", "face", "--backbone", "TOY:6", "--frames", 4, "--weights", "auto",
               "--store", store, "--workers", 0, "--no-progress")
    assert r.exit_code == 0, (r.output, r.exception)
    spec = "face.toy.none-s0.pool.32.4f"
    assert f"feature set {spec}" in r.output and f"done {CLIPS}" in r.output
    with open_store(store) as s:
        info = s.info(spec)
        rows = s.read(spec).data
    assert info["extractor"]["backbone"] == "toy:6" and info["family"] == "toy"
    assert rows.shape == (CLIPS, 4, 6)
    assert float(abs(rows).max()) > 0  # the toy model really ran
    r = invoke("train", store, "--epochs", 1, "--layers", 1, "--heads", 2, "--ff", 16, "--hidden", 16,
               "--no-plots", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, (r.output, r.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"1"}
    assert "toy:<width>" in invoke("extract", "--help").output  # the help is the table's
    r = invoke("weights", "fetch", "--backbone", "toy:6")
    assert isinstance(r.exception, FerError) and "toy:6 has no weights to fetch" in str(r.exception)


def test_unregistered_the_name_is_unknown_again(root, tmp_path):
    r = invoke("extract", root, "-m", "face", "--backbone", "toy:6", "--store", tmp_path / "x.zarr")
    assert isinstance(r.exception, FerError) and "unknown face backend 'toy:6'" in str(r.exception)
    assert "toy" not in invoke("extract", "--help").output


def test_lookups_go_through_the_table(toy):
    n = families.normalize_backbone
    assert families.family_of("face", n("Toy:8")) is TOY and n("Toy:Mixed/Case") == "toy:Mixed/Case"
    assert families.family_of("face", "resnet18").name == "resnet18"
    assert families.family_of("face", "convnext_tiny").name == "torchvision"  # any other plain name
    assert families.family_of("face", n("HF:openai/clip")).name == "hf-vision"
    assert families.family_of("audio", "hf:openai/whisper-base").name == "hf-speech"
    with pytest.raises(FerError, match="--backbone toy:8 is an image model; audio takes wav2vec2 .default."):
        families.family_of("audio", "toy:8")
    with pytest.raises(FerError, match="--backbone hf:x is not a pose backbone; pose takes keypointrcnn"):
        families.family_of("pose", "hf:x")
    with pytest.raises(FerError, match="already registered"):
        families.register(TOY)
    assert families.pretrained_available("face", "toy:8") == (True, "")  # no weights to look for
    assert TOY.cut("pool") is TOY.cuts[0] is TOY.cut(None) and TOY.cut("layer3") is None


def test_every_family_is_declared_once_with_its_parts():
    names = [f.name for f in families.FAMILIES]
    assert len(names) == len(set(names))
    for f in families.FAMILIES:
        assert f.modalities and f.help and callable(f.build), f.name
        assert f.spec.startswith(f.modalities[0] + "."), f.name
    resnet = families.family_of("face", "resnet18")
    assert [c.name for c in resnet.cuts] == ["pool", "layer3", "layer2"]
    assert "layer4" in resnet.cut("layer3").above
    assert Cut("block:K", "tokens").matches("block:11") and not Cut("block:K", "tokens").matches("block:x")
