"""Command-line flags generated from a flat typed config model, so a setting is declared once.

`add_flags` gives every field of a pydantic model a ``--field-name`` flag whose type, choices and help (its
description and default) come from the field; `given` returns the fields the command line set. A command
then builds the model from defaults, a YAML file, ``key=value`` overrides and these flags
(`core.configlib.load` plus `given`), and no field is re-typed or mapped by hand.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

# The Namespace attributes of generated flags carry this prefix, so they never collide with the command's own.
DEST_PREFIX = "field__"


def _scalar(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(type for argparse, choices) of a field annotation; ``X | None`` is X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no flag for a union of {args}")
        return _scalar(args[0])
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if annotation in (int, float, str, bool):
        return annotation, None
    raise TypeError(f"no flag for a field of type {annotation!r}")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[pydantic.BaseModel],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """Adds ``--field-name`` for every field of ``model`` but ``skip`` (booleans get ``--no-field-name``).

    Args:
        aliases: field -> further option strings for the same flag (older spellings kept working).
    """
    aliases = aliases or {}
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind, choices = _scalar(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else default
        help_text = f"{field.description or name} (default: {shown})".replace("%", "%%")
        options = [flag_name(name), *aliases.get(name, ())]
        common: dict[str, Any] = dict(dest=DEST_PREFIX + name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(*options, action=argparse.BooleanOptionalAction, **common)
        else:
            metavar = None if choices else name.upper()
            parser.add_argument(*options, type=kind, choices=choices, metavar=metavar, **common)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The fields whose generated flags the command line set: ``{field: value}``."""
    return {k[len(DEST_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(DEST_PREFIX)}
