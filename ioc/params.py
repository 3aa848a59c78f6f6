"""Parameter declarations: the one place a PV's name, type, choices, limits and pairing are stated.

Everything else (caproto channels, `--list-pvs`, screens, docs) is generated from these objects,
so a parameter is never described twice. The naming follows ADCore: a read/write parameter `X`
is served as the setpoint `X` plus the readback `X_RBV`; a status value exists only as its
readback name; a few setpoints (WaitForPlugins, ...) have no readback.

`Param` itself (with `Kind`, `Access`, `AlarmLimits` and the coercion rules) lives in
`ndflow.algorithm.param`, because an algorithm's `Input`/`Output` is one, built in the child
process; this module adds the terse constructors, the tables and the config's initial values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from .algorithm.param import (INT32_MAX, INT32_MIN, STRING_MAX, Access, AlarmLimits, Kind,
                              Param, short_value)

__all__ = ["INT32_MAX", "INT32_MIN", "STRING_MAX", "Access", "AlarmLimits", "Kind", "Param",
           "ParamTable", "R", "RW", "W", "array_param", "bool_param", "enum_param",
           "float_param", "initial_values", "int_param", "ndarray_param", "short_value",
           "string_param", "text_param"]


# --- terse constructors used by every declaration table -------------------------------------------


def int_param(name: str, default: int = 0, access: Access = Access.RW, **kw: Any) -> Param:
    return Param(name, Kind.INT, access, default, **kw)


def float_param(name: str, default: float = 0.0, access: Access = Access.RW, precision: int = 3,
                **kw: Any) -> Param:
    return Param(name, Kind.FLOAT, access, float(default), precision=precision, **kw)


def enum_param(name: str, choices: Sequence[str], default: int = 0, access: Access = Access.RW,
               **kw: Any) -> Param:
    if "rbv_choices" in kw and kw["rbv_choices"] is not None:
        kw["rbv_choices"] = tuple(kw["rbv_choices"])
    return Param(name, Kind.ENUM, access, default, choices=tuple(choices), **kw)


def bool_param(name: str, zero: str = "No", one: str = "Yes", default: int = 0,
               access: Access = Access.RW, **kw: Any) -> Param:
    return enum_param(name, (zero, one), default, access, **kw)


def string_param(name: str, default: str = "", access: Access = Access.RW, **kw: Any) -> Param:
    return Param(name, Kind.STRING, access, default, **kw)


def text_param(name: str, length: int = 256, default: str = "", access: Access = Access.RW,
               **kw: Any) -> Param:
    return Param(name, Kind.TEXT, access, default, length=length, **kw)


def array_param(name: str, dtype: str, length: int, access: Access = Access.R, **kw: Any) -> Param:
    return Param(name, Kind.ARRAY, access, None, dtype=dtype, length=length, **kw)


def ndarray_param(name: str, **kw: Any) -> Param:
    """A whole frame with its metadata (NTNDArray over pvAccess), read-only."""
    return Param(name, Kind.NDARRAY, Access.R, None, **kw)


R, RW, W = Access.R, Access.RW, Access.W


@dataclass
class ParamTable:
    """An ordered, name-indexed set of declarations. Later entries override earlier ones with the
    same name, which is how a driver redefines a base parameter (ADSimDetector's ColorMode)."""

    params: dict[str, Param] = field(default_factory=dict)

    @classmethod
    def of(cls, *groups: Iterable[Param]) -> "ParamTable":
        table = cls()
        for group in groups:
            for p in group:
                table.params[p.name] = p
        return table

    def __iter__(self):
        return iter(self.params.values())

    def __getitem__(self, name: str) -> Param:
        return self.params[name]

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def override(self, name: str, **changes: Any) -> None:
        self.params[name] = replace(self.params[name], **changes)

    def pv_suffixes(self) -> list[str]:
        return [s for p in self for s in p.pv_suffixes]


def initial_values(table: ParamTable, given: Mapping[str, Any],
                   acts_on_write: Callable[[str], bool] = lambda name: False) -> dict[str, Any]:
    """A config's `values:` (setpoint PV name -> value, as a client would write it, e.g.
    {SimMode: Peaks, Gain: 200}) in stored form, keyed by parameter name. ValueError, naming the
    PV, for a name that is no setpoint, a command that acts when written (`acts_on_write`:
    Acquire, Capture...), or a value the PV would refuse or clamp."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        param = table.params.get(name)
        if param is None or not param.writable or param.kind is Kind.NDARRAY:
            writable = sorted(p.name for p in table if p.writable and p.kind is not Kind.NDARRAY)
            close = [n for n in writable if n.lower() == str(name).lower().removesuffix("_rbv")]
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"values: {name!r} is not a setpoint PV of this component{hint}")
        if acts_on_write(name) or param.also_setpoint:
            raise ValueError(f"values: {name} acts when written; write it from a client")
        try:
            stored, note = param.coerce(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"values: {name}: {exc}") from None
        if note:
            raise ValueError(f"values: {name}: {note}")
        out[name] = stored
    return out
