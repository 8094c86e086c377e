"""``fer data synth``: a synthetic dataset in a real layout whose faces, voices and bodies carry class
signal (strong enough for frozen random-init backbones), for demos, tests, benchmarks.

The DFEW layout (the default) written under ``out``::

    Clip/clip_224x224/<id5>/00001.jpg ...      every face frame of the clip
    Clip/clip_224x224_16f/<id5>/00001..16.jpg  16 frames sampled uniformly from those
    Clip/original/<id5>.mp4                    the full scene, H.264 + AAC
    Annotation/annotation.csv, annotation.xlsx 10 simulated annotators' votes per clip
    EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv
    corrupt.json                               broken clips (--corrupt) and how they are broken
    synth.json                                 how the dataset was made (marks the folder as ours)

MAFW, FERV39k and class folders (``--layout``) are written as their releases are: see layouts.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from fer.cache.errors import FerError
from fer.extract.synth.audio import AUDIO_APEX, NEUTRAL_AUDIO, synth_voice
from fer.extract.synth.face import FACE_APEX, NEUTRAL_FACE, FaceRenderer, random_identity
from fer.extract.synth.layouts import LAYOUTS, class_table
from fer.extract.synth.plan import ClipPlan, plan_dataset
from fer.extract.synth.scene import BODY_APEX, NEUTRAL_BODY, random_scene, render_frame, video_codec, write_mp4

# Kinds of damage `--corrupt K` cycles through, and what each one does.
CORRUPT_KINDS: dict[str, str] = {
    "truncated_mp4": "the mp4 is cut to 40% of its bytes (no moov atom: it cannot be opened)",
    "garbage_jpg": "one face frame (in both face folders) is random bytes, not a JPEG",
    "missing_faces": "both face folders are absent; the mp4 is fine",
    "no_audio": "the mp4 has a video stream only",
    "empty_mp4": "the mp4 is a 0-byte file",
}
FACE_SIZE = 224
FRAMES_16 = 16
JPEG_QUALITY = 90
MARKER = "synth.json"
GENERATED = tuple(dict.fromkeys([n for lay in LAYOUTS.values() for n in lay.top] + ["corrupt.json", MARKER]))


@dataclass
class SynthSummary:
    """What ``synthesize`` wrote; ``str()`` is the CLI's report."""

    out: Path
    clips: int
    """All clips, broken ones included."""
    single_labeled: int
    per_class: dict[str, int]
    """Single-labeled clips per class."""
    corrupt: dict[str, int] = field(default_factory=dict)
    """Broken clips per kind."""
    seconds: float = 0.0
    workers: int = 1
    codec: str = "libx264"
    layout: str = "dfew"

    def __str__(self) -> str:
        lines = [
            f"wrote {self.clips} clips ({self.layout} layout) to {self.out} in {self.seconds:.1f} s "
            f"({self.workers} worker{'s' if self.workers != 1 else ''}, video {self.codec} + aac)",
            f"  single-labeled: {self.single_labeled}  ambiguous: {self.clips - self.single_labeled}",
            "  per class: " + ", ".join(f"{k} {v}" for k, v in self.per_class.items()),
        ]
        if self.codec != "libx264":
            lines.append(f"  note: libx264 is not available in this PyAV build; videos use {self.codec}")
        if self.corrupt:
            lines.append("  corrupt: " + ", ".join(f"{k} {v}" for k, v in self.corrupt.items())
                         + " (see corrupt.json)")
        return "\n".join(lines)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _apex(table: np.ndarray, neutral: np.ndarray, plan: ClipPlan, strength: float,
          rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The clip's peak parameters: a mix of its two classes, scaled by strength, plus quirks."""
    target = plan.mix * table[plan.primary] + (1 - plan.mix) * table[plan.secondary]
    quirk = rng.normal(0.0, jitter, target.shape) * np.abs(table).max(0)
    return (neutral + strength * (target - neutral) + quirk).astype(np.float32)


def _jpeg(frame: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def render_clip(job: tuple[Path, int, ClipPlan, str]) -> str:
    """Render and write one clip's faces, video and audio where its layout puts them; returns its id.
    Runs in a worker.

    All randomness comes from ``(seed, clip number)``, so the bytes do not depend on the
    number of workers or the order they run in.
    """
    out, seed, plan, layout = job
    lay = LAYOUTS[layout]
    rng = np.random.default_rng([seed, plan.index])
    fps = int(rng.choice([10, 12]))
    n_frames = int(round(rng.uniform(2.0, 2.8) * fps))
    width, height = ((320, 240), (256, 192))[int(rng.integers(2))]
    sr = int(rng.choice([44100, 48000]))
    channels = int(rng.integers(1, 3))

    # each modality's strength wanders around the clip's intensity, so sometimes the voice or
    # the body says more than the face (what fusion can exploit)
    def strength() -> float:
        return float(np.clip(plan.intensity * rng.uniform(0.7, 1.3), 0.15, 1.0))

    face_apex = _apex(class_table(FACE_APEX, lay), NEUTRAL_FACE, plan, strength(), rng, 0.06)
    body_apex = _apex(class_table(BODY_APEX, lay), NEUTRAL_BODY, plan, strength(), rng, 0.06)
    voice = _apex(class_table(AUDIO_APEX, lay), NEUTRAL_AUDIO, plan, strength(), rng, 0.04)

    # onset -> apex (-> slight offset) over the clip
    t = np.arange(n_frames) / max(n_frames - 1, 1)
    onset = rng.uniform(0.0, 0.25)
    apex_at = onset + rng.uniform(0.3, 0.55)
    ramp = _smoothstep((t - onset) / (apex_at - onset)) * (1 - rng.uniform(0, 0.25) * _smoothstep((t - 0.85) / 0.15))

    ident = random_identity(rng, FACE_SIZE)
    scene = random_scene(rng, width, height, ident.skin)
    renderer = FaceRenderer(FACE_SIZE)
    drift = np.cumsum(rng.normal(0, 0.006, (n_frames, 3)), axis=0)
    blink_at = set(rng.choice(n_frames, size=int(rng.integers(0, 3)), replace=False).tolist())

    faces, frames = [], []
    for i in range(n_frames):
        fp = NEUTRAL_FACE + ramp[i] * (face_apex - NEUTRAL_FACE)
        face = renderer.render(ident, fp, tuple(drift[i]), rng, blink=i in blink_at)
        faces.append(face)
        bp = NEUTRAL_BODY + ramp[i] * (body_apex - NEUTRAL_BODY)
        shake = tuple(int(x) for x in rng.integers(-2, 3, 2))
        if lay.video:
            frames.append(render_frame(scene, bp, face, width, height, shake))

    wave = synth_voice(voice, n_frames / fps, sr, rng)
    audio = wave[None] if channels == 1 else np.stack([wave, wave * rng.uniform(0.6, 1.0)])

    paths = lay.paths(out, plan, lay)
    if plan.corrupt != "missing_faces":
        jpgs = [_jpeg(f) for f in faces]
        picks = np.linspace(0, n_frames - 1, FRAMES_16).round().astype(int)
        if plan.corrupt == "garbage_jpg":
            bad = int(picks[FRAMES_16 // 2])
            jpgs[bad] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
        if paths.faces_all is not None:
            paths.faces_all.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(jpgs):
                (paths.faces_all / f"{i + 1:05d}.jpg").write_bytes(data)
        if paths.faces16 is not None:
            paths.faces16.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(picks):
                (paths.faces16 / f"{j + 1:05d}.jpg").write_bytes(jpgs[int(i)])

    if paths.video is not None:
        video = paths.video
        video.parent.mkdir(parents=True, exist_ok=True)
        if plan.corrupt == "empty_mp4":
            video.write_bytes(b"")
        else:
            write_mp4(video, frames, fps, None if plan.corrupt == "no_audio" else audio, sr)
            if plan.corrupt == "truncated_mp4":
                data = video.read_bytes()
                video.write_bytes(data[: int(len(data) * 0.4)])
    return lay.clip_id(plan)


def _prepare(out: Path) -> None:
    """Make ``out`` ready: create it, or clear a previous synthetic dataset; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise FerError(f"{out} is a file; give a folder to write the synthetic dataset into")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FerError(f"{out} is not empty and was not made by `fer data synth`; "
                           "choose a new or empty folder")
        for name in GENERATED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def synthesize(out: Path, clips: int = 200, seed: int = 0, corrupt: int = 0,
               workers: int | None = None, layout: str = "dfew") -> SynthSummary:
    """Write ``clips`` synthetic clips (plus ``corrupt`` broken ones) in ``layout`` (dfew, mafw, ferv39k,
    folders) under ``out``.

    The same ``seed`` writes the same jpgs and tables byte for byte, whatever ``workers`` is
    (default: all CPUs).
    """
    if clips < 1:
        raise FerError("--clips must be at least 1")
    if corrupt < 0:
        raise FerError("--corrupt must be 0 or more")
    if layout not in LAYOUTS:
        raise FerError(f"unknown --layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    lay = LAYOUTS[layout]
    start = time.perf_counter()
    out = Path(out)
    _prepare(out)
    # a layout without videos cannot have its video broken
    kinds = [k for k in CORRUPT_KINDS if lay.video or k in ("garbage_jpg", "missing_faces")]
    plans = plan_dataset(clips, seed, [kinds[i % len(kinds)] for i in range(corrupt)],
                         class_totals=np.asarray(lay.totals, np.float64), annotators=lay.annotators,
                         splits=lay.splits)

    jobs = [(out, seed, p, layout) for p in plans]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if n_workers == 1:
        for j in jobs:
            render_clip(j)
    else:
        with mp.get_context().Pool(n_workers) as pool:
            for _ in pool.imap_unordered(render_clip, jobs, chunksize=2):
                pass

    lay.tables(out, plans, lay)
    broken = {lay.clip_id(p): {"kind": p.corrupt, "what": CORRUPT_KINDS[p.corrupt]} for p in plans if p.corrupt}
    (out / "corrupt.json").write_text(json.dumps(broken, indent=1, sort_keys=True) + "\n")
    (out / MARKER).write_text(json.dumps(
        {"generator": "fer data synth", "layout": layout, "clips": clips, "seed": seed, "corrupt": corrupt,
         "video_codec": video_codec()}, indent=1) + "\n")

    per_class = {name: 0 for name in lay.class_names}
    for p in plans:
        if p.label:
            per_class[lay.class_names[p.label - 1]] += 1
    counts: dict[str, int] = {}
    for p in plans:
        if p.corrupt:
            counts[p.corrupt] = counts.get(p.corrupt, 0) + 1
    return SynthSummary(out=out, clips=len(plans), single_labeled=sum(per_class.values()), per_class=per_class,
                        corrupt=counts, seconds=time.perf_counter() - start, workers=n_workers,
                        codec=video_codec(), layout=layout)
