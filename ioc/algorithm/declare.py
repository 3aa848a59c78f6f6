"""`Input` and `Output`: an algorithm's parameters, each one a `Param` the IOC serves as it is.

The kind follows from the default (or type) written first: a float, int, bool or str;
`choices=` makes an enum; `length=` with float/int, or a list/array default, makes a 1-D array.
An attribute `threshold` becomes the PVs `Threshold` and `Threshold_RBV` (CamelCase, as
areaDetector names things); an output `cx` becomes `Cx_RBV`; `name=` chooses another PV name.

The IOC stores values in a Param's form (an enum or a bool as its choice index); `process()`
sees them as the user declared them (the choice's text, a bool). `user_value` is that one
translation, done here in the child.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from .param import MAX_CHOICES, STRING_MAX, Access, AlarmLimits, Kind, Param

INPUT_GROUP, OUTPUT_GROUP = "Inputs", "Outputs"  # the screen groups of inputs and outputs
BOOL_CHOICES = ("No", "Yes")


class Declaration:
    """One declared parameter; `param` is what the IOC serves (complete once the class that
    holds it is created, when the attribute name gives the PV name)."""

    direction = ""

    def __init__(self, default: Any = None, *, choices: Iterable[str] | None = None,
                 low: float | None = None, high: float | None = None, units: str = "",
                 doc: str = "", precision: int | None = None, length: int | None = None,
                 alarm: AlarmLimits | None = None, name: str | None = None) -> None:
        self.attr = ""
        self.pv_name = name or ""
        out = self.direction == "out"
        self.param, self.default, self.boolean = _param(
            default, tuple(choices) if choices is not None else (), length, precision,
            Param("", Kind.INT, Access.R if out else Access.RW, low=low, high=high,
                  units=str(units or "")[:15], doc=str(doc or ""),
                  group=OUTPUT_GROUP if out else INPUT_GROUP))
        if self.param.kind not in (Kind.FLOAT, Kind.INT):  # limits bound numbers only
            self.param = replace(self.param, low=None, high=None)
        if alarm is not None:
            if self.param.kind not in (Kind.FLOAT, Kind.INT):
                raise TypeError("alarm limits need a float or int parameter")
            if out:  # an input's alarm limits mean nothing: its readback follows the setpoint
                self.param = replace(self.param, alarm=alarm)

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr
        if not self.pv_name:
            self.pv_name = "".join(part[:1].upper() + part[1:] for part in attr.split("_"))
        suffix = "_RBV" if self.direction == "out" else ""
        self.param = replace(self.param, name=self.pv_name + suffix)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attr}: {self.param.kind.value})"

    def user_value(self, stored: Any) -> Any:
        """A stored value as `process()` sees it: an enum by its text, a bool as a bool."""
        if self.param.kind is Kind.ENUM:
            return bool(stored) if self.boolean else self.param.choices[int(stored)]
        return stored


class Input(Declaration):
    """An operator-settable parameter: PVs `<Name>` and `<Name>_RBV`."""

    direction = "in"


class Output(Declaration):
    """A result: PV `<Name>_RBV`, updated from what `process()` returns."""

    direction = "out"


def _param(default: Any, choices: tuple[str, ...], length: int | None, precision: int | None,
           base: Param) -> tuple[Param, Any, bool]:
    """(the Param, the default as `process()` sees it, whether it is a bool) from what the user
    wrote."""
    if choices:
        if not 1 <= len(choices) <= MAX_CHOICES:
            raise ValueError(f"an enum needs 1 to {MAX_CHOICES} choices, not {len(choices)}")
        if default in (None, str):
            default = choices[0]
        if isinstance(default, int) and not isinstance(default, bool):
            default = choices[default]
        if default not in choices:
            raise ValueError(f"default {default!r} is not one of {list(choices)}")
        return replace(base, kind=Kind.ENUM, default=choices.index(default),
                       choices=choices), default, False
    if isinstance(default, (list, tuple, np.ndarray)) or (
            length is not None and default in (float, int, None)):
        values = np.asarray(default if isinstance(default, (list, tuple, np.ndarray)) else [])
        is_int = default is int or (values.size and values.dtype.kind in "iub")
        dtype = "int32" if is_int else "float64"
        n = length or max(int(values.size), 1)
        if values.size > n:
            raise ValueError(f"default has {values.size} elements, more than length={n}")
        values = values.astype(dtype)
        return replace(base, kind=Kind.ARRAY, default=values, dtype=dtype, length=n), \
            values, False
    if default is bool or isinstance(default, (bool, np.bool_)):
        value = bool(default) if default is not bool else False
        return replace(base, kind=Kind.ENUM, default=int(value), choices=BOOL_CHOICES), \
            value, True
    if default is int or isinstance(default, (int, np.integer)):
        value = int(default) if default is not int else 0
        return replace(base, kind=Kind.INT, default=value), value, False
    if default is float or default is None or isinstance(default, (float, np.floating)):
        value = float(default) if default not in (float, None) else 0.0
        return replace(base, kind=Kind.FLOAT, default=value,
                       precision=3 if precision is None else precision), value, False
    if default is str or isinstance(default, str):
        text = default if isinstance(default, str) else ""
        n = length or STRING_MAX
        if n <= STRING_MAX:
            return replace(base, kind=Kind.STRING, default=text), text, False
        return replace(base, kind=Kind.TEXT, default=text, length=n + 1), text, False
    raise TypeError(f"cannot declare a parameter from {default!r}: use a float, int, bool, str, "
                    f"choices=[...] or a list/array")
