"""Dataset readers: each layout (DFEW, MAFW, FERV39k, class folders, a manifest CSV) becomes one ``Dataset``."""

from fer.extract.datasets.dfew import *  # noqa: F401,F403
from fer.extract.datasets.dfew import FACES16_DIR, FACES_ALL_DIR, VIDEO_DIR, _scan_media  # noqa: F401
from fer.extract.datasets.records import ClipRecord, Dataset  # noqa: F401
