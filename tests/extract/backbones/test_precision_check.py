"""`--precision auto` checks its guess on the run's own weights and first clips: a model whose bf16 features
drift falls back to fp32 (one line, the measurement in the provenance), a faithful one keeps bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fer.cache import open_store
from fer.cli import app
from fer.extract.backbones import families
from fer.extract.backbones import precision as prec
from fer.extract.backbones import precision_check as check
from fer.extract.backbones.face import FaceExtractor
from fer.extract.backbones.family import Family
from fer.extract.backbones.image import ImageEncoder, Uint8Normalize
from fer.extract.backbones.registry import make_extractor
from fer.extract.datasets import load_dataset
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm


class Offset(nn.Module):
    """Features carried on a constant ``offset`` that the next layer takes off again: exact in fp32 (24-bit
    mantissa), rounded away in bf16 (8 bits: at 1e4 its steps are 64 apart) when the offset is large."""

    def __init__(self, offset: float):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(3, 8), nn.Linear(8, 8)
        with torch.no_grad():
            self.up.bias.fill_(offset)
            self.down.weight.copy_(torch.eye(8))
            self.down.bias.fill_(-offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x.mean(dim=(2, 3))))


def offset_encoder(
    name: str, weights: str | None, layer: str | None, size: int | None, seed: int
) -> ImageEncoder:
    """``offset:<offset>``; family ``torchvision``, so that ``auto`` guesses bf16 on a CPU with native
    bf16."""
    return ImageEncoder(
        backbone="offset",
        family="torchvision",
        model=Offset(float(name)).eval(),
        preprocess=Uint8Normalize((0.5,) * 3, (0.25,) * 3),
        weights={"id": "offset", "sha256": None},
        tag=f"o{float(name):g}",
        size=size or 32,
        out_shape=(8,),
        layer="pool",
    )


OFFSET = Family(
    name="offset",
    modalities=("face",),
    pattern="offset:*",
    help="offset:<offset>",
    build=offset_encoder,
    spec="face.offset.o<offset>.pool.<size>.<frames>f",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_check") / "dfew"
    synthesize(root, clips=4, seed=3, workers=1)
    return root


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU's oneDNN has no native bf16, where `auto` guesses fp32 and has nothing to check: say it has,
    so the guess is bf16 (which still runs here, emulated: the same rounding, only slower)."""
    monkeypatch.setattr(prec, "cpu_bf16_native", lambda: True)


def face(offset: float, precision: str = "auto") -> FaceExtractor:
    return FaceExtractor(
        encoder=offset_encoder(str(offset), None, None, None, 0), frames=2, precision=precision
    )


def test_drifting_bf16_falls_back_to_fp32_and_says_so(root, native_bf16, capsys):
    ex = face(1e4)
    assert ex.precision == "bf16" and ex.spec.endswith(".bf16")  # the table's guess
    ex.settle_precision(load_dataset(root).records, clips=2)
    assert ex.precision == "fp32" and not ex.spec.endswith(".bf16")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "note: --precision auto: bf16 would drift from fp32 (a cosine below 0.999) on this model's "
        "first 2 clip(s) (min cosine 0.0"
    )
    assert err.rstrip().endswith("running in fp32")
    measured = ex.provenance()["precision_check"]
    assert (
        measured["min_cosine"] < check.MIN_COSINE
        and measured["clips"] == 2
        and measured["decision"].startswith("fp32")
    )
    assert measured["fp32_s"] > 0 and measured["bf16_s"] > 0 and measured["speedup"] > 0
    assert ex.provenance()["precision"] == "fp32"


def test_faithful_bf16_is_kept(root, native_bf16, capsys):
    """Same model without the offset. This CPU emulates bf16 (slower than fp32), so the speed rule is relaxed
    here (``min_speedup=0``); the fidelity rule is the real one."""
    ex = face(0.0)
    check.settle(ex, load_dataset(root).records, clips=2, min_speedup=0.0)
    assert ex.precision == "bf16" and ex.spec.endswith(".bf16") and capsys.readouterr().err == ""
    measured = ex.provenance()["precision_check"]
    assert measured["min_cosine"] >= check.MIN_COSINE and measured["decision"] == "kept bf16"


def test_the_decision_rules():
    fast = check.PrecisionCheck("bf16", 2, 0.99995, fp32_s=1.0, reduced_s=0.4)
    assert fast.kept and fast.speedup == 2.5
    slow = check.PrecisionCheck("bf16", 2, 0.99995, fp32_s=1.0, reduced_s=2.0)
    assert not slow.kept and slow.reason() == "run slower than fp32" and slow.speedup == 0.5
    drifting = check.PrecisionCheck("fp16", 2, 0.9977, fp32_s=1.0, reduced_s=0.4)
    assert not drifting.kept and drifting.reason() == "drift from fp32 (a cosine below 0.999)"
    zeros = (torch.zeros(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]]))
    assert check.min_cosine(zeros, zeros) == 1.0  # absent tokens and all-zero rows do not count as drift


def test_a_resumed_set_keeps_its_precision_unmeasured(root, native_bf16, capsys):
    records = load_dataset(root).records
    drifting = face(1e4)
    drifting.settle_precision(records, clips=2, started=[drifting.spec])  # begun in bf16: stays so
    assert drifting.precision == "bf16" and "resumes" in drifting.provenance()["precision_check"]["decision"]
    faithful = face(0.0)
    fp32_spec = faithful.spec.removesuffix(".bf16")
    faithful.settle_precision(records, clips=2, started=[fp32_spec])  # begun in fp32 after a fall-back
    assert faithful.precision == "fp32" and faithful.spec == fp32_spec and capsys.readouterr().err == ""


def test_an_explicit_precision_is_not_second_guessed(root, native_bf16):
    ex = face(1e4, precision="bf16")
    ex.settle_precision(load_dataset(root).records, clips=2)
    assert ex.precision == "bf16" and "precision_check" not in ex.provenance()


def test_fer_extract_checks_auto_before_naming_the_set(root, native_bf16, tmp_path):
    families.register(OFFSET)
    try:
        store = tmp_path / "s.zarr"
        r = CliRunner().invoke(
            app,
            [
                "extract",
                str(root),
                "-m",
                "face",
                "--backbone",
                "offset:1e4",
                "--precision",
                "auto",
                "--frames",
                "2",
                "--store",
                str(store),
                "--workers",
                "0",
                "--no-progress",
            ],
        )
    finally:
        families.unregister(OFFSET.name)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "bf16 would drift from fp32" in r.output
    with open_store(store) as s:
        (spec,) = s.specs()
        info = s.info(spec)
    assert spec == "face.offset.o10000.pool.32.2f" and info["precision"] == "fp32"
    assert (
        info["extractor"]["precision"] == "fp32" and info["precision_check"]["min_cosine"] < check.MIN_COSINE
    )


def test_speech_encoders_are_checked_too(root, native_bf16, tmp_path):
    ex = make_extractor("audio", f"hf:{tm.hubert(tmp_path / 'hubert')}", None, "cpu", precision="auto")
    assert ex.precision == "bf16"
    check.settle(ex, load_dataset(root).records, clips=2, min_speedup=0.0)
    assert ex.spec.endswith(".mean.16k.bf16") and ex.build_args["precision"] == "bf16"
    assert ex.provenance()["precision_check"]["decision"] == "kept bf16"
