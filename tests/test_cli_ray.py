"""`fer extract --engine ray` as a user runs it, joining a running Ray instance through RAY_ADDRESS: one
summary, no Ray logs, the rows in the store; options that do not go together are one-line errors."""

from fer.cache import open_store
from fer.extract.synth import synthesize
from fer.tests.cli import ENV, fer, fer_ok


def test_extract_on_ray_from_the_command_line(tmp_path, ray_local):
    root = tmp_path / "dfew"
    synthesize(root, clips=4, seed=5, corrupt=0, workers=1)
    store = tmp_path / "f.zarr"
    p = fer_ok("extract", root, "-m", "face", "--weights", "none", "--size", "32", "--store", store,
               "--batch-size", "2", "--engine", "ray", "--no-progress", env={**ENV, "RAY_ADDRESS": ray_local},
               timeout=600)
    assert f"ray: Ray cluster at {ray_local} (2 CPUs); the model ran in 1 actor process(es)" in p.stdout
    assert "done 4, skipped 0 (already done), failed 0" in p.stdout and "decoding" in p.stdout
    noise = [ln for ln in (p.stdout + p.stderr).splitlines() if "core_worker" in ln or "(raylet)" in ln
             or "WARNING" in ln or "INFO" in ln]
    assert not noise, noise
    with open_store(store) as st:
        assert st.done_mask("face.resnet18.none-s0.pool.32.16f").all()


def test_engine_options_that_do_not_go_together(tmp_path):
    for args, msg in (
        (("--engine", "ray", "--shard", "1/2"), "--engine ray schedules every clip itself: leave out"),
        (("--actors", "1,2"), "--actors goes with --engine ray; add it, or leave it out"),
    ):
        p = fer("extract", tmp_path, "-m", "face", *args, check=2)
        assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
