"""Command-line options derived from a settings dataclass: one field with its docstring is one option.

A field becomes ``--the-field``, typed from its annotation, with its docstring (the string right under it) as
help. Each stage says only what a field's type cannot: another flag name, short flags, the parser of a text
whose type is a tuple or a union, which fields a sweep takes as a grid axis. ``fer.train.options`` does so for
TrainConfig (`fer train`, `fer sweep`), ``fer.extract.config`` for ExtractConfig and FacesConfig (`fer
extract`, `fer data faces`); the CLI turns the resulting ConfigOptions into its Typer options.

Why here, at the top of the package beside cli.py: both stages need this machinery, and neither may hold it
for the other (train never imports extract; a module of extract used by train would break that), nor may cache
(the store both stages share imports neither, and this is no part of a store). It imports nothing of fer but
``fer.cache.errors`` and knows nothing of Typer, which only the CLI imports.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any

from fer.cache.errors import FerError

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
Parser = tuple[Callable[[str], Any], str]
"""A text's parser and the form of the text, said in the help (e.g. "face[,pose][,audio]")."""


@dataclass(frozen=True)
class ConfigOption:
    """One settings field as a command-line option."""

    name: str
    """The field name."""
    flags: tuple[str, ...]
    """Option names, e.g. ("--modalities", "-m")."""
    kind: str
    """bool | int | float | str | int? | float? | str? (None allowed) | tuple | parsed (by ``parser``)."""
    default: Any
    """The field's default (tuples as their text, e.g. "face"); None for a required field."""
    help: str
    """The field's docstring on one line."""
    parser: Callable[[str], Any] | None = None
    """Reads the text of a tuple or parsed field."""
    sweepable: bool = False
    """`fer sweep` takes a list of values (a grid axis) for it."""
    required: bool = False
    """The field has no default: the option must be given."""

    @property
    def flag(self) -> str:
        return self.flags[0]

    def parse(self, text: str) -> Any:
        """One value from its text; FerError naming the flag when it is not one."""
        text = str(text).strip()
        try:
            if self.kind in ("tuple", "parsed"):
                return self.parser(text)
            if self.kind.endswith("?") and text.lower() in ("none", "last", ""):
                return None
            if self.kind in ("int", "int?"):
                return int(text)
            if self.kind in ("float", "float?"):
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


def field_kind(tp: Any) -> str:
    """The option kind of a field's type; TypeError for a type that has no command-line form."""
    args = set(typing.get_args(tp))
    if tp is bool:
        return "bool"
    if tp in (int, float, str):
        return tp.__name__
    if typing.get_origin(tp) is tuple:
        return "tuple"
    if type(None) in args and len(args) == 2:
        inner = (args - {type(None)}).pop()
        if inner in (int, float, str):
            return f"{inner.__name__}?"
    raise TypeError(f"a field of type {tp!r} has no command-line form: give it a parser")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string under each field), on one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def options_of(cls: type, *, flags: dict[str, str] | None = None, short: dict[str, str] | None = None,
               tuples: dict[str, Parser] | None = None, parsed: dict[str, Parser] | None = None,
               empty: dict[str, str] | None = None, single: set[str] | frozenset[str] | None = None,
               ) -> tuple[ConfigOption, ...]:
    """Every field of the dataclass ``cls`` as an option, in field order.

    ``flags``: another flag than --the-field; ``short``: a short flag; ``tuples``/``parsed``: the parser and
    text form of tuple fields and of other fields read from text by a parser; ``empty``: the text of an empty
    tuple default (else "none"); ``single``: with a sweep, the fields it takes once (the others, flags aside,
    are grid axes); None: no sweep."""
    flags, short, tuples, parsed, empty = flags or {}, short or {}, tuples or {}, parsed or {}, empty or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in fields(cls):
        kind = "parsed" if f.name in parsed else field_kind(hints[f.name])
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else (f.default if f.default is not MISSING else f.default_factory())
        if kind == "tuple":
            default = ",".join(map(str, default)) if default else empty.get(f.name, "none")
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        names = (flag, short[f.name]) if f.name in short else (flag,)
        # docstrings speak Python (``x``, None: unset); the command line does not
        help_ = docs.get(f.name, "").replace("``", "").replace("None: ", "default: ")
        reader = tuples.get(f.name) if kind == "tuple" else parsed.get(f.name)
        if reader is not None:
            help_ = f"{help_} Form: {reader[1]}."
        sweepable = single is not None and f.name not in single and kind != "bool"
        out.append(ConfigOption(f.name, names, kind, default, help_, reader[0] if reader else None, sweepable,
                                required))
    return tuple(out)


def config_from(cls: type, options: tuple[ConfigOption, ...], values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from option values, as text or already typed (tuple and parsed fields: parsed);
    fields not in ``values`` keep their defaults."""
    kw = {}
    for o in options:
        if o.name not in values:
            continue
        v = values[o.name]
        if o.kind == "tuple":
            v = tuple(v) if isinstance(v, (tuple, list)) else o.parse(v)  # text, or a sweep's parsed value
        elif v is not None and o.kind in ("str", "str?"):
            v = str(v)
        elif isinstance(v, str):  # a number, flag or parsed field given as text
            v = o.parse(v)
        kw[o.name] = v
    return cls(**kw)
