"""Typed, nested, frozen dataclass configs with YAML presets and dotted CLI overrides.

    cfg = parse_cli(PretrainConfig, argv, presets_dir)   # --config base.yaml  a.b=3  c=[1,2]

Unknown keys and wrong types fail with the dotted name of the field, so a typo in a 50-field
config is an error, not a silently ignored setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


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
    """Build ``cls`` from a (partial) mapping; missing fields keep their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(f'{where}{k}' for k in sorted(unknown))}; "
                          f"valid: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], f"{where}{f.name}")
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
    """Apply ``a.b.c=value`` strings (values parsed as YAML: 3, 1e-3, true, [1,2], null)."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        out = _merge(out, nested)
    return out


def load_config(cls: type[T], config_file: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    data: dict[str, Any] = {}
    if config_file:
        text = Path(config_file).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: top level must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides or []))


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


def parse_cli(cls: type[T], argv: list[str] | None, description: str,
              presets_dir: str | Path | None = None,
              extra: typing.Callable[[argparse.ArgumentParser], None] | None = None
              ) -> tuple[T, argparse.Namespace]:
    """``prog [--config FILE|PRESET] [flags] key.path=value ...`` -> (config, parsed flags)."""
    presets = sorted(p.stem for p in Path(presets_dir).glob("*.yaml")) if presets_dir else []
    epilog = ("overrides (key.path=value):\n" + "\n".join(describe(cls)) +
              (f"\n\npresets: {', '.join(presets)}" if presets else ""))
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file, or the name of a shipped preset")
    if extra:
        extra(ap)
    ap.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = ap.parse_args(argv)
    cfg_file = args.config
    if cfg_file and presets_dir and not Path(cfg_file).exists():
        cand = Path(presets_dir) / f"{cfg_file}.yaml"
        if not cand.exists():
            ap.error(f"--config {cfg_file!r}: no such file or preset ({', '.join(presets)})")
        cfg_file = cand
    try:
        return load_config(cls, cfg_file, args.overrides), args
    except ConfigError as e:
        ap.error(str(e))
        raise  # unreachable: ap.error exits
