"""Typed, nested, frozen dataclass configs with YAML presets and dotted CLI overrides.

    cfg = load_config(PretrainConfig, "base", ["a.b=3", "c=[1,2]"], presets_dir=PRESETS_DIR)

Unknown keys and wrong types fail with the dotted name of the field, so a typo in a 50-field
config is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ankh_platform.core.samples import repo_root

T = TypeVar("T")
PRESETS_DIR = repo_root() / "jobs" / "configs"  # shipped YAML presets (pretrain-tiny, ...)


class ConfigError(ValueError):
    pass


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, f"{where}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        vals = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(vals) if origin is tuple else vals
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string, not a float
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return str(value) if isinstance(value, (int, float)) else _bad(where, "a string", value)
        return value
    return value


def _bad(where: str, what: str, value: Any) -> Any:
    raise ConfigError(f"{where}: expected {what}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from a (partial) mapping; missing fields keep their defaults -- also inside a
    nested config whose default is not its class's (``data.rows=16`` keeps the other ``data``
    settings of the parent's default, as ``--help`` lists them)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{where}{k}' for k in sorted(unknown))}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            if isinstance(value, dict) and dataclasses.is_dataclass(f.default):
                value = _merge(to_dict(f.default), value)
            kwargs[f.name] = _coerce(hints[f.name], value, f"{where}{f.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML: 3, 1e-3, true, [1,2], null).

    A mapping value merges key by key into what is there (``data={rows: 16}`` keeps the other
    ``data`` keys), except an empty one: ``key={}`` clears that mapping -- the only way to drop,
    e.g., a preset file's ``model_overrides`` from the command line.
    """
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        if value == {}:
            out = _clear(out, parts)
            continue
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        out = _merge(out, nested)
    return out


def _clear(data: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """``data`` with the mapping at ``parts`` replaced by ``{}`` (parents copied, not mutated)."""
    out = dict(data)
    head = out.get(parts[0])
    out[parts[0]] = _clear(head if isinstance(head, dict) else {}, parts[1:]) if parts[1:] else {}
    return out


def nest(fields: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}`` (dotted names to a nested mapping)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        for part in reversed(key.split(".")):
            value = {part: value}
        out = _merge(out, value)
    return out


def find_preset(name: str | Path, presets_dir: str | Path | None = None) -> Path:
    """A YAML config file: ``name`` itself if it exists, else a shipped preset of that name in
    ``presets_dir`` (``jobs/configs``): ``<name>.yaml`` or ``<kind>-<name>.yaml``, so ``tiny``
    finds ``pretrain-tiny.yaml``. Raises ConfigError naming the presets there."""
    path = Path(name)
    if path.exists():
        return path
    d = Path(presets_dir) if presets_dir else PRESETS_DIR
    cands = [d / f"{name}.yaml", *sorted(d.glob(f"*-{name}.yaml"))]
    found = [c for c in cands if c.exists()]
    if len(found) == 1 or (found and found[0] == cands[0]):
        return found[0]
    names = ", ".join(sorted(p.stem for p in d.glob("*.yaml")))
    raise ConfigError(f"config {str(name)!r}: no such file or preset ({names or 'none'})")


def load_config(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
    presets_dir: str | Path | None = None,
) -> T:
    """``cls`` from a YAML file (or, with ``presets_dir``, a preset name), then ``key.path=value``
    overrides, then explicit ``fields`` (dotted names: a job's flags) -- later ones win; mappings
    merge key by key. This is the one path from a command line to a config object."""
    data: dict[str, Any] = {}
    if config_file:
        path = find_preset(config_file, presets_dir) if presets_dir else Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(config_file)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, _merge(data, nest(fields or {})))


def describe(cls: type, prefix: str = "", default: Any = None) -> list[str]:
    """One line per leaf field: dotted name, type and default (for ``--help``)."""
    lines = []
    default = cls() if default is None else default  # nested: the parent's default value
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, f"{prefix}{f.name}.", getattr(default, f.name))
        else:
            tname = getattr(tp, "__name__", str(tp)).replace("typing.", "")
            lines.append(f"  {prefix}{f.name} ({tname}) = {to_dict(getattr(default, f.name))!r}")
    return lines
