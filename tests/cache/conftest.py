"""Small clip indexes and store paths for the cache tests."""

import uuid

import numpy as np
import pytest


def make_index(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"{i + 1:05d}" for i in range(n)]
    votes = rng.integers(0, 10, size=(n, 7)).astype(np.float32)
    folds = rng.integers(0, 3, size=(n, 5)).astype(np.int8)
    return ids, votes, folds


@pytest.fixture(params=["zarr", "hdf5", "memory"])
def store_path(request, tmp_path):
    """A fresh store location in each supported form."""
    if request.param == "zarr":
        return str(tmp_path / "feats.zarr")
    if request.param == "hdf5":
        return str(tmp_path / "feats.h5")
    return f"memory://fer-test-{uuid.uuid4().hex}"


@pytest.fixture(params=["zarr", "hdf5"])
def disk_store_path(request, tmp_path):
    return str(tmp_path / ("feats.zarr" if request.param == "zarr" else "feats.h5"))
