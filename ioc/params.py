"""Parameter declarations: the one place a PV's name, type, choices, limits and pairing are stated.

Everything else (caproto channels, `--list-pvs`, screens, docs) is generated from these objects,
so a parameter is never described twice. The naming follows ADCore: a read/write parameter `X`
is served as the setpoint `X` plus the readback `X_RBV`; a status value exists only as its
readback name; a few setpoints (WaitForPlugins, ...) have no readback.

Standard library only: the algorithm child process imports it (for `Alarm`).
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence


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
    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Turn a client's value into the stored form. Returns (value, note) where note says what
        was changed (clamped, truncated) so the caller can log it; raises ValueError when the
        value cannot be used at all (TypeError for None and other non-values).

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
            return self._clamp(number)
        if self.kind is Kind.FLOAT:
            if isinstance(value, (str, bytes, bytearray)):
                value = _number_from_text(value)
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"{short_value(value)} is not a finite number") from None
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
            if self.kind is Kind.TEXT and isinstance(value, numbers.Number):
                raise ValueError(f"{self.name} takes text, not the number {short_value(value)}")
            value = _text(value)
            limit = STRING_MAX - 1 if self.kind is Kind.STRING else self.length - 1
            if len(value) > limit:
                return value[:limit], f"{len(value)} characters truncated to {limit}"
            return value, None
        if self.kind is Kind.ARRAY:
            return self._coerce_array(value)
        raise ValueError(f"{self.name} is a frame: clients read it, no put writes it")

    def _coerce_array(self, value: Any) -> tuple[Any, str | None]:
        """A numeric waveform: numbers only; an integer waveform refuses NaN, infinities and
        values its element type cannot hold (a C cast would wrap them). An array already of
        the declared type passes untouched."""
        import numpy as np  # not at import time: the algorithm child imports this module

        target = np.dtype(self.dtype)
        array = np.asarray(value)
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
