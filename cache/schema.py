"""Names and codes shared by both stages: classes, folds and the store's format version."""

CLASS_NAMES: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
NUM_CLASSES = len(CLASS_NAMES)
NUM_FOLDS = 5

# clips/fold codes, one column per official fold
FOLD_UNUSED = 0
FOLD_TRAIN = 1
FOLD_TEST = 2

# DFEW counts a clip as single-labeled when one class has more than this many of 10 votes.
SINGLE_LABEL_MIN_VOTES = 7
NUM_ANNOTATORS = 10

# Feature store format: written to the root attrs; a store with a newer version is refused.
STORE_FORMAT_NAME = "fer-feature-store"
FORMAT_VERSION = 1
