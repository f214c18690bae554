"""Typed settings: one frozen dataclass per component holds its defaults, its validation and its
documentation, in one place (scikit-learn's "hyper-parameters in ``__init__``", nanoGPT's config
dataclass).

A field is declared with :func:`setting` (default, one-line doc, bounds or choices); a mapping
from ``config.yaml`` becomes a validated instance with :meth:`Settings.from_dict`, which refuses
unknown keys and bad values with one line naming the key. The JSON schema of the config checks
structure only; the values are checked here. Numbers written as YAML strings (PyYAML reads
``1e-3`` without a dot as the string ``'1e-3'``) are accepted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from pipeline.errors import PipelineError


def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
            min_exclusive: bool = False, max_exclusive: bool = False, choices: tuple | None = None,
            key: str | None = None) -> Any:
    """A settings field: ``default``, a one-line ``doc``, optional bounds (``min <= v <= max``,
    exclusive if asked) or ``choices``; ``key``: its name in the config when that is not a valid
    Python name (CMFH's ``lambda``)."""
    meta = {"doc": doc, "min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
            "choices": choices, "key": key}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eEn") else int(v)
        except ValueError:
            return v
    return v


def _bound_text(meta: dict) -> str:
    parts = []
    if meta["min"] is not None:
        parts.append(f"{'>' if meta['min_exclusive'] else '>='} {meta['min']:g}")
    if meta["max"] is not None:
        parts.append(f"{'<' if meta['max_exclusive'] else '<='} {meta['max']:g}")
    return " and ".join(parts)


class Settings:
    """Mixin of the settings dataclasses: validated construction from a mapping, and back."""

    #: What one key is called in messages ("key", or "weight" for CMIMH's loss weights).
    KEY_WORD: ClassVar[str] = "key"

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)  # type: ignore[arg-type]

    @classmethod
    def keys(cls) -> list[str]:
        """The config keys, in field order."""
        return [_key(f) for f in cls.fields()]

    @classmethod
    def from_dict(cls, values: dict | None, where: str, prefix: str = "") -> Any:
        """A validated instance: ``values`` over the defaults; one-line error for an unknown key or
        bad value, naming it as ``prefix + key`` (``weights.kl``)."""
        values = {} if values is None else values
        if isinstance(values, Settings):
            values = values.to_dict()
        if not isinstance(values, dict):
            raise PipelineError(f"{where}: {prefix.rstrip('.') or 'settings'} must be a mapping, "
                                f"got {type(values).__name__}")
        names = cls.keys()
        unknown = sorted(map(str, set(values) - set(names)))
        if unknown:
            raise PipelineError(f"{where}: unknown {cls.KEY_WORD}(s) {', '.join(prefix + u for u in unknown)}; "
                                f"known: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        out = {}
        for f in cls.fields():
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            v = values.get(_key(f), default)
            out[f.name] = _check(hints[f.name], v, f.metadata, where, prefix + _key(f))
        obj = cls(**out)
        check = getattr(obj, "check", None)
        if check is not None:
            check(where)
        return obj

    def to_dict(self) -> dict:
        """Plain JSON-able values (nested settings as mappings)."""
        return {_key(f): (getattr(self, f.name).to_dict() if isinstance(getattr(self, f.name), Settings)
                          else getattr(self, f.name)) for f in self.fields()}

    def with_values(self, where: str, **values: Any) -> Any:
        """A copy with ``values`` changed, validated like :meth:`from_dict`."""
        return type(self).from_dict({**self.to_dict(), **values}, where)

    @classmethod
    def describe(cls, prefix: str = "") -> list[tuple[str, Any, str]]:
        """``(key, default, doc)`` of every field (nested ones as ``weights.kl``): the reference docs."""
        rows = []
        for f in cls.fields():
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            if isinstance(default, Settings):
                rows += type(default).describe(prefix=f"{prefix}{_key(f)}.")
            else:
                rows.append((f"{prefix}{_key(f)}", default, f.metadata.get("doc", "")))
        return rows


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _check(hint: Any, v: Any, meta: dict, where: str, key: str) -> Any:
    """``v`` as the annotated type, within the field's bounds or choices; else one line."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if v is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if isinstance(hint, type) and issubclass(hint, Settings):
        return hint.from_dict(v, where, prefix=f"{key}.")
    what = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(hint, str(hint))
    bound = _bound_text(meta)
    need = f"{what}{' ' + bound if bound else ''}{' or null' if optional else ''}"
    fail = PipelineError(f"{where}: {key} must be {need}, got {v!r}")
    if hint is bool:
        if not isinstance(v, bool):
            raise fail
        return v
    if hint is str:
        if not isinstance(v, str):
            raise fail
        if meta.get("choices") and v not in meta["choices"]:
            raise PipelineError(f"{where}: {key} must be one of {', '.join(meta['choices'])}, got {v!r}")
        return v
    v = _number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail
    if hint is int:
        if isinstance(v, float):
            if not v.is_integer():
                raise fail
            v = int(v)
    elif hint is float:
        if not math.isfinite(float(v)):
            raise fail
        v = float(v)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo)):
        raise fail
    if hi is not None and (v > hi or (meta.get("max_exclusive") and v == hi)):
        raise fail
    return v
