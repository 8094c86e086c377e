"""The options of `fer train` and `fer sweep`, derived from TrainConfig's fields and their docstrings.

One setting, one place: a new TrainConfig field (with its docstring) becomes `--the-field` of both commands,
typed from its annotation, with the docstring as help. Only what a field's type cannot say is listed here:
another flag name (`folds` is --fold), short flags, how text becomes a tuple, and which fields a sweep takes
as one value rather than a grid axis. The CLI turns these into its options; nothing here imports it.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from dataclasses import MISSING, dataclass, fields
from functools import lru_cache
from typing import Any, Callable

from fer.cache.errors import FerError
from fer.train.config import (TrainConfig, parse_audio_layer, parse_augment, parse_face_layer, parse_folds,
                              parse_modalities)

FLAGS = {"folds": "--fold"}
SHORT = {"modalities": "-m", "out": "-o"}
TUPLES: dict[str, tuple[Callable[[str], tuple], str]] = {
    "modalities": (parse_modalities, "face[,pose][,audio]"),
    "folds": (parse_folds, "1..K of the store, a list like 1,3, or all"),
    "augment": (parse_augment, "jitter[,flip] or none"),
}
"""Tuple fields: the parser of their text, and the text's form."""
PARSED: dict[str, tuple[Callable[[str], Any], str]] = {
    "audio_layer": (parse_audio_layer, "a layer index, last, or weighted"),
    "face_layer": (parse_face_layer, "a block index, last, or weighted"),
}
"""Other fields whose text has its own parser (their type is a union the annotation cannot say how to read)."""
SINGLE_IN_SWEEP = {"out", "resume", "device", "plots", "face", "pose", "audio", "allow_incomplete", "finetune", "stream"}
"""Fields a sweep takes once for every run (they name files, the store's data or the machine, not a training
choice); every other field except the flags (bools) takes a comma list, a grid axis."""
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class ConfigOption:
    """One TrainConfig field as a command-line option."""

    name: str
    """The field name."""
    flags: tuple[str, ...]
    """Option names, e.g. ("--modalities", "-m")."""
    kind: str
    """bool | int | float | str | int? | str? (None allowed) | tuple (text parsed by TUPLES) | parsed (by PARSED)."""
    default: Any
    """The field's default (tuples as their text, e.g. "face")."""
    help: str
    """The field's docstring on one line."""

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def sweepable(self) -> bool:
        """True when `fer sweep` takes a list of values (a grid axis) for it."""
        return self.name not in SINGLE_IN_SWEEP and self.kind != "bool"

    def parse(self, text: str) -> Any:
        """One value from its text; FerError naming the flag when it is not one."""
        text = str(text).strip()
        try:
            if self.kind == "tuple":
                return TUPLES[self.name][0](text)
            if self.kind == "parsed":
                return PARSED[self.name][0](text)
            if self.kind in ("int?", "str?") and text.lower() in ("none", "last", ""):
                return None
            if self.kind in ("int", "int?"):
                return int(text)
            if self.kind == "float":
                return float(text)
            if self.kind == "bool":
                if text.lower() in TRUE + FALSE:
                    return text.lower() in TRUE
                raise FerError(f"{self.flag} {text!r} is not true or false")
        except ValueError:
            what = "an integer" if self.kind.startswith("int") else "a number"
            raise FerError(f"{self.flag} {text!r} is not {what}; give a value or a list like 1,2") from None
        return text

    def parse_list(self, text: str) -> list[Any]:
        """A sweep's values: separated by ';' for tuple fields (whose single values hold commas), else ','."""
        sep = ";" if self.kind == "tuple" else ","
        values = [self.parse(t) for t in str(text).split(sep) if t.strip()]
        if not values:
            raise FerError(f"{self.flag} is empty; give a value or a list")
        return values


def _kind(tp: Any) -> str:
    args = set(typing.get_args(tp))
    if tp is bool:
        return "bool"
    if tp in (int, float, str):
        return tp.__name__
    if typing.get_origin(tp) is tuple:
        return "tuple"
    if type(None) in args and len(args) == 2:
        inner = (args - {type(None)}).pop()
        if inner in (int, str):
            return f"{inner.__name__}?"
    raise TypeError(f"TrainConfig field of type {tp!r} has no command-line form: add one in fer.train.options")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string right under each field), on one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@lru_cache(maxsize=4)
def config_options(cls: type = TrainConfig) -> tuple[ConfigOption, ...]:
    """Every field of TrainConfig (or a subclass) as an option, in field order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in fields(cls):
        kind = "parsed" if f.name in PARSED else _kind(hints[f.name])
        default = f.default if f.default is not MISSING else None
        if kind == "tuple":
            default = ",".join(map(str, default)) if default else ("all" if f.name == "folds" else "none")
        flag = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        flags = (flag, SHORT[f.name]) if f.name in SHORT else (flag,)
        # docstrings speak Python (``x``, None: unset); the command line does not
        help_ = docs.get(f.name, "").replace("``", "").replace("None: ", "default: ")
        if kind in ("tuple", "parsed"):
            help_ = f"{help_} Form: {(TUPLES if kind == 'tuple' else PARSED)[f.name][1]}."
        out.append(ConfigOption(f.name, flags, kind, default, help_))
    return tuple(out)


def option(name: str) -> ConfigOption:
    for o in config_options():
        if o.name == name:
            return o
    raise FerError(f"TrainConfig has no setting {name!r}")


def config_from_options(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from option values (tuples as text or already parsed; anything else typed)."""
    kw = {}
    for o in config_options():
        if o.name not in values:
            continue
        v = values[o.name]
        if o.kind == "tuple":
            v = tuple(v) if isinstance(v, (tuple, list)) else o.parse(v)  # text, or a sweep's parsed value
        elif o.kind == "parsed" and isinstance(v, str):
            v = o.parse(v)
        elif v is not None and o.kind in ("str", "str?"):
            v = str(v)
        kw[o.name] = v
    return TrainConfig(**kw)


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
