"""The feature store both stages share: Zarr v3 (default) or HDF5, resumable, provenance-tracked.

Names are imported lazily so that `fer.cache.errors` (used by the CLI) stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fer.cache.errors import FerError

if TYPE_CHECKING:
    from fer.cache.create import create_store
    from fer.cache.provenance import sha256_file
    from fer.cache.reading import FeatureSet
    from fer.cache.store import FeatureStore, open_store
    from fer.cache.writer import FeatureWriter

_LAZY = {
    "FeatureSet": "fer.cache.reading",
    "FeatureStore": "fer.cache.store",
    "create_store": "fer.cache.create",
    "open_store": "fer.cache.store",
    "FeatureWriter": "fer.cache.writer",
    "sha256_file": "fer.cache.provenance",
}

__all__ = ["FerError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fer.cache' has no attribute {name!r}")
