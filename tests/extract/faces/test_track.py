"""Linking detections into tracks, choosing the main face, borrowing and smoothing landmarks."""

import numpy as np

from fer.extract.faces.detect import Faces
from fer.extract.faces.track import borrow_nearest, link_tracks, main_face, smooth


def face(cx: float, cy: float, side: float) -> tuple[np.ndarray, np.ndarray]:
    """A box and 5 plausible landmarks of a face centred at (cx, cy)."""
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
    rel = np.array([[-0.2, -0.1], [0.2, -0.1], [0, 0.05], [-0.15, 0.22], [0.15, 0.22]], np.float32)
    return box, np.array([cx, cy], np.float32) + rel * side


def frame(*faces: tuple[np.ndarray, np.ndarray]) -> Faces:
    if not faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    return Faces(np.stack([b for b, _ in faces]), np.full(len(faces), 0.99, np.float32),
                 np.stack([p for _, p in faces]))


def test_two_faces_stay_on_their_own_tracks_and_the_larger_one_wins():
    frames = [frame(face(50 + 4 * t, 60, 40), face(200 - 3 * t, 70, 80)) for t in range(6)]
    frames[3] = frame(face(200 - 9, 70, 80), face(50 + 12, 60, 40))  # detector order changes
    tracks = link_tracks(frames)
    assert len(tracks) == 2 and all(len(tr.frames) == 6 for tr in tracks)
    main = main_face(frames)
    assert main.faces_seen == 2 and main.found.all()
    assert main.track["tracks"] == 2 and main.track["chosen"]["side"] > main.track["others"][0]["side"]
    assert abs(main.landmarks[0, 2, 0] - 200) < 1  # the nose of the large face


def test_a_long_small_face_beats_a_brief_large_false_positive():
    frames = [frame(face(60, 60, 40)) for _ in range(8)]
    frames[4] = frame(face(60, 60, 40), face(200, 100, 90))  # one frame of something large
    main = main_face(frames)
    assert main.track["chosen"]["frames"] == 8 and main.track["others"][0]["frames"] == 1


def test_missed_frames_borrow_the_nearest_found_frame():
    frames = [frame(face(50 + 10 * t, 60, 40)) for t in range(7)]
    frames[1] = frames[2] = frame()
    main = main_face(frames, sigma=0)
    assert main.found.tolist() == [True, False, False, True, True, True, True]
    np.testing.assert_allclose(main.landmarks[1], main.landmarks[0])  # nearer to frame 0
    np.testing.assert_allclose(main.landmarks[2], main.landmarks[3])  # nearer to frame 3


def test_no_detection_anywhere_is_none():
    assert main_face([frame(), frame()]) is None


def test_smoothing_removes_jitter_but_leaves_sparse_samples_alone():
    rng = np.random.default_rng(0)
    steady = np.full((40, 5, 2), 100.0)
    jitter = steady + rng.normal(0, 2, steady.shape)
    dense = smooth(jitter, np.arange(40.0), sigma=1.0)
    assert np.abs(dense - steady).std() < 0.6 * np.abs(jitter - steady).std()
    sparse = smooth(jitter, np.arange(40.0) * 10, sigma=1.0)  # 10 source frames apart
    np.testing.assert_allclose(sparse, jitter, atol=1e-6)
    np.testing.assert_allclose(smooth(steady, np.arange(40.0), 1.0), steady)


def test_borrow_nearest_by_time_not_by_index():
    values = np.arange(4, dtype=np.float64)[:, None]
    found = np.array([True, False, False, True])
    out = borrow_nearest(values, found, times=np.array([0.0, 8.0, 9.0, 10.0]))
    assert out[:, 0].tolist() == [0, 3, 3, 3]
