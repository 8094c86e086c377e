"""`dataset_report` on a small DFEW tree of real media: counts, and every kind of broken clip."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, NUM_FOLDS
from fer.extract.datasets.info import dataset_report, single_labeled

SUB = {FOLD_TRAIN: "train(single-labeled)", FOLD_TEST: "test(single-labeled)"}


def write_jpgs(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i + 1:03d}.jpg")


def write_mp4(path: Path, audio: bool = True, frames: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=8)
    v.width = v.height = 32
    v.pix_fmt = "yuv420p"
    a = c.add_stream("aac", rate=16000) if audio else None  # every stream before the first packet
    if a is not None:
        a.layout = "mono"
    for i in range(frames):
        c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i % 255, np.uint8), format="rgb24")))
    c.mux(v.encode())
    if a is not None:
        fr = av.AudioFrame.from_ndarray((0.2 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)[None],
                                        format="fltp", layout="mono")
        fr.sample_rate = 16000
        c.mux(a.encode(fr))
        c.mux(a.encode())
    c.close()


def build_tree(root: Path) -> Path:
    """Seven clips; 1 is whole, 2..7 each broken in one way (see BROKEN)."""
    ids = [f"{i:05d}" for i in range(1, 8)]
    labels = [1, 2, 3, 4, 5, 6, 7]
    for k in range(1, NUM_FOLDS + 1):
        test = [i for n, i in enumerate(ids) if n % NUM_FOLDS == k - 1]
        for code, sub in SUB.items():
            chosen = test if code == FOLD_TEST else [i for i in ids if i not in test]
            p = root / "EmoLabel_DataSplit" / sub / f"set_{k}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("video_name,label\n" + "".join(f"{int(i)},{labels[ids.index(i)]}\n" for i in chosen))
    faces = root / "Clip" / "clip_224x224_16f"
    for n, cid in enumerate(ids[:6]):
        write_jpgs(faces / cid, 12 if cid == "00006" else 16, seed=n)
        write_mp4(root / "Clip" / "original" / f"{cid}.mp4", audio=cid != "00004")
    write_jpgs(root / "Clip" / "clip_224x224" / "00001", 20)
    bad = faces / "00002" / "007.jpg"
    bad.write_bytes(bad.read_bytes()[:-60])
    mp4 = root / "Clip" / "original" / "00003.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    shutil.rmtree(faces / "00005")
    return root


BROKEN = {
    "00002": "Clip/clip_224x224_16f/00002/007.jpg: truncated image",
    "00003": "truncated",
    "00004": "no audio track",
    "00005": "no 16-frame face folder",
    "00006": "has 12 frames, expected 16",
    "00007": "no media",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("info") / "root")


def _problem_lines(report: str) -> dict[str, str]:
    body = report.split("problems", 1)[1].splitlines()[1:]
    return {line.split()[0]: line for line in body if line.startswith("  ") and not line.startswith("  ...")}


def test_report_counts_and_problems(tree: Path):
    report = dataset_report(tree, check_media=True)
    assert "DFEW layout" in report
    assert "clips            7 " in report
    assert "single-labeled   7 " in report
    for name in ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"):
        assert any(line.split()[:3] == [name, "1", "1"] for line in report.splitlines())
    # 7 clips over 5 folds: folds 1 and 2 test two clips, the others one
    fold_rows = [line.split() for line in report.splitlines() if line.startswith("  set_")]
    assert [r[:4] for r in fold_rows] == [["set_1", "5", "2", "0"], ["set_2", "5", "2", "0"], ["set_3", "6", "1", "0"],
                                          ["set_4", "6", "1", "0"], ["set_5", "6", "1", "0"]]
    assert "16 face frames        5" in report
    assert "all face frames       1" in report
    assert "video                 5" in report  # 00003 is truncated, 00007 has none
    assert "audio track           4" in report  # 00004 has no audio stream
    problems = _problem_lines(report)
    assert "problems         6 clips" in report
    assert set(problems) == set(BROKEN)
    for cid, reason in BROKEN.items():
        assert reason in problems[cid], problems[cid]


def test_report_without_media_check(tree: Path):
    report = dataset_report(tree, check_media=False)
    problems = _problem_lines(report)
    # the truncated files and the missing audio track need the files opened
    assert set(problems) == {"00005", "00006", "00007"}
    assert "audio track         ?" in report and "--check-media" in report
    assert "video                 6" in report


def test_report_lists_at_most_max_listed(tree: Path):
    report = dataset_report(tree, check_media=False, max_listed=2)
    assert "... and 1 more" in report
    listed, kinds = report.split("problem kinds")
    assert len(_problem_lines(listed)) == 2
    # the rest is a tally by kind, ids and numbers blanked
    assert "1  <path> has # frames, expected #" in kinds and "1  no media: none of" in kinds


def test_report_on_manifest(tree: Path, tmp_path: Path):
    m = tmp_path / "m.csv"
    clips = tree / "Clip"
    m.write_text(
        "clip_id,video,faces16,happy,sad,neutral,angry,surprise,disgust,fear,fold_1\n"
        f"a,{clips}/original/00001.mp4,{clips}/clip_224x224_16f/00001,8,2,0,0,0,0,0,train\n"
        f"b,{clips}/original/00003.mp4,,3,3,4,0,0,0,0,test\n"
    )
    report = dataset_report(m)
    assert "manifest CSV" in report and "vote counts" in report
    assert "single-labeled   1 " in report
    problems = _problem_lines(report)
    assert list(problems) == ["b"] and "truncated" in problems["b"]


def test_single_labeled_rule():
    votes = np.array([[7, 3, 0, 0, 0, 0, 0], [6, 4, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0], [14, 6, 0, 0, 0, 0, 0]])
    assert single_labeled(votes).tolist() == [True, False, True, True]


def test_no_votes_no_vote_rule_and_conflicts_counted(tree: Path, tmp_path: Path):
    """Issue 19: data without votes does not claim the 7-of-10-votes rule; data with votes counts the clips
    whose votes tie with or disagree with the official label."""
    report = dataset_report(tree, check_media=False)
    assert "single-labeled   7   (one label per clip: no votes)" in report
    assert "of 10 votes" not in report and "votes vs label" not in report
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,label,vote_happy,vote_sad\n"
                 f"a,{tree}/Clip/original/00001.mp4,sad,5,5\n"
                 f"b,{tree}/Clip/original/00002.mp4,happy,1,9\n"
                 f"c,{tree}/Clip/original/00003.mp4,happy,8,2\n")
    report = dataset_report(m, check_media=False)
    assert "(one class with >= 7 of 10 votes)" in report
    assert "votes vs label   1 disagree, 1 tie   (the official label is used for both)" in report
    rows = {line.split()[0]: line.split()[1] for line in report.splitlines() if line.startswith("  happy")
            or line.startswith("  sad ")}
    assert rows == {"happy": "2", "sad": "1"}  # by label: a is sad (the tie), b is happy (the label column)
