"""Typed run configs: a dataclass with working defaults, named presets, `key=value` or `--key value` overrides.

    cfg = parse_config(Config, sys.argv[1:], presets=PRESETS, prog="sagecast-stage1-train")

Arguments are `--preset NAME` (or `preset=NAME`) and overrides written `key=value`, `--key=value` or
`--key value` (a bool field alone, `--force-schedule`, means true). Fields declared with `option(...)` carry
a one-line help and bounds (`ge`, `gt`); `Literal[...]` fields accept only their choices. Unknown keys fail
with a "did you mean", bad values name what is expected; all as ConfigError, a UserError (the CLI prints one
line, exit 2).

A config class may say which of its options do nothing under the others (`unused_options()`, e.g. the JEPA
width when variant=detr). Such an option is refused when its value differs from the default (passing every
key at its default, as a saved config does, stays valid); a preset's value for it is dropped instead, so one
preset serves every variant.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from typing import Any, Literal

from sagecast_common.cli import UserError

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class ConfigError(UserError):
    """A config the CLI refuses: unknown key, wrong type, out of bounds, or an option that would do nothing."""


def option(default: Any, help: str = "", *, ge: float | None = None, gt: float | None = None) -> Any:
    """A config field with a one-line help and optional bounds (value >= ge, value > gt)."""
    return dataclasses.field(default=default, metadata={"help": help, "ge": ge, "gt": gt})


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(name: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if text not in args:
            raise ConfigError(f"{name}={text!r}: expected {_type_name(tp)}")
        return text
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, text, inner)
    if origin in (tuple, list):
        inner = args[0] if args else str
        values = [_coerce(name, t, inner) for t in text.replace(" ", "").split(",") if t]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        if text.lower() not in _BOOL:
            raise ConfigError(f"{name}={text!r}: expected true/false")
        return _BOOL[text.lower()]
    try:
        return tp(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={text!r}: expected {_type_name(tp)}") from None


def _check_value(name: str, value: Any, tp: Any) -> Any:
    """Validate a value given as Python (from a preset or a saved config), converting lists to tuples."""
    origin = typing.get_origin(tp)
    if isinstance(value, str) and tp is not str and origin is None:
        return _coerce(name, value, tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}={value!r}: expected {_type_name(tp)}")
        return value
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


def _check_bounds(f: dataclasses.Field, value: Any) -> None:
    ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
    if value is None or isinstance(value, (str, bool, tuple, list)):
        return
    if ge is not None and not value >= ge:
        raise ConfigError(f"{f.name}={value!r}: must be >= {ge}")
    if gt is not None and not value > gt:
        raise ConfigError(f"{f.name}={value!r}: must be > {gt}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(keys: list[str], valid: dict[str, Any]) -> ConfigError:
    key = keys[0]
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else f"see --help for the {len(valid)} valid keys"
    return ConfigError(f"unknown config key {key!r}: {hint}")


def build_config(cls, overrides: dict[str, Any]):
    """Instantiate `cls` from a dict of overrides, refusing unknown keys, wrong types and out-of-bounds values."""
    types_ = _field_types(cls)
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise _unknown(unknown, types_)
    cfg = cls(**{k: _check_value(k, v, types_[k]) for k, v in overrides.items()})
    for f in dataclasses.fields(cls):
        _check_bounds(f, getattr(cfg, f.name))
    return cfg


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def reject_unused(cfg) -> None:
    """ConfigError for an option `cfg.unused_options()` names whose value differs from its default."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(cfg)}
    for key, why in getattr(cfg, "unused_options", dict)().items():
        value = getattr(cfg, key)
        if value != defaults[key]:
            raise ConfigError(f"{key}={value!r} would do nothing: {why}")


def config_to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def help_text(cls, presets: dict[str, dict], prog: str) -> str:
    doc = (cls.__doc__ or "").strip()
    lines = [f"usage: {prog} [--preset NAME] [key=value | --key value ...]", ""]
    if doc:
        lines += [doc, ""]
    lines.append("presets: " + ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items()) or 'defaults'})"
                                         for k, v in presets.items()))
    lines += ["", "options (key=value or --key value; later ones win over the preset):"]
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        bounds = "".join(f", {op} {f.metadata[k]}" for k, op in (("ge", ">="), ("gt", ">"))
                         if f.metadata.get(k) is not None)
        lines.append(f"  --{f.name.replace('_', '-')}  [{_type_name(types_[f.name])}{bounds}]  "
                     f"{f.metadata.get('help', '')} (default: {default!r})")
    return "\n".join(lines)


def parse_config(cls, argv: list[str], *, presets: dict[str, dict], prog: str, default_preset: str | None = None):
    """Parse `[--preset NAME]` and overrides (`key=value`, `--key=value`, `--key value`, `--bool-flag`)."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, presets, prog))
        sys.exit(0)
    types_ = _field_types(cls)
    preset = default_preset
    pairs: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if "=" in arg:
            key, value = arg.split("=", 1)
            if key.startswith("-") and not key.startswith("--"):
                raise ConfigError(f"cannot read argument {arg!r}: use key=value or --key value (see --help)")
            key = key.removeprefix("--").replace("-", "_")
        elif arg.startswith("--"):
            key = arg[2:].replace("-", "_")
            if key != "preset" and key not in types_:
                raise _unknown([key], types_)
            takes_word = key == "preset" or types_[key] is not bool
            if takes_word or (args and args[0].lower() in _BOOL):
                if not args:
                    raise ConfigError(f"{arg} needs a value (see --help)")
                value = args.pop(0)
            else:
                value = "true"
        else:
            raise ConfigError(f"cannot read argument {arg!r}: use key=value or --key value (see --help)")
        if key == "preset":
            preset = value
        else:
            pairs[key] = value
    overrides: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(sorted(presets))}")
        overrides.update(presets[preset])
    unknown = sorted(set(pairs) - set(types_))
    if unknown:
        raise _unknown(unknown, types_)
    overrides.update({k: _coerce(k, v, types_[k]) for k, v in pairs.items()})
    cfg = build_config(cls, overrides)
    from_preset = set(presets.get(preset, {})) - set(pairs) if preset is not None else set()
    dropped = {f.name: _default(f) for f in dataclasses.fields(cls)
               if f.name in from_preset and f.name in getattr(cfg, "unused_options", dict)()}
    cfg = dataclasses.replace(cfg, **dropped) if dropped else cfg
    reject_unused(cfg)
    return cfg
