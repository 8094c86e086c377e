"""Full frames for the synthetic dataset: a person (the clip's face on a body) in a scene, and the mp4.

Body posture carries the class (arm and head posture, lean, crouch), drawn as a thick-limbed
figure big enough for a pose estimator. The mp4 holds H.264 video (mpeg4 where libx264 is
missing) and an AAC audio track.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

BODY_PARAMS = ("l_arm", "l_elbow", "r_arm", "r_elbow", "head_down", "head_roll", "lean", "crouch")
NEUTRAL_BODY = np.array([0.15, 0.10, 0.15, 0.10, 0.0, 0.0, 0.0, 0.0], np.float32)

# Apex posture per class (rows: happy, sad, neutral, angry, surprise, disgust, fear).
# *_arm: upper-arm angle from hanging down (0) through sideways (pi/2) to up (pi);
# *_elbow: forearm bend relative to the upper arm (+ folds toward the body's midline/up);
# head_down: head drop (fraction of head size); head_roll: radians; lean: forward (+) / back (-);
# crouch: knee bend / lowering of the whole body.
BODY_APEX = np.array(
    [
        [2.50, 0.20, 2.50, 0.20, -0.10, 0.00, 0.00, 0.00],  # happy: arms up in a V
        [0.05, 0.00, 0.05, 0.00, 0.45, 0.20, 0.20, 0.10],  # sad: arms hang, head down, slump
        [0.15, 0.10, 0.15, 0.10, 0.00, 0.00, 0.00, 0.00],  # neutral
        [0.95, 2.30, 0.95, 2.30, 0.10, 0.00, 0.25, 0.00],  # angry: hands on hips, lean in
        [1.90, 1.30, 1.90, 1.30, -0.15, 0.00, -0.12, 0.00],  # surprise: hands up by the head
        [1.50, 0.20, 0.20, 0.10, 0.05, 0.45, -0.20, 0.00],  # disgust: one arm pushes away, head turned
        [0.60, 2.60, 0.60, 2.60, 0.25, -0.10, -0.15, 0.45],  # fear: arms guard the chest, cower
        # MAFW's four more (rows 7..10)
        [0.30, 1.60, 0.05, 0.00, -0.10, 0.25, -0.20, 0.00],  # contempt: one arm crossed, head back and tilted
        [0.70, 2.90, 0.70, 2.90, 0.15, 0.00, 0.10, 0.20],  # anxiety: hands at the mouth, hunched
        [1.40, -0.60, 1.40, -0.60, 0.30, 0.00, 0.00, 0.10],  # helplessness: arms out, palms open, head low
        [0.20, 0.00, 0.20, 0.00, 0.55, -0.15, 0.15, 0.05],  # disappointment: head hangs, shoulders slump
    ],
    np.float32,
)


@lru_cache(maxsize=1)
def video_codec() -> str:
    """``libx264`` when this PyAV build can encode H.264, else ``mpeg4``."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means the encoder is not usable
        return "mpeg4"


@dataclass
class Scene:
    """Per-clip nuisance of the full frame: background, clothes, placement."""

    background: Image.Image
    """RGB background, a few pixels larger than the frame (camera shake crops it)."""
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    skin: tuple[int, int, int]
    x: float
    """Body centre, fraction of frame width."""
    height: float
    """Figure height, fraction of frame height."""


SHAKE = 6


def random_scene(rng: np.random.Generator, width: int, height: int, skin: np.ndarray) -> Scene:
    """Draw one clip's room: a wall gradient, a floor, some furniture and windows."""
    W, H = width + 2 * SHAKE, height + 2 * SHAKE
    top, bottom = rng.uniform(30, 230, (2, 3))
    t = np.linspace(0, 1, H)[:, None, None]
    bg = (top * (1 - t) + bottom * t) * np.ones((1, W, 1))
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    floor = int(H * rng.uniform(0.72, 0.85))
    d.rectangle([0, floor, W, H], fill=tuple(int(c) for c in rng.uniform(20, 200, 3)))
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(0, W), rng.uniform(0, floor)
        w, h = rng.uniform(15, 90), rng.uniform(15, 90)
        # muted furniture: the figure, not the room, should dominate the frame's statistics
        tone = (top + bottom) / 2 + rng.normal(0, 30, 3)
        d.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in np.clip(tone, 0, 255)))
    return Scene(
        background=img,
        shirt=tuple(int(c) for c in rng.uniform(20, 235, 3)),
        pants=tuple(int(c) for c in rng.uniform(10, 150, 3)),
        skin=tuple(int(c) for c in skin),
        x=float(rng.uniform(0.38, 0.62)),
        height=float(rng.uniform(0.82, 0.95)),
    )


def _face_disc(face: np.ndarray, size: int) -> tuple[Image.Image, Image.Image]:
    """The face crop shrunk to a head of ``size`` px, with an elliptical mask."""
    im = Image.fromarray(face).crop((28, 10, 196, 214)).resize((size, int(size * 1.2)), Image.BILINEAR)
    mask = Image.new("L", im.size, 0)
    ImageDraw.Draw(mask).ellipse([1, 1, im.size[0] - 2, im.size[1] - 2], fill=255)
    return im, mask


def render_frame(scene: Scene, p: np.ndarray, face: np.ndarray, width: int, height: int,
                 shake: tuple[int, int]) -> np.ndarray:
    """One full frame (height, width, 3) uint8: the scene, the figure in posture ``p``, the face."""
    l_arm, l_elb, r_arm, r_elb, head_down, head_roll, lean, crouch = (float(x) for x in p)
    img = scene.background.crop((SHAKE + shake[0], SHAKE + shake[1],
                                 SHAKE + shake[0] + width, SHAKE + shake[1] + height))
    d = ImageDraw.Draw(img)
    H = scene.height * height
    unit = H / 7.5  # head height; a figure is ~7.5 heads tall
    limb = max(int(unit * 0.45), 3)
    foot_y = height * 0.97
    cx = scene.x * width
    drop = crouch * unit * 1.2
    hip = np.array([cx, foot_y - 3.6 * unit + drop])
    neck = hip + np.array([lean * unit * 1.5, -2.7 * unit])
    shoulder_w = 1.0 * unit

    # legs: knees bend outward when crouching
    for side in (-1, 1):
        h = hip + np.array([side * 0.45 * unit, 0])
        knee = h + np.array([side * (0.2 + crouch * 0.9) * unit, 1.8 * unit - drop * 0.5])
        foot = np.array([h[0] + side * 0.15 * unit, foot_y])
        d.line([tuple(h), tuple(knee), tuple(foot)], fill=scene.pants, width=limb + 2, joint="curve")
    # torso
    d.polygon([tuple(neck + [-shoulder_w, 0.1 * unit]), tuple(neck + [shoulder_w, 0.1 * unit]),
               tuple(hip + [0.7 * unit, 0]), tuple(hip + [-0.7 * unit, 0])], fill=scene.shirt)
    # arms: upper arm at angle a from hanging; forearm bends by b toward the midline
    for side, a, b in ((-1, l_arm, l_elb), (1, r_arm, r_elb)):
        sh = neck + np.array([side * shoulder_w, 0.25 * unit])
        up = np.array([side * np.sin(a), np.cos(a)]) * 1.35 * unit
        el = sh + up
        fa = a + b  # bending moves the forearm further round, toward the body when b > 0
        fore = np.array([side * np.sin(fa), np.cos(fa)])
        if b > 1.2:  # a strongly folded arm crosses toward the body midline
            fore[0] = -side * abs(fore[0]) - side * 0.2
        hand = el + fore * 1.2 * unit
        d.line([tuple(sh), tuple(el), tuple(hand)], fill=scene.shirt, width=limb, joint="curve")
        r = limb * 0.7
        d.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=scene.skin)
    # head: the clip's face, tilted and dropped toward the chest
    size = int(unit * 1.3)
    head, mask = _face_disc(face, size)
    if abs(head_roll) > 0.01:
        head = head.rotate(np.degrees(head_roll), resample=Image.BILINEAR, expand=False)
        mask = mask.rotate(np.degrees(head_roll), resample=Image.BILINEAR, expand=False)
    hx = neck[0] - size / 2 + head_roll * unit * 0.6
    hy = neck[1] - head.size[1] + head_down * unit * 0.9
    d.line([tuple(neck), (neck[0], neck[1] - 0.3 * unit)], fill=scene.skin, width=limb)
    img.paste(head, (int(hx), int(hy)), mask)
    return np.asarray(img)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None, sr: int) -> None:
    """Encode frames (and ``audio`` (channels, samples) float32, if given) into an mp4 file."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as c:
        codec = video_codec()
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.thread_count = 1  # one thread: same bytes every run, and workers are processes
        if codec == "libx264":
            v.options = {"preset": "superfast", "crf": "23"}
        else:
            v.bit_rate = 800_000
        a = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            a = c.add_stream("aac", rate=sr, layout=layout)
            a.options = {"aac_coder": "fast"}  # the default two-loop coder costs 3x the time
            a.bit_rate = 96_000
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24")
            vf.pts = i
            c.mux(v.encode(vf))
        c.mux(v.encode())
        if a is not None:
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32), format="fltp",
                                            layout="mono" if audio.shape[0] == 1 else "stereo")
            af.sample_rate, af.pts = sr, 0
            c.mux(a.encode(af))
            c.mux(a.encode())
