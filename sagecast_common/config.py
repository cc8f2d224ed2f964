"""Typed run configs: a dataclass with working defaults, named presets, `key=value` overrides.

    cfg = parse_config(Config, sys.argv[1:], presets=PRESETS, prog="python -m stage1_jea.train")

Arguments are `--preset NAME` (or `preset=NAME`) and `key=value` pairs. Unknown keys and values that do
not parse as the field's type fail at once with the list of valid keys. `--help` prints every field with
its default and the presets. Field help comes from `field(metadata={"help": ...})`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from typing import Any


class ConfigError(ValueError):
    pass


def _coerce(name: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, text, inner)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [t for t in text.replace(" ", "").split(",") if t]
        values = [_coerce(name, t, inner) for t in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={text!r}: expected true/false")
    try:
        return tp(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={text!r}: expected {getattr(tp, '__name__', tp)}") from None


def _check_value(name: str, value: Any, tp: Any) -> Any:
    """Validate a value given as Python (from a preset or a saved config), converting lists to tuples."""
    if isinstance(value, str) and tp is not str and typing.get_origin(tp) is None:
        return _coerce(name, value, tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_value(name, value, inner)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        out = [_check_value(name, v, inner) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is not tp:
        raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}")
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_config(cls, overrides: dict[str, Any]):
    """Instantiate `cls` from a dict of overrides, refusing unknown keys and wrong types."""
    types_ = _field_types(cls)
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(types_)}")
    checked = {k: _check_value(k, v, types_[k]) for k, v in overrides.items()}
    return cls(**checked)


def config_to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def help_text(cls, presets: dict[str, dict], prog: str) -> str:
    doc = (cls.__doc__ or "").strip()
    lines = [f"usage: {prog} [--preset NAME] [key=value ...]", ""]
    if doc:
        lines += [doc, ""]
    lines.append("presets: " + ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items()) or 'defaults'})"
                                         for k, v in presets.items()))
    lines += ["", "keys (default):"]
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tname = getattr(types_[f.name], "__name__", str(types_[f.name]))
        help_ = f.metadata.get("help", "")
        lines.append(f"  {f.name}={default!r}  [{tname}]  {help_}")
    return "\n".join(lines)


def parse_config(cls, argv: list[str], *, presets: dict[str, dict], prog: str, default_preset: str | None = None):
    """Parse `[--preset NAME] [key=value ...]` (plus flags listed as bool fields, e.g. `--force-schedule`)."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, presets, prog))
        sys.exit(0)
    preset = default_preset
    pairs: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if arg == "--preset":
            preset = next(it, None)
            if preset is None:
                raise ConfigError("--preset needs a name")
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        elif arg.startswith("--") and "=" not in arg:
            pairs[arg[2:].replace("-", "_")] = "true"
        elif "=" in arg:
            key, value = arg.lstrip("-").split("=", 1)
            key = key.replace("-", "_")
            if key == "preset":
                preset = value
            else:
                pairs[key] = value
        else:
            raise ConfigError(f"cannot read argument {arg!r}: use key=value (see --help)")
    overrides: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; available: {sorted(presets)}")
        overrides.update(presets[preset])
    types_ = _field_types(cls)
    unknown = sorted(set(pairs) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(types_)}")
    overrides.update({k: _coerce(k, v, types_[k]) for k, v in pairs.items()})
    return build_config(cls, overrides)
