"""Dataset readers: DFEW, MAFW, FERV39k, class folders, a folder of videos or a manifest CSV -> one ``Dataset``.

``load_dataset(path)`` tells the layout by its files (``detect_layout``) and reads it; every reader turns
its layout into the same list of ``ClipRecord``s, with the dataset's own class names and folds.
"""

from fer.extract.datasets.common import id_sort_key, normalize_dfew_id, parse_classes
from fer.extract.datasets.detect import LAYOUT_NAMES, detect_layout, load_dataset
from fer.extract.datasets.dfew import read_annotation, read_dfew, read_split_file
from fer.extract.datasets.manifest import read_manifest
from fer.extract.datasets.records import ClipRecord, Dataset

__all__ = [
    "load_dataset", "detect_layout", "LAYOUT_NAMES", "parse_classes", "read_dfew", "read_manifest",
    "read_split_file", "read_annotation", "normalize_dfew_id", "id_sort_key", "ClipRecord", "Dataset",
]
