"""`fer extract` and `fer weights fetch` end to end: real processes, real SIGKILL, real shards."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.cli import app
from fer.extract.synth import synthesize
from fer.tests.cli import ENV, fer

SPEC = "face.resnet18.none-s0.pool.{size}.16f"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A synthetic DFEW root with broken clips, and a manifest of its 10 healthy clips only."""
    base = tmp_path_factory.mktemp("cli_extract")
    root = base / "dfew"
    synthesize(root, clips=10, seed=2, corrupt=3, workers=1)
    manifest = base / "healthy.csv"
    lines = ["clip_id,faces16,label"] + [f"{i:05d},{root}/Clip/clip_224x224_16f/{i:05d},{1 + i % 7}"
                                         for i in range(1, 11)]
    manifest.write_text("\n".join(lines) + "\n")
    return root, manifest


def face_args(root, store, size=32, *extra):
    return ["extract", root, "-m", "face", "--weights", "none", "--size", size, "--store", store,
            "--batch-size", 1, "--workers", 1, "--chunk-mb", 0.017, "--no-progress", *extra]  # 0.017 MB: 1 row/chunk


def read(store, size):
    with open_store(store) as st:
        return st.read(SPEC.format(size=size))


@pytest.fixture(scope="module")
def reference(roots, tmp_path_factory):
    """An uninterrupted one-process run over the healthy manifest at size 64."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    p = fer(*face_args(roots[1], store, 64), check=0)
    assert "done 10, skipped 0 (already done), failed 0" in p.stdout
    return read(store, 64)


def test_corrupt_clips_fail_with_reasons_and_exit_1_then_rerun_retries_them_only(roots, tmp_path):
    store = tmp_path / "s.zarr"
    p = fer(*face_args(roots[0], store), check=1)
    assert "done 11, skipped 0 (already done), failed 2" in p.stdout
    assert "failed 00012: unreadable image" in p.stdout and "failed 00013: no face frames" in p.stdout
    assert "Traceback" not in p.stderr
    r = CliRunner().invoke(app, list(map(str, face_args(roots[0], store))))
    assert r.exit_code == 1 and "done 0, skipped 11 (already done), failed 2" in r.output
    fs = read(store, 32)
    assert fs.done.sum() == 11 and np.isfinite(fs.data[fs.done]).all()


def test_sigkill_then_rerun_equals_uninterrupted_run(roots, reference, tmp_path):
    store = tmp_path / "k.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "fer.cli", *map(str, face_args(roots[1], store, 64))],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with open_store(store) as st:
                done = int(st.read(SPEC.format(size=64)).done.sum())
        except Exception:  # not created yet
            continue
        if done >= 2:
            break
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read(store, 64)
    assert 2 <= partial.done.sum() < 10
    fer(*face_args(roots[1], store, 64), check=0)
    final = read(store, 64)
    assert final.done.all()
    assert np.array_equal(final.data, reference.data) and np.array_equal(final.mask, reference.mask)


def test_two_shard_processes_equal_one_process(roots, reference, tmp_path):
    store = tmp_path / "sh.zarr"
    procs = [subprocess.Popen([sys.executable, "-m", "fer.cli",
                               *map(str, face_args(roots[1], store, 64, "--shard", k))],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in ("1/2", "2/2")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "(shard 1/2)" in outs[0][0] and "(shard 2/2)" in outs[1][0]
    final = read(store, 64)
    assert final.done.all() and np.array_equal(final.data, reference.data)


def test_torchrun_two_ranks_equal_one_process(roots, reference, tmp_path):
    """A real `torchrun --nproc_per_node 2`: RANK/WORLD_SIZE pick the shards, the store equals one process's."""
    store = tmp_path / "tr.zarr"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fer.cli"]
    p = subprocess.run([*torchrun, *map(str, face_args(roots[1], store, 64))], env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(shard 1/2)" in p.stdout and "(shard 2/2)" in p.stdout
    final = read(store, 64)
    assert final.done.all() and np.array_equal(final.data, reference.data)


def test_default_store_in_cwd_and_h5(roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["extract", roots[1], "-m", "face", "--weights", "none", "--size", 32, "--limit", 2,
            "--workers", 0, "--no-progress", "--format", "h5"]
    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "healthy.h5").is_file() and "done 2" in r.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "smell"], "unknown modality 'smell'"),
        (["-m", "face", "--shard", "3/2"], "--shard 3/2"),
        (["-m", "face", "--limit", "0"], "must be >= 1"),
        (["-m", "face", "--layer", "layer9"], "unknown --layer"),
        (["-m", "face", "--device", "tpu"], "unknown --device"),
        (["-m", "face", "--store", "x.zarr", "--format", "h5"], "does not match --format"),
    ],
)
def test_bad_arguments(roots, tmp_path, args, message):
    r = CliRunner().invoke(app, ["extract", str(roots[1]), "--weights", "none", *args], env={"COLUMNS": "400"})
    assert r.exit_code != 0
    text = r.output + str(r.exception or "")
    assert message in text, text


def test_missing_root_and_other_dataset_store(roots, tmp_path):
    r = CliRunner().invoke(app, ["extract", str(tmp_path / "nope"), "-m", "face", "--weights", "none"],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 2 and "does not exist" in r.output
    store = tmp_path / "a.zarr"
    assert CliRunner().invoke(app, list(map(str, face_args(roots[1], store, 32, "--limit", 1)))).exit_code == 0
    r = CliRunner().invoke(app, list(map(str, face_args(roots[0], store))))
    assert isinstance(r.exception, FerError) and "another dataset" in str(r.exception)


def test_imagenet_offline_is_one_line_error_and_fetch_fails_cleanly(roots, tmp_path, monkeypatch):
    env = {**ENV, "TORCH_HOME": str(tmp_path / "th")}
    p = subprocess.run([sys.executable, "-m", "fer.cli", "extract", str(roots[1]), "-m", "face",
                        "--store", str(tmp_path / "x.zarr")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "resnet18-f37072fd.pth" in p.stderr and "fer weights fetch" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("FER_OFFLINE", "1")
    r = CliRunner().invoke(app, ["weights", "fetch", "-m", "face"])
    assert ("failed  face.resnet18" in r.output and isinstance(r.exception, FerError)
            and "not fetched" in str(r.exception))


def test_audio_and_pose_backends_are_wired_into_one_store(roots, tmp_path):
    store = tmp_path / "multi.zarr"
    assert CliRunner().invoke(app, list(map(str, face_args(roots[0], store, 32, "--limit", 2)))).exit_code == 0
    r = CliRunner().invoke(app, ["extract", str(roots[0]), "-m", "audio", "-b", "mel", "--store", str(store),
                                 "--limit", 3, "--workers", 0, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "audio.mel" in r.output and "done 3" in r.output
    with open_store(store) as st:
        assert {s.split(".")[0] for s in st.specs()} == {"face", "audio"}
    from fer.extract.backbones.registry import make_extractor

    pose = make_extractor("pose", weights="none", device="cpu", frames=2, seed=0)
    assert pose.spec.startswith("pose.keypointrcnn.none-s0.k2")
    with pytest.raises(FerError, match="face modality only"):
        make_extractor("pose", weights="none", device="cpu", layer="layer3")
    with pytest.raises(FerError, match="unknown face backbone"):
        make_extractor("face", "vgg", weights="none", device="cpu")


def test_torchrun_env_picks_the_shard(roots, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(app, list(map(str, face_args(roots[1], tmp_path / "t.zarr", 32))))
    assert r.exit_code == 0, r.output
    assert "(shard 2/2)" in r.output and "done 5" in r.output  # 10 rows, 1 row per chunk, odd chunks


def test_every_extract_config_field_is_an_option_with_its_docstring():
    from fer.extract.backbones.families import backbone_help
    from fer.extract.config import extract_options

    r = CliRunner().invoke(app, ["extract", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    text = " ".join(r.output.replace("│", " ").split())  # the help as one line, out of its wrapped box
    for o in extract_options():
        assert o.flag in r.output and all(f in r.output for f in o.flags), o.name
        help_ = o.help.replace("{families}", backbone_help())  # filled from the family table when shown
        assert " ".join(help_.split()) in text, o.name  # the whole docstring, as written


def test_an_option_of_another_modality_is_one_line_exit_2(roots, tmp_path):
    p = fer("extract", roots[1], "-m", "pose", "--layer", "layer3", "--weights", "none",
            "--store", tmp_path / "p.zarr", check=2)
    assert p.stderr.strip() == "error: --layer applies to the face modality only; leave it out for pose"
    assert not (tmp_path / "p.zarr").exists()
