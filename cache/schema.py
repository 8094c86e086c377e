"""Names and codes shared by both stages: fold codes, DFEW's class set and the store's format version.

Classes and folds are a dataset's own (a store records them in its root attrs); DFEW's are kept here
because format version 1 stores hold exactly DFEW's 7 classes and 5 folds without saying so.
"""

# DFEW's classes in its label order (1 = happy .. 7 = fear); what a version 1 store means.
DFEW_CLASSES: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
DFEW_FOLDS: tuple[str, ...] = ("set_1", "set_2", "set_3", "set_4", "set_5")
CLASS_NAMES = DFEW_CLASSES  # the DFEW reader and synthetic DFEW data use these names
NUM_CLASSES = len(DFEW_CLASSES)
NUM_FOLDS = len(DFEW_FOLDS)

# clips/fold codes, one column per fold of the dataset's protocol
FOLD_UNUSED = 0
FOLD_TRAIN = 1
FOLD_TEST = 2
FOLD_VAL = 3
"""The protocol's own validation clips (model selection only; never trained on, never scored as test)."""
FOLD_CODES = (FOLD_UNUSED, FOLD_TRAIN, FOLD_TEST, FOLD_VAL)
FOLD_CODE_NAMES = {FOLD_UNUSED: "unused", FOLD_TRAIN: "train", FOLD_TEST: "test", FOLD_VAL: "val"}

NO_LABEL = -1
"""clips/label of a clip whose dataset names no official label (only votes)."""


def scored_labels(votes, official=None):
    """(N,) int64: the label each clip is trained and scored by: the dataset's official label where it names
    one (so a tie in the votes takes it), else the majority of the votes (ties to the lower class index)."""
    import numpy as np

    top = np.asarray(votes).argmax(axis=1).astype(np.int64)
    if official is None:
        return top
    official = np.asarray(official, dtype=np.int64)
    return np.where(official >= 0, official, top)


# DFEW counts a clip as single-labeled when one class has more than this many of 10 votes.
SINGLE_LABEL_MIN_VOTES = 7
NUM_ANNOTATORS = 10

# Feature store format: written to the root attrs; a store with a newer version is refused.
# Version 2 records the dataset's class names, fold names and layout in the root attrs, and allows the
# fold code 3 (validation); version 1 (no such attrs) is DFEW's shape: 7 classes, 5 folds.
STORE_FORMAT_NAME = "fer-feature-store"
FORMAT_VERSION = 2
