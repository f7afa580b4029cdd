"""Typed, layered, locked configuration: frozen dataclasses plus checked `--set` overrides."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Literal

from artifacts.errors import UserError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse(tp: Any, text: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(arg, text, key)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if text in args:
            return text
        raise UserError(f"bad value {text!r} for {key}", "--set", f"use one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        inner = args[0] if args else str
        return tuple(_parse(inner, t, key) for t in items)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise UserError(f"bad value {text!r} for {key}", "--set", "use true or false")
    if tp in (int, float):
        try:
            value = tp(text)
        except ValueError:
            raise UserError(f"bad value {text!r} for {key}", "--set",
                            f"{key} takes {'an integer' if tp is int else 'a number'}") from None
        return value
    if tp is str:
        return text
    raise TypeError(f"config type {tp!r} of {key} has no parser")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(cfg: Any, key: str, text: str, _prefix: str = "") -> Any:
    """A copy of cfg with the dotted key set from text, type-checked against the dataclass."""
    head, _, rest = key.partition(".")
    full = _prefix + head
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise UserError(f"unknown config key {_prefix + key!r}", "--set",
                        "`tapeline pipelines --keys` lists the keys")
    current = getattr(cfg, head)
    if dataclasses.is_dataclass(current):
        if not rest:
            raise UserError(f"{full!r} is a section, not a value", "--set", f"set one of its keys, e.g. {full}.{dataclasses.fields(current)[0].name}=...")
        return dataclasses.replace(cfg, **{head: override(current, rest, text, full + ".")})
    if rest:
        raise UserError(f"unknown config key {_prefix + key!r}", "--set", f"{full} is a value, not a section")
    value = _parse(_hints(type(cfg))[head], text, full)
    new = dataclasses.replace(cfg, **{head: value})
    check = getattr(new, "check", None)
    if check:
        check()
    return new


def apply(cfg: Any, assignments: Iterable[str]) -> Any:
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad override {item!r}", "--set", "write KEY=VALUE, e.g. train.epochs=2")
        cfg = override(cfg, key.strip(), text.strip())
    return cfg


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += flat_keys(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every leaf."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return out


def pick(cfg: Any, *prefixes: str) -> dict[str, Any]:
    """The leaves under the given dotted prefixes: exactly the params one stage depends on."""
    return {k: v for k, v in flat(cfg).items()
            if any(k == p or k.startswith(p + ".") for p in prefixes)}
