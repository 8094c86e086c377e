"""The Typer half of ``fer.options``: settings-dataclass options (ConfigOptions) as Typer options, and a
command whose signature is built from them, so `fer train`, `fer sweep`, `fer extract` and `fer data faces`
declare no option by hand. Only the CLI imports this module (and with it Typer)."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.core import TyperCommand


def options_command(typer_app: typer.Typer, name: str, options, *, args: list[inspect.Parameter],
                    sweep: bool = False, skip: tuple[str, ...] = (), **command_kw: Any):
    """Register a command whose options are a settings dataclass's fields (``options()``: fer.options'
    ConfigOptions, each with its type, flags and docstring); the decorated body receives ``args`` and the
    option values as keyword arguments. With ``sweep``, sweepable options take a comma list (a grid axis).
    ``command_kw`` go to Typer's ``command`` (e.g. ``cls``)."""

    def typed(o) -> tuple[Any, Any]:
        if sweep and o.sweepable:
            help_ = (f"{escape(o.help)} One value or a comma list (';' for {o.flag[2:]}): a grid axis. "
                     f"[default: {o.default}]")
            return str | None, typer.Option(None, *o.flags, help=help_, show_default=False)
        if o.kind == "bool":
            flags = (f"{o.flag}/--no-{o.flag[2:]}",) if o.default else o.flags
            return bool, typer.Option(o.default, *flags, help=escape(o.help))
        tp = {"int": int, "float": float, "str": str, "int?": int | None, "float?": float | None,
              "str?": str | None, "tuple": str, "parsed": str | None}[o.kind]
        return tp, typer.Option(... if o.required else o.default, *o.flags, help=escape(o.help))

    def register(body):
        params = list(args)
        taken = {p.name for p in params}
        for o in options():
            if o.name in taken or o.name in skip:
                continue
            tp, default = typed(o)
            params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=tp,
                                            default=default))

        def command(**kw: Any) -> None:
            body(**kw)

        command.__signature__ = inspect.Signature(params)
        command.__doc__ = body.__doc__
        command.__name__ = body.__name__
        typer_app.command(name, **command_kw)(command)
        return body

    return register


def argument(name: str, tp: Any, help_: str) -> inspect.Parameter:
    """A required positional argument of a command built by options_command."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=tp,
                             default=typer.Argument(..., help=help_))


def escape(text: str) -> str:
    """Help text safe for Typer's rich markup."""
    return text.replace("[", "\\[")  # rich markup would read [0, 1) as a tag


class FamiliesInHelp(TyperCommand):
    """A command whose option help may say ``{families}`` (or ``{fetchable families}``): the backbone
    families of fer.extract.backbones.families, filled in when the help is shown (the table imports torch,
    which `fer` does not at start-up, so bad arguments come back fast)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from fer.extract.backbones.families import backbone_help

        for p in self.params:
            if isinstance(getattr(p, "help", None), str) and "families}" in p.help:
                p.help = p.help.replace("{fetchable families}", backbone_help(fetchable=True)).replace(
                    "{families}", backbone_help())
        super().format_help(ctx, formatter)
