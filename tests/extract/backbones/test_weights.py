"""Weights resolution: the real torchvision loader on local files, random init, offline errors."""

import pytest
import torch
from torchvision.models import resnet18

from fer.cache.errors import FerError
from fer.extract.backbones.families import fetch_all
from fer.extract.backbones.torchvision_models import build_resnet18
from fer.extract.backbones.weights import read_state_dict, sha256_file


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("FER_OFFLINE", "1")
    return home


def test_imagenet_missing_offline_names_file_url_and_place(empty_torch_home):
    with pytest.raises(FerError) as e:
        build_resnet18("imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(empty_torch_home / "hub" / "checkpoints") in msg
    assert "fer weights fetch" in msg


def test_imagenet_from_torch_home_cache(empty_torch_home):
    # a file at the exact cache path is used by the real loader, no download
    ref = resnet18()
    ckpt = empty_torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt / "resnet18-f37072fd.pth")
    model, ident = build_resnet18("imagenet")
    assert ident.id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert ident.sha256 == sha256_file(ckpt / "resnet18-f37072fd.pth")
    assert ident.tag == "imagenet"
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


def test_truncated_cache_file_is_a_clear_error(empty_torch_home):
    ckpt = empty_torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet18-f37072fd.pth").write_bytes(b"not a zip")
    with pytest.raises(FerError, match="unreadable or truncated"):
        build_resnet18("imagenet")


def test_path_state_dict_and_train_checkpoint(tmp_path):
    ref = resnet18()
    sd = tmp_path / "my_backbone.pt"
    torch.save(ref.state_dict(), sd)
    model, ident = build_resnet18(str(sd))
    assert torch.equal(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert ident.sha256 == sha256_file(sd) and ident.tag.startswith("my_backbone-")
    # a `fer train` checkpoint: {"backbone": state dict without fc, ...}
    ckpt = tmp_path / "run.pt"
    backbone = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save({"backbone": backbone, "epoch": 3}, ckpt)
    model2, _ = build_resnet18(str(ckpt))
    assert torch.equal(model2.bn1.running_var, ref.bn1.running_var)
    assert read_state_dict(ckpt).keys() == backbone.keys()


def test_path_errors(tmp_path):
    with pytest.raises(FerError, match="neither a file nor one of"):
        build_resnet18(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(FerError, match="does not fit"):
        build_resnet18(str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(FerError, match="cannot read weights file"):
        build_resnet18(str(junk))


def test_none_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, ia = build_resnet18("none", seed=0)
    after = torch.rand(1)
    b, _ = build_resnet18("none", seed=0)
    c, ic = build_resnet18("none", seed=1)
    assert torch.equal(before, after)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert ia.id == "random, seed 0" and ia.sha256 is None and ic.tag == "none-s1"


def test_fetch_offline_reports_every_failure(empty_torch_home):
    lines = []
    with pytest.raises(FerError, match="not fetched"):
        fetch_all(["face"], echo=lines.append)
    assert len(lines) == 1 and "resnet18-f37072fd.pth" in lines[0]
    with pytest.raises(FerError, match="unknown modality"):
        fetch_all(["smell"])
