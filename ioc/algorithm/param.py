"""A parameter declaration: name, kind, access, choices, limits, units, alarm limits, and the
rules that turn a written value into its stored form (`Param.coerce`).

It lives in the algorithm package because both sides use it: the IOC serves every parameter
from one, and an algorithm's `Input`/`Output` is one, built in the child process and sent to
the IOC at DECLARE. `ndflow.params` re-exports it with the constructors and tables the core uses.

Standard library only (numpy is imported lazily, for arrays): the algorithm child imports it.
"""

from __future__ import annotations

import enum
import math
import numbers
import re
from dataclasses import dataclass, replace
from typing import Any


class Kind(enum.Enum):
    INT = "int"  # longout/longin -> DBR_LONG
    FLOAT = "float"  # ao/ai -> DBR_DOUBLE
    ENUM = "enum"  # bo/bi (2 choices) or mbbo/mbbi -> DBR_ENUM
    STRING = "string"  # stringout/stringin -> DBR_STRING (40 chars)
    TEXT = "text"  # char waveform "long string" -> DBR_CHAR[length]
    ARRAY = "array"  # numeric waveform -> DBR_<dtype>[length]
    NDARRAY = "ndarray"  # a whole frame with its metadata: NTNDArray over pvAccess (not CA)


class Access(enum.Enum):
    RW = "rw"  # setpoint X and readback X_RBV
    W = "w"  # setpoint only; reading it gives the current value (ADCore: WaitForPlugins, FileNumber...)
    R = "r"  # read-only status value, served under its own (usually *_RBV) name


STRING_MAX = 40
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1  # a DBR_LONG


@dataclass(frozen=True)
class AlarmLimits:
    """An ai record's LOLO/LOW/HIGH/HIHI: LOLO and HIHI are major alarms, LOW and HIGH minor."""

    lolo: float | None = None
    low: float | None = None
    high: float | None = None
    hihi: float | None = None

    def check(self, value: float) -> tuple[str, int]:
        """(alarm status name, severity 0/1/2) for `value`, as the record's alarm check does."""
        if self.hihi is not None and value >= self.hihi:
            return "HIHI", 2
        if self.lolo is not None and value <= self.lolo:
            return "LOLO", 2
        if self.high is not None and value >= self.high:
            return "HIGH", 1
        if self.low is not None and value <= self.low:
            return "LOW", 1
        return "NO_ALARM", 0


@dataclass(frozen=True)
class Param:
    """One declared parameter. Values are stored as Python ints (enum: the choice index),
    floats, strs or numpy arrays."""

    name: str
    kind: Kind
    access: Access = Access.RW
    default: Any = None
    choices: tuple[str, ...] = ()
    rbv_choices: tuple[str, ...] | None = None  # ADCore sometimes names the readback states differently
    rbv_name: str | None = None  # ADCore: SigmaValue -> Sigma_RBV
    low: float | None = None
    high: float | None = None
    units: str = ""
    precision: int = 0
    length: int = 1  # characters for TEXT, elements for ARRAY
    dtype: str = ""  # numpy dtype string for ARRAY
    doc: str = ""
    group: str = ""  # screen section, e.g. "Setup", "Readout", "Collect", "Plugin", "Status"
    coalesce: bool = True  # False: every change is published in order (Acquire_RBV 0->1->0)
    also_setpoint: bool = False  # the data path updates the setpoint too (asyn:READBACK records)
    aliases: tuple[str, ...] = ()  # further read-only names for the same value (ArraySize0 = ArraySize0_RBV)
    alarm: "AlarmLimits | None" = None  # readback alarm limits (algorithm outputs)
    widget: str = ""  # screen hint where the kind does not say it: "image" (a frame, not a plot)

    # --- naming -------------------------------------------------------------------------------
    @property
    def setpoint_name(self) -> str | None:
        return None if self.access is Access.R else self.name

    @property
    def readback_name(self) -> str | None:
        if self.access is Access.R:
            return self.name
        if self.access is Access.RW:
            return self.rbv_name or f"{self.name}_RBV"
        return None

    @property
    def pv_suffixes(self) -> list[str]:
        return [n for n in (self.setpoint_name, self.readback_name) if n] + list(self.aliases)

    @property
    def writable(self) -> bool:
        return self.access is not Access.R

    @property
    def setting(self) -> bool:
        """A value a client sets to configure processing: part of the frozen parameter sets.
        Not a readback, an array, or a counter/command the data path drives (also_setpoint:
        ArrayCounter, Acquire, Capture)."""
        return self.access is not Access.R and not self.also_setpoint and \
            self.kind not in (Kind.ARRAY, Kind.NDARRAY)

    @property
    def record_type(self) -> tuple[str | None, str | None]:
        """(setpoint record, readback record) as ADCore's templates would declare them."""
        out, inp = {
            Kind.INT: ("longout", "longin"),
            Kind.FLOAT: ("ao", "ai"),
            Kind.ENUM: ("bo", "bi") if len(self.choices) == 2 else ("mbbo", "mbbi"),
            Kind.STRING: ("stringout", "stringin"),
            Kind.TEXT: ("waveform", "waveform"),
            Kind.ARRAY: ("waveform", "waveform"),
            Kind.NDARRAY: (None, None),  # no record: NDPluginPva's NTNDArray
        }[self.kind]
        return (out if self.setpoint_name else None, inp if self.readback_name else None)

    # --- validation -----------------------------------------------------------------------------
    def coerce(self, value: Any, result: bool = False) -> tuple[Any, str | None]:
        """Turn a client's value into the stored form. Returns (value, note) where note says what
        was changed (clamped, truncated) so the caller can log it; raises ValueError when the
        value cannot be used at all (TypeError for None and other non-values).

        `result=True` takes a value the data path produced for a readback (an algorithm's
        output) rather than a client's put: a float may be NaN or infinite (a fit that found
        nothing), nothing is clamped, a number given for text becomes its text, and an array
        is flattened and cut to the declared length.

        The rules follow what an EPICS record does with a put, made strict where EPICS would
        store garbage: numbers (LONG, DOUBLE, ENUM index) refuse NaN, infinities, empty or
        non-numeric strings; a LONG refuses values outside int32; `low`/`high` clamp like a
        record's DRVL/DRVH; strings stop at the first NUL and are truncated to the record's
        size; a char-waveform text PV (paths, file names, templates) refuses a number, which a
        record would turn into character codes."""
        if self.kind is Kind.INT:
            if isinstance(value, (str, bytes, bytearray)):
                value = _number_from_text(value)
            try:
                if not isinstance(value, int) and not math.isfinite(float(value)):
                    raise ValueError(f"{short_value(value)} is not a number")
                number = int(value)
            except OverflowError:
                raise ValueError(f"{short_value(value)} is outside the 32-bit range of a LONG PV") \
                    from None
            if not INT32_MIN <= number <= INT32_MAX:
                raise ValueError(f"{short_value(value)} is outside the 32-bit range of a LONG PV")
            return (number, None) if result else self._clamp(number)
        if self.kind is Kind.FLOAT:
            if isinstance(value, (str, bytes, bytearray)):
                value = _number_from_text(value)
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"{short_value(value)} is not a finite number") from None
            if result:
                return value, None
            if not math.isfinite(value):
                raise ValueError(f"{value} is not a finite number")
            return self._clamp(value)
        if self.kind is Kind.ENUM:
            if isinstance(value, (bytes, bytearray)):
                value = _text(value)
            if isinstance(value, str):
                if value in self.choices:
                    return self.choices.index(value), None
                value = int(value) if value.strip().lstrip("-").isdigit() else value
                if isinstance(value, str):
                    raise ValueError(f"{short_value(value)} is not one of {list(self.choices)}")
            if not isinstance(value, int) and not math.isfinite(float(value)):
                raise ValueError(f"{value} is not a choice index")
            index = int(value)
            if not 0 <= index < len(self.choices):
                raise ValueError(f"index {short_value(index)} outside 0..{len(self.choices) - 1}")
            return index, None
        if self.kind in (Kind.STRING, Kind.TEXT):
            if self.kind is Kind.TEXT and isinstance(value, numbers.Number) and not result:
                raise ValueError(f"{self.name} takes text, not the number {short_value(value)}")
            value = _text(value)
            limit = STRING_MAX - 1 if self.kind is Kind.STRING else self.length - 1
            if len(value) > limit:
                return value[:limit], f"{len(value)} characters truncated to {limit}"
            return value, None
        if self.kind is Kind.ARRAY:
            return self._coerce_array(value, result)
        raise ValueError(f"{self.name} is a frame: clients read it, no put writes it")

    def _coerce_array(self, value: Any, result: bool = False) -> tuple[Any, str | None]:
        """A numeric waveform: numbers only; an integer waveform refuses NaN, infinities and
        values its element type cannot hold (a C cast would wrap them). An array already of
        the declared type passes untouched (a result: flattened and cut to `length`)."""
        import numpy as np  # not at import time: the core's declarations need no numpy

        target = np.dtype(self.dtype)
        array = np.asarray(value)
        if result:
            array = array.ravel()[: self.length]
            value = array
        if array.dtype == target:
            return value, None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{self.name} takes numbers, not {short_value(value)}")
        if target.kind in "iu":
            if array.dtype.kind == "f":
                if not np.isfinite(array).all():
                    raise ValueError(f"{self.name}: NaN or infinity in an integer array")
                array = np.trunc(array)
            info = np.iinfo(target)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise ValueError(f"{self.name}: values outside {info.min}..{info.max} of "
                                 f"{target.name}")
        return array.astype(target), None

    def _clamp(self, value: float | int) -> tuple[Any, str | None]:
        if self.low is not None and value < self.low:
            return type(value)(self.low), f"{value} below minimum, clamped to {self.low:g}"
        if self.high is not None and value > self.high:
            return type(value)(self.high), f"{value} above maximum, clamped to {self.high:g}"
        return value, None

    def choice(self, index: int, readback: bool = False) -> str:
        names = self.rbv_choices if (readback and self.rbv_choices) else self.choices
        return names[index]


def _number_from_text(value: str | bytes | bytearray) -> float:
    """A number written as text ("1.5", " 12 ", "1e3"), as EPICS parses a DBR_STRING put into a
    numeric record; an empty or non-numeric string is refused (EPICS would store 0 or fail)."""
    text = _text(value).strip()
    if not text:
        raise ValueError("an empty string is not a number")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{short_value(text)} is not a number") from None


def _text(value: Any) -> str:
    """A client's string as stored: bytes decoded as latin-1 (CA strings are 8-bit), and, as
    in a C string, nothing from the first NUL on."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode("latin-1")
    return str(value).split("\0", 1)[0]


def short_value(value: Any, limit: int = 60) -> str:
    """repr() of a client's value cut to one readable piece of a log line or CA error."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(value)} characters)"
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."



# --- a declaration crossing a process boundary (an algorithm's DECLARE) ----------------------------

#: the fields a description carries; the rest of a Param (aliases, coalesce...) is the IOC's own
DESCRIBED = ("name", "kind", "access", "default", "choices", "low", "high", "units", "precision",
             "length", "dtype", "doc", "group", "alarm")
MAX_CHOICES = 16  # an mbbo/mbbi record's states
MAX_LENGTH = 2 ** 24  # elements of a declared array or characters of a text (stdarrays' largest)
_PV_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def describe(param: Param) -> dict[str, Any]:
    """`param` as JSON-able values (an array default as a list)."""
    default = param.default
    if hasattr(default, "tolist"):
        default = default.tolist()
    alarm = param.alarm
    return {"name": param.name, "kind": param.kind.value, "access": param.access.value,
            "default": default, "choices": list(param.choices), "low": param.low,
            "high": param.high, "units": param.units, "precision": param.precision,
            "length": param.length, "dtype": param.dtype, "doc": param.doc, "group": param.group,
            "alarm": None if alarm is None else [alarm.lolo, alarm.low, alarm.high, alarm.hihi]}


def from_description(d: dict[str, Any]) -> Param:
    """The Param a description names, checked as coming from another process: ValueError (one
    line) for a name that is no PV name, an unknown kind, or a value its kind cannot hold."""
    if not isinstance(d, dict):
        raise ValueError(f"a declaration is a mapping, not {short_value(d)}")
    name = str(d.get("name", ""))
    if not _PV_NAME.match(name):
        raise ValueError(f"parameter name {name!r} is not a valid PV name")
    try:
        kind, access = Kind(d.get("kind")), Access(d.get("access", "rw"))
    except ValueError:
        raise ValueError(f"{name}: unknown parameter kind {d.get('kind')!r}") from None
    if kind is Kind.NDARRAY:
        raise ValueError(f"{name}: a frame cannot be a declared parameter")
    choices = tuple(str(c) for c in d.get("choices") or ())
    if kind is Kind.ENUM and not 1 <= len(choices) <= MAX_CHOICES:
        raise ValueError(f"{name}: an enum needs 1 to {MAX_CHOICES} choices")
    alarm = d.get("alarm")
    try:
        param = Param(name, kind, access, None, choices=choices, low=_number(d.get("low")),
                      high=_number(d.get("high")), units=str(d.get("units") or "")[:15],
                      precision=int(d.get("precision") or 0),
                      length=max(int(d.get("length") or 1), 1),
                      dtype=("int32" if d.get("dtype") == "int32" else "float64")
                      if kind is Kind.ARRAY else "", doc=str(d.get("doc") or ""),
                      group=str(d.get("group") or ""),
                      alarm=AlarmLimits(*map(_number, alarm[:4])) if alarm else None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name}: unusable declaration ({type(exc).__name__}: {exc})") from None
    if param.length > MAX_LENGTH:
        raise ValueError(f"{name}: length {short_value(param.length)} is more than {MAX_LENGTH}")
    default = d.get("default")
    if default is None:
        default = {Kind.INT: 0, Kind.FLOAT: 0.0, Kind.ENUM: 0, Kind.ARRAY: []}.get(kind, "")
    try:
        stored, _ = param.coerce(default, result=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name}: default {short_value(default)}: {exc}") from None
    return replace(param, default=stored)


def _number(value: Any) -> float | None:
    """A limit: None, or a number (a string or a list is refused: TypeError/ValueError)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{short_value(value)} is not a number")
    return float(value)
