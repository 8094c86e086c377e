"""Face frames reading and the ResNet-18 face extractor (real torchvision model, real jpg files)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from fer.cache.errors import FerError
from fer.extract.backbones.face import FaceExtractor
from fer.extract.backbones.torchvision_models import map_size
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.frames import read_face_frames, sample_indices


def write_frames(folder, n, size=64, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i + 1}.jpg")
    return folder


def test_sample_indices_uniform_and_repeated():
    assert sample_indices(16, 16).tolist() == list(range(16))
    up = sample_indices(40, 16)
    assert len(up) == 16 and np.all(np.diff(up) > 0) and up[0] >= 0 and up[-1] <= 39
    down = sample_indices(5, 16)
    assert len(down) == 16 and np.all(np.diff(down) >= 0) and set(down.tolist()) == set(range(5))


def test_read_prefers_16f_then_samples_all_then_repeats(tmp_path):
    f16 = write_frames(tmp_path / "16f", 16)
    fall = write_frames(tmp_path / "all", 30, seed=1)
    few = write_frames(tmp_path / "few", 5, seed=2)
    frames, info = read_face_frames(ClipRecord("1", faces16=f16, faces_all=fall), size=64)
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8 and info is None
    frames, info = read_face_frames(ClipRecord("1", faces16=tmp_path / "gone", faces_all=fall), size=64)
    assert info is None  # uniform sampling is the documented fallback
    assert np.array_equal(frames[0], np.asarray(Image.open(fall / "1.jpg").convert("RGB")))
    frames, info = read_face_frames(ClipRecord("1", faces_all=few), size=32)
    assert info == "repeated 16 from 5 frames (all faces)" and frames.shape == (16, 32, 32, 3)
    # nearest-index interpolation repeats frames in place
    assert np.array_equal(frames[-1], frames[-2])


def test_unreadable_and_missing_are_clip_errors(tmp_path):
    f = write_frames(tmp_path / "c", 16)
    (f / "7.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ClipError, match="unreadable image 7.jpg"):
        read_face_frames(ClipRecord("1", faces16=f))
    with pytest.raises(ClipError, match="missing or empty"):
        read_face_frames(ClipRecord("1", faces16=tmp_path / "nowhere"))
    with pytest.raises(ClipError, match="no face frames"):
        read_face_frames(ClipRecord("1"))


def test_extractor_loads_state_dict_by_path_and_matches_torchvision(tmp_path):
    ref = resnet18().eval()
    sd = tmp_path / "rn18.pth"
    torch.save(ref.state_dict(), sd)
    ex = FaceExtractor(weights=str(sd), size=64)
    assert ex.spec.startswith("face.resnet18.rn18-") and ex.spec.endswith(".pool.64.16f")
    prov = ex.provenance()
    assert prov["weights"]["sha256"] and prov["modality"] == "face" and prov["layer"] == "pool"
    rec = ClipRecord("1", faces16=write_frames(tmp_path / "c", 16))
    item = ex.load(rec)
    with torch.inference_mode():
        data, mask = ex.embed([item, item])
    assert data.shape == (2, 16, 512) and mask.all()
    # reference: torchvision's own forward with fc removed, ImageNet normalisation
    x = item[0].permute(0, 3, 1, 2).float() / 255
    x = ((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
         / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    ref.fc = torch.nn.Identity()
    with torch.inference_mode():
        want = ref(x)
    torch.testing.assert_close(data[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer,channels", [("layer3", 256), ("layer2", 128)])
def test_layer_maps(tmp_path, layer, channels):
    ex = FaceExtractor(weights="none", layer=layer, size=64, frames=4)
    s = map_size(64, layer)
    assert ex.row_shape == (4, channels, s, s)
    item = (torch.zeros(4, 64, 64, 3, dtype=torch.uint8), None)
    with torch.inference_mode():
        data, _ = ex.embed([item])
    assert tuple(data.shape[1:]) == ex.row_shape
    assert map_size(224, "layer3") == 14 and map_size(224, "layer2") == 28


def test_none_weights_are_deterministic(tmp_path):
    item = (torch.randint(0, 255, (16, 64, 64, 3), dtype=torch.uint8), None)
    outs = []
    for _ in range(2):
        ex = FaceExtractor(weights="none", size=64, seed=3)
        with torch.inference_mode():
            outs.append(ex.embed([item])[0])
    assert torch.equal(outs[0], outs[1])
    assert ex.provenance()["weights"] == {"id": "random, seed 3", "sha256": None}
    assert ex.spec == "face.resnet18.none-s3.pool.64.16f"


def test_bad_layer_is_fer_error():
    with pytest.raises(FerError, match="unknown --layer"):
        FaceExtractor(weights="none", layer="layer9")
