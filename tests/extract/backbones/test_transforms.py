"""The checkpoint's own preprocessing: a torchvision file is recognised by its sha256 (the hash torchvision
puts in its file names), an unrecognised one gets the default entry's transforms with a note, and --transforms
names another (torchvision entry, timm pretrained tag, HF processor); the spec and provenance say which."""

from __future__ import annotations

import shutil

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, Weights, WeightsEnum, get_model
from typer.testing import CliRunner

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.cache.provenance import sha256_file
from fer.cli import app
from fer.extract.backbones.registry import extractor_from_provenance, make_extractor
from fer.extract.backbones.torchvision_models import own_entry, recognise
from fer.extract.backbones.weights import WeightsIdentity
from fer.extract.datasets import load_dataset
from fer.extract.frames import read_face_frames
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm

V1, V2 = MobileNet_V2_Weights.IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V2  # resize 256 | 232, crop 224
URL = "https://download.pytorch.org/models"
RESIZE_256, RESIZE_232 = V1.transforms, V2.transforms


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("transforms") / "dfew"
    synthesize(root, clips=4, seed=2, workers=1)
    return root


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory):
    """A MobileNetV2 state dict saved under the name of torchvision's IMAGENET1K_V1 file (its content is not
    that file's: nobody can make a file whose sha256 starts with b0353104)."""
    folder = tmp_path_factory.mktemp("mnv2")
    return tm.torchvision_state_dict(folder / "mobilenet_v2-b0353104.pth", "mobilenet_v2")


def toy_weights(first: str) -> type:
    """A weights enum laid out as torchvision's are, whose V1 file name carries the hash ``first``."""
    class ToyNet_Weights(WeightsEnum):
        V1 = Weights(url=f"{URL}/toynet-{first}.pth", transforms=RESIZE_256, meta={})
        V2 = Weights(url=f"{URL}/toynet-0123abcd.pth", transforms=RESIZE_232, meta={})
        DEFAULT = V2

    return ToyNet_Weights


def test_a_file_is_recognised_by_its_sha256_whatever_its_name(mnv2, tmp_path, capsys):
    """A real file and its real sha256: an enum whose entry's file name carries the first 8 hex digits of that
    sha256 (as every torchvision URL does for its own file) recognises it under any name."""
    renamed = shutil.copy(mnv2, tmp_path / "my-checkpoint.pth")
    sha = sha256_file(renamed)
    cls = toy_weights(sha[:8])
    ident = WeightsIdentity(str(renamed), sha, "x")
    assert recognise(cls, sha) is cls.V1
    entry, why, note = own_entry(cls, ident)
    assert entry is cls.V1 and note is None and f"starts with {sha[:8]}" in why
    assert entry.transforms().resize_size == [256]
    other = toy_weights("fedcba98")  # no entry's hash is the file's: the default entry, and a note naming it
    entry, why, note = own_entry(other, ident)
    assert entry is other.DEFAULT and "not recognised" in why
    assert "my-checkpoint.pth is none of torchvision's ToyNet_Weights files" in note
    assert "ToyNet_Weights.V2 (resize 232, crop 224)" in note and "--transforms NAME" in note
    assert "\n" not in note
    assert recognise(MobileNet_V2_Weights, sha) is None


def test_an_unrecognised_torchvision_file_gets_the_default_transforms_and_a_note(mnv2, capsys):
    ex = make_extractor("face", "mobilenet_v2", str(mnv2), "cpu", frames=2, precision="fp32")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "note: mobilenet_v2-b0353104.pth is none of torchvision's MobileNet_V2_Weights files" in err
    assert "named like IMAGENET1K_V1's file but its content differs" in err
    assert "IMAGENET1K_V2 (resize 232, crop 224); pass --transforms NAME" in err
    prov = ex.provenance()
    assert prov["transforms"]["entry"] == "MobileNet_V2_Weights.IMAGENET1K_V2"
    assert "resize [232]" in prov["preprocessing"]
    sha = ex.encoder.weights["sha256"]
    # the hash in its name is not its own: both are said
    assert ex.spec == f"face.mobilenet_v2.mobilenet_v2-b0353104-{sha[:8]}.pool.224.2f"
    again = extractor_from_provenance({"extractor": ex.build_args}, "cpu")  # `fer predict`: same set, no note
    assert again.spec == ex.spec and capsys.readouterr().err == ""


def test_transforms_names_the_entry_and_the_features_are_torchvision_own(root, mnv2, capsys):
    ex = make_extractor("face", "mobilenet_v2", str(mnv2), "cpu", frames=2, precision="fp32",
                        transforms="imagenet1k_v1")
    assert capsys.readouterr().err == ""  # asked for: nothing to note
    assert ex.spec.endswith("+imagenet1k_v1.pool.224.2f")
    assert ex.provenance()["transforms"] == {
        "entry": "MobileNet_V2_Weights.IMAGENET1K_V1",
        "chosen": "named with --transforms (the weights alone: IMAGENET1K_V2)"}
    ref = get_model("mobilenet_v2", weights=None)
    ref.load_state_dict(torch.load(mnv2, weights_only=True))
    ref.classifier[1] = torch.nn.Identity()
    record = load_dataset(root).records[0]
    frames = torch.from_numpy(read_face_frames(record, 2, 224)[0]).permute(0, 3, 1, 2)
    with torch.inference_mode():
        got = ex.embed([ex.load(record)])[0][0]
        own, other = ref.eval()(V1.transforms()(frames)), ref(V2.transforms()(frames))
    torch.testing.assert_close(got, own, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(got, other, rtol=1e-3, atol=1e-3)  # the entries' transforms really differ
    same = make_extractor("face", "mobilenet_v2", str(mnv2), "cpu", frames=2, precision="fp32",
                          transforms="IMAGENET1K_V2")
    assert "+" not in same.spec  # the entry the file gets anyway: same numbers, same name
    with pytest.raises(FerError, match="--transforms V3 is not an entry of MobileNet_V2_Weights; choose from "
                                       "IMAGENET1K_V1, IMAGENET1K_V2"):
        make_extractor("face", "mobilenet_v2", str(mnv2), "cpu", transforms="V3")


def test_a_weights_entry_by_name_gets_its_own_transforms(mnv2, tmp_path, monkeypatch):
    """Review finding: `--weights IMAGENET1K_V1` was preprocessed with the DEFAULT (V2) entry's transforms."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(mnv2, tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    ex = make_extractor("face", "mobilenet_v2", "IMAGENET1K_V1", "cpu", frames=2, precision="fp32")
    assert ex.provenance()["transforms"]["entry"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert "resize [256]" in ex.provenance()["preprocessing"] and ".imagenet1k_v1.pool." in ex.spec


def test_a_name_that_carries_its_own_hash_says_it_once(mnv2, tmp_path):
    sha = sha256_file(mnv2)
    named = shutil.copy(mnv2, tmp_path / f"mnv2-{sha[:8]}.pth")
    ex = make_extractor("face", "mobilenet_v2", str(named), "cpu", frames=2, precision="fp32")
    assert f".mnv2-{sha[:8]}.pool." in ex.spec


def test_timm_the_named_tag_default_tag_with_a_note_or_transforms(tmp_path, capsys):
    mae = tm.timm_mae_checkpoint(tmp_path / "mae.pth")
    vit = "timm:vit_tiny_patch16_224"
    ex = make_extractor("face", vit, str(mae), "cpu", size=32, frames=2, precision="fp32")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no pretrained tag" in err
    assert "timm's default tag vit_tiny_patch16_224.augreg_in21k_ft_in1k" in err and "--transforms TAG" in err
    assert ex.provenance()["transforms"]["pretrained_tag"] == "augreg_in21k_ft_in1k" and "+" not in ex.spec
    tagged = make_extractor("face", f"{vit}.augreg_in21k", str(mae), "cpu", size=32, frames=2)
    assert capsys.readouterr().err == ""
    assert tagged.provenance()["transforms"]["pretrained_tag"] == "augreg_in21k"
    named = make_extractor("face", vit, str(mae), "cpu", size=32, frames=2, transforms="augreg_in21k")
    assert named.spec.endswith("+augreg_in21k.pool.32.2f") and "vit_tiny_patch16_224.augreg_in21k:" in \
        named.provenance()["preprocessing"]
    with pytest.raises(FerError, match=f"not a pretrained tag of {vit}; choose from augreg_in21k"):
        make_extractor("face", vit, str(mae), "cpu", size=32, transforms="mae")


def test_hf_the_processor_saved_beside_the_weights_or_the_one_named(tmp_path):
    clip = tm.clip_vision(tmp_path / "clip")
    bare = shutil.copytree(clip, tmp_path / "bare", ignore=shutil.ignore_patterns("preprocessor_config.json"))
    with pytest.raises(FerError, match="has no image processor config .* --transforms <id or folder>"):
        make_extractor("face", f"hf:{bare}", None, "cpu", frames=2)
    ex = make_extractor("face", f"hf:{bare}", None, "cpu", frames=2, transforms=str(clip), precision="fp32")
    assert ex.spec.startswith("face.hf-clip.bare-") and "+clip.pool.32.2f" in ex.spec
    assert ex.provenance()["transforms"] == {"processor": str(clip.resolve()),
                                             "chosen": "named with --transforms"}
    own = make_extractor("face", f"hf:{clip}", None, "cpu", frames=2, precision="fp32")
    assert own.provenance()["transforms"]["chosen"] == "the image processor saved with the model"


def test_transforms_is_an_extract_option_for_the_families_that_take_it(root, mnv2, tmp_path):
    store = tmp_path / "s.zarr"
    r = CliRunner().invoke(app, ["extract", str(root), "-m", "face", "--backbone", "mobilenet_v2",
                                 "--weights", str(mnv2), "--transforms", "IMAGENET1K_V1", "--frames", "2",
                                 "--limit", "1", "--store", str(store), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, (r.output, r.exception)
    with open_store(store) as s:
        (spec,) = s.specs()
        info = s.info(spec)
    assert "+imagenet1k_v1" in spec and info["extractor"]["transforms"] == "IMAGENET1K_V1"
    for modality, backbone, message in [("face", "resnet18", "--transforms does not apply to resnet18"),
                                        ("audio", "mel", "--transforms applies to the face modality only")]:
        with pytest.raises(FerError, match=message):
            make_extractor(modality, backbone, "none", "cpu", transforms="IMAGENET1K_V1")
