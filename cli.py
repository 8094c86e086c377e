"""The ``fer`` command: parse arguments, call the library, print. Nothing more."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer

from fer import __version__
from fer.cache.errors import FerError
from fer.typer_options import FamiliesInHelp, argument, escape, options_command

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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


# ---------------------------------------------------------------- commands from settings dataclasses
def _extract_options():
    """`fer extract`'s options (read when the command line starts: fer.extract.config imports no torch)."""
    from fer.extract.config import extract_options

    return extract_options()


def _faces_options():
    from fer.extract.config import faces_options

    return faces_options()


def _train_options():
    from fer.train.options import config_options

    return config_options()


def _sweep_options():
    """TrainConfig's options (grid axes) and the sweep's own (SweepConfig: where the points run)."""
    from fer.train.options import config_options, sweep_options

    return config_options() + sweep_options()


# ---------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset into."),
    clips: int = typer.Option(200, "--clips", "-n", min=1, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same dataset."),
    corrupt: int = typer.Option(0, "--corrupt", min=0, help="Add this many broken clips of several kinds."),
    layout: str = typer.Option("dfew", "--layout", help="dfew (7 classes, votes, 5 folds) | mafw (11 classes, 5 folds) "
                               "| ferv39k (7 classes, one split, no audio) | folders (train/val/test class folders)."),
) -> None:
    """Write a synthetic dataset in a real layout (faces, video, audio, labels, the layout's protocol)."""
    from fer.extract.synth import synthesize

    summary = synthesize(out, clips=clips, seed=seed, corrupt=corrupt, layout=layout)
    typer.echo(summary)


ROOT_HELP = "Dataset root (DFEW, MAFW, FERV39k, class folders train|val|test/<class>/<clip>) or a manifest CSV."


def _extract_help(name: str) -> str:
    """The help of `fer extract`'s option for ExtractConfig field ``name`` (other commands share some)."""
    return next(escape(o.help) for o in _extract_options() if o.name == name)


@data_app.command("info")
def data_info(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    check_media: bool = typer.Option(True, "--check-media/--no-check-media",
                                     help="Open every file to find unreadable ones."),
    layout: str | None = typer.Option(None, "--layout", help=_extract_help("layout")),
    classes: str | None = typer.Option(None, "--classes", help=_extract_help("classes")),
) -> None:
    """Print what a dataset holds: its layout, clips, classes, folds, media, problems."""
    from fer.extract.datasets import parse_classes
    from fer.extract.datasets.info import dataset_report

    typer.echo(dataset_report(root, check_media=check_media, layout=layout, classes=parse_classes(classes)))


_SRC = argument("src", Path, "The clips: any dataset fer reads (DFEW root, manifest CSV, ...).")
_OUT = argument("out", Path, "Folder for the aligned face frames, manifest.csv and faces.json.")


@options_command(data_app, "faces", _faces_options, args=[_SRC, _OUT])
def data_faces(src: Path, out: Path, **options: Any) -> None:
    """Detect, follow and align the main face of every video into DFEW-style frame folders (OUT/<clip id>/00001.jpg).

    Writes OUT/manifest.csv (feed it to `fer extract`) and OUT/faces.json (detector, template, per-clip counts).
    Rerunning resumes: finished clips are skipped. Exit status 1 when a clip failed (e.g. no face), 130 when
    interrupted.
    """
    from fer.extract.config import faces_config
    from fer.extract.faces.runner import faces_from_config

    _finish(faces_from_config(src, out, faces_config(options)), "clips")


# ---------------------------------------------------------------- extract
@options_command(app, "extract", _extract_options, args=[argument("root", Path, ROOT_HELP)],
                  cls=FamiliesInHelp)
def extract_cmd(root: Path, **options: Any) -> None:
    """Run one backbone over every clip into the feature store (stage 1).

    One feature set per call, named by its spec (e.g. face.resnet18.imagenet.pool.224.16f, or
    face.resnet18.imagenet.pool.224.all64f.flip with --frames all --flip). Rerunning the
    same command resumes and retries only failed or unfinished clips. Exit status 1 when a clip failed
    (reasons are in the summary and the store), 2 for bad input, 3 for a fault of the machine (no space,
    read-only, damaged store), 130 when interrupted (rerun to resume).
    """
    from fer.extract.config import extract_config
    from fer.extract.runner import extract_dataset

    if not root.exists():
        raise typer.BadParameter(f"{root} does not exist", param_hint="ROOT")
    _finish(extract_dataset(root, extract_config(options)), "rows")


def _finish(summary, saved: str) -> None:
    """Print a run's summary; exit 130 when it was interrupted, 1 when a clip failed."""
    typer.echo(str(summary))
    if summary.interrupted:
        typer.secho(f"interrupted: finished {saved} are saved; rerun the same command to resume",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- weights
@weights_app.command("fetch", cls=FamiliesInHelp)
def weights_fetch(
    modality: str | None = typer.Option(
        None, "--modality", "-m", help="Only these modalities (face,pose,audio). Default: all."
    ),
    backbone: list[str] | None = typer.Option(
        None, "--backbone", "-b",
        help="Fetch this backbone instead of the defaults (repeatable): {fetchable families}",
    ),
) -> None:
    """Download every default backbone weight into its normal cache (TORCH_HOME, HF cache), for offline use.

    Copy TORCH_HOME (default ~/.cache/torch) and HF_HOME (~/.cache/huggingface) to the offline machine.
    """
    from fer.extract.backbones.families import fetch_all

    mods = [m.strip() for m in modality.split(",") if m.strip()] if modality else None
    fetch_all(mods, echo=typer.echo, backbones=[b for b in backbone or [] if b.strip()] or None)


# ---------------------------------------------------------------- train
STORE_HELP = "Feature store made by `fer extract` (.zarr or .h5)."
_STORE = argument("store", Path, STORE_HELP)


@options_command(app, "train", _train_options, args=[_STORE])
def train_cmd(store: Path, **options: Any) -> None:
    """Train the face Transformer (+ pose/audio fusion) on cached features over the store's folds."""
    from fer.train.options import config_from_options
    from fer.train.run import train_run

    train_run(config_from_options(options), str(store), log=lambda line: typer.echo(line))


# ---------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (or folders holding runs, e.g. a sweep's --out)."),
    markdown: bool = typer.Option(False, "--markdown", "-m", help="Print a markdown table instead of a plain one."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the table to this file."),
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
_SWEEP_OUT = inspect.Parameter(
    "out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
    default=typer.Option(Path("runs/sweep"), "--out", "-o", help="Folder for the run folders and report.md; rerun with "
                         "the same --out to resume a killed sweep."))


@options_command(app, "sweep", _sweep_options, args=[_STORE, _SWEEP_OUT], sweep=True, skip=("resume",))
def sweep_cmd(store: Path, out: Path, **options: Any) -> None:
    """Train a grid of settings on one store (features loaded once), one run folder per point, then the report."""
    from fer.train.options import config_from_options, option, parse_grid, sweep_config, sweep_options
    from fer.train.sweep import sweep

    own = sweep_config({o.name: options.pop(o.name) for o in sweep_options()})
    texts = {k: v for k, v in options.items() if option(k).sweepable}
    grid, single = parse_grid(texts)
    base = config_from_options({**{k: v for k, v in options.items() if k not in texts}, **single})
    sweep(str(store), grid, base, out, log=lambda line: typer.echo(line.rstrip("\n")),
          engine=None if own.dry_run else own.runner(), dry_run=own.dry_run)


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
    spec: str | None = typer.Argument(None, help="Check only this feature set (default: all)."),
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
    from fer.cache.errors import FerEnvError
    from fer.cache.report import human_bytes
    from fer.cache.store import open_store

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
    clip: str = typer.Argument(..., help="A video file (its main face is found and aligned, or give --faces), a folder "
                               "of face frames, or a clip id of the dataset given with --root."),
    run: Path = typer.Option(..., "--run", "-r", help="A run folder written by `fer train`."),
    root: Path | None = typer.Option(None, "--root", help="Dataset (any layout fer reads, or a manifest) "
                                     "that holds CLIP as an id."),
    faces: Path | None = typer.Option(None, "--faces", help="Folder of the video's aligned face frames."),
    fold: int | None = typer.Option(None, "--fold", min=1, help="Use this fold's model only [default: average all]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Label one clip with a trained run: extract exactly the run's features, print class probabilities."""
    import json
    import tempfile

    from fer.extract.clip import all_frames_cap, clip_features, clip_record
    from fer.train.predict import format_prediction, predict_probs, run_classes, run_features

    features = run_features(run)
    with tempfile.TemporaryDirectory(prefix="fer-predict-") as tmp:
        record = clip_record(clip, root=root, faces=faces, workdir=Path(tmp), device=device,
                             need_faces="face" in features, all_frames=all_frames_cap(features))
        inputs = clip_features(record, features, device=device)
    probs = predict_probs(run, inputs, fold=fold)[0]
    classes = run_classes(run)
    if as_json:
        top = int(probs.argmax())
        typer.echo(json.dumps({"clip": record.clip_id, "run": str(run), "top": classes[top],
                               "probs": {c: round(float(p), 6) for c, p in zip(classes, probs)}}))
    else:
        typer.echo(format_prediction(record.clip_id, probs, classes))


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
