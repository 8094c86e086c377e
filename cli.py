"""The ``fer`` command: parse arguments, call the library, print. Nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fer import __version__
from fer.cache.errors import FerError

app = typer.Typer(
    help="fer: multimodal dynamic facial expression recognition.\n\n"
    "Stage 1 (`fer extract`) runs the backbones once and caches features in a store; "
    "stage 2 (`fer train`) fits models on the cache in seconds to minutes.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make and inspect datasets (DFEW layout or a manifest CSV).", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect and manage feature stores.", no_args_is_help=True)
weights_app = typer.Typer(help="Fetch pretrained weights ahead of time (for offline machines).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
app.add_typer(weights_app, name="weights")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


# ---------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset into (DFEW layout)."),
    clips: int = typer.Option(200, "--clips", "-n", min=1, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same dataset."),
    corrupt: int = typer.Option(0, "--corrupt", min=0, help="Add this many broken clips of several kinds."),
) -> None:
    """Write a synthetic dataset in the real DFEW layout (faces, video, audio, votes, 5 folds)."""
    from fer.extract.synth import synthesize

    summary = synthesize(out, clips=clips, seed=seed, corrupt=corrupt)
    typer.echo(summary)


@data_app.command("info")
def data_info(
    root: Path = typer.Argument(..., help="DFEW root folder or manifest CSV."),
    check_media: bool = typer.Option(True, "--check-media/--no-check-media", help="Open every file to find unreadable ones."),
) -> None:
    """Print what a dataset holds: clips, classes, folds, media, problems."""
    from fer.extract.datasets.info import dataset_report

    typer.echo(dataset_report(root, check_media=check_media))


# ---------------------------------------------------------------- extract
@app.command("extract")
def extract_cmd(
    root: Path = typer.Argument(..., help="DFEW root folder or manifest CSV."),
    modality: str = typer.Option(..., "--modality", "-m", help="face | pose | audio."),
    store: Optional[str] = typer.Option(
        None, "--store", "-s",
        help="Feature store to write (created if missing; *.zarr or *.h5). Default: ./<root name>.zarr "
        "in the current folder (never inside the dataset).",
    ),
    fmt: Optional[str] = typer.Option(None, "--format", help="zarr | h5, for the default store name. [default: zarr]"),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", "-b", help="face: resnet18; pose: keypointrcnn | openpifpaf; audio: wav2vec2 | mel."
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w",
        help="imagenet (face) | coco (pose) | an HF model id or folder (audio) | none (random init, seeded) | "
        "auto (pretrained when in the local cache, else random, with a warning) | "
        "PATH to a state dict or a `fer train` checkpoint. Default: the backbone's pretrained weights.",
    ),
    layer: Optional[str] = typer.Option(None, "--layer", help="face: pool (512-d, default) | layer3 | layer2 (feature maps)."),
    size: Optional[int] = typer.Option(
        None, "--size", min=32, max=1024,
        help="face: input size in pixels [224]; pose: the detector's short side [512] (long side x1.67).",
    ),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames per clip (face: 16, pose: 3)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init for --weights none."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per model batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding worker processes (0: decode in the main process). [default: CPUs - 1]"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (cuda:N)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Extract at most N more clips in this call."),
    shard: Optional[str] = typer.Option(
        None, "--shard",
        help="k/n, 1-based: this process does shard k of n (e.g. --shard 1/2 and --shard 2/2 on two machines). "
        "Under torchrun RANK/WORLD_SIZE set it automatically.",
    ),
    chunk_mb: Optional[float] = typer.Option(None, "--chunk-mb", help="Chunk size in MB when the feature set is created."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run one backbone over every clip into the feature store (stage 1).

    One feature set per call, named by its spec (e.g. face.resnet18.imagenet.pool.224.16f). Rerunning the
    same command resumes and retries only failed or unfinished clips. Exit status 1 when a clip failed
    (reasons are in the summary and the store), 2 for bad input, 3 for a fault of the machine (no space,
    read-only, damaged store), 130 when interrupted (rerun to resume).
    """
    from fer.extract.backbones.registry import FACTORIES

    if modality not in FACTORIES:
        raise typer.BadParameter(f"unknown modality {modality!r}; choose from {', '.join(FACTORIES)}", param_hint="--modality")
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"must be >= 1, got {limit}", param_hint="--limit")
    if not root.exists():
        raise typer.BadParameter(f"{root} does not exist", param_hint="ROOT")
    if chunk_mb is not None and chunk_mb <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--chunk-mb")

    from fer.extract.datasets import load_dataset
    from fer.extract.backbones.registry import make_extractor
    from fer.extract.runner import (
        check_store_format, default_store_path, default_workers, parse_shard, run_extraction, shard_from_env,
    )

    shard_kn = parse_shard(shard) if shard else (shard_from_env() or (0, 1))
    store_path = store if store else str(default_store_path(root, fmt))
    check_store_format(store_path, fmt)
    dataset = load_dataset(root)
    extractor = make_extractor(modality, backbone, weights, device, layer=layer, size=size, frames=frames, seed=seed)
    summary = run_extraction(
        dataset, extractor, store_path,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        shard=shard_kn,
        limit=limit,
        progress=progress,
        chunk_bytes=int(chunk_mb * 1e6) if chunk_mb else None,
    )
    typer.echo(str(summary))
    if summary.interrupted:
        typer.secho("interrupted: finished rows are saved; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- weights
@weights_app.command("fetch")
def weights_fetch(
    modality: Optional[str] = typer.Option(
        None, "--modality", "-m", help="Only these modalities (face,pose,audio). Default: all."
    ),
) -> None:
    """Download every default backbone weight into its normal cache (TORCH_HOME, HF cache), for offline use.

    Copy TORCH_HOME (default ~/.cache/torch) and HF_HOME (~/.cache/huggingface) to the offline machine.
    """
    from fer.extract.backbones.weights import fetch_all

    mods = [m.strip() for m in modality.split(",") if m.strip()] if modality else None
    fetch_all(mods, echo=typer.echo)


# ---------------------------------------------------------------- train
@app.command("train")
def train_cmd(
    store: Path = typer.Argument(..., help="Feature store made by `fer extract` (.zarr or .h5)."),
    modalities: str = typer.Option("face", "--modalities", "-m", help="face[,pose][,audio]."),
    fusion: str = typer.Option("none", "--fusion", help="none (face only) | fc | transformer."),
    loss: str = typer.Option("kl", "--loss", help="kl (votes) | mse | ce | wce (class-weighted ce)."),
    fold: str = typer.Option("1", "--fold", help="Official fold 1..5, a list like 1,3, or all."),
    epochs: int = typer.Option(30, "--epochs", help="Maximum epochs per fold."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate."),
    weight_decay: float = typer.Option(1e-2, "--weight-decay", help="Weight decay."),
    batch_size: int = typer.Option(64, "--batch-size", help="Clips per step."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adam | adamw."),
    scheduler: str = typer.Option("plateau", "--scheduler", help="plateau (on val loss) | cosine | none."),
    layers: int = typer.Option(6, "--layers", help="Transformer encoder layers."),
    heads: int = typer.Option(8, "--heads", help="Attention heads."),
    ff: int = typer.Option(2048, "--ff", help="Encoder feed-forward width."),
    hidden: int = typer.Option(512, "--hidden", help="Decision network hidden width."),
    dropout: float = typer.Option(0.1, "--dropout", help="Dropout."),
    modality_dropout: float = typer.Option(
        0.0, "--modality-dropout", min=0.0, max=0.95,
        help="With fusion: share of training clips whose face is blanked per step, so pose/audio get used.",
    ),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Standardise face/audio features with the training split's statistics."),
    audio_layer: Optional[int] = typer.Option(None, "--audio-layer", help="wav2vec2 hidden state to use (default: last)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the training fold held out for validation."),
    select: str = typer.Option("best", "--select", help="best (by validation) | last epoch."),
    monitor: str = typer.Option("uar", "--monitor", help="Validation score for selection/early stopping: uar | loss."),
    patience: int = typer.Option(10, "--patience", help="Early stopping patience in epochs (0: off)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed + store on CPU -> same metrics)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<modalities>-<fusion>-<loss>-f<fold>)."),
    face: Optional[str] = typer.Option(None, "--face", help="Face feature-set spec (default: the store's only one)."),
    pose: Optional[str] = typer.Option(None, "--pose", help="Pose feature-set spec."),
    audio: Optional[str] = typer.Option(None, "--audio", help="Audio feature-set spec."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Train on the clips done in every feature set."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write confusion/PR/curve PNGs at the end."),
    finetune: Optional[str] = typer.Option(None, "--finetune", help="layer4: fine-tune ResNet-18 layer4 on cached layer3 maps."),
) -> None:
    """Train the face Transformer (+ pose/audio fusion) on cached features over the official folds."""
    from fer.train.config import TrainConfig, parse_folds, parse_modalities
    from fer.train.run import train_run

    cfg = TrainConfig(
        modalities=parse_modalities(modalities), face=face, pose=pose, audio=audio, fusion=fusion, loss=loss,
        folds=parse_folds(fold), epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, scheduler=scheduler, layers=layers, heads=heads, ff=ff, hidden=hidden, dropout=dropout,
        modality_dropout=modality_dropout, normalize=normalize,
        audio_layer=audio_layer, val_fraction=val_fraction, select=select, monitor=monitor, patience=patience,
        seed=seed, device=device, out=str(out) if out is not None else None, allow_incomplete=allow_incomplete,
        finetune=finetune, resume=resume, plots=plots,
    )
    train_run(cfg, str(store), log=lambda line: typer.echo(line))


# ---------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (or folders holding runs, e.g. a sweep's --out)."),
    markdown: bool = typer.Option(False, "--markdown", "-m", help="Print a markdown table instead of a plain one."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table to this file."),
) -> None:
    """Compare runs side by side: WAR and UAR mean ± std over folds (the paper's Table 1, from runs)."""
    from fer.train.report import report

    text = report(runs, markdown=markdown)
    typer.echo(text, nl=False)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as e:
            raise FerError(f"cannot write {out}: {e.strerror}; choose another --out") from None


# ---------------------------------------------------------------- sweep
_LIST = "One value or a comma list (a grid axis); default as in `fer train`."


@app.command("sweep")
def sweep_cmd(
    store: Path = typer.Argument(..., help="Feature store made by `fer extract` (.zarr or .h5)."),
    out: Path = typer.Option(Path("runs/sweep"), "--out", "-o", help="Folder for the run folders and report.md; "
                             "rerun with the same --out to resume a killed sweep."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help=f"none | fc | transformer. {_LIST}"),
    loss: Optional[str] = typer.Option(None, "--loss", help=f"kl | mse | ce | wce. {_LIST}"),
    modalities: Optional[str] = typer.Option(None, "--modalities", "-m",
                                             help="face[,pose][,audio]; several sets separated by ';', e.g. 'face;face,audio'."),
    fold: Optional[str] = typer.Option(None, "--fold", help="1..5, a list like 1,3, or all (every run); "
                                       "';' makes folds a grid axis, e.g. '1;2'."),
    epochs: Optional[str] = typer.Option(None, "--epochs", help=_LIST),
    lr: Optional[str] = typer.Option(None, "--lr", help=_LIST),
    weight_decay: Optional[str] = typer.Option(None, "--weight-decay", help=_LIST),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help=_LIST),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=f"adam | adamw. {_LIST}"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=f"plateau | cosine | none. {_LIST}"),
    layers: Optional[str] = typer.Option(None, "--layers", help=_LIST),
    heads: Optional[str] = typer.Option(None, "--heads", help=_LIST),
    ff: Optional[str] = typer.Option(None, "--ff", help=_LIST),
    hidden: Optional[str] = typer.Option(None, "--hidden", help=_LIST),
    dropout: Optional[str] = typer.Option(None, "--dropout", help=_LIST),
    modality_dropout: Optional[str] = typer.Option(None, "--modality-dropout", help=_LIST),
    audio_layer: Optional[str] = typer.Option(None, "--audio-layer", help=f"wav2vec2 hidden state (last: the last). {_LIST}"),
    val_fraction: Optional[str] = typer.Option(None, "--val-fraction", help=_LIST),
    select: Optional[str] = typer.Option(None, "--select", help=f"best | last. {_LIST}"),
    monitor: Optional[str] = typer.Option(None, "--monitor", help=f"uar | loss. {_LIST}"),
    patience: Optional[str] = typer.Option(None, "--patience", help=_LIST),
    seed: Optional[str] = typer.Option(None, "--seed", help=f"Random seed. {_LIST}"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    face: Optional[str] = typer.Option(None, "--face", help="Face feature-set spec (default: the store's only one)."),
    pose: Optional[str] = typer.Option(None, "--pose", help="Pose feature-set spec."),
    audio: Optional[str] = typer.Option(None, "--audio", help="Audio feature-set spec."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Train on the clips done in every feature set."),
    finetune: Optional[str] = typer.Option(None, "--finetune", help="layer4: fine-tune ResNet-18 layer4 on cached layer3 maps."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write each run's confusion/PR/curve PNGs."),
) -> None:
    """Train a grid of settings on one store (features loaded once), one run folder per point, then the report."""
    from fer.train.config import TrainConfig
    from fer.train.sweep import parse_grid, sweep

    grid, single = parse_grid({
        "fusion": fusion, "loss": loss, "modalities": modalities, "folds": fold, "epochs": epochs, "lr": lr,
        "weight_decay": weight_decay, "batch_size": batch_size, "optimizer": optimizer, "scheduler": scheduler,
        "layers": layers, "heads": heads, "ff": ff, "hidden": hidden, "dropout": dropout, "modality_dropout": modality_dropout,
        "audio_layer": audio_layer,
        "val_fraction": val_fraction, "select": select, "monitor": monitor, "patience": patience, "seed": seed,
    })
    base = TrainConfig(**single, face=face, pose=pose, audio=audio, device=device,
                       allow_incomplete=allow_incomplete, finetune=finetune, plots=plots)
    sweep(str(store), grid, base, out, log=lambda line: typer.echo(line.rstrip("\n")))


# ---------------------------------------------------------------- cache
@cache_app.command("ls")
def cache_ls(store: str = typer.Argument(..., help="Feature store (.zarr folder, .h5 file or fsspec URL).")) -> None:
    """List the feature sets: spec, modality, shape, dtype, done/total, failed, size on disk, created."""
    from fer.cache.report import list_table
    from fer.cache.store import open_store

    with open_store(store) as s:
        typer.echo(list_table(s))


@cache_app.command("info")
def cache_info(
    store: str = typer.Argument(..., help="Feature store."),
    spec: str = typer.Argument(..., help="Feature set spec (see `fer cache ls`)."),
    as_json: bool = typer.Option(False, "--json", help="Print pretty JSON instead of key: value lines."),
) -> None:
    """Print a feature set's full provenance (backbone, weights, layer, input size, versions, command line)."""
    from fer.cache.report import info_text
    from fer.cache.store import open_store

    with open_store(store) as s:
        typer.echo(info_text(s, spec, as_json=as_json))


@cache_app.command("verify")
def cache_verify(
    store: str = typer.Argument(..., help="Feature store."),
    spec: Optional[str] = typer.Argument(None, help="Check only this feature set (default: all)."),
    clean: bool = typer.Option(False, "--clean", help="Also delete temp files a killed zarr writer left behind."),
) -> None:
    """Check shapes, chunking, the clip index, and that every done row is written and finite."""
    from fer.cache.report import verify_text
    from fer.cache.store import open_store
    from fer.cache.verify import clean_leftovers, verify_store

    with open_store(store, "r") as s:  # --clean deletes temp files itself: a read-only store with none is fine
        if clean:
            typer.echo(f"removed {clean_leftovers(s)} temp file(s)")
        rep = verify_store(s, spec)
        typer.echo(verify_text(s, rep))
    if not rep.ok:
        raise typer.Exit(1)


@cache_app.command("rm")
def cache_rm(
    store: str = typer.Argument(..., help="Feature store."),
    spec: str = typer.Argument(..., help="Feature set spec to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete one feature set from a store."""
    from fer.cache.report import human_bytes
    from fer.cache.store import open_store

    from fer.cache.errors import FerEnvError

    with open_store(store, "r+") as s:
        if not yes:
            try:
                info = s.info(spec)
                what = f"{info['n_done']}/{info['n_rows']} rows done, {human_bytes(info['bytes_on_disk'])}"
            except FerEnvError:  # a damaged set can still be removed
                what = "damaged"
            typer.confirm(f"delete {spec} ({what}) from {store}?", abort=True)
        s.remove(spec)
    typer.echo(f"removed {spec}")

# ---------------------------------------------------------------- predict
@app.command("predict")
def predict_cmd(
    clip: str = typer.Argument(..., help="A video file (with --faces, or showing one centred face), a folder of face "
                               "frames, or a clip id of the dataset given with --root."),
    run: Path = typer.Option(..., "--run", "-r", help="A run folder written by `fer train`."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset (DFEW root or manifest) that holds CLIP as an id."),
    faces: Optional[Path] = typer.Option(None, "--faces", help="Folder of the video's aligned face frames."),
    fold: Optional[int] = typer.Option(None, "--fold", min=1, max=5, help="Use this fold's model only [default: average all]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Label one clip with a trained run: extract exactly the run's features, print class probabilities."""
    import json
    import tempfile

    from fer.cache.schema import CLASS_NAMES
    from fer.extract.clip import clip_features, clip_record
    from fer.train.predict import format_prediction, predict_probs, run_features

    features = run_features(run)
    with tempfile.TemporaryDirectory(prefix="fer-predict-") as tmp:
        record = clip_record(clip, root=root, faces=faces, workdir=Path(tmp))
        inputs = clip_features(record, features, device=device)
    probs = predict_probs(run, inputs, fold=fold)[0]
    if as_json:
        top = int(probs.argmax())
        typer.echo(json.dumps({"clip": record.clip_id, "run": str(run), "top": CLASS_NAMES[top],
                               "probs": {c: round(float(p), 6) for c, p in zip(CLASS_NAMES, probs)}}))
    else:
        typer.echo(format_prediction(record.clip_id, probs))


def main() -> None:
    """Entry point: run the app. Exit status 0 done, 1 some clips failed, 2 bad input or usage (FerError),
    3 an environment fault (FerEnvError: no space, read-only, damaged store), 130 interrupted; errors are one
    line on stderr."""
    from fer.cache.errors import env_error

    try:
        app()
    except FerError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except OSError as e:  # last net for a disk fault no boundary translated; anything else is a bug: traceback
        err = env_error(e, None, "running fer")
        if err is None:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
