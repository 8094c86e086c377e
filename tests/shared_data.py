"""Where the real split files of DFEW, MAFW and FERV39k live, for the tests that check the readers against
them.

The files are derived from public repositories (../shared/data/README.md says which), but DFEW and MAFW are
licence-restricted datasets, so the repository does not ship them. The tests read them from
``$FER_SHARED_DATA`` when it is set, else from ``../shared/data`` beside the repository, and skip with a
one-line reason when neither holds them. Every test that needs them goes through ``shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$FER_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("FER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under the shared data folder; the calling test (or fixture) is skipped when it is absent."""
    p = shared_data_root().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"the real split files are not at {p} (set FER_SHARED_DATA to the folder holding dfew/, "
                    "mafw/ and ferv39k/)")
    return p
