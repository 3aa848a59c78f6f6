"""caproto channels generated from parameter declarations.

We build on caproto's ChannelData classes rather than PVGroup/pvproperty because PVs are created
from run-time declarations (config, algorithm files) and must be added and withdrawn while the
server runs; caproto looks every search up in the plain `pvdb` dict we hand it. Record fields that
clients touch (`.DISA`, `.PROC`, `.DESC`, `.EGU`, limits, ...) are answered by small field channels
created on first use.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import numpy as np
from caproto import (AccessRights, AlarmSeverity, AlarmStatus, ChannelByte, ChannelChar, ChannelData, ChannelDouble,
                     ChannelEnum, ChannelFloat, ChannelInteger, ChannelShort, ChannelString,
                     ChannelType, SkipWrite, native_type)

from .params import Kind, Param

log = logging.getLogger("ndflow.ca")

HANDLED = object()  # a put hook returns this when it has published the value itself

PutHandler = Callable[[Any], Awaitable[Any]]

_ARRAY_CHANNELS: dict[str, type] = {
    "i1": ChannelByte, "u1": ChannelByte, "i2": ChannelShort, "u2": ChannelShort,
    "i4": ChannelInteger, "u4": ChannelInteger, "i8": ChannelDouble, "u8": ChannelDouble,
    "f4": ChannelFloat, "f8": ChannelDouble,
}
# What a numeric waveform of each element type holds on the wire (CA has no unsigned or 64-bit ints).
WIRE_DTYPES: dict[str, np.dtype] = {
    "i1": np.dtype("u1"), "u1": np.dtype("u1"), "i2": np.dtype("i2"), "u2": np.dtype("i2"),
    "i4": np.dtype("i4"), "u4": np.dtype("i4"), "i8": np.dtype("f8"), "u8": np.dtype("f8"),
    "f4": np.dtype("f4"), "f8": np.dtype("f8"),
}


class ParamChannel:
    """Mixin for the caproto channel classes: writes go to the owning component's put handler,
    read-only channels refuse writes at the access-rights level, and fields answer lookups."""

    def _ndflow_init(self, param: Param, readback: bool, on_put: PutHandler | None) -> None:
        self.param = param
        self.readback = readback
        self._on_put = on_put
        self._fields: dict[str, ChannelData] = {}
        self.pvname = param.name  # replaced by the full name when the IOC serves the channel

    async def write_from_dbr(self, data: Any, data_type: ChannelType, *args: Any,
                             **kwargs: Any) -> Any:
        if self.param.kind is Kind.TEXT and _empty_text(data, data_type):
            # caproto's char conversion fails on an empty string (pyepics sends `caput pv ""`
            # as NELM zero bytes): write it as the empty text it is.
            return await self.write("")
        try:
            return await super().write_from_dbr(data, data_type, *args, **kwargs)
        except SkipWrite:
            raise
        except Exception as exc:
            # caproto answers the client with a CA error; we say in one line what was refused.
            if not getattr(exc, "ndflow_logged", False):
                reason = str(exc) or f"value not convertible to {self.data_type.name}"
                if self.param.kind is Kind.ENUM and not str(exc):
                    reason += f" (choices 0..{len(self.param.choices) - 1})"
                log.warning("%s: put refused: %s", self.pvname, reason)
            raise

    def check_access(self, hostname: str, username: str) -> AccessRights:
        if self._on_put is None:
            return AccessRights.READ
        return AccessRights.READ | AccessRights.WRITE

    async def verify_value(self, value: Any) -> Any:
        if self._on_put is None:
            raise PermissionError("read-only PV")
        result = await self._on_put(value)
        if result is HANDLED:
            raise SkipWrite()
        return result

    async def publish_value(self, value: Any) -> None:
        """Update from the IOC side: no put hook, subscribers notified."""
        alarm = self.param.alarm
        if alarm is not None and self.readback:
            status, severity = alarm.check(float(value))
            await self.write(value, verify_value=False, status=AlarmStatus[status],
                             severity=AlarmSeverity(severity))
        else:
            await self.write(value, verify_value=False)

    def to_channel(self, value: Any) -> Any:
        """Stored parameter value -> what this channel holds."""
        p = self.param
        if p.kind is Kind.ENUM:
            return p.choice(int(value), readback=self.readback)
        if p.kind is Kind.ARRAY:
            return value
        if p.kind is Kind.INT:
            return int(value)
        if p.kind is Kind.FLOAT:
            return float(value)
        return value

    # --- record fields --------------------------------------------------------------------------
    def get_field(self, field: str) -> ChannelData:
        if field in ("", "VAL"):
            return self
        if field not in self._fields:
            self._fields[field] = self._make_field(field)
        return self._fields[field]

    def _make_field(self, field: str) -> ChannelData:
        p = self.param
        strings = {"DESC": p.doc[:39], "EGU": p.units[:15], "NAME": "",
                   "RTYP": (p.record_type[1] if self.readback else p.record_type[0]) or "",
                   "SCAN": "I/O Intr" if self.readback else "Passive"}
        if field in strings:
            return ChannelString(value=strings[field])
        numbers = {"HOPR": p.high, "LOPR": p.low, "DRVH": p.high, "DRVL": p.low}
        if field in numbers:
            return ChannelDouble(value=float(numbers[field] or 0.0))
        alarm = p.alarm
        limits = {"LOLO": alarm.lolo, "LOW": alarm.low, "HIGH": alarm.high,
                  "HIHI": alarm.hihi} if alarm else {}
        if field in limits:
            return ChannelDouble(value=float(limits[field] if limits[field] is not None else 0))
        severities = {"LLSV": alarm.lolo, "LSV": alarm.low, "HSV": alarm.high,
                      "HHSV": alarm.hihi} if alarm else {}
        if field in severities:
            major = field in ("LLSV", "HHSV")
            level = ("MAJOR" if major else "MINOR") if severities[field] is not None else "NO_ALARM"
            return ChannelEnum(value=level, enum_strings=["NO_ALARM", "MINOR", "MAJOR", "INVALID"])
        if field == "PREC":
            return ChannelInteger(value=p.precision)
        if field in ("DISA", "DISV", "STAT", "SEVR", "PROC", "UDF", "PACT", "TPRO", "CNCT"):
            return ChannelInteger(value=0)
        if field in ("NELM", "NORD"):
            return ChannelInteger(value=p.length)
        raise KeyError(field)


def _channel_class(base: type) -> type:
    return type(f"Param{base.__name__}", (ParamChannel, base), {})


_CLASSES: dict[type, type] = {}


def _cls(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = _channel_class(base)
    return _CLASSES[base]


def make_channel(param: Param, readback: bool, value: Any,
                 on_put: PutHandler | None) -> ParamChannel:
    """One caproto channel for the setpoint (readback=False) or readback view of `param`."""
    kw: dict[str, Any] = {}
    if param.kind is Kind.INT:
        cls = _cls(ChannelInteger)
        kw.update(units=param.units, **_limits(param))
    elif param.kind is Kind.FLOAT:
        cls = _cls(ChannelDouble)
        kw.update(units=param.units, precision=param.precision, **_limits(param))
    elif param.kind is Kind.ENUM:
        cls = _cls(ChannelEnum)
        choices = (param.rbv_choices if readback and param.rbv_choices else param.choices)
        kw.update(enum_strings=list(choices))
    elif param.kind is Kind.STRING:
        cls = _cls(ChannelString)
    elif param.kind is Kind.TEXT:
        cls = _cls(ChannelChar)
        kw.update(max_length=param.length)
    else:
        base = _ARRAY_CHANNELS[np.dtype(param.dtype).str[1:]]
        cls = _cls(base)
        kw.update(max_length=param.length)
        if base is not ChannelByte:
            kw.update(units=param.units)
    if param.alarm is not None and param.kind in (Kind.INT, Kind.FLOAT):
        kw.update(_alarm_limits(param))
    chan = cls.__new__(cls)
    ParamChannel._ndflow_init(chan, param, readback, on_put)
    initial = chan.to_channel(value) if value is not None else _empty(param)
    cls.__init__(chan, value=initial, **kw)
    return chan


def _limits(param: Param) -> dict[str, float]:
    if param.low is None and param.high is None:
        return {}
    lo = param.low if param.low is not None else 0
    hi = param.high if param.high is not None else 0
    # caproto refuses writes outside ctrl limits itself; we clamp in Param.coerce instead, so only
    # the display limits are declared.
    return {"lower_disp_limit": lo, "upper_disp_limit": hi}


def _alarm_limits(param: Param) -> dict[str, float]:
    """Alarm limits in the channel's control metadata, so clients (and screens) see them; an
    unset limit is 0, as in a record."""
    a = param.alarm
    cast = int if param.kind is Kind.INT else float
    return {name: cast(v) if v is not None else 0 for name, v in (
        ("lower_alarm_limit", a.lolo), ("lower_warning_limit", a.low),
        ("upper_warning_limit", a.high), ("upper_alarm_limit", a.hihi))}


def _empty(param: Param) -> Any:
    if param.kind is Kind.ARRAY:
        return np.zeros(1, dtype=WIRE_DTYPES[np.dtype(param.dtype).str[1:]])
    return {Kind.INT: 0, Kind.FLOAT: 0.0, Kind.STRING: "", Kind.TEXT: ""}.get(param.kind, 0)


def _empty_text(data: Any, data_type: ChannelType) -> bool:
    """Whether a put's payload is an empty string (all NULs, or "" as DBR_STRING)."""
    native = native_type(data_type)
    if native is ChannelType.CHAR:
        return not np.asarray(data).any()
    if native is ChannelType.STRING:
        return all(not (d if isinstance(d, bytes) else str(d).encode()).strip(b"\0")
                   for d in data)
    return False
