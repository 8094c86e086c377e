"""--audio-layer weighted: the learned softmax mix of every stored audio layer."""

import pytest
import torch

from fer.cache.errors import FerError
from fer.train.config import TrainConfig, parse_audio_layer
from fer.train.features import ModalityData
from fer.train.layer_mix import LayerMix
from fer.train.model import FerModel, InputNorm, make_batch
from fer.train.sweep import parse_grid


def test_parse():
    assert parse_audio_layer(None) is None and parse_audio_layer("last") is None
    assert parse_audio_layer("3") == 3 and parse_audio_layer("-1") == -1 and parse_audio_layer("Weighted") == "weighted"
    with pytest.raises(FerError, match="give a layer index"):
        parse_audio_layer("middle")
    grid, _ = parse_grid({"audio_layer": "weighted,0,last"})
    assert grid["audio_layer"] == ["weighted", 0, None]
    with pytest.raises(FerError, match="--audio-layer 'mid'"):
        TrainConfig(audio_layer="mid").validate()


def test_mix_standardises_each_layer_then_weighs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, 6, generator=g) * torch.tensor([1.0, 10.0, 100.0, 0.1]).view(1, 4, 1) + 5
    mask = torch.ones(50, dtype=torch.bool)
    mask[:5] = False  # clips without audio do not count
    mix = LayerMix(4, 6, InputNorm(24))
    mix.fit([(x[:20], mask[:20]), (x[20:], mask[20:])])
    ref = x[5:].double()
    mean, std = mix.norm.mean.view(4, 6), mix.norm.std.view(4, 6)
    torch.testing.assert_close(mean, ref.mean(0).float())
    torch.testing.assert_close(std, ref.std(0, unbiased=False).float(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(mix.weights(), torch.full((4,), 0.25))
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))  # all weight on layer 2
    torch.testing.assert_close(mix(x[:3]), ((x[:3, 2] - mean[2]) / std[2]), rtol=1e-4, atol=1e-4)


def test_model_learns_the_layer_weights():
    n = 16
    g = torch.Generator().manual_seed(0)
    sets = {"face": ModalityData("face.x", torch.randn(n, 4, 8, generator=g), torch.ones(n, 4, dtype=torch.bool), {}),
            "audio": ModalityData("audio.hubert.x", torch.randn(n, 5, 12, generator=g),
                                  torch.ones(n, 5, dtype=torch.bool), {"backbone": "hf:x"})}
    cfg = TrainConfig(modalities=("face", "audio"), fusion="fc", audio_layer="weighted", layers=1, heads=2, ff=16,
                      hidden=8)
    model = FerModel(cfg, sets, num_classes=7)
    batch = make_batch(sets, torch.arange(6), cfg)
    assert batch["audio"].shape == (6, 5, 12) and batch["audio_mask"].shape == (6,)
    def chunks(m):  # what a batch source's norm_chunks gives: the stored tokens with their masks
        b = make_batch(sets, torch.arange(n), cfg, modalities=(m,))
        yield b[m], b[f"{m}_mask"]

    model.fit_input_norm(chunks)
    model(batch).sum().backward()
    assert model.audio_norm.logits.grad is not None and model.audio_norm.logits.grad.abs().sum() > 0
    mel = {**sets, "audio": ModalityData("audio.mel.64", torch.randn(n, 30, 64), torch.ones(n, 30, dtype=torch.bool),
                                         {"backbone": "mel"})}
    with pytest.raises(FerError, match="mixes the layers of a speech encoder"):
        FerModel(cfg, mel, num_classes=7)
