"""Every backbone family end to end on tiny real models saved locally: extract into a store, list it,
train on it, and rebuild the extractor from provenance the way `fer predict` does (same spec, same numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.cache.report import list_table
from fer.extract.backbones.registry import extractor_from_provenance, make_extractor
from fer.extract.clip import clip_features, clip_record
from fer.extract.datasets import load_dataset
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm
from fer.tests.numerics import assert_close_at_scale
from fer.train.config import TrainConfig
from fer.train.predict import predict_probs, run_features
from fer.train.run import train_run

CLIPS = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("families") / "dfew"
    synthesize(root, clips=CLIPS, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {
        "clip": tm.clip_vision(base / "tiny-clip"),
        "dinov2": tm.dinov2(base / "tiny-dinov2"),
        "mobilenet": tm.torchvision_state_dict(base / "mnv3.pth"),
        "mae": tm.timm_mae_checkpoint(base / "mae_face_pretrain_vit_tiny.pth"),
        "hubert": tm.hubert(base / "tiny-hubert"),
        "whisper": tm.whisper(base / "tiny-whisper"),
    }


def extract(root, store, modality, backbone, weights=None, **kw):
    ex = make_extractor(modality, backbone, weights, "cpu", precision=kw.pop("precision", "fp32"), **kw)
    s = run_extraction(load_dataset(root), ex, store, batch_size=4, workers=0, progress=False)
    assert s.done == CLIPS and not s.failed, s
    return ex


def train_then_predict(root, store, out, clip="00003", **cfg):
    """Train one tiny epoch on fold 1, then label one clip as `fer predict` does; the features it
    recomputes from provenance must equal the stored row."""
    cfg = {"folds": (1,), "epochs": 1, "layers": 1, "heads": 2, "ff": 16, "hidden": 16, "plots": False, **cfg}
    metrics = train_run(TrainConfig(out=str(out), **cfg), str(store), log=lambda _: None)
    assert set(metrics["folds"]) == {"1"}
    feats = run_features(out)
    inputs = clip_features(clip_record(clip, root=root), feats, device="cpu")
    with open_store(store) as s:
        row = list(s.ids).index(clip)
        for modality, meta in feats.items():
            cached = s.read(meta["spec"], rows=np.array([row]))
            np.testing.assert_allclose(inputs[modality][0].numpy(), cached.data.astype(np.float32),
                                       rtol=2e-3, atol=2e-3)
    probs = predict_probs(out, inputs)
    assert probs.shape == (1, 7) and np.isclose(probs.sum(), 1.0, atol=1e-5)
    return feats


# ---------------------------------------------------------------- images
def test_clip_pool_and_projection_next_to_resnet18_train_by_spec(root, models, tmp_path):
    store = tmp_path / "f.zarr"
    bb = f"hf:{models['clip']}"
    pool = extract(root, store, "face", bb)
    proj = extract(root, store, "face", bb, layer="proj")
    rn = extract(root, store, "face", "resnet18", "none", size=32, frames=4)
    assert pool.spec.startswith("face.hf-clip.tiny-clip-") and pool.spec.endswith(".pool.32.16f")
    assert proj.spec.endswith(".proj.32.16f") and pool.row_shape == (16, 32) and proj.row_shape == (16, 16)
    with open_store(store) as s:
        table = list_table(s)
        info = s.info(pool.spec)
    assert pool.spec in table and proj.spec in table and rn.spec in table
    assert info["backbone"] == "hf-clip" and info["weights"]["sha256"] and info["precision"] == "fp32"
    assert "CLIPImageProcessor" in info["preprocessing"] and info["extractor"]["backbone"] == bb
    for spec in (pool.spec, proj.spec, rn.spec):  # one store, any of its face sets by spec
        feats = train_then_predict(root, store, tmp_path / f"run-{spec}", face=spec)
        assert feats["face"]["spec"] == spec


def test_clip_features_are_the_processor_and_model_own(root, models):
    """The stored numbers are exactly HF's: its CLIPImageProcessor, then CLIPVisionModel's pooler output."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    ex = make_extractor("face", f"hf:{models['clip']}", None, "cpu", layer="proj", frames=4, precision="fp32")
    item = ex.load(load_dataset(root).records[0])
    got, _ = ex.embed([item])
    proc = CLIPImageProcessor.from_pretrained(models["clip"])
    model = CLIPVisionModelWithProjection.from_pretrained(models["clip"]).eval()
    frames = [f.numpy() for f in item[0]]  # (H, W, 3) uint8 frames, as a user would pass images
    with torch.inference_mode():
        want = model(**proc(images=frames, return_tensors="pt")).image_embeds
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


def test_dinov2(root, models, tmp_path):
    store = tmp_path / "d.zarr"
    ex = extract(root, store, "face", f"hf:{models['dinov2']}")
    assert ex.spec.startswith("face.hf-dinov2.tiny-dinov2-") and ex.row_shape == (16, 32)
    assert "crop_size={'height': 32, 'width': 32}" in ex.provenance()["preprocessing"]
    train_then_predict(root, store, tmp_path / "run")


def test_torchvision_model_equals_torchvision_own_forward(root, models, tmp_path):
    """mobilenet_v3_small by state dict: the stored features are torchvision's own forward (classifier's last
    Linear removed) on the same frames after the weights' own transforms()."""
    from torchvision.models import MobileNet_V3_Small_Weights, get_model

    from fer.extract.frames import read_face_frames

    store = tmp_path / "t.zarr"
    ex = extract(root, store, "face", "mobilenet_v3_small", str(models["mobilenet"]), frames=2)
    assert ex.spec.startswith("face.mobilenet_v3_small.mnv3-") and ex.spec.endswith(".pool.224.2f")
    assert ex.row_shape == (2, 1024)
    ref = get_model("mobilenet_v3_small", weights=None)
    ref.load_state_dict(torch.load(models["mobilenet"], weights_only=True))
    ref.classifier[3] = torch.nn.Identity()
    ref.eval()
    transforms = MobileNet_V3_Small_Weights.DEFAULT.transforms()
    ds = load_dataset(root)
    with open_store(store) as s:
        stored = s.read(ex.spec)
    for row in (0, 5):
        frames, _ = read_face_frames(ds.records[row], 2, 224)
        with torch.inference_mode():
            want = ref(transforms(torch.from_numpy(frames).permute(0, 3, 1, 2)))
            got, _ = ex.embed([ex.load(ds.records[row])])
        assert_close_at_scale(got[0], want)  # fp32, features up to ~500: 1e-4 absolute was one CPU's rounding
        np.testing.assert_allclose(stored.data[row].astype(np.float32), want.numpy(), rtol=2e-3, atol=2e-3)
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in ex.provenance()["preprocessing"]
    train_then_predict(root, store, tmp_path / "run")


def test_timm_vit_from_an_mae_style_checkpoint(root, models, tmp_path):
    store = tmp_path / "m.zarr"
    ex = extract(root, store, "face", "timm:vit_tiny_patch16_224", str(models["mae"]), size=32)
    assert (ex.spec.startswith("face.timm-vit_tiny_patch16_224.mae_face_pretrain_vit_tiny-")
            and ex.row_shape == (16, 192))
    prov = ex.provenance()
    assert "MAE decoder" in prov["timm"]["ignored_keys"] and "mean [0.5, 0.5, 0.5]" in prov["preprocessing"]
    train_then_predict(root, store, tmp_path / "run")


def test_timm_checkpoint_checks(models, tmp_path):
    state = torch.load(models["mae"], weights_only=True)["model"]
    extra = dict(state, **{"blocks.0.attn.extra": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(FerError, match="unexpected keys such as blocks.0.attn.extra"):
        make_extractor("face", "timm:vit_tiny_patch16_224", str(tmp_path / "extra.pth"), "cpu", size=32)
    lacking = {k: v for k, v in state.items() if k != "norm.weight"}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(FerError, match="lacks keys such as norm.weight"):
        make_extractor("face", "timm:vit_tiny_patch16_224", str(tmp_path / "lacking.pth"), "cpu", size=32)
    # a checkpoint of another input size: its position embedding is resampled to the model's grid
    ex = make_extractor("face", "timm:vit_tiny_patch16_224", str(models["mae"]), "cpu", size=48, frames=2)
    assert ex.provenance()["timm"]["pos_embed"] == "resampled from a 2x2 to a 3x3 patch grid (bicubic)"
    # MAE's fine-tuning layout (global pool: fc_norm, no norm) builds the model that way
    gp = {("fc_norm" + k[4:] if k.startswith("norm.") else k): v for k, v in state.items()}
    torch.save({"model": gp}, tmp_path / "gp.pth")
    ex = make_extractor("face", "timm:vit_tiny_patch16_224", str(tmp_path / "gp.pth"), "cpu", size=32, frames=2)
    assert ex.provenance()["timm"]["global_pool"].startswith("avg")


# ---------------------------------------------------------------- audio
def _store_with_face(root, store):
    return extract(root, store, "face", "resnet18", "none", size=32, frames=2)


def test_hubert_every_layer_and_the_learned_layer_mix(root, models, tmp_path):
    store = tmp_path / "h.zarr"
    _store_with_face(root, store)
    ex = extract(root, store, "audio", f"hf:{models['hubert']}")
    assert ex.spec.startswith("audio.hubert.tiny-hubert-") and ex.spec.endswith(".mean.16k") and ex.row_shape == (3, 32)
    out = tmp_path / "run"
    train_then_predict(root, store, out, modalities=("face", "audio"), fusion="fc", audio_layer="weighted", plots=True)
    doc = json.loads((out / "layer_weights_fold1.json").read_text())
    assert len(doc["weights"]) == 3 and abs(sum(doc["weights"]) - 1) < 1e-5 and doc["audio"] == ex.spec
    assert doc["weights"] != [1 / 3] * 3  # learned, not the uniform start
    assert (out / "plots" / "layer_weights.png").stat().st_size > 0


def test_whisper_encoder_window_mask_and_cap(root, models, tmp_path):
    store = tmp_path / "w.zarr"
    _store_with_face(root, store)
    ex = extract(root, store, "audio", f"hf:{models['whisper']}")
    assert ex.spec.startswith("audio.whisper.tiny-whisper-") and ex.spec.endswith(".mean.16k.max5s")
    assert ex.row_shape == (3, 32) and ex.max_seconds == 5.0
    # pooled over the frames the audio covers: a clip alone equals the clip in a batch with another
    recs = load_dataset(root).records
    a, b = ex.load(recs[0]), ex.load(recs[1])
    both, mask = ex.embed([a, b])
    alone, _ = ex.embed([a])
    torch.testing.assert_close(alone[0], both[0], rtol=1e-4, atol=1e-5)
    assert mask.all() and a[0][1] < 250  # synthetic clips are shorter than the 5 s window
    train_then_predict(root, store, tmp_path / "run", modalities=("face", "audio"), fusion="fc")


# ---------------------------------------------------------------- weights none, offline, names
@pytest.mark.parametrize("modality,key,backbone", [
    ("face", "clip", "hf:{}"), ("face", "dinov2", "hf:{}"), ("face", None, "mobilenet_v3_small"),
    ("face", None, "timm:vit_tiny_patch16_224"), ("audio", "hubert", "hf:{}"), ("audio", "whisper", "hf:{}"),
])
def test_weights_none_for_every_family(models, modality, key, backbone):
    bb = backbone.format(models[key]) if key else backbone
    kw = {"size": 32, "frames": 2} if modality == "face" else {}
    a = make_extractor(modality, bb, "none", "cpu", seed=3, **kw)
    b = make_extractor(modality, bb, "none", "cpu", seed=3, **kw)
    assert "none-s3" in a.spec and a.provenance()["weights"]["id"] == "random, seed 3"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_models_offline_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for modality, backbone in [("face", "hf:facebook/dinov2-base"), ("face", "convnext_tiny"),
                               ("face", "timm:vit_base_patch16_224.mae"), ("audio", "hf:microsoft/wavlm-base-plus")]:
        with pytest.raises(FerError) as e:
            make_extractor(modality, backbone, None, "cpu")
        msg = str(e.value)
        assert f"fer weights fetch --backbone {backbone}" in msg and "\n" not in msg, msg


def test_unknown_backbones_are_one_line_errors(models):
    for modality, backbone, message in [
        ("face", "resnet-18", "not a torchvision classification model"),
        ("face", "timm:no_such_net", "unknown timm model"),
        ("face", "hf:", "names no model"),
        ("audio", "hubert", "unknown audio backend"),
        ("audio", "timm:vit_tiny_patch16_224", "is an image model"),
        ("audio", f"hf:{models['clip']}", "not a speech encoder"),
    ]:
        with pytest.raises(FerError, match=message):
            make_extractor(modality, backbone, None, "cpu")
    with pytest.raises(FerError, match="--layer proj is not available"):
        make_extractor("face", f"hf:{models['dinov2']}", None, "cpu", layer="proj")
    with pytest.raises(FerError, match="does not run on 40x40"):
        make_extractor("face", "vit_b_16", "none", "cpu", size=40)


def test_old_provenance_without_precision_rebuilds_fp32(models):
    ex = make_extractor("face", f"hf:{models['clip']}", None, "cpu", frames=2, precision="fp32")
    args = {k: v for k, v in ex.build_args.items() if k != "precision"}
    again = extractor_from_provenance({"extractor": args}, "cpu")
    assert again.precision == "fp32" and again.spec == ex.spec


def test_relative_paths_are_recorded_absolute(models, monkeypatch):
    """`fer predict` runs from any folder: a model folder or weights file given relative is recorded absolute."""
    monkeypatch.chdir(models["clip"].parent)
    ex = make_extractor("face", "hf:tiny-clip", None, "cpu", frames=2)
    assert ex.build_args["backbone"] == f"hf:{models['clip'].resolve()}"
    ex = make_extractor("face", "timm:vit_tiny_patch16_224", models["mae"].name, "cpu", size=32, frames=2)
    assert (ex.build_args["weights"] == str(models["mae"].resolve())
            and ex.provenance()["weights"]["id"] == ex.build_args["weights"])
