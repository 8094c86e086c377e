"""Everything one training run depends on, in one dataclass (saved as config.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fer.cache.errors import FerError

MODALITIES = ("face", "pose", "audio")
FUSIONS = ("none", "fc", "transformer")
LOSSES = ("kl", "mse", "ce", "wce")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("plateau", "cosine", "none")
SELECTS = ("best", "last")
MONITORS = ("uar", "loss")
FINETUNES = (None, "layer4", "top")
AUGMENTS = ("jitter", "flip")
PROTOCOLS = ("fer", "literature")
TEST_FLIPS = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Settings of one `fer train` run; every field lands in the run's config.json."""

    modalities: tuple[str, ...] = ("face",)
    """Modalities the model sees: any non-empty subset of face, pose, audio that the store holds
    (audio alone is the standard audio-only baseline)."""
    face: str | None = None
    """Feature-set spec for the face (None: the store's only face feature set)."""
    pose: str | None = None
    """Feature-set spec for the pose (None: the store's only pose feature set)."""
    audio: str | None = None
    """Feature-set spec for the audio (None: the store's only audio feature set)."""
    fusion: str = "none"
    """How modalities are combined: none (one modality only), fc (pose/audio concatenated before the decision
    network, the face through the encoder), transformer (every modality as tokens of the encoder)."""
    loss: str = "kl"
    """kl (KL divergence to the normalised votes), mse (on probabilities), ce (cross-entropy on the
    majority label), wce (ce weighted by inverse train class frequency)."""
    folds: tuple[int, ...] = (1,)
    """Folds of the store's protocol to run, each in 1..K (K: 5 for DFEW and MAFW, 1 for FERV39k);
    empty means all of them (--fold all)."""
    epochs: int = 30
    """Maximum number of epochs per fold."""
    lr: float = 1e-4
    """Initial learning rate."""
    weight_decay: float = 1e-2
    """Weight decay (decoupled for adamw, L2 for adam)."""
    batch_size: int = 64
    """Clips per optimisation step."""
    optimizer: str = "adamw"
    """adam or adamw."""
    scheduler: str = "plateau"
    """plateau (ReduceLROnPlateau on validation loss), cosine (annealed over `epochs`) or none."""
    layers: int = 6
    """Transformer encoder layers."""
    heads: int = 8
    """Attention heads (must divide the token width: the face feature width, or 256 without a face)."""
    ff: int = 2048
    """Width of the encoder's feed-forward layers."""
    hidden: int = 512
    """Width of the decision network's hidden layer (2 FC layers: flatten -> hidden -> classes)."""
    dropout: float = 0.1
    """Dropout in the encoder and the decision network."""
    modality_dropout: float = 0.0
    """With fusion: share of training clips whose face tokens are blanked in a step, so the model learns to use
    pose/audio too (0 = off)."""
    normalize: bool = True
    """Standardise face and audio features per dimension with the training split's mean and std
    (per fold; the statistics travel in the checkpoint)."""
    audio_layer: int | str | None = None
    """Audio hidden-state index to use (0 = the input embedding, L = last layer); None: the last one;
    ``weighted``: a learned softmax-weighted sum of every layer (fer.train.layer_mix)."""
    protocol: str = "fer"
    """fer: select the epoch on validation clips (the protocol's, else a split of the training fold), never on
    test; literature: what DFER papers report: train on the whole official training fold (no validation clips,
    no plateau scheduler, no early stopping), keep the last epoch, no test-time flip unless --test-flip on.
    The literature protocol overrides --val-fraction, --select, --patience and a plateau --scheduler."""
    val_fraction: float = 0.1
    """Share of each class of the training fold held out for validation (model selection);
    0 disables validation (then select=last and no early stopping)."""
    select: str = "best"
    """best: keep the epoch with the best validation score; last: keep the last epoch, still training on the
    training fold less its validation clips (--protocol literature trains on all of it)."""
    monitor: str = "uar"
    """Validation score that picks the best epoch and drives early stopping: uar or loss."""
    patience: int = 10
    """Stop a fold after this many epochs without validation improvement (0: never stop early)."""
    seed: int = 0
    """Seeds the validation split, the model initialisation, batch order and dropout."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    out: str | None = None
    """Run folder; None: runs/<modalities>-<fusion>-<loss>[-ft4][-jitter][-flip][-balance]-f<folds>."""
    allow_incomplete: bool = False
    """Train on the rows done in every chosen feature set instead of refusing incomplete sets."""
    finetune: str | None = None
    """top: train the backbone's top on a face set cut inside it, with the rest: a ViT's blocks K..L-1 and
    final norm on the tokens of `fer extract --layer block:K`, ResNet-18's layer4 on layer3 maps
    (fer.train.tops); layer4: the ResNet-18 case by its name."""
    lora: int = 0
    """With --finetune top on a ViT: train LoRA adapters of this rank on the top blocks' attention and MLP
    projections instead of all their weights (needs peft); 0: all their weights."""
    backbone_lr: float = 0.0
    """Learning rate of the backbone's top (--finetune), apart from the head's --lr (e.g. 1e-5 against 1e-3);
    0: --lr."""
    face_layer: int | str | None = None
    """Face block to use from a set extracted with --layer all (0 = the embeddings, L = the last block: the
    pooled feature); None: the last; ``weighted``: a learned softmax-weighted sum of every block
    (fer.train.layer_mix)."""
    resume: bool = False
    """Continue an interrupted run in `out` from the last checkpoint of its unfinished fold."""
    plots: bool = True
    """Write the PNGs (confusion, precision-recall, curves) into `out`/plots at the end."""
    augment: tuple[str, ...] = ()
    """Training-time augmentation of the face, any of: jitter (each epoch a random frame inside each of
    `segments` segments of a clip's valid frames; needs a set extracted with --frames all), flip (a random
    view per clip: original or mirrored; needs a set extracted with --flip). Evaluation always uses the segment
    centres and averages the predictions of every stored view."""
    balance: bool = False
    """Oversample classes to equal counts per epoch (epochs keep their length: rare classes repeat, frequent ones
    are subsampled, different clips each epoch)."""
    segments: int = 16
    """Face tokens drawn from an all-frame set: one frame per segment, the centre at evaluation (sets with a
    fixed number of frames are used as they are)."""
    test_flip: str = "auto"
    """On a face set with mirrored views (--flip): on averages the predictions of the original and the mirror
    at evaluation, off uses the original only, auto is on under --protocol fer and off under literature."""
    stream: bool = False
    """Read the feature sets chunk by chunk while training even when they fit the memory budget (sets larger than
    FER_MEMORY_BUDGET_GB, default the available memory, always stream)."""
    folds_together: int = 0
    """Models trained together as one batched model: the folds of this run (and in `fer sweep` also the grid
    points that differ only in what each model holds: --lr, --weight-decay, --dropout, --loss, --seed, ...),
    at most this many at once; 0: as many as fit the device's free memory; 1: one after another. A model with
    a fine-tuned backbone top (--finetune) always trains alone. Every model gives the numbers it gives alone."""

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            self.modalities = tuple(m.strip() for m in self.modalities.split(",") if m.strip())
        self.modalities = tuple(self.modalities)
        if isinstance(self.augment, str):
            self.augment = parse_augment(self.augment)
        self.augment = tuple(self.augment)
        self.folds = tuple(int(f) for f in self.folds)

    def validate(self) -> TrainConfig:
        """Raise FerError on any setting that cannot work; return self."""
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad:
            raise FerError(f"unknown modality {', '.join(bad)}: choose from {', '.join(MODALITIES)} "
                           "(e.g. --modalities face,pose)")
        if not self.modalities:
            raise FerError("no modality chosen: use --modalities face, audio, face,audio ...")
        _choice("fusion", self.fusion, FUSIONS)
        _choice("loss", self.loss, LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("select", self.select, SELECTS)
        _choice("monitor", self.monitor, MONITORS)
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("test-flip", self.test_flip, TEST_FLIPS)
        if self.finetune not in FINETUNES:
            raise FerError(f"unknown --finetune {self.finetune}: choose top (or layer4, its ResNet-18 name)")
        if self.finetune and "face" not in self.modalities:
            raise FerError(f"--finetune {self.finetune} trains the face backbone: add face to --modalities")
        if self.lora < 0 or (self.lora and self.finetune is None):
            raise FerError(f"--lora {self.lora} adapts the top that --finetune top trains: give a rank >= 1 "
                           "with --finetune top, or leave --lora out")
        if self.backbone_lr < 0 or (self.backbone_lr and self.finetune is None):
            raise FerError(f"--backbone-lr {self.backbone_lr} is the learning rate of --finetune's top: a "
                           "positive number, with --finetune top")
        if isinstance(self.face_layer, str) and self.face_layer != WEIGHTED:
            raise FerError(f"--face-layer {self.face_layer!r}: give a block index, last, or weighted")
        if len(self.modalities) > 1 and self.fusion == "none":
            raise FerError(f"--modalities {','.join(self.modalities)} needs --fusion fc or transformer "
                           "(none is one modality)")
        if any(int(f) < 1 for f in self.folds):
            raise FerError(f"fold {min(self.folds)} does not exist: folds are numbered from 1 (or use --fold all)")
        bad = [a for a in self.augment if a not in AUGMENTS]
        if bad:
            raise FerError(f"unknown --augment {', '.join(bad)}: choose from {', '.join(AUGMENTS)} "
                           "(e.g. --augment jitter,flip)")
        if self.augment and "face" not in self.modalities:
            raise FerError(f"--augment {','.join(self.augment)} draws face frames: add face to --modalities")
        if self.folds_together < 0:
            raise FerError(f"--folds-together must be 0 (as many as fit) or more (got {self.folds_together})")
        for name in ("epochs", "batch_size", "layers", "heads", "ff", "hidden", "segments"):
            if getattr(self, name) < 1:
                raise FerError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not 0.0 <= self.dropout < 1.0:
            raise FerError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise FerError(f"--modality-dropout must be in [0, 1) (got {self.modality_dropout})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FerError(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        if isinstance(self.audio_layer, str) and self.audio_layer != "weighted":
            raise FerError(f"--audio-layer {self.audio_layer!r}: give a layer index, last, or weighted")
        if self.lr <= 0:
            raise FerError(f"--lr must be positive (got {self.lr})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FerError(f"unknown --device {self.device}: choose auto, cpu or cuda")
        return self

    def default_out(self, num_folds: int | None = None) -> str:
        """runs/<modalities>-<fusion>-<loss>[-ft4][-jitter][-flip][-balance]-f<fold|all|1_2>,
        e.g. runs/face-none-kl-f1."""
        every = not self.folds or (num_folds is not None and sorted(self.folds) == list(range(1, num_folds + 1)))
        folds = "all" if every else "_".join(map(str, self.folds))
        ft = {"layer4": "-ft4", "top": "-top"}.get(self.finetune or "", "")
        ft += f"-lora{self.lora}" if self.lora else ""
        aug = "".join(f"-{a}" for a in self.augment) + ("-balance" if self.balance else "")
        lit = "-literature" if self.protocol == "literature" else ""
        return f"runs/{'+'.join(self.modalities)}-{self.fusion}-{self.loss}{ft}{aug}{lit}-f{folds}"

    def for_run(self, fold_names: tuple[str, ...], store: str) -> TrainConfig:
        """A copy with what a run settles before it starts (this config is left as it is): the folds (--fold
        all -> every fold of the store), the run folder, and the protocol's settings (literature: no
        validation clips, last epoch, no plateau scheduler, no early stopping)."""
        folds = resolve_folds(self.folds, fold_names, store)
        out = self.out or replace(self, folds=folds).default_out(len(fold_names))
        cfg = replace(self, folds=folds, out=str(out))
        if cfg.protocol == "literature":
            cfg = replace(cfg, val_fraction=0.0, select="last", patience=0,
                          scheduler="none" if cfg.scheduler == "plateau" else cfg.scheduler)
        return cfg

    def flip_at_test(self) -> bool | None:
        """fer.train.sampling.FramePlan's flip_test: True (average both views), False (the original only),
        None (every view the set has: --test-flip auto under fer's protocol)."""
        if self.test_flip == "auto":
            return False if self.protocol == "literature" else None
        return self.test_flip == "on"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["folds"] = list(self.folds)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k in ("modalities", "folds", "augment") else v) for k, v in d.items()
                      if k in names})


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FerError(f"unknown --{name} {value}: choose from {', '.join(choices)}")


def parse_folds(text: str) -> tuple[int, ...]:
    """`1`, `1,3` or `all` (-> (), every fold of the store) -> fold numbers; FerError on anything else."""
    text = str(text).strip().lower()
    if text == "all":
        return ()
    try:
        folds = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise FerError(f"--fold {text}: give a fold number (1..K of the store), a list like 1,3, or all") from None
    if not folds:
        raise FerError("--fold is empty: give a fold number, a list like 1,3, or all")
    for f in folds:
        if f < 1:
            raise FerError(f"fold {f} does not exist: folds are numbered from 1 (or use --fold all)")
    return folds


def resolve_folds(folds: tuple[int, ...], fold_names: tuple[str, ...], store: str) -> tuple[int, ...]:
    """The folds to run on a store with ``fold_names``: () -> all of them; each must exist."""
    k = len(fold_names)
    if not folds:
        return tuple(range(1, k + 1))
    for f in folds:
        if not 1 <= f <= k:
            names = ", ".join(f"{i} ({n})" for i, n in enumerate(fold_names, 1))
            raise FerError(f"fold {f} does not exist: {store} has {k} fold(s): {names or 'none'} (or use --fold all)")
    return tuple(folds)


WEIGHTED = "weighted"
"""``--audio-layer weighted``: a learned softmax-weighted sum of every stored layer (fer.train.layer_mix)."""


def parse_audio_layer(text: str | int | None, flag: str = "--audio-layer",
                      first: str = "input embedding") -> int | str | None:
    """``--audio-layer``: None/``last`` -> None (the last layer), an integer index, or ``weighted``."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().lower()
    if t in ("", "none", "last"):
        return None
    if t == WEIGHTED:
        return WEIGHTED
    try:
        return int(t)
    except ValueError:
        raise FerError(f"{flag} {text!r}: give a layer index (0 = {first}), last, or weighted") from None


def parse_face_layer(text: str | int | None) -> int | str | None:
    """``--face-layer``: like ``--audio-layer``, over the blocks of a set extracted with --layer all."""
    return parse_audio_layer(text, "--face-layer", "the embeddings")


def parse_modalities(text: str) -> tuple[str, ...]:
    """`face,pose` -> ("face", "pose"), checked against the known modalities."""
    mods = tuple(m.strip().lower() for m in str(text).split(",") if m.strip())
    bad = [m for m in mods if m not in MODALITIES]
    if bad:
        raise FerError(f"unknown modality {', '.join(bad)}: choose from {', '.join(MODALITIES)} "
                       "(e.g. --modalities face,pose)")
    return mods


def parse_augment(text: str) -> tuple[str, ...]:
    """`jitter,flip` -> ("jitter", "flip"); `none` or `` -> (); checked against the known augmentations."""
    parts = tuple(a.strip().lower() for a in str(text).split(",") if a.strip())
    if parts == ("none",):
        return ()
    bad = [a for a in parts if a not in AUGMENTS]
    if bad:
        raise FerError(f"unknown --augment {', '.join(bad)}: choose from {', '.join(AUGMENTS)} "
                       "(e.g. --augment jitter,flip)")
    return tuple(dict.fromkeys(parts))
