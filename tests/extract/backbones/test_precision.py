"""Precision: resolution per device (native bf16 only), names in the spec and provenance, rebuild by `fer predict`."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fer.cache.errors import FerError
from fer.extract.backbones import precision as prec
from fer.extract.backbones.registry import extractor_from_provenance, make_extractor
from fer.tests.extract.backbones import tiny_models as tm


def test_resolution_on_cpu(monkeypatch):
    monkeypatch.delenv("FER_PRECISION", raising=False)
    with pytest.raises(FerError, match="unknown --precision 'fp64'"):
        prec.resolve_precision("fp64", "cpu", "torchvision")
    assert prec.resolve_precision("fp32", "cpu", "x") == "fp32"
    assert prec.resolve_precision("bf16", "cpu", "x") == "bf16"  # asked for: runs, emulated if need be
    monkeypatch.setattr(prec, "CPU_BF16_FAMILIES", frozenset({"torchvision"}))
    monkeypatch.setattr(prec, "cpu_bf16_native", lambda: True)
    assert prec.resolve_precision("auto", "cpu", "torchvision") == "bf16"
    assert prec.resolve_precision("auto", "cpu", "hf-vision") == "fp32"  # not measured faster: fp32
    monkeypatch.setattr(prec, "cpu_bf16_native", lambda: False)
    assert prec.resolve_precision(None, "cpu", "torchvision") == "fp32"  # no native bf16 kernels
    monkeypatch.setattr(prec, "cpu_bf16_native", lambda: True)
    monkeypatch.setenv("FER_PRECISION", "fp32")
    assert prec.resolve_precision(None, "cpu", "torchvision") == "fp32"  # the site default wins over auto
    assert prec.resolve_precision("auto", "cpu", "torchvision") == "bf16"  # an explicit option wins over it


def test_cuda_asks_the_extractors_own_device_without_emulation(monkeypatch):
    """Review finding: is_bf16_supported() counted emulated bf16 (V100/T4) and asked the current device."""
    asked = []

    @contextlib.contextmanager
    def on_device(d):
        asked.append(("device", torch.device(d)))
        yield

    def supported(including_emulation=True):
        asked.append(("emulation", including_emulation))
        return native[0]

    native = [False]
    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert prec.resolve_precision("auto", torch.device("cuda:1"), "resnet18") == "fp16"
    assert asked == [("device", torch.device("cuda:1")), ("emulation", False)]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Tesla T4")
    with pytest.raises(FerError, match="Tesla T4 has no native bf16"):
        prec.resolve_precision("bf16", torch.device("cuda:0"), "resnet18")
    native[0] = True
    assert prec.resolve_precision("auto", torch.device("cuda:0"), "resnet18") == "bf16"


def test_cuda_settings_for_fixed_size_batches():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        prec.prepare_device(torch.device("cuda"), "fp32")
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32  # fp32 features stay fp32 under their fp32 name
        torch.backends.cudnn.benchmark = False
        prec.prepare_device(torch.device("cuda"), "bf16", fixed_shapes=False)  # audio of every length: no autotuning
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(0, -2).float(), b.flatten(0, -2).float(), dim=-1)


@pytest.mark.parametrize("backbone", ["resnet18", "clip"])
def test_bf16_is_in_the_spec_and_provenance_and_rebuilt_as_such(tmp_path, backbone):
    bb = f"hf:{tm.clip_vision(tmp_path / 'clip')}" if backbone == "clip" else "resnet18"
    kw = {"frames": 2, "size": 32} if backbone == "resnet18" else {"frames": 2}
    fp32 = make_extractor("face", bb, "none", "cpu", precision="fp32", **kw)
    bf16 = make_extractor("face", bb, "none", "cpu", precision="bf16", **kw)
    assert bf16.spec == fp32.spec + ".bf16"
    prov = bf16.provenance()
    assert prov["precision"] == "bf16" and "autocast" in prov["compute"] and bf16.build_args["precision"] == "bf16"
    item = (torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8), None)
    a, b = fp32.embed([item])[0], bf16.embed([item])[0]
    assert b.dtype == torch.float32 and _cos(a, b).min() > 0.99
    again = extractor_from_provenance({"extractor": bf16.build_args}, "cpu")
    assert again.spec == bf16.spec and torch.equal(again.embed([item])[0], b)


def test_audio_precision_suffix(tmp_path):
    folder = tm.hubert(tmp_path / "h")
    ex = make_extractor("audio", f"hf:{folder}", None, "cpu", precision="bf16")
    assert ex.spec.endswith(".mean.16k.bf16") and ex.provenance()["precision"] == "bf16"
    with pytest.raises(FerError, match="mel audio backend runs in fp32"):
        make_extractor("audio", "mel", None, "cpu", precision="bf16")


def test_maps_leave_the_device_as_fp16():
    ex = make_extractor("face", "resnet18", "none", "cpu", layer="layer3", size=64, frames=2, precision="fp32")
    data, _ = ex.embed([(torch.zeros(2, 64, 64, 3, dtype=torch.uint8), None)])
    assert data.dtype == torch.float16 and tuple(data.shape[1:]) == ex.row_shape
