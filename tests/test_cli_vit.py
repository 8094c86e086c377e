"""A ViT's top fine-tuned from the cache, as a user runs it: `fer data synth`, a tiny ViT saved with
save_pretrained, `fer extract --layer block:-2`, `fer train --finetune top --lora 8`, `fer predict`, then
`fer extract --weights
RUN/checkpoint_fold1.pt` with the adapted backbone (whose features train only that fold)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fer.cache.errors import FerError
from fer.cli import app
from fer.extract.synth import synthesize
from fer.tests.cli import fer_ok
from fer.tests.extract.backbones import tiny_models as tm

TINY = ["--layers", "1", "--heads", "2", "--ff", "16", "--hidden", "16", "--epochs", "2", "--batch-size", "4",
        "--no-plots", "--device", "cpu"]


def vit_face(data, vit, *extra: object) -> list[object]:
    """`fer extract DATA -m face` with the tiny ViT, and ``extra``."""
    return ["extract", data, "-m", "face", "--backbone", f"hf:{vit}", *extra]


def invoke(*args: object) -> object:
    """The command in this process (the two steps that matter run as a user runs them, in a subprocess)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code == 0, r.output
    return r


def test_block_cache_then_lora_top_end_to_end(tmp_path):
    data, store, run = tmp_path / "data", tmp_path / "s.zarr", tmp_path / "run"
    invoke("data", "synth", data, "--clips", 14, "--seed", 1)
    vit = tm.vit(tmp_path / "tiny-vit")
    common = ["--frames", 4, "--store", store, "--workers", 0, "--no-progress", "--precision", "fp32"]
    ex = fer_ok(*vit_face(data, vit, "--layer", "block:-2", *common))
    assert "block1" in ex.stdout and "float16 = about" in ex.stderr and "free there" in ex.stderr
    tr = fer_ok("train", store, "--finetune", "top", "--lora", 8, "--backbone-lr", "1e-4", "--out", run, *TINY)
    assert "LoRA rank 8" in tr.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["finetune"] == "top" and cfg["lora"] == 8
            and cfg["features"]["face"]["provenance"]["cut"]["block"] == 1)
    ck = torch.load(run / "checkpoint_fold1.pt", weights_only=True)
    assert ck["lora_rank"] == 8 and ck["finetuned_on_fold"] == 1
    pred = invoke("predict", data / "Clip" / "clip_224x224_16f" / "00002", "--run", run, "--json")
    probs = json.loads(pred.output)["probs"]
    assert len(probs) == 7 and abs(sum(probs.values()) - 1) < 1e-4
    adapted = invoke(*vit_face(data, vit, "--weights", run / "checkpoint_fold1.pt", *common))
    spec = next(line.split()[0] for line in invoke("cache", "ls", store).output.splitlines()
                if "checkpoint_fold1" in line)
    assert "checkpoint_fold1" in adapted.output
    with pytest.raises(FerError, match="fine-tuned on fold 1"):
        invoke("train", store, "--face", spec, "--fold", 2, "--out", tmp_path / "r2", *TINY)
    invoke("train", store, "--face", spec, "--fold", 1, "--out", tmp_path / "r1", *TINY)


def test_cut_errors_are_one_line(tmp_path):
    data = tmp_path / "data"
    synthesize(data, clips=7, seed=0, workers=1)
    vit = tm.vit(tmp_path / "tiny-vit")
    with pytest.raises(FerError, match="out of range.*3 blocks"):
        invoke(*vit_face(data, vit, "--layer", "block:5", "--store", tmp_path / "s.zarr"))
    with pytest.raises(FerError, match="--frames all stores pooled vectors only: block1 tokens"):
        invoke(*vit_face(data, vit, "--layer", "block:1", "--frames", "all", "--store", tmp_path / "s.zarr"))
