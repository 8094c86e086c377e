"""All-frame face sets (`--frames all [--max-frames N] [--flip]`) from every image family: shape, mask and zero
padding on synthetic DFEW data, the cap's note, the mirrored view, sub-batching, the fallbacks, predict."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.extract.backbones.face import FaceExtractor
from fer.extract.backbones.registry import extractor_from_provenance, make_extractor
from fer.extract.clip import clip_features, clip_record
from fer.extract.datasets import load_dataset
from fer.extract.datasets.records import ClipRecord
from fer.extract.frames import list_frames
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm
from fer.train.config import TrainConfig
from fer.train.predict import predict_probs, run_features
from fer.train.run import train_run

CLIPS = 8
CAP = 28  # the synthetic clips hold 20-34 frames: some are cut to the cap, some padded


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames") / "dfew"
    synthesize(root, clips=CLIPS, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def counts(root):
    """Frames in each clip's all-frames folder, in store row order."""
    return [len(list_frames(r.faces_all)) for r in load_dataset(root).records]


def rn18(**kw):
    return make_extractor("face", "resnet18", "none", "cpu", size=32, precision="fp32", **kw)


def extract(root, store, ex):
    s = run_extraction(load_dataset(root), ex, store, batch_size=3, workers=0, progress=False)
    assert s.done == CLIPS and not s.failed, s
    return s


def test_all_frame_set_is_every_frame_then_zero_padding_with_the_cap_recorded(root, counts, tmp_path):
    assert min(counts) < CAP < max(counts)
    store = tmp_path / "a.zarr"
    ex = rn18(frames="all", max_frames=CAP)
    extract(root, store, ex)
    assert ex.spec == f"face.resnet18.none-s0.pool.32.all{CAP}f" and ex.row_shape == (CAP, 512)
    with open_store(store) as s:
        fs, info = s.read(ex.spec), s.info(ex.spec)
    assert fs.data.shape == (CLIPS, CAP, 512)
    assert info["frames"] == "all" and info["max_frames"] == CAP and "views" not in info
    assert info["extractor"]["frames"] == "all" and info["extractor"]["max_frames"] == CAP
    notes = info.get("row_info") or {}
    ids = list(load_dataset(root).ids)
    for i, n in enumerate(counts):
        k = min(n, CAP)
        assert fs.mask[i].tolist() == [True] * k + [False] * (CAP - k)
        assert not fs.data[i, k:].any() and (np.abs(fs.data[i, :k]).sum(axis=1) > 0).all()
        assert notes.get(ids[i]) == (f"sampled {CAP} of {n} frames" if n > CAP else None)
    # the rows (batched over clips of different lengths) are each frame's own features, in frame order
    i = int(np.argmin(counts))
    n = counts[i]
    alone = FaceExtractor(weights="none", size=32, frames=n, precision="fp32")
    rec = load_dataset(root).records[i]
    want, _ = alone.embed([alone.load(ClipRecord(rec.clip_id, faces_all=rec.faces_all))])
    np.testing.assert_allclose(fs.data[i, :n].astype(np.float32), want[0].numpy(), rtol=2e-3, atol=2e-3)


def test_sub_batches_run_only_the_real_frames(root, counts):
    """3 clips with their mirrors in forwards of at most 7 images: the padding never reaches the model, and
    the numbers equal one big forward's."""
    small = rn18(frames="all", max_frames=CAP, flip=True)
    small.frame_batch = 7
    big = rn18(frames="all", max_frames=CAP, flip=True)
    seen = []
    small.model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    items = [small.load(r) for r in load_dataset(root).records[:3]]
    got, mask = small.embed(items)
    want, _ = big.embed(items)
    real = sum(min(n, CAP) for n in counts[:3])
    assert max(seen) <= 7 and sum(seen) == 2 * real and all(s % 2 == 0 for s in seen)
    assert got.shape == (3, CAP, 2, 512) and int(mask.sum()) == real
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {
        "resnet18": ("resnet18", "none", 32),
        # 64 px: the preset resizes to 73 and crops 64, a crop one pixel off-centre (mirroring must come first)
        "torchvision": ("mobilenet_v3_small", str(tm.torchvision_state_dict(base / "mnv3.pth")), 64),
        "hf": (f"hf:{tm.dinov2(base / 'tiny-dinov2')}", None, None),
        "timm": ("timm:vit_tiny_patch16_224", str(tm.timm_mae_checkpoint(base / "mae.pth")), 32),
    }


@pytest.mark.parametrize("family", ["resnet18", "torchvision", "hf", "timm"])
def test_mirrored_view_is_the_model_on_the_mirrored_frames(root, families, family):
    backbone, weights, size = families[family]
    kw = dict(frames="all", max_frames=CAP, size=size, precision="fp32")
    flipped = make_extractor("face", backbone, weights, "cpu", flip=True, **kw)
    plain = make_extractor("face", backbone, weights, "cpu", **kw)
    assert flipped.spec == plain.spec + ".flip" and plain.spec.endswith(f".all{CAP}f")
    assert flipped.provenance()["views"] == ["original", "hflip"]
    recs = load_dataset(root).records[:2]
    items = [flipped.load(r) for r in recs]
    got, mask = flipped.embed(items)
    d = plain.row_shape[1:]
    assert got.shape == (2, CAP, 2, *d) and flipped.row_shape == (CAP, 2, *d)
    orig, _ = plain.embed(items)
    mirrored, _ = plain.embed([(it[0].flip(2), it[1]) for it in items])  # (n, H, W, 3): axis 2 is the width
    torch.testing.assert_close(got[:, :, 0], orig, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, :, 1], mirrored, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[:, :, 0][mask], got[:, :, 1][mask], atol=1e-3)  # a view of its own


def test_fixed_frames_with_flip_and_maps_but_no_maps_of_every_frame():
    ex = rn18(frames=16, flip=True, layer="layer3")
    assert ex.spec == "face.resnet18.none-s0.layer3.32.16f.flip" and ex.row_shape == (16, 2, 256, 2, 2)
    assert ex.provenance()["frames"] == 16 and "max_frames" not in ex.provenance()
    assert rn18().spec == "face.resnet18.none-s0.pool.32.16f"  # today's names stay
    with pytest.raises(FerError, match="--frames all stores pooled vectors only"):
        rn18(frames="all", layer="layer3")


def test_options_only_where_they_mean_something():
    with pytest.raises(FerError, match="--max-frames caps --frames all"):
        rn18(frames=16, max_frames=8)
    with pytest.raises(FerError, match="neither 'all' nor a number"):
        rn18(frames="some")
    with pytest.raises(FerError, match="--flip applies to the face modality only"):
        make_extractor("pose", None, None, "cpu", flip=True)
    with pytest.raises(FerError, match="--frames all and --max-frames apply to the face modality only"):
        make_extractor("audio", "mel", None, "cpu", frames="all", max_frames=4)


def test_a_clip_with_only_a_video_or_only_16_frames_is_read_and_recorded(root, counts, tmp_path):
    data = tmp_path / "dfew"
    shutil.copytree(root, data)
    ids = load_dataset(root).ids
    video_only, only16 = ids[1], ids[2]
    shutil.rmtree(data / "Clip" / "clip_224x224" / video_only)
    shutil.rmtree(data / "Clip" / "clip_224x224_16f" / video_only)
    shutil.rmtree(data / "Clip" / "clip_224x224" / only16)
    store = tmp_path / "v.zarr"
    ex = rn18(frames="all", max_frames=CAP)
    summary = extract(data, store, ex)
    with open_store(store) as s:
        fs, notes = s.read(ex.spec), s.info(ex.spec)["row_info"]
    assert f"noted how {len(notes)} clips were read, e.g." in str(summary)  # said at the end of the run too
    n = counts[1]  # the synthetic video has as many frames as the clip's face folder
    kept = f"{CAP} of {n}" if n > CAP else f"all {n}"
    assert notes[video_only] == (f"no face folder: {kept} full frames of {video_only}.mp4, "
                                 "centre square crop (not face crops)")
    assert notes[only16] == "no all-frames face folder: the 16 frames of the 16-frame folder"
    assert fs.mask[1].sum() == min(n, CAP) and fs.mask[2].sum() == 16


def test_train_then_predict_on_an_all_frame_flipped_set_uses_the_runs_frame_plan(root, tmp_path):
    """`fer predict`'s path: the extractor rebuilt from provenance gives the stored row, and the run's model on
    that row gives exactly the probabilities the run itself wrote for the clip (segment centres, both views)."""
    store = tmp_path / "p.zarr"
    ex = rn18(frames="all", max_frames=CAP, flip=True)
    extract(root, store, ex)
    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), folds=(1,), epochs=2, layers=1, heads=2, ff=16, hidden=16, plots=False,
                      augment=("jitter", "flip"), balance=True, segments=8)
    train_run(cfg, str(store), log=lambda _: None)
    feats = run_features(out)
    assert feats["face"]["spec"] == ex.spec
    written = np.load(out / "predictions_fold1.npz")
    clip = str(written["ids"][0])
    rebuilt = extractor_from_provenance(dict(feats["face"]["provenance"]), "cpu")
    assert rebuilt.spec == ex.spec and rebuilt.row_shape == (CAP, 2, 512)
    inputs = clip_features(clip_record(clip, root=root), feats, device="cpu")
    with open_store(store) as s:
        row = s.read(ex.spec, rows=np.array([list(s.ids).index(clip)]))
    assert inputs["face"][0].shape == (1, CAP, 2, 512)
    np.testing.assert_allclose(inputs["face"][0].numpy(), row.data.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert inputs["face"][1].tolist() == row.mask.tolist()
    stored = {"face": (torch.from_numpy(row.data.astype(np.float32)), torch.from_numpy(row.mask))}
    np.testing.assert_allclose(predict_probs(out, stored, fold=1)[0], written["probs"][0], rtol=1e-4, atol=1e-5)
    probs = predict_probs(out, inputs)
    assert probs.shape == (1, 7) and np.isclose(probs.sum(), 1.0, atol=1e-5)


def test_train_with_flip_on_a_fixed_16_frame_set(root, tmp_path):
    store = tmp_path / "f.zarr"
    ex = rn18(frames=16, flip=True)
    extract(root, store, ex)
    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), folds=(1,), epochs=1, layers=1, heads=2, ff=16, hidden=16, plots=False,
                      augment=("flip",))
    train_run(cfg, str(store), log=lambda _: None)
    inputs = clip_features(clip_record(load_dataset(root).ids[0], root=root), run_features(out), device="cpu")
    assert inputs["face"][0].shape == (1, 16, 2, 512)
    assert predict_probs(out, inputs).shape == (1, 7)
