"""Small real stores with class signal for the trainer tests (made with fer.cache's create_store + writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer.cache.schema import NUM_CLASSES, NUM_FOLDS

FACE_DIM = 16


def clip_index(path: Path, n: int, rng: np.random.Generator, description: str, *, one_hot: bool = False,
               no_folds: bool = False, attrs: dict | None = None):
    """A store of ``n`` clips (ids 00001...) with shuffled balanced labels, votes mostly (8 of 10) for the
    class (all 10 with ``one_hot``) and 5 folds, clip i a test clip of fold (i % 5) + 1; returns (store, labels).
    It draws from ``rng`` in one fixed order, so what is drawn after it is the same for one seed."""
    from fer.cache import create_store

    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    votes = np.zeros((n, NUM_CLASSES), np.float32)
    votes[np.arange(n), labels] = 10 if one_hot else 8
    if not one_hot:
        other = (labels + 1 + rng.integers(0, NUM_CLASSES - 1, n)) % NUM_CLASSES
        votes[np.arange(n), other] += 2
    folds = np.ones((n, NUM_FOLDS), np.int8)
    folds[np.arange(n), np.arange(n) % NUM_FOLDS] = 2
    if no_folds:
        folds[:] = 0
    store = create_store(path, [f"{i:05d}" for i in range(1, n + 1)], votes, folds, description=description,
                         attrs=attrs)
    return store, labels


def make_store(path: Path, *, n: int = 210, modalities=("face",), seed: int = 0, signal: float = 1.5,
               not_done: int = 0, nan_rows: int = 0, no_folds: bool = False, one_hot: bool = False,
               audio: str = "w2v", face_maps: bool = False, extra_face_spec: bool = False,
               finetuned_on_fold: int | None = None, chunk_bytes: int | None = None) -> Path:
    """Write a store of `n` clips whose features carry the class (class mean + noise).

    Clip i is in the test set of fold (i % 5) + 1 and in the training set of the others; its
    votes are mostly (8 of 10) for its class.
    """
    rng = np.random.default_rng(seed)
    store, labels = clip_index(path, n, rng, "trainer test store", one_hot=one_hot, no_folds=no_folds,
                               attrs={"has_votes": not one_hot})

    def write(spec, modality, data, mask, attrs=None, rows_done=None):
        w = store.writer(spec, row_shape=data.shape[1:], attrs={"modality": modality, "backbone": spec.split(".")[1],
                                                             **(attrs or {})}, chunk_bytes=chunk_bytes)
        rows = np.arange(n) if rows_done is None else rows_done
        w.write_rows(rows, data[rows].astype(np.float16), mask[rows])
        w.close()

    def signal_of(dim):
        means = rng.normal(0, 1, (NUM_CLASSES, dim)).astype(np.float32)
        return means[labels] * signal

    done_rows = np.arange(not_done, n) if not_done else None
    if face_maps:
        face = signal_of(256)[:, None, :, None, None] + rng.normal(0, 1, (n, 4, 256, 2, 2))
        write("face.resnet18.none.layer3.32", "face", face.astype(np.float32), np.ones((n, 4), bool),
              {"layer": "layer3", "weights": "none", "seed": 0}, done_rows)
    else:
        face = signal_of(FACE_DIM)[:, None, :] + rng.normal(0, 1, (n, 16, FACE_DIM))
        if nan_rows:
            face[:nan_rows] = np.nan
        attrs = {"finetuned_on_fold": finetuned_on_fold} if finetuned_on_fold else {}
        write("face.resnet18.test.pool.224", "face", face.astype(np.float32), np.ones((n, 16), bool), attrs, done_rows)
        if extra_face_spec:
            write("face.resnet18.other.pool.224", "face", face.astype(np.float32), np.ones((n, 16), bool))
    if "pose" in modalities:
        pose = np.concatenate([signal_of(34).reshape(n, 1, 17, 2) * 0.2 + rng.normal(0, 0.3, (n, 3, 17, 2)),
                               np.ones((n, 3, 17, 1))], axis=-1)
        mask = rng.random((n, 3)) > 0.2
        write("pose.keypointrcnn.test.3f", "pose", pose.astype(np.float32), mask)
    if "audio" in modalities:
        if audio == "mel":
            mel = signal_of(12)[:, None, :] + rng.normal(0, 1, (n, 20, 12))
            mask = np.ones((n, 20), bool)
            mask[:, 15:] = rng.random((n, 1)) > 0.5
            write("audio.logmel.test.16k", "audio", mel.astype(np.float32), mask)
        else:
            w2v = signal_of(24)[:, None, :] + rng.normal(0, 1, (n, 3, 24))
            mask = np.repeat(rng.random((n, 1)) > 0.1, 3, axis=1)
            write("audio.wav2vec2.test.16k", "audio", w2v.astype(np.float32), mask)
    store.close()
    return path


def make_allframe_store(path: Path, *, n: int = 140, frames: int = 24, views: int = 2, dim: int = FACE_DIM,
                        seed: int = 0, signal: float = 1.0, min_frames: int = 3, fixed: int | None = 16,
                        chunk_bytes: int | None = None) -> Path:
    """A store with an all-frame face set (what `fer extract -m face --frames all [--flip]` writes) and, with
    ``fixed``, the 16-frame set of the same clips (the segment centres of the same frames).

    Clip i has between ``min_frames`` and ``frames`` valid frames (a prefix, the rest zero padding, mask False);
    each frame carries the class mean times ``signal`` plus noise; view 1 (the mirrored face) is view 0 with
    its own noise. Folds as in make_store: clip i is a test clip of fold (i % 5) + 1.
    """
    from fer.extract.media import uniform_indices

    rng = np.random.default_rng(seed)
    store, labels = clip_index(path, n, rng, "all-frame test store")
    means = rng.normal(0, 1, (NUM_CLASSES, dim)).astype(np.float32)
    valid = rng.integers(min_frames, frames + 1, n)
    mask = np.arange(frames)[None, :] < valid[:, None]
    attrs = {"modality": "face", "backbone": "resnet18", "frames": "all", "max_frames": frames}
    if views > 1:
        attrs["views"] = ["original", "hflip"][:views]
        spec, row = f"face.resnet18.test.pool.224.all{frames}.flip", (frames, views, dim)
    else:
        spec, row = f"face.resnet18.test.pool.224.all{frames}", (frames, dim)
    w = store.writer(spec, row_shape=row, attrs=attrs, chunk_bytes=chunk_bytes)
    w16 = None
    if fixed:
        w16 = store.writer(f"face.resnet18.test.pool.224.{fixed}f", row_shape=(fixed, dim),
                           attrs={"modality": "face", "backbone": "resnet18"})
    step = max(1, (64 << 20) // (frames * views * dim * 4))  # rows per write: ~64 MB of float32 at a time
    for a in range(0, n, step):
        r = np.arange(a, min(n, a + step))
        base = (means[labels[r]][:, None, None, :] * signal
                + rng.standard_normal((len(r), frames, views, dim), np.float32))
        data = np.where(mask[r][:, :, None, None], base, 0)
        w.write_rows(r, (data if views > 1 else data[:, :, 0]).astype(np.float16), mask[r])
        if w16 is not None:
            pick = np.stack([uniform_indices(int(k), fixed) for k in valid[r]])
            w16.write_rows(r, base[np.arange(len(r))[:, None], pick, 0].astype(np.float16),
                           np.ones((len(r), fixed), bool))
    w.close()
    if w16 is not None:
        w16.close()
    store.close()
    return path
