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
