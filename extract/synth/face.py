"""Rendered faces for the synthetic dataset: a cartoon face whose expression carries the class.

The renderer is plain numpy over a pixel grid (soft signed-distance masks, so edges are
anti-aliased). Expressions are big, high-contrast, low-level shapes (mouth curve and opening,
teeth, brow height and angle, eye opening, nose wrinkles) because the only backbones available
offline are randomly initialised: they see edges, blobs and textures, not semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Expression parameters, in the order of the columns of FACE_APEX.
FACE_PARAMS = ("curve", "open", "width", "brow", "tilt", "eye", "wrinkle", "teeth", "flush")
NEUTRAL_FACE = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], np.float32)

# Apex expression per style row (rows 0..6: DFEW's happy, sad, neutral, angry, surprise, disgust, fear; 7..10 below).
# curve: +smile/-frown (smiles also raise the cheeks: blush and crow's feet); open: mouth opening
# 0..1; width: mouth width factor; brow: +raised (forehead wrinkles) / -lowered; tilt: +inner ends
# up (sad, fear) / -inner ends down (anger's V, with vertical furrows between the brows); eye:
# opening factor; wrinkle: nose wrinkles; teeth: visible teeth; flush: +red (anger) / -pale (fear).
# Fear/surprise, angry/disgust and sad/neutral (at low intensity) are close on purpose: the
# audio and body tell them apart, so fusion has something to win over face-only.
# Cues are big and textured (wrinkles, teeth, dark mouth, eye whites, skin colour) because
# random-init backbones see pooled local statistics, not shapes.
FACE_APEX = np.array(
    [
        [1.00, 0.45, 1.30, 0.15, 0.00, 0.55, 0.00, 1.00, 0.15],  # happy
        [-0.90, 0.00, 0.90, 0.10, 0.90, 0.60, 0.00, 0.00, -0.30],  # sad
        [0.00, 0.00, 1.00, 0.00, 0.00, 1.00, 0.00, 0.00, 0.00],  # neutral
        [-0.45, 0.30, 1.05, -0.95, -0.90, 0.70, 0.60, 0.80, 0.80],  # angry
        [0.00, 1.00, 0.80, 1.00, 0.10, 1.60, 0.00, 0.00, 0.00],  # surprise
        [-0.60, 0.20, 1.00, -0.75, -0.65, 0.60, 1.00, 0.60, 0.50],  # disgust
        [-0.30, 0.85, 1.15, 0.90, 0.50, 1.55, 0.00, 0.20, -0.70],  # fear
        # MAFW's four more (rows 7..10): contempt, anxiety, helplessness, disappointment
        [0.35, 0.05, 1.20, -0.35, -0.40, 0.75, 0.35, 0.00, 0.30],  # contempt: smirk, narrowed eyes
        [-0.25, 0.25, 0.80, 0.60, 0.80, 1.35, 0.00, 0.45, -0.45],  # anxiety: tight mouth, worried brow
        [-0.70, 0.40, 0.95, 0.55, 1.00, 0.65, 0.00, 0.00, -0.15],  # helplessness: open drooping mouth
        [-0.55, 0.00, 0.95, -0.20, 0.40, 0.70, 0.25, 0.00, 0.10],  # disappointment: pressed frown
    ],
    np.float32,
)


@dataclass
class FaceIdentity:
    """Per-clip nuisance: who the person is and how the crop was taken."""

    skin: np.ndarray
    """(3,) skin colour, 0..255."""
    hair: np.ndarray
    """(3,) hair colour."""
    bg: np.ndarray
    """(2, 3) background colours (top, bottom gradient)."""
    eye_dx: float
    """Half distance between the eyes, face units."""
    face_w: float
    """Face ellipse half-width, face units."""
    mouth_w: float
    """Mouth half-width at width factor 1."""
    cx: float
    """Face centre x in [-1, 1] image units."""
    cy: float
    """Face centre y."""
    scale: float
    """Face scale in the crop."""
    roll: float
    """Head roll, radians."""
    light: np.ndarray
    """(2,) lighting gradient direction and strength."""
    noise: float
    """Pixel noise standard deviation."""
    hair_line: float
    """Where the hair starts on the forehead, face units (larger = lower)."""
    noise_bank: np.ndarray
    """Unit Gaussian noise, larger than a frame; each frame takes a random window (cheap noise)."""


def random_identity(rng: np.random.Generator, size: int = 224) -> FaceIdentity:
    """Draw the nuisance variables of one clip's face."""
    tone = rng.uniform(0.0, 0.55)
    skin = np.array([235, 200, 170]) * (1 - tone) + np.array([110, 75, 55]) * tone
    skin = skin + rng.normal(0, 8, 3)
    hair = rng.choice([np.array([30, 25, 20]), np.array([70, 50, 35]), np.array([110, 80, 50]),
                       np.array([60, 60, 60])])
    # muted backgrounds: aligned crops are mostly face, and random-init backbones are so
    # colour-driven that a loud background would drown the expression
    bg = rng.uniform(70, 180, (2, 1)) + rng.normal(0, 12, (2, 3))
    return FaceIdentity(
        skin=np.clip(skin, 0, 255).astype(np.float32),
        hair=(hair + rng.normal(0, 10, 3)).clip(0, 255).astype(np.float32),
        bg=bg.astype(np.float32),
        eye_dx=float(rng.uniform(0.24, 0.29)),
        face_w=float(rng.uniform(0.56, 0.66)),
        mouth_w=float(rng.uniform(0.24, 0.29)),
        cx=float(rng.uniform(-0.07, 0.07)),
        cy=float(rng.uniform(-0.06, 0.06)),
        scale=float(rng.uniform(1.05, 1.25)),
        roll=float(rng.uniform(-0.12, 0.12)),
        light=rng.normal(0, 0.12, 2).astype(np.float32),
        noise=float(rng.uniform(2.0, 8.0)),
        hair_line=float(rng.uniform(-0.62, -0.48)),
        noise_bank=rng.standard_normal((size + 32, size + 32, 3), dtype=np.float32),
    )


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Coverage of a shape from an approximate signed distance (negative inside), 1-pixel ramp."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, x0: float, y0: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse."""
    a, b = max(a, 1e-3), max(b, 1e-3)
    r = np.sqrt(((u - x0) / a) ** 2 + ((v - y0) / b) ** 2)
    return (r - 1.0) * min(a, b)


def _segment(u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float], r: float) -> np.ndarray:
    """Signed distance to a capsule (thick line segment) of radius r."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((u - px) * dx + (v - py) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(u - px - t * dx, v - py - t * dy) - r


def _paint(img: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    img += mask[..., None] * (np.asarray(color, np.float32) - img)


class FaceRenderer:
    """Renders one clip's face frames at a fixed size; the grid is built once and reused.

    Shapes are drawn at ``size // oversample`` and upscaled (like the blurry, upsampled crops of
    in-the-wild video); sensor noise is added at full size. This keeps 200 clips well under a
    minute on 2 cores.
    """

    def __init__(self, size: int = 224, downsample: int = 2):
        self.size = size
        self.draw = size // downsample
        lin = (np.arange(self.draw, dtype=np.float32) + 0.5) / self.draw * 2.0 - 1.0
        self.Y, self.X = np.meshgrid(lin, lin, indexing="ij")
        self.px = 2.0 / self.draw

    def render(self, ident: FaceIdentity, p: np.ndarray, jitter: tuple[float, float, float],
               rng: np.random.Generator, blink: bool = False) -> np.ndarray:
        """One frame, (size, size, 3) uint8. ``p`` holds FACE_PARAMS; ``jitter`` is (dx, dy, dscale)."""
        curve, mopen, width, brow, tilt, eye, wrinkle, teeth, flush = (float(x) for x in p)
        X, Y = self.X, self.Y
        s = ident.scale * (1.0 + jitter[2])
        cx, cy = ident.cx + jitter[0], ident.cy + jitter[1]
        c, sn = np.cos(ident.roll), np.sin(ident.roll)
        u = ((X - cx) * c + (Y - cy) * sn) / s
        v = (-(X - cx) * sn + (Y - cy) * c) / s
        px = self.px / s

        # background: vertical gradient between two colours
        t = (Y[..., None] + 1.0) / 2.0
        img = ident.bg[0] * (1 - t) + ident.bg[1] * t

        # skin: anger flushes red, fear drains to pale
        if flush >= 0:
            skin = ident.skin * (1 + flush * np.array([0.22, -0.12, -0.12], np.float32))
        else:
            skin = ident.skin + (-flush) * 0.45 * (np.array([215, 225, 215], np.float32) - ident.skin)
        skin = np.clip(skin, 0, 255)
        fold = skin * 0.62  # wrinkle / crease colour

        fw, fh = ident.face_w, 0.82
        _paint(img, _soft(_ellipse(u, v, 0, -0.05, fw + 0.06, fh + 0.06), px), ident.hair)  # hair behind
        _paint(img, _soft(_ellipse(u, v, 0.0, 0.05, fw, fh), px), skin)
        # hair over the forehead: the part of the head ellipse above the hair line
        head = _ellipse(u, v, 0.0, 0.05, fw + 0.01, fh + 0.01)
        _paint(img, _soft(np.maximum(head, v - ident.hair_line - 0.04 * np.cos(u * 5)), px), ident.hair)

        def win(x0: float, y0: float, rx: float, ry: float | None = None) -> tuple[slice, slice]:
            """Pixel window around face point (x0, y0), face-unit half sizes (features are local)."""
            ry = rx if ry is None else ry
            ix = cx + s * (x0 * c - y0 * sn)
            iy = cy + s * (x0 * sn + y0 * c)
            r = max(rx, ry)
            half = r * s / self.px + 3
            col, row = (ix + 1) / self.px, (iy + 1) / self.px
            return (slice(max(int(row - half), 0), max(int(row + half) + 1, 0)),
                    slice(max(int(col - half), 0), max(int(col + half) + 1, 0)))

        def lines(w: tuple[slice, slice], segs: list, r: float, amount: float, color: np.ndarray) -> None:
            if amount > 0.03:
                uu, vv = u[w], v[w]
                d = np.min([_segment(uu, vv, p0, p1, r) for p0, p1 in segs], axis=0)
                _paint(img[w], min(amount, 1.0) * _soft(d, px), color)

        dark = ident.hair * 0.6
        ey, ew = -0.12, 0.14
        by = ey - 0.17 - 0.12 * brow
        # forehead: horizontal wrinkles when the brows go up, vertical furrows when they knit
        w = win(0.0, by - 0.12, 0.36)
        lines(w, [((-0.3, by - 0.08 - 0.055 * k), (0.3, by - 0.08 - 0.055 * k + 0.01 * (k - 1))) for k in range(3)],
              0.012, 1.2 * max(brow, 0.0) + 0.4 * max(tilt, 0.0), fold)
        lines(w, [((x, ey - 0.24), (x * 0.6, ey - 0.06)) for x in (-0.05, 0.05)], 0.014, 1.2 * max(-tilt, 0.0), fold)

        # eyes: white, iris, with lids closing to the opening factor; brows above
        eh = 0.07 * (0.08 if blink else eye)
        for side in (-1.0, 1.0):
            ex = side * ident.eye_dx
            w = win(ex, ey - 0.12, 0.32)
            uu, vv, im = u[w], v[w], img[w]
            white = _ellipse(uu, vv, ex, ey, ew, eh)
            _paint(im, _soft(white, px), np.array([245, 245, 240]))
            iris = np.maximum(_ellipse(uu, vv, ex, ey, 0.06, 0.06), white)
            _paint(im, _soft(iris, px), np.array([40, 30, 25]))
            _paint(im, _soft(np.abs(white) - 0.01, px), dark)  # lid outline
            # brows: height follows brow, inner end rises with tilt (sad/fear) or drops (anger)
            inner = (ex - side * 0.12, by - 0.09 * tilt)
            outer = (ex + side * 0.13, by + 0.03 * tilt)
            _paint(im, _soft(_segment(uu, vv, inner, outer, 0.04), px), dark)
            # smiles raise the cheeks: crow's feet at the outer corner, a blush below the eye
            smile = max(curve, 0.0)
            lines(win(ex + side * 0.2, ey, 0.1),
                  [((ex + side * 0.17, ey + d0), (ex + side * 0.26, ey + 2.2 * d0)) for d0 in (-0.04, 0.0, 0.04)],
                  0.009, 1.3 * smile, fold)
            if smile > 0.03:
                w2 = win(ex, 0.16, 0.16)
                blush = _soft(_ellipse(u[w2], v[w2], ex * 1.1, 0.17, 0.15, 0.11), px * 8)
                _paint(img[w2], 0.8 * smile * blush, np.array([235, 110, 120], np.float32))

        # nose, and (disgust/anger) wrinkles across the bridge
        w = win(0.0, 0.06, 0.18)
        lines(w, [((0.0, -0.04), (0.03, 0.17))], 0.014, 1.0, skin * 0.7)
        lines(w, [((-0.11, 0.0 + 0.045 * k), (0.11, -0.02 + 0.045 * k)) for k in range(4)],
              0.01, 1.2 * wrinkle, fold)

        # mouth: lip line y(u) bends up at the corners when smiling, down when frowning;
        # the opening is a lens around it, dark inside, with teeth at the top
        my, mw = 0.42, ident.mouth_w * width
        # creases from the nose to the mouth corners deepen with any strong mouth movement
        lines(win(0.0, 0.3, mw + 0.12), [((sd * 0.12, 0.16), (sd * (mw + 0.05), my + 0.02 - 0.1 * curve))
                                         for sd in (-1, 1)], 0.012, 1.2 * abs(curve) + 0.5 * mopen, fold)
        w = win(0.0, my + 0.08, mw + 0.1)
        uu, vv, im = u[w], v[w], img[w]
        q = np.clip(uu / mw, -1.0, 1.0)
        inside_x = np.abs(uu) - mw  # <0 within the mouth's width
        line = my + curve * 0.14 * (0.5 - q * q)
        lens = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
        up = line - 0.06 * mopen * lens
        lo = line + 0.24 * mopen * lens
        lip = np.maximum(inside_x, np.maximum(up - vv, vv - lo) - 0.028)
        lip_col = skin * np.array([0.85, 0.5, 0.5])
        _paint(im, _soft(lip, px), lip_col)
        if mopen > 0.02:
            cav = np.maximum(inside_x + 0.01, np.maximum(up - vv, vv - lo))
            _paint(im, _soft(cav, px), np.array([45, 15, 20]))
            if teeth > 0.05:
                tooth = np.maximum(cav, vv - (up + 0.06 * teeth * lens + 0.004))
                _paint(im, _soft(tooth, px), np.array([240, 238, 225]))
                # gaps between teeth: a vertical-stripe texture
                gaps = np.maximum(tooth, np.abs(((uu / 0.045) % 1.0) - 0.5) * 0.045 - 0.004)
                _paint(im, 0.8 * _soft(gaps, px), np.array([150, 140, 130]))

        # lighting, then sensor noise
        shade = 1.0 + ident.light[0] * X + ident.light[1] * Y
        img = np.clip(img * shade[..., None], 0, 255).astype(np.uint8)
        if self.draw != self.size:
            img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BICUBIC), np.float32)
        else:
            img = img.astype(np.float32)
        oy, ox = rng.integers(0, 32, 2)
        img += ident.noise * ident.noise_bank[oy:oy + self.size, ox:ox + self.size]
        return np.clip(img, 0, 255).astype(np.uint8)
