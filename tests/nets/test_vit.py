"""Exactness of the cut, for every family on tiny random-weight models saved locally: the bottom gives Hugging
Face's hidden_states[K], and the top, rebuilt from the provenance alone and untrained, turns those tokens into
the very pooled feature the whole backbone gives on the frames."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer.cache.errors import FerError
from fer.extract.backbones.registry import make_extractor
from fer.nets.vit import parse_cut, resolve_block
from fer.tests.extract.backbones import tiny_models as tm
from fer.train.tops import build_top

FAMILIES = {  # name -> (backbone, weights, cut layer, pooled layer)
    "clip": ("hf:{clip}", None, "block:-1", "pool"),
    "clip-proj": ("hf:{clip}", None, "block:1:proj", "proj"),
    "dinov2": ("hf:{dinov2}", None, "block:-2", "pool"),
    "vit": ("hf:{vit}", None, "block:-2", "pool"),
    "vit-random": ("hf:{vit}", "none", "block:1", "pool"),
    "timm-mae": ("timm:vit_tiny_patch16_224", "{mae}", "block:-2", "pool"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {
        "clip": tm.clip_vision(base / "clip"),
        "dinov2": tm.dinov2(base / "dinov2"),
        "vit": tm.vit(base / "vit"),
        "mae": tm.timm_mae_checkpoint(base / "mae.pth"),
    }


def _extractor(models, backbone, weights, layer):
    return make_extractor(
        "face",
        backbone.format(**models),
        weights and weights.format(**models),
        "cpu",
        layer=layer,
        size=32 if backbone.startswith("timm") else None,
        precision="fp32",
    )


def _frames(ex, n=5):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, ex.size, ex.size), dtype=torch.uint8, generator=g)
    return ex.preprocess(x)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_top_on_cached_tokens_gives_the_whole_backbones_feature(models, family):
    backbone, weights, layer, pooled = FAMILIES[family]
    cut = _extractor(models, backbone, weights, layer)
    whole = _extractor(models, backbone, weights, pooled)
    prov = {**cut.provenance(), "extractor": cut.build_args}
    assert prov["cut"]["kind"] == "block" and cut.row_shape == (16, *cut.encoder.out_shape)
    top = build_top("top", prov, log=lambda _: None).eval()  # from the provenance alone: the weights it names
    px = _frames(cut)
    with torch.no_grad():
        tokens, ref = cut.model(px), whole.model(px)
        got = top(tokens)
        assert F.cosine_similarity(got, ref).min() >= 0.9999
        assert torch.allclose(got, ref, atol=1e-5)
        half = top(tokens.half().float())  # as the store keeps them
        assert F.cosine_similarity(half, ref).min() >= 0.9999
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b16 = top(cut.model(px)).float()
        assert F.cosine_similarity(b16, ref).min() >= 0.999


@pytest.mark.parametrize("family", ["clip", "dinov2", "vit"])
def test_bottom_gives_hugging_faces_hidden_states(models, family):
    backbone, weights, layer, _ = FAMILIES[family]
    ex = _extractor(models, backbone, weights, layer)
    k = ex.provenance()["cut"]["block"]
    hf = ex.encoder.model.model  # Bottom -> the HF wrapper -> the transformers model
    px = _frames(ex, 3)
    with torch.no_grad():
        states = hf.model(pixel_values=px, output_hidden_states=True).hidden_states
        assert len(states) == ex.provenance()["cut"]["blocks"] + 1
        assert torch.equal(ex.encoder.model(px), states[k])


def test_every_block_pooled_ends_in_the_pool_feature(models):
    every = _extractor(models, "hf:{dinov2}", None, "all")
    whole = _extractor(models, "hf:{dinov2}", None, "pool")
    px = _frames(every)
    with torch.no_grad():
        rows = every.model(px)
        assert rows.shape == (5, 3, 32) and every.spec.split(".")[3] == "all"
        assert torch.allclose(rows[:, -1], whole.model(px), atol=1e-6)
        states = whole.encoder.model.model(pixel_values=px, output_hidden_states=True).hidden_states
        assert torch.allclose(rows[:, 1], whole.encoder.model.model.layernorm(states[1])[:, 0], atol=1e-6)


def test_cut_layers_are_checked():
    assert (
        parse_cut("block:-2") == (-2, False)
        and parse_cut("block:3:proj") == (3, True)
        and parse_cut("pool") is None
    )
    assert resolve_block(-2, 12, "x") == 10 and resolve_block(12, 12, "x") == 12
    with pytest.raises(FerError, match="block:K"):
        parse_cut("block:two")
    with pytest.raises(FerError, match="out of range: x has 12 blocks"):
        resolve_block(13, 12, "x")


def test_cuts_need_a_vision_transformer(models):
    with pytest.raises(FerError, match="unknown --layer .block:-2. for mobilenet_v3_small; choose from pool"):
        make_extractor("face", "mobilenet_v3_small", "none", "cpu", layer="block:-2")
    with pytest.raises(FerError, match="proj is not available"):
        _extractor(models, "hf:{dinov2}", None, "block:1:proj")
    with pytest.raises(FerError, match="out of range"):
        _extractor(models, "hf:{vit}", None, "block:9")
