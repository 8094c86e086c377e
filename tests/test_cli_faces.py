"""`fer data faces` and `fer predict` on bare videos through the real CLI: exit codes, kill -9 and resume,
the manifest feeding `fer extract`."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fer.cache import open_store
from fer.extract.faces.output import MANIFEST, MARKER, PARTIAL
from fer.extract.frames import list_frames
from fer.extract.synth import photo as V
from fer.tests.cli import ENV, fer


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Six clips of a moving real face and one with no face, in a manifest CSV."""
    base = tmp_path_factory.mktemp("cli_faces")
    moving, _ = V.make_moving(base / "v" / "c0.mp4")
    rows = ["clip_id,video,label"]
    for i in range(6):
        if i:
            shutil.copy(moving, base / "v" / f"c{i}.mp4")
        rows.append(f"c{i},v/c{i}.mp4,{('happy', 'sad', 'fear')[i % 3]}")
    V.make_empty(base / "v" / "empty.mp4")
    (base / "faces.csv").write_text("\n".join(rows) + "\n")
    (base / "with_empty.csv").write_text("\n".join(rows + ["empty,v/empty.mp4,neutral"]) + "\n")
    return base


def test_no_face_clip_fails_with_exit_1_and_the_manifest_feeds_fer_extract(src, tmp_path):
    out = tmp_path / "faces"
    p = fer("data", "faces", src / "with_empty.csv", out, "--size", 64, "--frames", 8, "--no-progress", check=1)
    assert "done 6, skipped 0 (already done), failed 1" in p.stdout
    assert "failed empty: no face in 8 frames" in p.stdout and not (out / "empty").exists()
    assert all(len(list_frames(out / f"c{i}")) == 8 for i in range(6))
    store = tmp_path / "f.zarr"
    fer("extract", out / MANIFEST, "-m", "face", "--weights", "none", "--size", 32, "--store", store,
        "--workers", 0, "--no-progress", check=0)
    with open_store(store) as s:
        assert list(s.ids) == [f"c{i}" for i in range(6)]
        assert s.read("face.resnet18.none-s0.pool.32.16f").mask.all()


def test_kill_9_mid_run_then_rerun_gives_complete_output(src, tmp_path):
    out = tmp_path / "faces"
    args = [sys.executable, "-m", "fer.cli", "data", "faces", src / "faces.csv", out, "--size", 64,
            "--workers", 1, "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partial = out / PARTIAL
            if (partial.is_dir() and any(partial.iterdir())) or (out / "c0" / MARKER).exists():
                break  # a clip is being written (or the first one just landed): kill now
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # no folder that looks finished is half-written: every clip folder present carries its record and all frames
    for i in range(6):
        d = out / f"c{i}"
        assert not d.exists() or ((d / MARKER).is_file() and len(list_frames(d)) == 12)
    p = fer("data", "faces", src / "faces.csv", out, "--size", 64, "--no-progress", check=0)
    assert "failed 0" in p.stdout
    assert all(len(list_frames(out / f"c{i}")) == 12 for i in range(6))
    assert not (out / PARTIAL).exists()
    doc = json.loads((out / "faces.json").read_text())
    assert sorted(doc["clips"]) == [f"c{i}" for i in range(6)] and doc["failed"] == {}
    assert len((out / MANIFEST).read_text().splitlines()) == 7


def test_sigterm_stops_cleanly_with_exit_130_and_a_manifest_of_what_is_done(src, tmp_path):
    out = tmp_path / "faces"
    args = [sys.executable, "-m", "fer.cli", "data", "faces", src / "faces.csv", out, "--size", 64, "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (out / "c0" / MARKER).exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "rerun the same command to resume" in stderr
    finished = [f"c{i}" for i in range(6) if (out / f"c{i}" / MARKER).exists()]
    rows = (out / MANIFEST).read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == finished and finished


def test_bad_options_are_one_line(src, tmp_path):
    p = fer("data", "faces", src / "faces.csv", tmp_path / "o", "--frames", "some", check=2)
    assert "neither 'all' nor a positive number" in p.stderr
    p = fer("data", "faces", tmp_path / "nope.csv", tmp_path / "o", check=2)
    assert "does not exist" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_predict_on_a_video_without_a_face_says_so(src, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"modalities": ["face"], "features": {
        "face": {"spec": "face.resnet18.none-s0.pool.32.16f", "provenance": {}}}}))
    p = fer("predict", src / "v" / "empty.mp4", "--run", run, check=2)
    assert "no face found (no face in 8 frames)" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_every_faces_config_field_is_an_option_with_its_docstring():
    from typer.testing import CliRunner

    from fer.cli import app
    from fer.extract.config import faces_options

    r = CliRunner().invoke(app, ["data", "faces", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    text = " ".join(r.output.replace("│", " ").split())  # the help as one line, out of its wrapped box
    for o in faces_options():
        assert o.flag in r.output and " ".join(o.help.split()) in text, o.name
