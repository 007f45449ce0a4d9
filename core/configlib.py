"""Typed configuration: YAML presets plus dotted ``key=value`` overrides, validated by pydantic.

Every config in sawt is a tree of frozen pydantic models that forbid unknown keys. This module is the one
place that turns YAML files and command-line overrides into such a tree, and turns validation failures
into errors that name the offending dotted key.

A preset may start from another with ``base: <preset name or path>``; the keys it sets are merged over the
base recursively.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from core.errors import ConfigError

BASE_KEY = "base"

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class Frozen(pydantic.BaseModel):
    """Base class for config sections: immutable, unknown keys rejected, assignments validated."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``a.b.c=value`` and parses the value as YAML, so ``3`` is an int and ``[1, 2]`` a list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {err}") from err
    return key, value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Sets ``tree[a][b][c] = value`` for ``a.b.c``, creating intermediate mappings."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Returns ``base`` with ``top`` merged over it; mappings merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_source(source: str | Path, presets_dir: Path) -> Path:
    """A preset name (``tiny``) resolves to ``presets_dir/tiny.yaml``; anything else is a file path."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = presets_dir / f"{source}.yaml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in presets_dir.glob("*.yaml")))
        raise ConfigError(f"unknown preset {source!r}; presets: {known} (or give a path to a YAML file)")
    return preset


def load_yaml_tree(source: str | Path, presets_dir: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a YAML config, following ``base:`` chains, and returns the merged raw mapping."""
    path = resolve_source(source, presets_dir).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through 'base:'")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    base = tree.pop(BASE_KEY, None)
    if base is None:
        return tree
    # A base with a .yaml suffix is a file next to this one; otherwise it names a preset.
    base_source = path.parent / str(base) if Path(str(base)).suffix else str(base)
    return deep_merge(load_yaml_tree(base_source, presets_dir, (*_seen, path)), tree)


def format_validation_error(err: pydantic.ValidationError, where: str) -> str:
    lines = [f"invalid config ({where}):"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def build(cls: type[ModelT], tree: Mapping[str, Any], where: str = "config") -> ModelT:
    """Validates a raw mapping into ``cls``, raising ConfigError that names each bad key."""
    try:
        return cls.model_validate(tree)
    except pydantic.ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def load(
    cls: type[ModelT],
    source: str | Path | None,
    overrides: Sequence[str] = (),
    presets_dir: Path | None = None,
) -> ModelT:
    """Loads ``cls`` from a preset name or YAML path (or defaults when None), then applies overrides."""
    tree: dict[str, Any] = {}
    where = "defaults"
    if source is not None:
        if presets_dir is None:
            raise ConfigError("a preset name needs a presets directory")
        tree = load_yaml_tree(source, presets_dir)
        where = str(source)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    if overrides:
        where += " + overrides"
    return build(cls, tree, where)


def dump(config: pydantic.BaseModel) -> str:
    """The config as YAML, in a form that `load` reads back to an equal object."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def undocumented_fields(cls: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of fields without a description, recursing into nested models (for a test)."""
    missing: list[str] = []
    for name, field in cls.model_fields.items():
        dotted = f"{prefix}{name}"
        if not (field.description and field.description.strip()):
            missing.append(dotted)
        for sub in _nested_models(field.annotation):
            missing.extend(undocumented_fields(sub, f"{dotted}."))
    return missing


def _nested_models(annotation: Any) -> Iterable[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _nested_models(arg)
