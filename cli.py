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
    from fer.extract.info import dataset_report

    typer.echo(dataset_report(root, check_media=check_media))


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
    finetune: Optional[str] = typer.Option(None, "--finetune", help="layer4: fine-tune ResNet-18 layer4 on cached layer3 maps."),
) -> None:
    """Train the face Transformer (+ pose/audio fusion) on cached features over the official folds."""
    from fer.train.config import TrainConfig, parse_folds, parse_modalities
    from fer.train.run import train_run

    cfg = TrainConfig(
        modalities=parse_modalities(modalities), face=face, pose=pose, audio=audio, fusion=fusion, loss=loss,
        folds=parse_folds(fold), epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, scheduler=scheduler, layers=layers, heads=heads, ff=ff, hidden=hidden, dropout=dropout,
        audio_layer=audio_layer, val_fraction=val_fraction, select=select, monitor=monitor, patience=patience,
        seed=seed, device=device, out=str(out) if out is not None else None, allow_incomplete=allow_incomplete,
        finetune=finetune, resume=resume,
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


def main() -> None:
    """Entry point: run the app; a FerError becomes one line on stderr and exit status 2."""
    try:
        app()
    except FerError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
