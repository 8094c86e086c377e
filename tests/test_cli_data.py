"""`fer data info` end to end, in a real process: report, unreadable media, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fer.tests.cli import fer


def write_clip(root: Path, cid: str, frames: int = 16) -> None:
    faces = root / "Clip" / "clip_224x224_16f" / cid
    faces.mkdir(parents=True)
    rng = np.random.default_rng(int(cid))
    for i in range(frames):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(faces / f"{i:05d}.jpg")
    video = root / "Clip" / "original" / f"{cid}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video), "w") as c:
        v = c.add_stream("libx264", rate=8)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(8):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 25 * i, np.uint8), format="rgb24")))
        c.mux(v.encode())
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        c.mux(a.encode(fr))
        c.mux(a.encode())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Five clips in the DFEW layout; clip 2 has a broken jpg, clip 4 a truncated mp4."""
    root = tmp_path_factory.mktemp("cli") / "dfew"
    ids = ["1", "2", "3", "4", "5"]
    for k in range(1, 6):
        for sub, chosen in (("train", [i for i in ids if int(i) != k]), ("test", [str(k)])):
            p = root / "EmoLabel_DataSplit" / f"{sub}(single-labeled)" / f"set_{k}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("video_name,label\n" + "".join(f"{i},{i}\n" for i in chosen))
    for i in ids:
        write_clip(root, f"{int(i):05d}")
    (root / "Clip" / "clip_224x224_16f" / "00002" / "00003.jpg").write_bytes(b"\x00" * 100)
    mp4 = root / "Clip" / "original" / "00004.mp4"
    mp4.write_bytes(mp4.read_bytes()[:-300])
    return root


def test_data_info_reports_counts_and_broken_media(root: Path):
    r = fer("data", "info", str(root))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "clips            5 " in out and "DFEW layout" in out
    assert "  set_1            4        1        0" in out
    assert "16 face frames        5" in out and "video                 4" in out and "audio track           4" in out
    problems = [line for line in out.split("problems", 1)[1].splitlines()[1:] if line.startswith("  ")]
    assert len(problems) == 2
    assert problems[0].split()[0] == "00002" and "00003.jpg: not an image" in problems[0]
    assert problems[1].split()[0] == "00004" and "truncated" in problems[1]


def test_data_info_without_media_check(root: Path):
    r = fer("data", "info", str(root), "--no-check-media")
    assert r.returncode == 0, r.stderr
    assert "problems         none" in r.stdout and "not checked" in r.stdout


def test_data_info_on_a_manifest(root: Path, tmp_path: Path):
    m = tmp_path / "clips.csv"
    m.write_text(f"clip_id,video,label,fold_1\nx,{root}/Clip/original/00001.mp4,happy,train\n"
                 "y,missing.mp4,fear,test\n")
    r = fer("data", "info", str(m))
    assert r.returncode == 0, r.stderr
    assert "manifest CSV" in r.stdout and "missing.mp4 not found" in r.stdout


@pytest.mark.parametrize("make, expect", [
    (lambda p: p / "nowhere", "does not exist"),
    (lambda p: (p / "d").mkdir() or p / "d", "matches no dataset layout"),
    (lambda p: (p / "m.csv").write_text("clip_id,video,label\na,a.mp4,1\na,a.mp4,2\n") and p / "m.csv",
     "clip_id a already used on line 2"),
    (lambda p: (p / "m.csv").write_text("clip_id,video,label,vote_x,vote_y\na,a.mp4,9,1,0\n") and p / "m.csv",
     "line 2: label '9' is not one of the classes (x, y)"),
])
def test_data_info_errors_are_one_line(tmp_path: Path, make, expect: str):
    r = fer("data", "info", str(make(tmp_path)))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and expect in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# the kind of damage synth writes -> words the report uses for it
SYNTH_REASONS = {
    "truncated_mp4": "truncated",
    "garbage_jpg": "not an image",
    "missing_faces": "no 16-frame face folder",
    "no_audio": "no audio track",
    "empty_mp4": "empty file",
}


def test_data_info_finds_synth_corrupt_clips(tmp_path: Path):
    from fer.extract.synth import synthesize

    out = tmp_path / "synth"
    synthesize(out, clips=20, seed=3, corrupt=5, workers=2)
    broken = json.loads((out / "corrupt.json").read_text())
    assert len(broken) == 5
    r = fer("data", "info", str(out))
    assert r.returncode == 0, r.stderr
    assert "clips            25 " in r.stdout
    problems = {line.split()[0]: line for line in r.stdout.split("problems", 1)[1].splitlines()[1:]
                if line.startswith("  ") and not line.startswith("  ...")}
    assert set(problems) == set(broken), r.stdout
    for cid, info in broken.items():
        assert SYNTH_REASONS.get(info["kind"], "") in problems[cid], problems[cid]
