"""Command-line options made from a dataclass's fields, so a setting is defined once.

Each field's ``metadata`` holds its ``help`` and, where they differ from the defaults, its
``flag`` (default: ``--`` and the name with dashes), ``cli`` (False: not on the command line),
``low``/``high`` bounds (shown at the end of the help), ``metavar`` and ``envvar`` (an
environment variable read when the option is not given); the field's default is the
option's. ``s3t serve`` builds its options from ``s3t.service.settings.Settings``, and
``s3t train`` and ``s3t demo`` from ``s3t.config.S3TConfig``, both here. What only the command
line does differently (a list given as comma-separated text, a default computed from other
options, help about other flags) is an ``Adjust`` kept beside the command.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer

_KEEP = object()  # Adjust.default: the field's own default


@dataclass(frozen=True)
class Adjust:
    """How the command line differs from a field: the option's type (``kind``), its default
    (``None`` when other options decide it), help before (``lead``) or after (``extra``)
    the field's, and the parameter's name (``param``) when its value is not the field's."""

    kind: Any = None
    default: Any = _KEEP
    lead: str = ""
    extra: str = ""
    param: str | None = None


def on_command_line(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("cli", True))


def option_flag(f: dataclasses.Field) -> str:
    """The option of field ``f``: its ``flag`` metadata, else ``--`` and its dashed name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flags(cls: type) -> dict[str, str]:
    """Field name -> option, for every field of ``cls`` on the command line."""
    return {f.name: option_flag(f) for f in dataclasses.fields(cls) if on_command_line(f)}


def bounds(metadata: Mapping[str, Any]) -> str:
    """The valid range of a numeric field, as its option's help ends."""
    low, high = metadata.get("low"), metadata.get("high")
    if low is None and high is None:
        return ""
    if high is None:
        return f" (>= {low:g})"
    return f" ({low:g} to {high:g})" if low is not None else f" (<= {high:g})"


def field_options(cls: type, names: Iterable[str] | None = None,
                  adjust: Mapping[str, Adjust] | None = None) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of ``cls`` on the command line (only those in
    ``names`` if given), in field order: flag, help and default from the field."""
    adjust = adjust or {}
    hints = typing.get_type_hints(cls)
    wanted = None if names is None else set(names)
    params = []
    for f in dataclasses.fields(cls):
        if not on_command_line(f) or (wanted is not None and f.name not in wanted):
            continue
        adj = adjust.get(f.name, Adjust())
        text = " ".join(part for part in (adj.lead, f.metadata["help"] + bounds(f.metadata),
                                          adj.extra) if part)
        option = typer.Option(option_flag(f), help=text, metavar=f.metadata.get("metavar"),
                              envvar=f.metadata.get("envvar"), show_default=True)
        default = f.default if adj.default is _KEEP else adj.default
        kind = hints[f.name] if adj.kind is None else adj.kind
        params.append(inspect.Parameter(adj.param or f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=default, annotation=Annotated[kind, option]))
    if wanted is not None and len(params) != len(wanted):
        raise KeyError(f"{cls.__name__} has no command-line field among {sorted(wanted)}")
    return params


def with_options(command: Callable[..., Any], options: list[inspect.Parameter],
                 before: str | None = "as_json") -> Callable[..., Any]:
    """Give ``command`` (which takes the options as ``**kwargs``) a signature typer reads:
    its own parameters with ``options`` inserted before the one named ``before``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = next((i for i, p in enumerate(own) if p.name == before), len(own))
    after = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at:]]
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*own[:at], *options, *after])
    return command
