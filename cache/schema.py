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
