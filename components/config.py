"""Typed, layered, locked configuration: frozen dataclasses plus checked `--set` overrides."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from artifacts.errors import UserError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)  # what TensorFlow and numpy take: a bigger int crashes a stage


@dataclass(frozen=True)
class Limit:
    """The whole range a config key accepts, checked at entry: lo <= value <= hi (lo_open: lo <
    value), for a number or each number of a tuple; for a str, whether it may be empty."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    nonempty: bool = False

    def ok(self, value: Any) -> bool:
        if value is None or isinstance(value, bool):
            return True
        if isinstance(value, tuple):
            return not (self.nonempty and not value) and all(self.ok(v) for v in value)
        if isinstance(value, str):
            return bool(value.strip()) or not self.nonempty
        return (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi

    def text(self) -> str:
        if self.nonempty and self.lo == -math.inf:
            return "give a non-empty value"
        lo, hi = _num(self.lo), _num(self.hi)
        if self.hi == math.inf:
            return f"use a value {'above' if self.lo_open else 'of at least'} {lo}"
        return f"use a value {'above' if self.lo_open else 'from'} {lo} {'and at most' if self.lo_open else 'to'} {hi}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def bounded(default: Any, limit: Limit) -> Any:
    """A config field whose whole range stands beside it (pydantic's Field(ge=..., le=...)):
    `image_size: int = bounded(28, Limit(8, 4096))`. --set refuses a value outside it."""
    return dataclasses.field(default=default, metadata={"limit": limit})


# ranges several keys share
COUNT = Limit(1, 2 ** 31 - 1)          # a positive count or size
STEPS = Limit(1, 2 ** 62)              # a step count or interval
RATE = Limit(0, 1e12, lo_open=True)    # a learning rate: a too large one diverges, and stops cleanly
UNIT = Limit(0, 1)                     # a share or probability
BELOW_ONE = Limit(0, 0.999999)         # a decay, a dropout rate, Adam's beta_1
NAME = Limit(nonempty=True)
ANY = Limit()                          # a free string (extra flags, an address): any value


def limit_of(cfg: Any, key: str) -> Limit | None:
    """The range the field at dotted key declares (bounded()), or None where its type is the
    whole range (bool, a Literal's choices) or it declares none."""
    *path, name = key.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    f = {f.name: f for f in dataclasses.fields(cfg)}[name]
    return f.metadata.get("limit")


def _check_limit(cfg: Any, name: str, full: str, value: Any) -> None:
    limit = limit_of(cfg, name)
    if limit is not None and not limit.ok(value):
        raise UserError(f"bad value {_show(value)} for {full}", "--set", limit.text())


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)


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
        if tp is float and not math.isfinite(value):
            raise UserError(f"bad value {text!r} for {key}", "--set", f"{key} takes a finite number")
        if tp is int and not _INT64[0] <= value <= _INT64[1]:
            raise UserError(f"bad value {text!r} for {key}", "--set", f"{key} takes a 64-bit integer")
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
    _check_limit(cfg, head, full, value)
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
