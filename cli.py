"""The ``fer`` command: parse arguments, call the library, print. Nothing more."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Optional

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


ENGINE_HELP = ("process | ray: process = this process and its decoding workers (one per rank under torchrun or "
               "--shard); ray = Ray Data: decoding in CPU tasks, the model in a pool of actors (one GPU each where "
               "there are GPUs), on a local instance or a cluster (--ray-address, RAY_ADDRESS). Needs the ray extra.")
ACTORS_HELP = ("With --engine ray: MIN,MAX model actors (or N), the pool growing and shrinking between them. "
               "Default: 1 to one per GPU, or to half the CPUs.")
RAY_ADDRESS_HELP = ("With --engine ray: the Ray cluster to join (e.g. 10.0.0.1:6379). Default: $RAY_ADDRESS, else a "
                    "local instance started and stopped by this command.")
ROOT_HELP = "Dataset root (DFEW, MAFW, FERV39k, class folders train|val|test/<class>/<clip>) or a manifest CSV."
LAYOUT_HELP = "dfew | mafw | ferv39k | folders | videos | manifest: the layout of ROOT [default: told by its files]."
CLASSES_HELP = "The class names in order, e.g. angry,happy,sad [default: the dataset's own order; sorted names for " \
               "class folders and manifests]."


@data_app.command("info")
def data_info(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    check_media: bool = typer.Option(True, "--check-media/--no-check-media", help="Open every file to find unreadable ones."),
    layout: Optional[str] = typer.Option(None, "--layout", help=LAYOUT_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
) -> None:
    """Print what a dataset holds: its layout, clips, classes, folds, media, problems."""
    from fer.extract.datasets import parse_classes
    from fer.extract.datasets.info import dataset_report

    typer.echo(dataset_report(root, check_media=check_media, layout=layout, classes=parse_classes(classes)))


@data_app.command("faces")
def data_faces(
    src: Path = typer.Argument(..., help="The clips: any dataset fer reads (DFEW root, manifest CSV, ...)."),
    out: Path = typer.Argument(..., help="Folder for the aligned face frames, manifest.csv and faces.json."),
    size: int = typer.Option(224, "--size", min=32, max=1024, help="Side of the aligned face crops in pixels."),
    frames: str = typer.Option("all", "--frames", help="all | N: every frame, or N frames sampled uniformly."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (cuda:N)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="k/n, 1-based: this process does the clips i with i % n == k-1."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding worker processes. [default: this process's share of the cores less one, at most 8]"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Frames per detector pass. [default: 8 on CPU, 32 on GPU]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    engine: str = typer.Option("process", "--engine", help=ENGINE_HELP),
    actors: Optional[str] = typer.Option(None, "--actors", help=ACTORS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
) -> None:
    """Detect, follow and align the main face of every video into DFEW-style frame folders (OUT/<clip id>/00001.jpg).

    Writes OUT/manifest.csv (feed it to `fer extract`) and OUT/faces.json (detector, template, per-clip counts).
    Rerunning resumes: finished clips are skipped. Exit status 1 when a clip failed (e.g. no face), 130 when
    interrupted.
    """
    from fer.extract.datasets import load_dataset
    from fer.extract.faces.runner import run_faces
    from fer.extract.loading import default_workers
    from fer.extract.shards import parse_shard, shard_from_env

    from fer.extract.ray_engine import make_engine

    n_frames = _parse_frames(frames)
    run_engine = make_engine(engine, actors=actors, ray_address=ray_address, device=device, shard=shard,
                             workers=workers)
    shard_kn = parse_shard(shard) if shard else (shard_from_env() or (0, 1))
    dataset = load_dataset(src)
    summary = run_faces(dataset, out, size=size, frames=n_frames, device=device, shard=shard_kn,
                        workers=default_workers() if workers is None else workers, batch=batch, progress=progress,
                        engine=run_engine)
    _finish(summary, "clips")


def _parse_frames(text: str) -> Optional[int]:
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"{text!r} is neither 'all' nor a positive number of frames", param_hint="--frames")
    return n


# ---------------------------------------------------------------- extract
@app.command("extract")
def extract_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    modality: str = typer.Option(..., "--modality", "-m", help="face | pose | audio."),
    layout: Optional[str] = typer.Option(None, "--layout", help=LAYOUT_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    store: Optional[str] = typer.Option(
        None, "--store", "-s",
        help="Feature store to write (created if missing; *.zarr or *.h5). Default: ./<root name>.zarr "
        "in the current folder (never inside the dataset).",
    ),
    fmt: Optional[str] = typer.Option(None, "--format", help="zarr | h5, for the default store name. [default: zarr]"),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", "-b",
        help="face: resnet18 (default) | any torchvision classification model (convnext_tiny, vit_b_16 ...) | "
        "hf:<model id or folder> (CLIP, DINOv2, ViT) | timm:<model name>; pose: keypointrcnn | openpifpaf; "
        "audio: wav2vec2 (default) | mel | hf:<speech model id or folder> (HuBERT, WavLM, Whisper ...).",
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w",
        help="imagenet (face) | coco (pose) | an HF model id or folder (audio) | none (random init, seeded) | "
        "auto (pretrained when in the local cache, else random, with a warning) | "
        "PATH to a state dict or a `fer train` checkpoint. Default: the backbone's pretrained weights.",
    ),
    layer: Optional[str] = typer.Option(
        None, "--layer", help="face: pool (default: the pooled/CLS embedding) | proj (CLIP's projected image embedding) | "
        "layer3 | layer2 (resnet18 feature maps).",
    ),
    size: Optional[int] = typer.Option(
        None, "--size", min=32, max=1024,
        help="face: input size in pixels [the model's own, 224 for resnet18]; pose: the detector's short side [512] "
        "(long side x1.67).",
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision",
        help="fp32 | bf16 | fp16 | auto: bf16 autocast on GPUs with native bf16 (else fp16), and on CPUs with "
        "native bf16 for the backbones measured faster and faithful in it; else fp32. Any autocast adds .bf16/.fp16 "
        "to the spec. [default: $FER_PRECISION, else auto]",
    ),
    frames: Optional[str] = typer.Option(
        None, "--frames",
        help="Frames per clip (face: 16, pose: 3). face: all = every face frame (up to --max-frames), padded with a "
        "mask, for `fer train --augment jitter`.",
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", min=1,
        help="With --frames all: frames kept per clip; longer clips keep this many at the segment centres (recorded "
        "per clip). [default: 64]",
    ),
    flip: bool = typer.Option(
        False, "--flip",
        help="face: also store the horizontally mirrored view of every frame (spec .flip), for `fer train --augment flip` "
        "and flip averaging at test.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init for --weights none."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per model batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding worker processes (0: decode in the main process). [default: this process's share of the "
                                 "cores less one, at most 8; 0 for a CPU model with 2 cores or fewer]"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (cuda:N)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Extract at most N more clips in this call."),
    shard: Optional[str] = typer.Option(
        None, "--shard",
        help="k/n, 1-based: this process does shard k of n (e.g. --shard 1/2 and --shard 2/2 on two machines). "
        "Under torchrun RANK/WORLD_SIZE set it automatically.",
    ),
    chunk_mb: Optional[float] = typer.Option(None, "--chunk-mb", help="Chunk size in MB when the feature set is created."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    engine: str = typer.Option("process", "--engine", help=ENGINE_HELP),
    actors: Optional[str] = typer.Option(None, "--actors", help=ACTORS_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
) -> None:
    """Run one backbone over every clip into the feature store (stage 1).

    One feature set per call, named by its spec (e.g. face.resnet18.imagenet.pool.224.16f, or
    face.resnet18.imagenet.pool.224.all64f.flip with --frames all --flip). Rerunning the
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

    from fer.extract.backbones.registry import make_extractor
    from fer.extract.datasets import load_dataset, parse_classes
    from fer.extract.loading import default_workers
    from fer.extract.runner import run_extraction
    from fer.extract.shards import parse_shard, shard_from_env
    from fer.extract.stores import check_store_format, default_store_path

    from fer.extract.ray_engine import make_engine

    run_engine = make_engine(engine, actors=actors, ray_address=ray_address, device=device, shard=shard,
                             workers=workers)
    shard_kn = parse_shard(shard) if shard else (shard_from_env() or (0, 1))
    store_path = store if store else str(default_store_path(root, fmt))
    check_store_format(store_path, fmt)
    dataset = load_dataset(root, layout=layout, classes=parse_classes(classes))
    n_frames = None if frames is None else (_parse_frames(frames) or "all")
    # on Ray the model is built here on the CPU and sent to the actors, which move it to their own device
    extractor = make_extractor(modality, backbone, weights, "cpu" if run_engine else device, layer=layer, size=size,
                               frames=n_frames, seed=seed, precision=precision, max_frames=max_frames, flip=flip or None)
    summary = run_extraction(
        dataset, extractor, store_path,
        batch_size=batch_size,
        workers=default_workers(extractor.device) if workers is None else workers,
        shard=shard_kn,
        limit=limit,
        progress=progress,
        chunk_bytes=int(chunk_mb * 1e6) if chunk_mb else None,
        engine=run_engine,
    )
    _finish(summary, "rows")


def _finish(summary, saved: str) -> None:
    """Print a run's summary; exit 130 when it was interrupted, 1 when a clip failed."""
    typer.echo(str(summary))
    if summary.interrupted:
        typer.secho(f"interrupted: finished {saved} are saved; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- weights
@weights_app.command("fetch")
def weights_fetch(
    modality: Optional[str] = typer.Option(
        None, "--modality", "-m", help="Only these modalities (face,pose,audio). Default: all."
    ),
    backbone: Optional[list[str]] = typer.Option(
        None, "--backbone", "-b",
        help="Fetch this backbone instead of the defaults (repeatable): resnet18, any torchvision model name, "
        "hf:<model id>, timm:<model name>, wav2vec2, keypointrcnn.",
    ),
) -> None:
    """Download every default backbone weight into its normal cache (TORCH_HOME, HF cache), for offline use.

    Copy TORCH_HOME (default ~/.cache/torch) and HF_HOME (~/.cache/huggingface) to the offline machine.
    """
    from fer.extract.backbones.weights import fetch_all

    mods = [m.strip() for m in modality.split(",") if m.strip()] if modality else None
    fetch_all(mods, echo=typer.echo, backbones=[b for b in backbone or [] if b.strip()] or None)


# ---------------------------------------------------------------- train
STORE_HELP = "Feature store made by `fer extract` (.zarr or .h5)."


def _config_command(name: str, *, sweep: bool, extra: list[inspect.Parameter] = ()):
    """Register a command whose options are TrainConfig's fields (fer.train.options: the field's type, flag and
    docstring); the decorated body receives them as keyword arguments."""
    from fer.train.options import config_options

    def typed(o) -> tuple[Any, Any]:
        if sweep and o.sweepable:
            return Optional[str], typer.Option(None, *o.flags, help=f"{_escape(o.help)} One value or a comma list "
                                               f"(';' for {o.flag[2:]}): a grid axis. [default: {o.default}]",
                                               show_default=False)
        if o.kind == "bool":
            flags = (f"{o.flag}/--no-{o.flag[2:]}",) if o.default else o.flags
            return bool, typer.Option(o.default, *flags, help=_escape(o.help))
        tp = {"int": int, "float": float, "str": str, "int?": Optional[int], "str?": Optional[str], "tuple": str,
              "parsed": Optional[str]}[o.kind]
        return tp, typer.Option(o.default, *o.flags, help=_escape(o.help))

    def register(body):
        params = [inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                                    default=typer.Argument(..., help=STORE_HELP))]
        params += list(extra)
        taken = {p.name for p in params}
        for o in config_options():
            if o.name in taken or (sweep and o.name == "resume"):
                continue
            tp, default = typed(o)
            params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=tp, default=default))

        def command(**kw: Any) -> None:
            body(**kw)

        command.__signature__ = inspect.Signature(params)
        command.__doc__ = body.__doc__
        command.__name__ = body.__name__
        app.command(name)(command)
        return body

    return register


def _escape(text: str) -> str:
    return text.replace("[", "\\[")  # rich markup would read [0, 1) as a tag


@_config_command("train", sweep=False)
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
_SWEEP_OUT = inspect.Parameter(
    "out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
    default=typer.Option(Path("runs/sweep"), "--out", "-o", help="Folder for the run folders and report.md; rerun with "
                         "the same --out to resume a killed sweep."))


_SWEEP_ENGINE = [
    inspect.Parameter("engine", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
        "process", "--engine", help="process | ray: the grid points one after another in this process, or side by "
        "side as Ray tasks (features loaded once and shared through Ray's object store; needs the ray extra).")),
    inspect.Parameter("gpus_per_run", inspect.Parameter.KEYWORD_ONLY, annotation=float, default=typer.Option(
        0.0, "--gpus-per-run", help="With --engine ray: GPUs each grid point holds; a fraction (0.25) lets several "
        "small runs share one GPU, 0 trains on CPUs.")),
    inspect.Parameter("ray_address", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--ray-address", help=RAY_ADDRESS_HELP)),
]


@_config_command("sweep", sweep=True, extra=[_SWEEP_OUT, *_SWEEP_ENGINE])
def sweep_cmd(store: Path, out: Path, engine: str, gpus_per_run: float, ray_address: Optional[str],
              **options: Any) -> None:
    """Train a grid of settings on one store (features loaded once), one run folder per point, then the report."""
    from fer.train.options import config_from_options, option, parse_grid
    from fer.train.sweep import sweep, sweep_engine

    texts = {k: v for k, v in options.items() if option(k).sweepable}
    grid, single = parse_grid(texts)
    base = config_from_options({**{k: v for k, v in options.items() if k not in texts}, **single})
    run_engine = sweep_engine(engine, gpus_per_run=gpus_per_run, ray_address=ray_address)
    sweep(str(store), grid, base, out, log=lambda line: typer.echo(line.rstrip("\n")), engine=run_engine)


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
    clip: str = typer.Argument(..., help="A video file (its main face is found and aligned, or give --faces), a folder "
                               "of face frames, or a clip id of the dataset given with --root."),
    run: Path = typer.Option(..., "--run", "-r", help="A run folder written by `fer train`."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset (any layout fer reads, or a manifest) that holds CLIP as an id."),
    faces: Optional[Path] = typer.Option(None, "--faces", help="Folder of the video's aligned face frames."),
    fold: Optional[int] = typer.Option(None, "--fold", min=1, help="Use this fold's model only [default: average all]."),
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
