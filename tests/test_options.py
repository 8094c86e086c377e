"""fer.options: a settings dataclass's fields and docstrings become command-line options (both stages)."""

from dataclasses import dataclass

import pytest

from fer.cache.errors import FerError
from fer.options import config_from, field_docs, field_kind, options_of


def halves(text):
    return tuple(float(t) / 2 for t in text.split("+"))


@dataclass
class Toy:
    """A stage's settings."""

    name: str
    """What to call it (``required``)."""
    rate: float | None = None
    """Steps per second; None: as fast as it goes."""
    parts: tuple[float, ...] = ()
    """The parts, halved."""
    level: int | str = 3
    """A level or max."""
    loud: bool = True
    """Say it."""


def test_every_field_is_an_option_typed_and_helped_by_its_docstring():
    level = (lambda t: t if t == "max" else int(t), "N or max")
    opts = {o.name: o for o in options_of(Toy, short={"name": "-n"}, flags={"loud": "--shout"},
                                          tuples={"parts": (halves, "a+b")}, parsed={"level": level})}
    assert list(opts) == ["name", "rate", "parts", "level", "loud"]
    name, rate, parts, level, loud = opts.values()
    assert name.required and name.default is None and name.flags == ("--name", "-n") and not name.sweepable
    assert name.help == "What to call it (required)."  # written for the command line, not as Python
    assert rate.kind == "float?" and rate.help == "Steps per second; default: as fast as it goes."
    assert rate.parse("2.5") == 2.5 and rate.parse("none") is None
    assert parts.kind == "tuple" and parts.default == "none" and parts.help == "The parts, halved. Form: a+b."
    assert parts.parse("1+3") == (0.5, 1.5) and level.parse("max") == "max" and level.parse("4") == 4
    assert loud.flags == ("--shout",) and loud.default is True and loud.parse("no") is False
    with pytest.raises(FerError, match="--rate 'x' is not a number"):
        rate.parse("x")
    cfg = config_from(Toy, tuple(opts.values()), {"name": "a", "parts": "2+4", "level": "max", "rate": None})
    assert cfg == Toy(name="a", parts=(1.0, 2.0), level="max")


def test_a_sweep_takes_lists_of_every_field_but_the_single_ones_and_flags():
    opts = {o.name: o for o in options_of(Toy, single={"name"}, tuples={"parts": (halves, "a+b")},
                                          parsed={"level": (int, "N")})}
    assert [n for n, o in opts.items() if o.sweepable] == ["rate", "parts", "level"]
    assert opts["parts"].parse_list("2;2+4") == [(1.0,), (1.0, 2.0)]
    assert opts["rate"].parse_list("1,2") == [1, 2]


def test_a_type_without_a_command_line_form_says_so():
    @dataclass
    class Odd:
        pairs: dict[str, int] | None = None
        """No text form."""

    assert field_docs(Odd) == {"pairs": "No text form."}
    with pytest.raises(TypeError, match="no command-line form"):
        options_of(Odd)
    assert field_kind(int | None) == "int?" and field_kind(bool) == "bool"


def test_the_command_line_starts_without_torch():
    """`fer --help` and a bad argument come back fast: the CLI, its options and the sweep's planning import no
    torch (nor transformers, timm, ray), only the command that runs does."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "timm", "ray")
    code = ("import sys, fer.cli, fer.train.options, fer.extract.config; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
