"""fer.train.model: output shapes for each fusion and input kind; masks keep absent tokens out."""

import pytest
import torch

from fer.cache.errors import FerError
from fer.train.config import TrainConfig
from fer.train.features import ModalityData
from fer.train.model import FerModel, make_batch
from fer.train.tops import build_backbone


def _sets(n=6, d=32, audio="w2v", maps=False):
    g = torch.Generator().manual_seed(0)
    face = torch.randn(n, 4, 256, 2, 2, generator=g) if maps else torch.randn(n, 16, d, generator=g)
    sets = {
        "face": ModalityData("face.x", face.half(), torch.ones(n, face.shape[1], dtype=torch.bool),
                             {"modality": "face"}),
        "pose": ModalityData("pose.x", torch.randn(n, 3, 17, 3, generator=g).half(),
                             torch.tensor([[True, False, True]] * n), {"modality": "pose"}),
    }
    if audio == "mel":
        sets["audio"] = ModalityData("audio.logmel.x", torch.randn(n, 20, 12, generator=g).half(),
                                     torch.ones(n, 20, dtype=torch.bool), {"modality": "audio", "backbone": "logmel"})
    else:
        am = torch.ones(n, 3, dtype=torch.bool)
        am[0] = False  # clip without audio
        sets["audio"] = ModalityData("audio.wav2vec2.x", torch.randn(n, 3, 24, generator=g).half(), am,
                                     {"modality": "audio", "backbone": "wav2vec2"})
    return sets


def _cfg(**kw):
    return TrainConfig(layers=1, heads=2, ff=32, hidden=16, dropout=0.0, **kw)


@pytest.mark.parametrize("fusion,mods", [("none", ("face",)), ("fc", ("face", "pose", "audio")),
                                         ("transformer", ("face", "pose", "audio")), ("fc", ("face", "audio")),
                                         ("transformer", ("face", "pose"))])
@pytest.mark.parametrize("audio", ["w2v", "mel"])
def test_output_shapes(fusion, mods, audio):
    cfg = _cfg(modalities=mods, fusion=fusion)
    sets = _sets(audio=audio)
    model = FerModel(cfg, sets, num_classes=7)
    batch = make_batch(sets, torch.arange(5), cfg)
    assert batch["face"].dtype == torch.float32
    out = model(batch)
    assert out.shape == (5, 7) and torch.isfinite(out).all()
    out.sum().backward()  # trains end to end


def test_audio_layer_choice_and_range():
    sets = _sets()
    b0 = make_batch(sets, torch.arange(4), _cfg(modalities=("face", "audio"), fusion="fc", audio_layer=0))
    bl = make_batch(sets, torch.arange(4), _cfg(modalities=("face", "audio"), fusion="fc"))
    assert torch.equal(b0["audio"], sets["audio"].data[:4, 0].float())
    assert torch.equal(bl["audio"], sets["audio"].data[:4, 2].float())  # default: the last hidden state
    with pytest.raises(FerError, match="--audio-layer 7 is out of range"):
        make_batch(sets, torch.arange(4), _cfg(modalities=("face", "audio"), fusion="fc", audio_layer=7))


def test_absent_pose_tokens_do_not_matter():
    cfg = _cfg(modalities=("face", "pose"), fusion="transformer")
    sets = _sets()
    model = FerModel(cfg, sets, num_classes=7).eval()
    batch = make_batch(sets, torch.arange(3), cfg)
    a = model(batch)
    batch["pose"][:, 1] += 100.0  # frame 1 is masked out in every clip
    assert torch.allclose(a, model(batch), atol=1e-5)


def test_heads_must_divide_width():
    with pytest.raises(FerError, match="does not divide"):
        FerModel(TrainConfig(layers=1, heads=5, ff=32), _sets(), num_classes=7)


def test_layer4_finetune_on_layer3_maps():
    sets = _sets(maps=True)
    cfg = _cfg(finetune="layer4")
    backbone = build_backbone({"weights": {"id": "random, seed 3", "sha256": None}}, log=lambda s: None)
    again = build_backbone({"weights": {"id": "random, seed 3", "sha256": None}}, log=lambda s: None)
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), again.state_dict().values()))
    model = FerModel(cfg, sets, num_classes=7, layer4=backbone.layer4)
    out = model(make_batch(sets, torch.arange(2), cfg))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert backbone.layer4[0].conv1.weight.grad is not None  # layer4 trains with the rest
    with pytest.raises(FerError, match="--finetune layer4"):
        FerModel(_cfg(), sets, num_classes=7)


def test_backbone_from_weights_file(tmp_path):
    from torchvision.models import resnet18

    from fer.cache.provenance import sha256_file

    torch.manual_seed(5)
    net = resnet18()
    path = tmp_path / "w.pt"
    torch.save({"backbone": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, path)
    got = build_backbone({"weights": {"id": str(path), "sha256": sha256_file(path)}}, log=lambda s: None)
    assert torch.equal(got.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    with pytest.raises(FerError, match="changed since the cache was made"):
        build_backbone({"weights": {"id": str(path), "sha256": "0" * 64}}, log=lambda s: None)


def test_input_norm_uses_only_valid_tokens_and_travels_in_the_state_dict():
    from fer.train.model import InputNorm

    x = torch.randn(6, 4, 3) * 0.1 + 5.0
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 3] = False
    x[:, 3] = 1e6  # padded tokens must not move the statistics
    norm = InputNorm(3)
    norm.fit([(x[:3], mask[:3]), (x[3:], mask[3:])])
    valid = x[:, :3].reshape(-1, 3).double()
    torch.testing.assert_close(norm.mean, valid.mean(0).float())
    torch.testing.assert_close(norm.std, valid.std(0, unbiased=False).float())
    assert {"mean", "std"} <= set(norm.state_dict())
    out = norm(x[:, :3])
    assert out.mean().abs() < 1e-4 and (out.std() - 1).abs() < 0.05


def test_modality_dropout_blanks_whole_faces_in_training_only():
    sets = _sets()
    cfg = TrainConfig(modalities=("face", "audio"), fusion="fc", layers=1, heads=2, ff=16, hidden=16, dropout=0.0,
                      modality_dropout=0.9)
    model = FerModel(cfg, sets, num_classes=7)
    batch = make_batch(sets, torch.arange(6), cfg)
    seen = []
    model.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    torch.manual_seed(0)
    model.train()(batch)
    model.eval()(batch)
    pos = model.pos.detach()
    train_faces, eval_faces = seen[0] - pos, seen[1] - pos
    blank = train_faces[:, :16].abs().sum((1, 2)) == 0  # a clip loses all of its face tokens, or none
    partial = (train_faces[:, :16].abs().sum(2) == 0).any(1) & ~blank
    assert blank.any() and not partial.any()
    assert not (eval_faces[:, :16].abs().sum((1, 2)) == 0).any()  # never at evaluation
    none = TrainConfig(modalities=("face",), fusion="none", modality_dropout=0.9)
    # face-only never drops its only input
    assert FerModel(none, {"face": sets["face"]}, num_classes=7).modality_dropout == 0.0


@pytest.mark.parametrize("fusion,mods", [("none", ("audio",)), ("none", ("pose",)), ("fc", ("pose", "audio")),
                                         ("transformer", ("pose", "audio")), ("fc", ("face", "pose"))])
@pytest.mark.parametrize("audio", ["w2v", "mel"])
def test_any_subset_of_modalities(fusion, mods, audio):
    """Audio alone is the standard audio-only baseline; any subset trains with any class count."""
    cfg = _cfg(modalities=mods, fusion=fusion)
    sets = {m: md for m, md in _sets(audio=audio).items() if m in mods}
    model = FerModel(cfg, sets, num_classes=11)
    batch = make_batch(sets, torch.arange(5), cfg)
    assert set(batch) == {k for m in mods for k in (m, f"{m}_mask")}
    out = model(batch)
    assert out.shape == (5, 11) and torch.isfinite(out).all()
    out.sum().backward()
    # fc without a face: the decision network sees the concatenated pose/audio, no encoder
    assert (model.encoder is None) == (fusion == "fc" and "face" not in mods)


def test_a_clip_with_every_token_absent_stays_finite():
    cfg = _cfg(modalities=("pose",), fusion="none")
    sets = _sets()
    sets["pose"].mask[:] = False  # nobody found in any frame of any clip
    out = FerModel(cfg, {"pose": sets["pose"]}, num_classes=7)(make_batch(sets, torch.arange(4), cfg))
    assert torch.isfinite(out).all()


def test_fusion_none_takes_one_modality():
    with pytest.raises(FerError, match="needs --fusion fc or transformer"):
        _cfg(modalities=("pose", "audio"), fusion="none").validate()
