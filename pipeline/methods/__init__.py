"""Every hashing method behind one interface (:class:`pipeline.methods.base.Hasher`), and the
names that select them.

:data:`REGISTRY` maps a method's name to its class; adding a method is one file in this package
and one line here. A method name in the config or a results folder may carry variants
(:func:`parse_method`): ``cmimh_no_mi`` (a loss term off, Table IV), ``cmimh-kl2`` (a setting,
from the class's ``variants``), ``cvh-ntrain1000`` (the training-set size, Table IX),
``cmimh-mi1-kl0.5-val0`` (a tune grid point on validation fold 0), and a final ``-tuned`` (the
settings the tune target chose). So every study and every tune point is a set of ordinary runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.methods.base import Hasher, load_model, save_model, write_history
from pipeline.methods.acq import ACQ
from pipeline.methods.ccaitq import CCAITQ
from pipeline.methods.cmfh import CMFH
from pipeline.methods.cmimh import CMIMH
from pipeline.methods.cvh import CVH
from pipeline.methods.djsrh import DJSRH
from pipeline.methods.fsh import FSH
from pipeline.methods.lsh import LSH
from pipeline.methods.pdh import PDH
from pipeline.settings import Settings

REGISTRY: dict[str, type[Hasher]] = {
    "cmimh": CMIMH,
    "cvh": CVH,
    "cmfh": CMFH,
    "ccaitq": CCAITQ,
    "djsrh": DJSRH,
    "lsh": LSH,
    "pdh": PDH,
    "acq": ACQ,
    "fsh": FSH,
}

#: Variants every method takes: what a run trains on, not how the method works.
RUN_VARIANTS = {"ntrain": "train on n pairs drawn from the database (Table IX)",
                "val": "train and evaluate on validation fold k carved from the database (tune)",
                "seed": "repetition k: another initialisation and mini-batch order on the same split (error bars)"}

_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9]*)(?:_no_(?P<off>[a-z]+))?(?P<variants>(?:-[a-z]+\d+(?:\.\d+)?)*)"
                   r"(?P<tuned>-tuned)?$")
_VARIANT = re.compile(r"-([a-z]+)(\d+(?:\.\d+)?)")

__all__ = ["ACQ", "CCAITQ", "CMFH", "CMIMH", "CVH", "DJSRH", "FSH", "LSH", "PDH", "REGISTRY", "Hasher", "MethodName", "load_model",
           "method_class", "parse_method", "save_model", "write_history"]


def method_class(name: str) -> type[Hasher]:
    """The class of a base method name; one line naming the known ones otherwise."""
    if name not in REGISTRY:
        raise PipelineError(f"unknown method {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def method_help() -> str:
    keys = sorted({k for c in REGISTRY.values() for k in c.variants} | set(RUN_VARIANTS))
    return (f"a method is one of {', '.join(REGISTRY)}, optionally cmimh_no_<term> (a loss term off), then "
            f"-<key><number> variants (keys: {', '.join(keys)}, as each method allows; e.g. cmimh-kl2, "
            "cvh-ntrain1000) and a final -tuned")


@dataclass(frozen=True)
class MethodName:
    """A parsed method name: its base method, the term switched off, its variants, ``-tuned``."""

    name: str
    base: str
    off: str | None = None
    variants: dict[str, float] = field(default_factory=dict)
    tuned: bool = False

    @property
    def cls(self) -> type[Hasher]:
        return REGISTRY[self.base]

    @property
    def train_size(self) -> int | None:
        """``-ntrain<n>``: n training pairs drawn from the database with the seed (else the split's)."""
        return self.variants.get("ntrain")  # type: ignore[return-value]

    @property
    def repeat(self) -> int:
        """``-seed<k>``: the k-th repetition (0: the config's seed itself)."""
        return int(self.variants.get("seed", 0))

    def training_seed(self, seed: int) -> int:
        """The seed a run's fit uses: the config's for repetition 0, an independent stream of it
        for repetition k (the split, drawn from the config's seed alone, stays the same)."""
        if not self.repeat:
            return int(seed)
        import numpy as np

        return int(np.random.SeedSequence([int(seed), self.repeat]).generate_state(1, dtype=np.uint64)[0] >> 1)

    @property
    def fold(self) -> int | None:
        """``-val<k>``: validation fold k of the tune protocol (else the real queries and database)."""
        return self.variants.get("val")  # type: ignore[return-value]

    def method_variants(self) -> dict[str, float]:
        """The variants that change the method's settings (not :data:`RUN_VARIANTS`)."""
        return {k: v for k, v in self.variants.items() if k not in RUN_VARIANTS}

    def config(self, settings: dict | None, tuned: dict | None = None) -> Settings:
        """The method's validated settings: ``settings`` (config.yaml's, merged for the data set),
        then a tune choice's variants (``tuned``: {key: value}), then this name's own variants."""
        d = dict(settings or {})
        d = _nested_copy(d)
        if self.off:
            _apply(d, f"weights.{self.off}", 0.0)
        for source in (tuned or {}, self.method_variants()):
            for key, value in source.items():
                for target in self.cls.variants[key]:
                    path, _, const = target.partition("=")
                    if _choices(target):
                        _apply(d, path, _choices(target)[int(value)])
                    else:
                        _apply(d, path, (None if const == "None" else const) if const else value)
        return self.cls.Config.from_dict(d, f"{self.base} settings")

    def with_variants(self, **variants: float) -> str:
        """This name with more variants (before a final ``-tuned``)."""
        stem = self.name[: -len("-tuned")] if self.tuned else self.name
        extra = "".join(f"-{k}{fmt_number(v)}" for k, v in variants.items())
        return parse_method(stem + extra + ("-tuned" if self.tuned else "")).name


def _choices(target: str) -> list[str]:
    """The choices of a choice target ``path=a|b`` (the variant's value is the index), else []."""
    const = target.partition("=")[2]
    return const.split("|") if "|" in const else []


def fmt_number(v: float) -> str:
    """A number as it appears in a method name: ``0.1``, ``1``, ``0.0001`` (never ``1e-04``)."""
    import numpy as np

    return np.format_float_positional(float(v), trim="-")


def _nested_copy(d: Any) -> Any:
    return {k: _nested_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def _apply(d: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def parse_method(name: str) -> MethodName:
    """Split a method name into base, switched-off term, variants and ``-tuned``; one line if bad."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if not m or m.group("base") not in REGISTRY:
        raise PipelineError(f"unknown method {name!r}: {method_help()}")
    base = m.group("base")
    cls = REGISTRY[base]
    off = m.group("off")
    if off and off not in getattr(cls, "off_terms", ()):
        raise PipelineError(f"method {name!r}: {base} has no term {off!r} to switch off"
                            + (f" (terms: {', '.join(cls.off_terms)})" if getattr(cls, "off_terms", ()) else ""))
    variants: dict[str, Any] = {}
    for key, val in _VARIANT.findall(m.group("variants") or ""):
        if key in variants:
            raise PipelineError(f"method {name!r}: variant {key} given twice")
        if key not in cls.variants and key not in RUN_VARIANTS:
            allowed = sorted(set(cls.variants) | set(RUN_VARIANTS))
            raise PipelineError(f"method {name!r}: {base} has no variant {key!r} (its variants: {', '.join(allowed)})")
        variants[key] = float(val)
    for key, val in variants.items():   # a choice variant (``path=a|b|c``): its value indexes the choices
        for target in cls.variants.get(key, ()):
            choices = _choices(target)
            if choices and (val != int(val) or not 0 <= val < len(choices)):
                raise PipelineError(f"method {name!r}: {key} must be one of "
                                    + ", ".join(f"{i} ({c})" for i, c in enumerate(choices)))
    for key in ("samples", "epochs", "ntrain", "val", "seed", "hidden"):
        if key in variants:
            need = 0 if key in ("val", "seed") else 1
            if variants[key] != int(variants[key]) or variants[key] < need:
                raise PipelineError(f"method {name!r}: {key} must be an integer >= {need}")
            variants[key] = int(variants[key])
    if variants.get("lr", 1) <= 0:
        raise PipelineError(f"method {name!r}: lr must be > 0")
    return MethodName(name=name, base=base, off=off, variants=variants, tuned=bool(m.group("tuned")))
