"""Every setting of `fer extract` (ExtractConfig) and of `fer data faces` (FacesConfig), one field with its
docstring each, from which the commands' options and help are derived (fer.options; ``extract_options`` and
``faces_options`` say only what a field's type cannot), validated here once.

Which option applies to which modality is said once, in ``APPLIES_TO``, and checked by ``check_options``;
which option applies to which backbone family is said in the family's record of the family table
(fer.extract.backbones.families: its ``cuts`` for --layer, its ``only`` for options it takes one value of,
such as mel's --weights none and the pose backends' fp32), and checked by ``check_family``.
ExtractConfig.validate asks both; so do make_extractor and the per-modality builders, the library's own entry
points (and the face extractor asks ``check_frames``). The fields in ``BUILD_FIELDS`` build the extractor; the
feature set records them, as resolved, as its ``extractor`` attribute, from which `fer predict` rebuilds
exactly that extractor (fer.extract.backbones.registry.extractor_from_provenance).

Nothing here imports torch when it is imported (the family table is read inside ``validate``): the CLI reads
these classes at start-up, and bad arguments come back fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fer.cache.errors import FerError
from fer.options import ConfigOption, Parser, config_from, options_of

MODALITIES = ("face", "pose", "audio")
SIZE_RANGE = (32, 1024)
"""Input sizes (pixels) a run accepts (--size)."""

APPLIES_TO: dict[str, tuple[str, ...]] = {
    "--frames all": ("face",),
    "--max-frames": ("face",),
    "--flip": ("face",),
    "--transforms": ("face",),
    "--layer": ("face",),
    "--size": ("face", "pose"),
    "--frames": ("face", "pose"),
}
"""Which modalities an option means something for; given for another, it is a one-line error."""
WHY_NOT = {"audio": "the audio backends take each clip's sound as it is and store every layer"}
"""Said after such an error, per modality."""


# ---------------------------------------------------------------- the rules
def parse_frames(value: int | str) -> int | str:
    """Frames per clip as given (``16``, ``"16"``, ``"all"``) -> a positive int or ``"all"``, or FerError."""
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        raise FerError(f"--frames {value!r} is neither 'all' nor a number (so neither 'all' nor a positive "
                       "number of frames)") from None
    if n < 1:
        raise FerError(f"--frames {value!r} is neither 'all' nor a positive number of frames")
    return n


def check_frames(frames: int | str, max_frames: int | None = None) -> int | str:
    """``frames`` parsed; FerError for a ``max_frames`` that caps nothing (frames not all) or is below 1."""
    frames = parse_frames(frames)
    if frames != "all" and max_frames is not None:
        raise FerError("--max-frames caps --frames all; with a fixed --frames N leave it out")
    if max_frames is not None and max_frames < 1:
        raise FerError(f"--max-frames must be >= 1, got {max_frames}")
    return frames


def check_size(size: int | None) -> None:
    """FerError for an input size outside SIZE_RANGE (None: the model's own)."""
    lo, hi = SIZE_RANGE
    if size is not None and not lo <= size <= hi:
        raise FerError(f"--size must be between {lo} and {hi} pixels, got {size}")


def check_options(modality: str, *, layer: str | None = None, size: int | None = None,
                  frames: int | str | None = None, max_frames: int | None = None, flip: bool | None = False,
                  transforms: str | None = None, **_: Any) -> None:
    """FerError naming the options given that do not apply to ``modality`` (APPLIES_TO): the first group."""
    given = [name for name, on in (
        ("--frames all", str(frames).lower() == "all"), ("--max-frames", max_frames is not None),
        ("--flip", bool(flip)), ("--transforms", bool(transforms)), ("--layer", bool(layer)),
        ("--size", size is not None), ("--frames", frames is not None and str(frames).lower() != "all"),
    ) if on and modality not in APPLIES_TO[name]]
    if not given:
        return
    where = APPLIES_TO[given[0]]
    names = [n for n in given if APPLIES_TO[n] == where]
    many = len(names) > 1
    why = f" ({WHY_NOT[modality]})" if modality in WHY_NOT else ""
    raise FerError(f"{' and '.join(names)} {'apply' if many else 'applies'} to "
                   f"{'the face modality' if where == ('face',) else ' and '.join(where)} only; leave "
                   f"{'them' if many else 'it'} out for {modality}{why}")


def check_family(family: Any, name: str, *, layer: str | None = None, **options: Any) -> None:
    """FerError for an option the family of backbone ``name`` does not take, read from its record in the
    family table (fer.extract.backbones.family.Family): a ``layer`` none of its ``cuts`` names, or another
    value of an option it takes one value of (its ``only``)."""
    if layer is not None and family.cuts and family.cut(layer) is None:
        names = ", ".join(c.name for c in family.cuts)
        raise FerError(f"unknown --layer {layer!r} for {name}; choose from {names}")
    for option, value, why in family.only:
        given = options.get(option)
        if given is None or (value is not None and str(given).lower() in (value, "auto")):
            continue
        flag = "--" + option.replace("_", "-")
        raise FerError(f"{flag} {given} does not apply to {name}: {why}; leave {flag} out")


def check_run_settings(batch_size: int = 1, workers: int | None = None, limit: int | None = None) -> None:
    """FerError for a batch size, worker count or limit no run can use."""
    if batch_size < 1:
        raise FerError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise FerError(f"--workers must be >= 0, got {workers}")
    if limit is not None and limit < 1:
        raise FerError(f"--limit must be >= 1, got {limit}")


# ---------------------------------------------------------------- fer extract
# ---------------------------------------------------------------- where a run's clips run (both commands)
class EngineChoice:
    """What `fer extract` and `fer data faces` do with their ``engine``, ``actors`` and ``ray_address``
    fields (each command's own, with its own help): run the clips in this process, or on Ray."""

    engine: str
    actors: str | None
    ray_address: str | None

    def uses_ray(self, shard: str | None, workers: int | None) -> bool:
        """True for ``--engine ray``; FerError for options that do not go with the engine chosen."""
        import os

        from fer.ray_session import wants_ray

        if not wants_ray(self.engine, {"--actors": self.actors, "--ray-address": self.ray_address}):
            return False
        if shard or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
            raise FerError("--engine ray schedules every clip itself: leave out --shard and run one fer, not "
                           "torchrun")
        if workers is not None:
            raise FerError("--workers is for --engine process; on Ray, decoding runs in Ray's own tasks")
        parse_actors(self.actors)
        return True

    def ray_engine(self, device: str) -> Any:
        """The RayEngine these settings ask for (actors on ``device``), or None for ``--engine process``."""
        if (self.engine or "process").strip().lower() != "ray":
            return None
        from fer.extract.ray_engine import RayEngine

        return RayEngine(self.ray_address, parse_actors(self.actors), device)


def parse_actors(text: str | None) -> tuple[int, int] | None:
    """``"MIN,MAX"`` or ``"N"`` -> (min, max) model actors; None for the default; FerError when malformed."""
    if text is None or not str(text).strip():
        return None
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise FerError(f"--actors {text!r} is not MIN,MAX (e.g. 1,4) or N with 1 <= MIN <= MAX")
    return parts[0], parts[1]


BUILD_FIELDS = ("modality", "backbone", "weights", "layer", "size", "frames", "max_frames", "flip", "seed",
                "precision", "transforms")
"""The fields that build the extractor (make_extractor's arguments, recorded in the feature set)."""


@dataclass
class ExtractConfig(EngineChoice):
    """Settings of one `fer extract` run (one backbone over every clip into one feature set)."""

    modality: str
    """face | pose | audio."""
    layout: str | None = None
    """dfew | mafw | ferv39k | folders | videos | manifest: the layout of ROOT [default: told by its
    files]."""
    classes: str | None = None
    """The class names in order, e.g. angry,happy,sad [default: the dataset's own order; sorted names for
    class folders and manifests]."""
    store: str | None = None
    """Feature store to write (created if missing; *.zarr or *.h5). Default: ./<root name>.zarr in the current
    folder (never inside the dataset)."""
    format: str | None = None
    """zarr | h5, for the default store name. [default: zarr]"""
    backbone: str | None = None
    """The backbone, by family: {families}"""
    weights: str | None = None
    """imagenet (face) | coco (pose) | an HF model id or folder (audio) | none (random init, seeded) | auto
    (pretrained when in the local cache, else random, with a warning) | PATH to a state dict or a `fer train`
    checkpoint. Default: the backbone's pretrained weights."""
    transforms: str | None = None
    """face: whose preprocessing to use when --weights PATH does not say: a torchvision weights entry
    (IMAGENET1K_V1), a timm pretrained tag (mae), an HF model id or folder with an image processor. [default:
    the entry whose hash the file's sha256 starts with, else the default entry, said in a note]"""
    layer: str | None = None
    """face: pool (default: the pooled/CLS embedding) | proj (CLIP's projected image embedding) | layer3 |
    layer2 (resnet18 feature maps, for --finetune layer4) | block:K (a ViT's tokens entering block K, negative
    from the end, e.g. block:-2; block:K:proj for a CLIP top with its projection; for `fer train --finetune
    top`) | all (a ViT's pooled feature after every block, for --face-layer)."""
    size: int | None = None
    """face: input size in pixels [the model's own, 224 for resnet18]; pose: the detector's short side [512]
    (long side x1.67)."""
    precision: str | None = None
    """fp32 | bf16 | fp16 | auto: bf16 autocast on GPUs with native bf16 (else fp16), and on CPUs with native
    bf16 for the backbones measured faster and faithful in it; else fp32. auto then checks its choice on the
    first batch: fp32 when the features drift (cosine < 0.999) or it is slower. Any autocast adds .bf16/.fp16
    to the spec. [default: $FER_PRECISION, else auto]"""
    frames: int | str | None = None
    """Frames per clip (face: 16, pose: 3). face: all = every face frame (up to --max-frames), padded with a
    mask, for `fer train --augment jitter`."""
    max_frames: int | None = None
    """With --frames all: frames kept per clip; longer clips keep this many at the segment centres (recorded
    per clip). [default: 64]"""
    flip: bool = False
    """face: also store the horizontally mirrored view of every frame (spec .flip), for `fer train --augment
    flip` and flip averaging at test."""
    seed: int = 0
    """Seed of the random init for --weights none."""
    batch_size: int = 8
    """Clips per model batch."""
    workers: int | None = None
    """Decoding worker processes (0: decode in the main process). [default: this process's share of the cores
    less one, at most 8; 0 for a CPU model with 2 cores or fewer]"""
    device: str = "auto"
    """auto | cpu | cuda (cuda:N)."""
    limit: int | None = None
    """Extract at most N more clips in this call."""
    shard: str | None = None
    """k/n, 1-based: this process does shard k of n (e.g. --shard 1/2 and --shard 2/2 on two machines). Under
    torchrun RANK/WORLD_SIZE set it automatically."""
    chunk_mb: float | None = None
    """Chunk size in MB when the feature set is created."""
    progress: bool = True
    """Show a progress bar."""
    engine: str = "process"
    """process | ray: process = this process and its decoding workers (one process per rank under torchrun or
    --shard); ray = Ray Data: decoding in CPU tasks, the backbone in a pool of actors that load it once (one
    GPU each where there are GPUs), on a local instance or a cluster; this process writes the store. Needs
    the ray extra."""
    actors: str | None = None
    """With --engine ray: MIN,MAX backbone actors (or N), the pool growing and shrinking between them.
    Default: 1 to one per GPU, or to half the CPUs."""
    ray_address: str | None = None
    """With --engine ray: the Ray cluster to join (e.g. 10.0.0.1:6379). Default: $RAY_ADDRESS, else a local
    instance started and stopped by this command."""

    def __post_init__(self) -> None:
        if self.frames is not None:
            self.frames = parse_frames(self.frames)

    def validate(self) -> ExtractConfig:
        """Raise FerError on any setting that cannot work (one line naming the option); return self."""
        from fer.extract.shards import parse_shard
        from fer.extract.stores import STORE_SUFFIX, check_store_format

        if self.modality not in MODALITIES:
            raise FerError(f"unknown modality {self.modality!r}; choose from {', '.join(MODALITIES)}")
        check_run_settings(self.batch_size, self.workers, self.limit)
        self.uses_ray(self.shard, self.workers)
        if self.chunk_mb is not None and self.chunk_mb <= 0:
            raise FerError(f"--chunk-mb must be > 0, got {self.chunk_mb}")
        if self.shard:
            parse_shard(self.shard)
        if self.format is not None and self.format.lower() not in STORE_SUFFIX:
            raise FerError(f"unknown --format {self.format!r}; choose zarr or h5")
        if self.store:
            check_store_format(self.store, self.format)
        check_size(self.size)
        check_options(**self.build_args())
        if self.frames is not None:
            check_frames(self.frames, self.max_frames)
        from fer.extract.backbones.families import DEFAULT_BACKBONE, family_of, normalize_backbone

        name = normalize_backbone(self.backbone or DEFAULT_BACKBONE[self.modality])
        check_family(family_of(self.modality, name), name, **self.build_args())
        return self

    def build_args(self) -> dict[str, Any]:
        """make_extractor's arguments: the BUILD_FIELDS given (an unset flip is left out, as make_extractor
        records it)."""
        return {k: getattr(self, k) for k in BUILD_FIELDS
                if getattr(self, k) is not None and not (k == "flip" and not self.flip)}

    def chunk_bytes(self) -> int | None:
        return int(self.chunk_mb * 1e6) if self.chunk_mb else None


EXTRACT_SHORT = {"modality": "-m", "store": "-s", "backbone": "-b", "weights": "-w"}
FRAMES: Parser = (parse_frames, "N, or all")


@lru_cache(maxsize=2)
def extract_options(cls: type = ExtractConfig) -> tuple[ConfigOption, ...]:
    """Every field of ExtractConfig as an option of `fer extract`, in field order."""
    return options_of(cls, short=EXTRACT_SHORT, parsed={"frames": FRAMES})


def extract_config(values: dict[str, Any]) -> ExtractConfig:
    """A validated ExtractConfig from option values."""
    return config_from(ExtractConfig, extract_options(), values).validate()


# ---------------------------------------------------------------- fer data faces
@dataclass
class FacesConfig(EngineChoice):
    """Settings of one `fer data faces` run (the main face of every video, aligned into frame folders)."""

    size: int = 224
    """Side of the aligned face crops in pixels."""
    frames: int | str = "all"
    """all | N: every frame, or N frames sampled uniformly."""
    device: str = "auto"
    """auto | cpu | cuda (cuda:N)."""
    shard: str | None = None
    """k/n, 1-based: this process does the clips i with i % n == k-1."""
    workers: int | None = None
    """Decoding worker processes. [default: this process's share of the cores less one, at most 8]"""
    batch: int | None = None
    """Frames per detector pass. [default: 8 on CPU, 32 on GPU]"""
    progress: bool = True
    """Show a progress bar."""
    engine: str = "process"
    """process | ray: process = this process and its decoding workers (one process per shard); ray = Ray
    Data: decoding in CPU tasks, face detection and alignment in a pool of actors (one GPU each where there
    are GPUs), on a local instance or a cluster; this process writes OUT. Needs the ray extra."""
    actors: str | None = None
    """With --engine ray: MIN,MAX detector actors (or N), the pool growing and shrinking between them.
    Default: 1 to one per GPU, or to half the CPUs."""
    ray_address: str | None = None
    """With --engine ray: the Ray cluster to join (e.g. 10.0.0.1:6379). Default: $RAY_ADDRESS, else a local
    Ray instance that this command starts and stops."""

    def __post_init__(self) -> None:
        self.frames = parse_frames(self.frames)

    def validate(self) -> FacesConfig:
        """Raise FerError on any setting that cannot work (one line naming the option); return self."""
        from fer.extract.shards import parse_shard

        check_size(self.size)
        check_run_settings(workers=self.workers)
        self.uses_ray(self.shard, self.workers)
        if self.batch is not None and self.batch < 1:
            raise FerError(f"--batch must be >= 1, got {self.batch}")
        if self.shard:
            parse_shard(self.shard)
        return self

    @property
    def frame_count(self) -> int | None:
        """Frames per clip for run_faces: N, or None for every frame."""
        return None if self.frames == "all" else int(self.frames)


@lru_cache(maxsize=2)
def faces_options(cls: type = FacesConfig) -> tuple[ConfigOption, ...]:
    """Every field of FacesConfig as an option of `fer data faces`, in field order."""
    return options_of(cls, parsed={"frames": FRAMES})


def faces_config(values: dict[str, Any]) -> FacesConfig:
    """A validated FacesConfig from option values."""
    return config_from(FacesConfig, faces_options(), values).validate()
