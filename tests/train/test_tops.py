"""--finetune top on a real store of a tiny saved ViT's tokens: the top rebuilt from provenance, trained whole
or
with LoRA, exported for `fer extract --weights`, guarded against other folds; --face-layer on every block."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.extract.backbones.registry import make_extractor
from fer.extract.datasets import load_dataset
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm
from fer.train.config import TrainConfig
from fer.train.fit import make_optimizer
from fer.train.model import FerModel
from fer.train.predict import predict_probs, run_features
from fer.train.run import train_run
from fer.train.tops import build_top, trainable_parameters

CLIPS = 12
TINY = {
    "folds": (1,),
    "epochs": 2,
    "layers": 1,
    "heads": 2,
    "ff": 16,
    "hidden": 16,
    "plots": False,
    "batch_size": 4,
}


def quiet(_):
    pass


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("vit-top")
    root = base / "dfew"
    synthesize(root, clips=CLIPS, seed=0, workers=1)
    vit = tm.vit(base / "tiny-vit")
    path = base / "s.zarr"
    specs = {}
    for layer in ("block:-2", "pool", "all"):
        ex = make_extractor("face", f"hf:{vit}", None, "cpu", layer=layer, frames=4, precision="fp32")
        run_extraction(load_dataset(root), ex, path, batch_size=4, workers=0, progress=False)
        specs[layer] = ex.spec
    return {"root": root, "vit": vit, "path": path, "specs": specs}


def _set(store, layer):
    with open_store(store["path"], "r") as s:
        fs = s.read(store["specs"][layer])
        return torch.from_numpy(np.asarray(fs.data)).float(), dict(s.set_attrs(store["specs"][layer]))


def test_store_holds_the_tokens_entering_block_k_and_the_top_remakes_the_pool_set(store):
    tokens, prov = _set(store, "block:-2")
    pooled, _ = _set(store, "pool")
    assert tokens.shape == (CLIPS, 4, 17, 32) and prov["cut"]["block"] == 1 and prov["cut"]["blocks"] == 3
    assert store["specs"]["block:-2"].split(".")[3] == "block1"
    top = build_top("top", prov, log=quiet).eval()
    with torch.no_grad():
        got = top(tokens.flatten(0, 1)).view(CLIPS, 4, -1)
    assert F.cosine_similarity(got.flatten(0, 1), pooled.flatten(0, 1)).min() >= 0.9999


def test_finetune_top_trains_the_blocks_and_exports_them(store, tmp_path):
    cfg = TrainConfig(
        face=store["specs"]["block:-2"], finetune="top", backbone_lr=1e-5, out=str(tmp_path / "r"), **TINY
    )
    m = train_run(cfg, store["path"], log=quiet)
    assert "1" in m["folds"]
    ck = torch.load(tmp_path / "r" / "checkpoint_fold1.pt", weights_only=True)
    assert ck["finetuned_on_fold"] == 1 and ck["lora_rank"] == 0 and ck["backbone_cut"]["block"] == 1
    assert sorted({k.split(".")[1] for k in ck["backbone"] if k.startswith("layers.")}) == ["1", "2"]
    assert "layernorm.weight" in ck["backbone"] and not any(k.startswith("layers.0.") for k in ck["backbone"])
    assert ck["backbone_base"]["weights"]["sha256"]
    feats = run_features(tmp_path / "r")
    tokens, _ = _set(store, "block:-2")
    probs = predict_probs(tmp_path / "r", {"face": (tokens[:2], torch.ones(2, 4, dtype=torch.bool))})
    assert probs.shape == (2, 7) and np.allclose(probs.sum(1), 1, atol=1e-5) and "face" in feats


def test_lora_trains_adapters_only_and_exports_them_merged(store, tmp_path):
    _, prov = _set(store, "block:-2")
    full, lora = build_top("top", prov, log=quiet), build_top("top", prov, lora=2, seed=5, log=quiet)
    assert 0 < trainable_parameters(lora) < trainable_parameters(full) / 4
    again = build_top("top", prov, lora=2, seed=5, log=quiet)
    assert all(torch.equal(a, b) for a, b in zip(lora.state_dict().values(), again.state_dict().values()))
    cfg = TrainConfig(
        face=store["specs"]["block:-2"], finetune="top", lora=2, out=str(tmp_path / "r"), **TINY
    )
    train_run(cfg, store["path"], log=quiet)
    ck = torch.load(tmp_path / "r" / "checkpoint_fold1.pt", weights_only=True)
    assert ck["lora_rank"] == 2 and ck["lora"] and all("lora_" in k for k in ck["lora"])
    base = {k: v for k, v in full.vit.native_state().items()}
    frozen = [k for k in ck["model"] if ".base_layer." in k]
    assert frozen and all(
        torch.equal(ck["model"][k], lora.state_dict()["vit." + k[len("top.vit.") :]]) for k in frozen
    )
    changed = [k for k, v in ck["backbone"].items() if not torch.equal(v, base[k])]
    assert changed and all(
        k.endswith("weight") for k in changed
    )  # the merged adapters: only linear weights move
    model = FerModel(cfg, {"face": _set_md(store)}, num_classes=7, top=lora)
    model.load_state_dict(ck["model"])
    tokens, _ = _set(store, "block:-2")
    full.vit.load_state_dict({k: ck["backbone"][full.vit.native_key(k)] for k in full.vit.state_dict()})
    with torch.no_grad():
        assert torch.allclose(model.top.eval()(tokens[:2, 0]), full.eval()(tokens[:2, 0]), atol=1e-5)


def _set_md(store):
    from fer.train.features import ModalityData

    tokens, prov = _set(store, "block:-2")
    return ModalityData(store["specs"]["block:-2"], tokens[:1], torch.ones(1, 4, dtype=torch.bool), prov)


def test_backbone_lr_is_the_tops_group(store):
    _, prov = _set(store, "block:-2")
    cfg = TrainConfig(face="x", finetune="top", lr=1e-3, backbone_lr=1e-5, **TINY)
    model = FerModel(cfg, {"face": _set_md(store)}, num_classes=7, top=build_top("top", prov, log=quiet))
    groups = make_optimizer(cfg, model).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_the_weights_must_be_the_caches(store, tmp_path, monkeypatch):
    _, prov = _set(store, "block:-2")
    prov["weights"] = {**prov["weights"], "sha256": "0" * 64}
    with pytest.raises(FerError, match="changed since the cache was made"):
        build_top("top", prov, log=quiet)
    monkeypatch.setitem(sys.modules, "peft", None)  # peft not installed
    with pytest.raises(FerError, match="pip install peft"):
        build_top("top", _set(store, "block:-2")[1], lora=4, log=quiet)
    with pytest.raises(FerError, match="--finetune top"):
        train_run(
            TrainConfig(face=store["specs"]["block:-2"], out=str(tmp_path / "x"), **TINY),
            store["path"],
            log=quiet,
        )
    with pytest.raises(FerError, match="trains the top of a backbone cut inside.*block:-2"):
        train_run(
            TrainConfig(face=store["specs"]["pool"], finetune="top", out=str(tmp_path / "y"), **TINY),
            store["path"],
            log=quiet,
        )


def test_adapted_backbone_extracts_and_the_guard_holds(store, tmp_path):
    out = tmp_path / "r"
    train_run(
        TrainConfig(face=store["specs"]["block:-2"], finetune="top", lr=1e-2, out=str(out), **TINY),
        store["path"],
        log=quiet,
    )
    ck_path = out / "checkpoint_fold1.pt"
    ex = make_extractor("face", f"hf:{store['vit']}", str(ck_path), "cpu", frames=4, precision="fp32")
    prov = ex.provenance()
    assert (
        prov["finetuned_on_fold"] == 1
        and prov["weights"]["base"]["sha256"]
        and ex.spec != store["specs"]["pool"]
    )
    run_extraction(load_dataset(store["root"]), ex, store["path"], batch_size=4, workers=0, progress=False)
    with open_store(store["path"], "r") as s:
        adapted = torch.from_numpy(np.asarray(s.read(ex.spec).data)).float()
    tokens, tprov = _set(store, "block:-2")
    ck = torch.load(ck_path, weights_only=True)
    top = build_top("top", tprov, log=quiet)
    top.vit.load_state_dict({k: ck["backbone"][top.vit.native_key(k)] for k in top.vit.state_dict()})
    with torch.no_grad():
        want = top.eval()(tokens.flatten(0, 1))
    assert (
        F.cosine_similarity(want, adapted.flatten(0, 1)).min() >= 0.999
    )  # the adapted top, inside the backbone
    with pytest.raises(FerError, match="fine-tuned on fold 1.*train only --fold 1"):
        train_run(
            TrainConfig(face=ex.spec, out=str(tmp_path / "g"), **{**TINY, "folds": (2,)}),
            store["path"],
            log=quiet,
        )


def test_face_layer_picks_or_mixes_every_block(store, tmp_path):
    spec = store["specs"]["all"]
    train_run(
        TrainConfig(face=spec, face_layer="weighted", out=str(tmp_path / "w"), **TINY),
        store["path"],
        log=quiet,
    )
    doc = json.loads((tmp_path / "w" / "face_layer_weights_fold1.json").read_text())
    assert len(doc["weights"]) == 4 and abs(sum(doc["weights"]) - 1) < 1e-5 and doc["face"] == spec
    m = train_run(
        TrainConfig(face=spec, face_layer=1, out=str(tmp_path / "one"), **TINY), store["path"], log=quiet
    )
    assert "1" in m["folds"]
    with pytest.raises(FerError, match="out of range"):
        train_run(
            TrainConfig(face=spec, face_layer=7, out=str(tmp_path / "bad"), **TINY), store["path"], log=quiet
        )
    with pytest.raises(FerError, match="--face-layer picks a block"):
        train_run(
            TrainConfig(face=store["specs"]["pool"], face_layer=1, out=str(tmp_path / "p"), **TINY),
            store["path"],
            log=quiet,
        )
