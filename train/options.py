"""The options of `fer train` and `fer sweep`, derived from TrainConfig's fields and their docstrings.

One setting, one place: a new TrainConfig field (with its docstring) becomes `--the-field` of both commands,
typed from its annotation, with the docstring as help (the derivation is fer.options, shared with stage 1).
Only what a field's type cannot say is listed here: another flag name (`folds` is --fold), short flags, how
text becomes a tuple, and which fields a sweep takes as one value rather than a grid axis. The CLI turns these
into its options; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache
from typing import Any

from fer.cache.errors import FerError
from fer.options import ConfigOption, Parser, config_from, options_of
from fer.train.config import (
    TrainConfig,
    parse_audio_layer,
    parse_augment,
    parse_face_layer,
    parse_folds,
    parse_modalities,
)
from fer.train.sweep import SweepConfig

FLAGS = {"folds": "--fold"}
SHORT = {"modalities": "-m", "out": "-o"}
TUPLES: dict[str, Parser] = {
    "modalities": (parse_modalities, "face[,pose][,audio]"),
    "folds": (parse_folds, "1..K of the store, a list like 1,3, or all"),
    "augment": (parse_augment, "jitter[,flip] or none"),
}
"""Tuple fields: the parser of their text, and the text's form."""
PARSED: dict[str, Parser] = {
    "audio_layer": (parse_audio_layer, "a layer index, last, or weighted"),
    "face_layer": (parse_face_layer, "a block index, last, or weighted"),
}
"""Other fields whose text has its own parser (their type is a union the annotation cannot say how to read)."""
SINGLE_IN_SWEEP = {"out", "resume", "device", "plots", "face", "pose", "audio", "allow_incomplete", "finetune",
                   "stream"}
"""Fields a sweep takes once for every run (they name files, the store's data or the machine, not a training
choice); every other field except the flags (bools) takes a comma list, a grid axis."""


@lru_cache(maxsize=4)
def config_options(cls: type = TrainConfig) -> tuple[ConfigOption, ...]:
    """Every field of TrainConfig (or a subclass) as an option, in field order."""
    return options_of(cls, flags=FLAGS, short=SHORT, tuples=TUPLES, parsed=PARSED, empty={"folds": "all"},
                      single=SINGLE_IN_SWEEP)


@lru_cache(maxsize=1)
def sweep_options() -> tuple[ConfigOption, ...]:
    """`fer sweep`'s own options (SweepConfig: where the points run), taken once, never a grid axis."""
    return options_of(SweepConfig, single={f.name for f in fields(SweepConfig)})


def sweep_config(values: dict[str, Any]) -> SweepConfig:
    """A SweepConfig from option values."""
    return config_from(SweepConfig, sweep_options(), values)


def option(name: str) -> ConfigOption:
    for o in config_options():
        if o.name == name:
            return o
    raise FerError(f"TrainConfig has no setting {name!r}")


def config_from_options(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from option values (tuples as text or already parsed; anything else typed)."""
    return config_from(TrainConfig, config_options(), values)


def parse_grid(values: dict[str, str | None]) -> tuple[dict[str, list], dict[str, Any]]:
    """Split sweep option texts (field -> text, None when not given) into the grid (settings given several
    values) and single settings."""
    grid: dict[str, list] = {}
    single: dict[str, Any] = {}
    names = {o.name: o for o in config_options()}
    for key, text in values.items():
        if text is None:
            continue
        o = names.get(key)
        if o is None or not o.sweepable:
            raise FerError(f"cannot sweep over {key!r}")
        parsed = o.parse_list(text)
        if len(parsed) > 1:
            grid[key] = parsed
        else:
            single[key] = parsed[0]
    return grid, single
