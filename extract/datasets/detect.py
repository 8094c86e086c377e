"""Which layout a dataset root is, told by its files, and the one entry point that reads any of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fer.cache.errors import FerError
from fer.extract.datasets import dfew, ferv39k, folders, mafw, manifest, videos
from fer.extract.datasets.common import order_classes, warn_classes_never_trained, warn_close_classes
from fer.extract.datasets.records import Dataset

# layout -> (does a root look like it, read it, what it looks like); order is the order of the hint
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[..., Dataset], str]] = {
    "dfew": (dfew.matches, lambda p, c: dfew.read_dfew(p), "EmoLabel_DataSplit/ and/or Annotation/annotation.xlsx"),
    "mafw": (mafw.matches, lambda p, c: mafw.read_mafw(p), "'Train & Test Set/single/no_caption/set_<k>/'"),
    "ferv39k": (ferv39k.matches, lambda p, c: ferv39k.read_ferv39k(p), "4_setups/All_scenes/{train,test}_All.csv"),
    "folders": (folders.matches, folders.read_folders, "train|val|test/<class>/<clip video or frame folder>"),
    "videos": (videos.matches, lambda p, c: videos.read_videos(p), "video files directly in the folder (no labels)"),
}
LAYOUT_NAMES = (*LAYOUTS, "manifest")


def _hint() -> str:
    return "; ".join(f"{k}: {v[2]}" for k, v in LAYOUTS.items()) + "; manifest: a .csv file"


def detect_layout(path: Path) -> str:
    """The one layout ``path`` matches; FerError when none or several do (then name it with --layout)."""
    path = Path(path)
    if not path.exists():
        raise FerError(f"{path} does not exist; give a dataset root folder or a manifest .csv")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise FerError(f"{path} is neither a folder nor a .csv manifest; layouts fer reads: {_hint()}")
    found = [name for name, (m, _, _) in LAYOUTS.items() if m(path)]
    if len(found) > 1 and found[-1] == "videos":
        found = found[:-1]  # a dataset root may hold stray videos beside its own layout
    if not found:
        raise FerError(f"{path} matches no dataset layout fer reads ({_hint()})")
    if len(found) > 1:
        raise FerError(f"{path} matches two layouts ({' and '.join(found)}); say which with --layout "
                       f"{'|'.join(found)}")
    return found[0]


def load_dataset(path: Path, *, layout: str | None = None, classes: Sequence[str] | None = None) -> Dataset:
    """Read any dataset fer knows: ``layout`` (default: detected from the files) and ``classes`` (order)."""
    path = Path(path)
    name = layout or detect_layout(path)
    if name not in LAYOUT_NAMES:
        raise FerError(f"unknown --layout {name!r}; choose from {', '.join(LAYOUT_NAMES)}")
    if not path.exists():
        raise FerError(f"{path} does not exist; give a dataset root folder or a manifest .csv")
    if name == "manifest":
        if not path.is_file():
            raise FerError(f"--layout manifest needs a .csv file, and {path} is a folder")
        ds = manifest.read_manifest(path, classes)
    else:
        if not path.is_dir():
            raise FerError(f"--layout {name} needs a folder, and {path} is a file")
        ds = LAYOUTS[name][1](path, classes)
        if name != "folders":
            ds = order_classes(ds, classes)
    warn_classes_never_trained(ds)
    warn_close_classes(ds)
    return ds
