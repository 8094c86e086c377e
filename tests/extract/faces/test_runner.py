"""`run_faces` on videos of a real photo: aligned crops, counts, manifest, faces.json, resume, shards, failures."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fer.cache.errors import FerError
from fer.extract.datasets import load_dataset
from fer.extract.faces.align import template_points
from fer.extract.faces.detect import MTCNN
from fer.extract.faces.output import MANIFEST, MARKER, PARTIAL, partial_dir
from fer.extract.faces.runner import run_faces
from fer.extract.frames import list_frames
from fer.extract.synth import photo as V

SIZE = 112


@pytest.fixture(scope="module")
def det():
    return MTCNN()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Four clips (moving face; face absent in 3 frames; two faces; no face) and a manifest with folds."""
    base = tmp_path_factory.mktemp("faces_src")
    V.make_moving(base / "v" / "moving.mp4")
    V.make_gaps(base / "v" / "gaps.mp4")
    V.make_two_faces(base / "v" / "two.mp4")
    V.make_empty(base / "v" / "empty.mp4")
    rows = ["clip_id,video,label,fold_1,fold_2",
            "moving,v/moving.mp4,happy,train,test",
            "gaps,v/gaps.mp4,sad,test,train",
            "group/two,v/two.mp4,fear,train,",
            "empty,v/empty.mp4,neutral,train,train"]
    (base / "src.csv").write_text("\n".join(rows) + "\n")
    return load_dataset(base / "src.csv")


@pytest.fixture(scope="module")
def done(src, det, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces_out") / "out"
    summary = run_faces(src, out, size=SIZE, workers=0, progress=False, detector=det)
    return out, summary


def eye_errors(det, folder):
    """Per frame: how far the eyes detected in the crop lie from the template's eyes (None: no face)."""
    want = template_points(SIZE)[:2]
    crops = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in list_frames(folder)])
    return [float(np.abs(f.landmarks[0][:2] - want).max()) if len(f) else None for f in det.detect(crops)]


def test_the_eyes_land_on_the_template(done, det):
    out, summary = done
    errs = eye_errors(det, out / "moving")
    assert len(errs) == 12 and all(e is not None and e < 4.0 for e in errs), errs
    info = json.loads((out / "moving" / MARKER).read_text())
    assert (info["frames"], info["found"], info["borrowed"], info["faces_seen"]) == (12, 12, 0, 1)


def test_frames_without_the_face_borrow_a_neighbours_alignment(done, det):
    out, _ = done
    info = json.loads((out / "gaps" / MARKER).read_text())
    assert (info["frames"], info["found"], info["borrowed"]) == (12, 9, 3)
    errs = eye_errors(det, out / "gaps")
    assert len(errs) == 12
    assert [e is None for e in errs] == [i in (4, 5, 6) for i in range(12)]  # nothing to see where absent
    assert all(e < 4.0 for e in errs if e is not None)


def test_of_two_faces_the_larger_is_followed_and_the_choice_recorded(done, det):
    out, _ = done
    info = json.loads((out / "group" / "two" / MARKER).read_text())  # a clip id with '/' nests
    assert info["faces_seen"] == 2 and info["track"]["tracks"] == 2
    chosen, other = info["track"]["chosen"], info["track"]["others"][0]
    assert chosen["frames"] == other["frames"] == 8 and chosen["side"] > 1.4 * other["side"]
    assert all(e is not None and e < 4.0 for e in eye_errors(det, out / "group" / "two"))


def test_a_clip_without_a_face_is_a_recorded_failure(done):
    out, summary = done
    assert summary.failed == {"empty": "no face in 8 frames"}
    assert summary.done == 3 and summary.frames == 32 and summary.borrowed == 3
    assert not (out / "empty").exists() and not (out / PARTIAL).exists()
    doc = json.loads((out / "faces.json").read_text())
    assert doc["failed"] == {"empty": "no face in 8 frames"} and "empty" not in doc["clips"]


def test_manifest_carries_labels_votes_folds_and_counts(done, src):
    out, _ = done
    with open(out / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header == (["clip_id", "video", "faces", "label"] + [f"vote_{c}" for c in src.class_names]
                      + [f"fold_{k}" for k in src.fold_names] + ["faces_found", "faces_borrowed"])
    assert [r["clip_id"] for r in rows] == ["moving", "gaps", "group/two"]
    two = rows[2]
    assert two["faces"] == "group/two" and (out / two["faces"]).is_dir()
    assert two["video"] == str(src.records[2].video.resolve())
    assert two["label"] == "fear" and two["vote_fear"] == "1" and two["vote_happy"] == "0"
    f1, f2, *rest = [f"fold_{name}" for name in src.fold_names]  # the source's own fold names
    assert (two[f1], two[f2]) == ("train", "") and all(two[f] == "" for f in rest)
    assert (rows[1][f1], rows[1][f2]) == ("test", "train")
    assert (rows[1]["faces_found"], rows[1]["faces_borrowed"]) == ("9", "3")


def test_faces_json_records_detector_template_and_clips(done):
    out, _ = done
    doc = json.loads((out / "faces.json").read_text())
    assert doc["size"] == SIZE and doc["frames"] == "all"
    assert doc["detector"]["name"] == "mtcnn" and set(doc["detector"]["sha256"]) == {"pnet", "rnet", "onet"}
    assert doc["template"]["size"] == SIZE and len(doc["template"]["points"]) == 5
    np.testing.assert_allclose(doc["template"]["points"], template_points(SIZE), atol=1e-3)
    assert set(doc["clips"]) == {"moving", "gaps", "group/two"}
    assert doc["clips"]["gaps"]["borrowed"] == 3


def test_rerun_skips_finished_clips_and_refuses_other_settings(done, src, det):
    out, _ = done
    before = (out / "moving" / "00001.jpg").stat().st_mtime_ns
    again = run_faces(src, out, size=SIZE, workers=0, progress=False, detector=det)
    assert (again.skipped, again.done, list(again.failed)) == (3, 0, ["empty"])
    assert (out / "moving" / "00001.jpg").stat().st_mtime_ns == before
    with pytest.raises(FerError, match="--size 112, not 96"):
        run_faces(src, out, size=96, workers=0, progress=False, detector=det)
    with pytest.raises(FerError, match="--frames all, not 4"):
        run_faces(src, out, size=SIZE, frames=4, workers=0, progress=False, detector=det)


def test_sampled_frames_shards_and_decoding_workers(src, det, tmp_path):
    """--frames 16 from 8..12-frame clips repeats frames as DFEW does; two shards fill one folder."""
    out = tmp_path / "out"
    first = run_faces(src, out, size=SIZE, frames=16, shard=(0, 2), workers=1, progress=False, detector=det)
    assert (first.owned, first.done, first.failed) == (2, 2, {})  # clips 0 and 2: moving, group/two
    with open(out / MANIFEST) as f:
        assert len(f.read().splitlines()) == 1 + first.done  # only what is finished so far
    second = run_faces(src, out, size=SIZE, frames=16, shard=(1, 2), workers=1, progress=False, detector=det)
    assert second.owned == 2 and set(second.failed) == {"empty"}
    for cid in ("moving", "gaps", "group/two"):
        assert len(list_frames(out / cid)) == 16
    gaps = json.loads((out / "gaps" / MARKER).read_text())
    assert gaps["frames"] == 16 and gaps["source_frames"] == 12 and gaps["borrowed"] == 4  # 4, 4, 5, 6
    with open(out / MANIFEST) as f:
        assert [r["clip_id"] for r in csv.DictReader(f)] == ["moving", "gaps", "group/two"]


def test_a_killed_runs_leftovers_are_redone_and_foreign_folders_left_alone(src, det, tmp_path):
    out = tmp_path / "out"
    half = partial_dir(out, "moving")  # what a kill -9 while writing "moving" leaves behind
    half.mkdir(parents=True)
    (half / "00001.jpg").write_bytes(b"half a jpg")
    foreign = out / "gaps"  # someone's own folder where a clip would go
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    summary = run_faces(src, out, size=SIZE, workers=0, progress=False, detector=det)
    assert "moving" not in summary.failed and len(list_frames(out / "moving")) == 12
    assert "was not written by fer data faces" in summary.failed["gaps"]
    assert (foreign / "mine.txt").read_text() == "keep me"
    assert not (out / PARTIAL).exists()


def test_bad_settings_are_one_line_errors(src, det, tmp_path):
    with pytest.raises(FerError, match="--size"):
        run_faces(src, tmp_path, size=8, detector=det)
    with pytest.raises(FerError, match="--frames"):
        run_faces(src, tmp_path, frames=0, detector=det)
    shutil.rmtree(tmp_path)
