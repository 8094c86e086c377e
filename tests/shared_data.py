"""Where the real split files of DFEW, MAFW and FERV39k live: ``../shared/data`` beside the repository."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data; the calling test is skipped when the shared folder is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"the shared split files are not at {p}")
    return p
