"""The synthetic DFEW-layout generator: layout, votes, folds, media, determinism, broken clips, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import openpyxl
import pytest
from PIL import Image

from fer.cache.errors import FerError
from fer.cache.schema import NUM_CLASSES, NUM_FOLDS
from fer.extract.synth import ANNOTATION_HEADER, CORRUPT_KINDS, synthesize
from fer.extract.synth.plan import plan_dataset

N_CLIPS = 30
N_CORRUPT = 5


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize(out, clips=N_CLIPS, seed=0, corrupt=N_CORRUPT, workers=2)
    return out, summary


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _votes(root: Path) -> dict[str, np.ndarray]:
    return {f"{int(r['order']):05d}": np.array([int(r[h]) for h in ANNOTATION_HEADER[1:]])
            for r in _rows(root / "Annotation" / "annotation.csv")}


def _corrupt(root: Path) -> dict[str, str]:
    return {cid: v["kind"] for cid, v in json.loads((root / "corrupt.json").read_text()).items()}


def _hashes(root: Path) -> dict[str, str]:
    files = [*root.glob("Clip/clip_224x224*/*/*.jpg"), *root.glob("**/*.csv")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _decoded_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_layout_follows_dfew(synth):
    root, summary = synth
    assert summary.clips == N_CLIPS + N_CORRUPT
    ids = [f"{i:05d}" for i in range(1, N_CLIPS + N_CORRUPT + 1)]
    broken = _corrupt(root)
    assert sorted(_votes(root)) == ids
    for cid in ids:
        assert (root / "Clip" / "original" / f"{cid}.mp4").is_file()
        if broken.get(cid) == "missing_faces":
            assert not (root / "Clip" / "clip_224x224" / cid).exists()
            assert not (root / "Clip" / "clip_224x224_16f" / cid).exists()
            continue
        f16 = sorted(p.name for p in (root / "Clip" / "clip_224x224_16f" / cid).iterdir())
        assert f16 == [f"{i:05d}.jpg" for i in range(1, 17)]
        every = sorted(p.name for p in (root / "Clip" / "clip_224x224" / cid).iterdir())
        assert 20 <= len(every) <= 34 and every == [f"{i:05d}.jpg" for i in range(1, len(every) + 1)]
        # the 16 frames are copies of frames of the full sequence, first and last included
        all_bytes = {(root / "Clip" / "clip_224x224" / cid / n).read_bytes() for n in every}
        assert all((root / "Clip" / "clip_224x224_16f" / cid / n).read_bytes() in all_bytes for n in f16)
    with Image.open(root / "Clip" / "clip_224x224_16f" / "00001" / "00001.jpg") as im:
        assert im.size == (224, 224) and im.format == "JPEG" and im.mode == "RGB"
    assert "single-labeled" in str(summary) and "corrupt" in str(summary)


def test_votes_are_ten_annotators_and_xlsx_matches_csv(synth):
    root, summary = synth
    votes = _votes(root)
    assert all(v.sum() == 10 and (v >= 0).all() for v in votes.values())
    single = sum(v.max() > 6 for v in votes.values())
    assert single == summary.single_labeled and 0 < single < len(votes)  # some clips are ambiguous
    wb = openpyxl.load_workbook(root / "Annotation" / "annotation.xlsx", read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    assert list(rows[0]) == ANNOTATION_HEADER
    assert {f"{r[0]:05d}": list(r[1:]) for r in rows[1:]} == {k: v.tolist() for k, v in votes.items()}


def test_split_files_partition_single_labeled_clips(synth):
    root, _ = synth
    votes = _votes(root)
    single = {cid: int(v.argmax()) + 1 for cid, v in votes.items() if v.max() > 6}
    seen: list[str] = []
    for k in range(1, NUM_FOLDS + 1):
        test = _rows(root / "EmoLabel_DataSplit" / "test(single-labeled)" / f"set_{k}.csv")
        train = _rows(root / "EmoLabel_DataSplit" / "train(single-labeled)" / f"set_{k}.csv")
        assert list(test[0]) == ["video_name", "label"]
        te = {f"{int(r['video_name']):05d}": int(r["label"]) for r in test}
        tr = {f"{int(r['video_name']):05d}": int(r["label"]) for r in train}
        assert not set(te) & set(tr) and {**te, **tr} == single  # labels agree with the votes
        seen += list(te)
    assert sorted(seen) == sorted(single)  # the test sets partition the single-labeled clips
    assert set(_corrupt(root)) <= set(single)  # broken clips are listed like real ones


def test_mp4_has_video_and_audio_of_the_clip_length(synth):
    root, _ = synth
    broken = _corrupt(root)
    rates, layouts = set(), set()
    for cid in [f"{i:05d}" for i in range(1, 9)]:
        assert cid not in broken
        n_faces = len(list((root / "Clip" / "clip_224x224" / cid).glob("*.jpg")))
        with av.open(str(root / "Clip" / "original" / f"{cid}.mp4")) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name in ("h264", "mpeg4") and a.codec_context.name == "aac"
            frames, samples = [], 0
            for f in c.decode(v, a):
                if isinstance(f, av.VideoFrame):
                    frames.append(f.to_ndarray(format="rgb24"))
                else:
                    samples += f.samples
            seconds = len(frames) / float(v.average_rate)
            rates.add(a.rate)
            layouts.add(a.layout.nb_channels)
        assert len(frames) == n_faces  # one aligned face per video frame, as in DFEW
        assert 2.0 <= seconds <= 3.0
        assert abs(samples / a.rate - seconds) < 0.1
        assert frames[0].shape[1] in (256, 320) and frames[0].std() > 10  # a scene, not a blank
    assert rates <= {44100, 48000} and layouts <= {1, 2}
    assert len(rates) == 2 and len(layouts) == 2  # the extractor's resampling gets exercised


def test_corrupt_clips_are_really_broken(synth):
    root, summary = synth
    broken = _corrupt(root)
    assert sorted(broken.values()) == sorted(CORRUPT_KINDS) and summary.corrupt == {k: 1 for k in CORRUPT_KINDS}
    for cid, kind in broken.items():
        mp4 = root / "Clip" / "original" / f"{cid}.mp4"
        if kind in ("truncated_mp4", "empty_mp4"):
            assert (mp4.stat().st_size == 0) == (kind == "empty_mp4")
            with pytest.raises(av.error.FFmpegError):
                with av.open(str(mp4)) as c:
                    list(c.decode(video=0))
        elif kind == "no_audio":
            with av.open(str(mp4)) as c:
                assert len(c.streams.video) == 1 and len(c.streams.audio) == 0
        elif kind == "garbage_jpg":
            bad = []
            for folder in ("clip_224x224_16f", "clip_224x224"):
                for p in sorted((root / "Clip" / folder / cid).glob("*.jpg")):
                    try:
                        with Image.open(p) as im:
                            im.load()
                    except Exception:  # noqa: BLE001 - PIL raises several types for garbage
                        bad.append(folder)
            assert bad == ["clip_224x224_16f", "clip_224x224"]  # one frame, seen in both folders
        else:
            assert kind == "missing_faces" and _decoded_video(mp4).shape[0] > 0


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", clips=5, seed=7, workers=1)
    synthesize(tmp_path / "b", clips=5, seed=7, workers=2)
    synthesize(tmp_path / "c", clips=5, seed=8, workers=2)
    ha, hb, hc = (_hashes(tmp_path / n) for n in "abc")
    assert ha == hb and len(ha) > 5 * 32
    assert ha != hc
    for cid in ("00001", "00005"):
        va, vb = (_decoded_video(tmp_path / n / "Clip" / "original" / f"{cid}.mp4") for n in "ab")
        assert np.array_equal(va, vb)
    assert a.clips == 5


def test_rerun_replaces_own_output_but_refuses_foreign_folder(tmp_path):
    out = tmp_path / "d"
    synthesize(out, clips=4, seed=0, workers=1)
    synthesize(out, clips=2, seed=0, workers=1)
    assert sorted(p.name for p in (out / "Clip" / "original").iterdir()) == ["00001.mp4", "00002.mp4"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(FerError, match="not empty"):
        synthesize(foreign, clips=2)


def test_plan_is_dfew_like_and_every_class_in_every_test_fold():
    plans = plan_dataset(200, seed=0, corrupt_kinds=[])
    votes = np.stack([p.votes for p in plans])
    assert (votes.sum(1) == 10).all()
    ambiguous = (votes.max(1) <= 6).mean()
    assert 0.22 <= ambiguous <= 0.35
    labels = np.array([p.label for p in plans])
    counts = np.bincount(labels[labels > 0], minlength=NUM_CLASSES + 1)[1:]
    assert counts[5] == counts.min() and counts[2] == counts.max()  # disgust rarest, neutral most common
    for k in range(1, NUM_FOLDS + 1):
        in_test = {p.label for p in plans if p.test_fold == k}
        assert in_test == set(range(1, NUM_CLASSES + 1))
    sizes = np.bincount([p.test_fold for p in plans if p.label], minlength=NUM_FOLDS + 1)[1:]
    assert sizes.max() - sizes.min() <= 1
    assert all((p.test_fold == 0) == (p.label == 0) for p in plans)


def test_cli_data_synth(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "fer.cli", "data", "synth", str(out), "--clips", "3", "--seed", "1", "--corrupt", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote 4 clips" in r.stdout and "truncated_mp4 1" in r.stdout
    assert len(list((out / "Clip" / "original").glob("*.mp4"))) == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep me")
    r = subprocess.run([*cmd[:5], str(foreign)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert (foreign / "x.txt").read_text() == "keep me"
