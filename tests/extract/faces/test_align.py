"""The similarity fit and the warp: points land where the transform says, in pixels."""

import numpy as np
import torch

from fer.extract.faces.align import TEMPLATE, apply, similarity, template_points, warp


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 300, (3, 5, 2))
    angle, scale, t = np.deg2rad([10, -25, 3]), np.array([0.5, 1.7, 1.0]), rng.uniform(-50, 50, (3, 2))
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    m_true = np.concatenate([rot * scale[:, None, None], t[:, :, None]], -1)
    dst = apply(m_true, src)
    for i in range(3):
        np.testing.assert_allclose(similarity(src[i:i + 1], dst[i])[0], m_true[i], atol=1e-9)


def test_template_is_level_and_centred():
    pts = template_points(224)
    assert pts[0, 1] == pts[1, 1] and pts[3, 1] == pts[4, 1]  # eyes level, mouth level
    np.testing.assert_allclose(pts[[0, 3], 0] + pts[[1, 4], 0], 223.0)  # symmetric about the centre
    assert TEMPLATE.shape == (5, 2)


def _dots(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for x, y in np.round(pts).astype(int):
        img[y - 2:y + 3, x - 2:x + 3] = 255
    return img


def _centroids(img: np.ndarray, near: np.ndarray, r: int = 8) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    out = []
    for x, y in near:
        ys, xs = np.mgrid[0:g.shape[0], 0:g.shape[1]]
        m = g * ((np.abs(xs - x) <= r) & (np.abs(ys - y) <= r))
        out.append([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()])
    return np.array(out)


def test_warp_puts_points_where_the_similarity_sends_them():
    # dots at (rounded) landmark positions of a face rolled by 20 degrees in a 320x240 frame
    src = np.round(np.array([[120, 100], [170, 118], [140, 140], [118, 165], [160, 180]], np.float64))
    frame = _dots(240, 320, src)
    m = similarity(src[None], template_points(112))
    crop = warp(torch.from_numpy(frame[None]), m, 112)[0]
    np.testing.assert_allclose(_centroids(crop, apply(m, src[None])[0]), apply(m, src[None])[0], atol=0.6)


def test_warp_antialiases_a_large_face_and_keeps_points_in_place():
    src = np.array([[300, 300], [520, 300], [410, 420], [330, 520], [490, 520]], np.float64)
    frame = _dots(720, 800, src)
    frame = np.repeat(np.repeat(frame[::4, ::4], 4, 0), 4, 1)  # dots become 4x larger blocks
    m = similarity(src[None], template_points(64))  # ~3.5 frame pixels per crop pixel: downscaled first
    crop = warp(frame[None], m, 64)[0]
    assert crop.max() > 0
    want = apply(m, src[None])[0]
    np.testing.assert_allclose(_centroids(crop, want, r=4), want, atol=1.0)
