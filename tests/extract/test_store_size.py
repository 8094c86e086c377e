"""The size a set of per-frame arrays will take is said before extracting, and a disk too small for it is
refused in one line before anything is written (a real small tmpfs)."""

from __future__ import annotations

import pytest

from fer.cache.errors import FerEnvError
from fer.extract.backbones.registry import make_extractor
from fer.extract.datasets import load_dataset
from fer.extract.runner import run_extraction
from fer.extract.store_size import check_room, set_bytes
from fer.extract.synth import synthesize
from fer.tests.extract.backbones import tiny_models as tm
from fer.tests.mounts import small_disk


def test_set_bytes_is_the_fp16_rows_and_their_masks():
    assert set_bytes(16372, (16, 197, 768)) == 16372 * (16 * 197 * 768 * 2 + 16)  # DFEW, ViT-B/16: ~79 GB
    said = []
    need = check_room("/tmp", "face.x.block10", (16, 197, 768), 10, say=said.append)
    assert need == set_bytes(10, (16, 197, 768))
    assert "10 clips x (16, 197, 768) float16 = about 46.2 MB" in said[0]


def test_a_disk_too_small_is_refused_before_writing(tmp_path):
    root = tmp_path / "data"
    synthesize(root, clips=7, seed=0, workers=1)
    vit = tm.vit(tmp_path / "tiny-vit")
    ex = make_extractor("face", f"hf:{vit}", None, "cpu", layer="block:-2", frames=16, precision="fp32")
    with small_disk(tmp_path / "disk", size_kb=1024, free_kb=120) as disk:  # 7 clips x (16, 17, 32): 119 KB
        refused = r"not enough disk for face\..*block1.*7 clips need about .* free"
        with pytest.raises(FerEnvError, match=refused):
            run_extraction(load_dataset(root), ex, disk / "s.zarr", batch_size=4, workers=0, progress=False)
