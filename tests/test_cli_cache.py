"""`fer cache ls|info|verify|rm` end to end, through a real subprocess."""

import json

import numpy as np
import pytest

from fer.cache import create_store
from fer.cache import layout as L
from fer.tests.cli import fer as _fer

SPEC = "face.resnet18.imagenet.pool.224"


def fer(*args, input=None):
    return _fer("cache", *args, input=input, timeout=60)


@pytest.fixture(params=["zarr", "h5"])
def store(request, tmp_path):
    path = tmp_path / f"feats.{request.param}"
    ids = [f"{i:05d}" for i in range(1, 11)]
    s = create_store(path, ids, np.eye(7, dtype=np.float32)[np.arange(10) % 7] * 10, np.ones((10, 5), np.int8))
    attrs = {"modality": "face", "backbone": "resnet18", "weights": {"id": "IMAGENET1K_V1", "sha256": "ab12"}}
    with s.writer(SPEC, row_shape=(16, 8), attrs=attrs) as w:
        w.write_rows(np.arange(9), np.ones((9, 16, 8)), np.ones((9, 16), bool))
        w.record_failures({9: "no face found"})
    s.close()
    return path


def test_ls_info_verify_rm(store):
    r = fer("ls", store)
    assert r.returncode == 0, r.stderr
    assert SPEC in r.stdout and "10x16x8" in r.stdout and "9/10" in r.stdout and "face" in r.stdout

    r = fer("info", store, SPEC)
    assert r.returncode == 0 and "weights.sha256" in r.stdout and "no face found" in r.stdout
    r = fer("info", store, SPEC, "--json")
    info = json.loads(r.stdout)
    assert info["backbone"] == "resnet18" and info["failures"] == {"00010": "no face found"}

    r = fer("verify", store)
    assert r.returncode == 0 and r.stdout.startswith("ok")

    r = fer("rm", store, SPEC, input="n\n")
    assert r.returncode != 0 and SPEC in fer("ls", store).stdout
    r = fer("rm", store, SPEC, "--yes")
    assert r.returncode == 0 and "removed" in r.stdout
    assert "no feature sets" in fer("ls", store).stdout


def test_unknown_spec_and_missing_store(store, tmp_path):
    r = fer("info", store, "audio.nope")
    assert r.returncode == 2 and r.stderr.startswith("error:") and SPEC in r.stderr and "Traceback" not in r.stderr
    r = fer("ls", tmp_path / "missing.zarr")
    assert r.returncode == 2 and "no feature store" in r.stderr


def test_verify_reports_problems(store):
    from fer.cache import open_store

    with open_store(store, "r+") as s:
        s.backend.array(L.data_key(SPEC))[0:1] = np.full((1, 16, 8), np.nan, np.float16)
    r = fer("verify", store, SPEC)
    assert r.returncode == 1
    assert "problem" in r.stdout and "not finite" in r.stdout and "00001" in r.stdout
