"""Pose backends: Keypoint R-CNN (random weights, tiny frames), the main-person rule, OpenPifPaf adapter."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from fer.cache.errors import FerError
from fer.extract.backbones.pose import (
    PIFPAF_MISSING,
    main_person,
    make_pose_extractor,
    pifpaf_main_person,
    rcnn_main_person,
)
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError

TINY = dict(min_size=64, max_size=96, detections=2, proposals=8)


def make_video(path: Path, n: int = 9, size=(96, 64)) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


def test_main_person_highest_score_then_area():
    assert main_person([], []) is None
    assert main_person([0.3, 0.9, 0.5], [100, 1, 50]) == 1
    assert main_person([0.9, 0.9, 0.2], [10, 40, 99]) == 1  # tie on score: the larger box wins


def test_rcnn_output_conversion():
    kp = torch.zeros(3, 17, 3)
    kp[:, :, 0], kp[:, :, 1], kp[:, :, 2] = 50.0, 20.0, 1.0  # torchvision's third column: always 1
    kp[1, :, 0] = 150.0  # outside a 100-wide frame: clipped to 1
    out = {
        "boxes": torch.tensor([[0, 0, 10, 10], [0, 0, 30, 30], [0, 0, 5, 5]], dtype=torch.float32),
        "scores": torch.tensor([0.8, 0.8, 0.3]),
        "keypoints": kp,
        "keypoints_scores": torch.full((3, 17), 0.0),
    }
    row = rcnn_main_person(out, width=100, height=40, min_score=0.5)
    assert row.shape == (17, 3) and row.dtype == np.float32
    assert np.allclose(row[:, 0], 1.0) and np.allclose(row[:, 1], 0.5)  # person 1: same score, larger box
    assert np.allclose(row[:, 2], 0.5)  # real keypoint score (sigmoid of the heatmap logit), not the constant 1
    assert rcnn_main_person(out, 100, 40, min_score=0.9) is None
    empty = {k: v[:0] for k, v in out.items()}
    assert rcnn_main_person(empty, 100, 40) is None


def test_keypointrcnn_random_weights_on_a_clip(tmp_path, torch_threads):
    torch_threads(2)
    ext = make_pose_extractor("keypointrcnn", weights="none", frames=3, min_score=0.0, **TINY)
    assert ext.spec == "pose.keypointrcnn.none-s0.k3.64-96.t0.d2p8"
    assert ext.row_shape == (3, 17, 3)
    prov = ext.provenance()
    assert prov["weights"] == {"id": "random, seed 0", "sha256": None} and prov["modality"] == "pose"
    item = ext.load(ClipRecord("00001", video=make_video(tmp_path / "a.mp4")))
    assert item.shape == (3, 64, 96, 3)
    data, mask = ext.embed([item])
    assert data.shape == (1, 3, 17, 3) and mask.shape == (1, 3) and mask.dtype == torch.bool
    xy = data[..., :2][mask]
    assert xy.numel() and float(xy.min()) >= 0.0 and float(xy.max()) <= 1.0
    assert torch.all(data[~mask] == 0)
    data2, _ = ext.embed([item])
    assert torch.equal(data, data2)


def test_keypointrcnn_state_dict_path(tmp_path):
    a = make_pose_extractor("keypointrcnn", weights="none", seed=3, **TINY)
    torch.save(a.model.state_dict(), tmp_path / "kp.pt")
    b = make_pose_extractor("keypointrcnn", weights=str(tmp_path / "kp.pt"), **TINY)
    assert b.provenance()["weights"]["sha256"] and b.spec.startswith("pose.keypointrcnn.kp-")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_coco_weights_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FER_OFFLINE", "1")
    with pytest.raises(FerError, match="keypointrcnn_resnet50_fpn_coco-fc266e95.pth") as e:
        make_pose_extractor("keypointrcnn", weights="coco")
    assert str(tmp_path / "torch") in str(e.value) and "\n" not in str(e.value)


def test_missing_video_is_a_clip_error(tmp_path):
    ext = make_pose_extractor("openpifpaf", predictor=SimpleNamespace(numpy_image=None), frames=2)
    with pytest.raises(ClipError):
        ext.load(ClipRecord("1"))
    with pytest.raises(ClipError):
        ext.load(ClipRecord("1", video=tmp_path / "none.mp4"))


class StandInPredictor:
    """Returns what ``openpifpaf.Predictor.numpy_image`` returns: (annotations, gt annotations, meta)."""

    def __init__(self):
        self.calls = 0

    def numpy_image(self, img):
        self.calls += 1
        h, w = img.shape[:2]
        if self.calls == 2:
            return [], [], {"width_height": (w, h)}  # nobody in the second frame
        small = np.zeros((17, 3), np.float32)
        small[:, 0], small[:, 1], small[:, 2] = np.linspace(10, 20, 17), np.linspace(10, 20, 17), 0.7
        big = small.copy()
        big[:, 0], big[:, 1] = np.linspace(0, w, 17), np.linspace(0, h / 2, 17)
        big[0, 2] = 0.0  # an unseen keypoint
        weak = small.copy()
        anns = [SimpleNamespace(data=small, score=0.6), SimpleNamespace(data=big, score=0.6),
                SimpleNamespace(data=weak, score=0.1)]
        return anns, [], {"width_height": (w, h)}


def test_openpifpaf_adapter_with_stand_in_predictor(tmp_path):
    pred = StandInPredictor()
    ext = make_pose_extractor("openpifpaf", weights="coco", frames=3, predictor=pred)
    assert ext.spec.startswith("pose.openpifpaf.shufflenetv2k16.k3")
    item = ext.load(ClipRecord("1", video=make_video(tmp_path / "a.mp4")))
    data, mask = ext.embed([item])
    assert pred.calls == 3 and data.shape == (1, 3, 17, 3)
    assert mask.tolist() == [[True, False, True]]
    row = data[0, 0].numpy()
    assert np.allclose(row[:, 0], np.linspace(0, 1, 17), atol=1e-6)  # the larger person, x / W
    assert np.allclose(row[:, 1], np.linspace(0, 0.5, 17), atol=1e-6)
    assert row[0, 2] == 0.0 and np.allclose(row[1:, 2], 0.7)
    assert torch.all(data[0, 1] == 0)


def test_pifpaf_conversion_skips_low_scores():
    d = np.ones((17, 3), np.float32)
    assert pifpaf_main_person([SimpleNamespace(data=d, score=0.2)], 10, 10, min_score=0.5) is None


@pytest.mark.skipif(importlib.util.find_spec("openpifpaf") is not None, reason="openpifpaf is installed")
def test_openpifpaf_missing_says_why():
    with pytest.raises(FerError) as e:
        make_pose_extractor("openpifpaf")
    assert "torch 1.13" in str(e.value) and str(e.value) == PIFPAF_MISSING


def test_unknown_backend():
    with pytest.raises(FerError, match="unknown pose backend"):
        make_pose_extractor("hrnet")


def test_state_dict_that_does_not_fit(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(FerError, match="does not fit"):
        make_pose_extractor("keypointrcnn", weights=str(tmp_path / "bad.pt"), **TINY)
    with pytest.raises(FerError, match="neither a file"):
        make_pose_extractor("keypointrcnn", weights=str(tmp_path / "nope.pt"), **TINY)
