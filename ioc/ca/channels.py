"""caproto channels generated from parameter declarations.

We build on caproto's ChannelData classes rather than PVGroup/pvproperty because PVs are created
from run-time declarations (config, algorithm files) and must be added and withdrawn while the
server runs; caproto looks every search up in the plain `pvdb` dict we hand it. Record fields that
clients touch (`.DISA`, `.PROC`, `.DESC`, `.EGU`, limits, ...) are answered by small field channels
created on first use.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from typing import Any

import numpy as np
from caproto import (AccessRights, AlarmSeverity, AlarmStatus, ChannelByte, ChannelChar, ChannelData, ChannelDouble,
                     ChannelEnum, ChannelFloat, ChannelInteger, ChannelShort, ChannelString,
                     ChannelType, SkipWrite, native_type)

from ..access import OPEN, Access, AccessSecurity
from ..params import Kind, Param, short_value
from ..refusals import REFUSALS
from ..transport import HANDLED, PVSpec
from .caproto_fixes import WireArray

log = logging.getLogger("ndflow.ca")

#: the address of the client whose command the current task handles (set by our circuits):
#: caproto asks `check_access` with the reported host and user names only
CLIENT_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("ndflow_ca_client",
                                                                    default="")
_RIGHTS = {Access.NONE: AccessRights.NO_ACCESS, Access.READ: AccessRights.READ,
           Access.WRITE: AccessRights.READ | AccessRights.WRITE}


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


_CA_KINDS = (Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.STRING, Kind.TEXT, Kind.ARRAY)

#: an array at least this large (bytes on the wire) goes out without caproto's second copy
WIRE_VIEW_MIN_BYTES = 4096
#: what caproto may hold queued per subscription of a waveform, in bytes (>= 2 updates)
ARRAY_BACKLOG_BYTES = 8_000_000


class ParamChannel:
    """Mixin for the caproto channel classes: writes go to the owning component's put handler,
    read-only channels refuse writes at the access-rights level, and fields answer lookups."""

    def _ndflow_init(self, spec: PVSpec) -> None:
        self.spec = spec
        self.param = spec.param
        self.readback = spec.readback
        self._on_put = spec.on_put
        self._fields: dict[str, ChannelData] = {}
        self.pvname = spec.param.name  # replaced by the full name when the IOC serves the channel
        # Where this channel's updates are on their way to the clients (see `sent`, maintained
        # by the server's context and circuits): updates in the context's queue not yet handed
        # to the circuits, and per circuit the queue position of its latest update.
        self._ca_context: Any = None
        self._ca_unsent = 0
        self._ca_marks: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._ca_waiter: asyncio.Future | None = None

    async def write_from_dbr(self, data: Any, data_type: ChannelType, metadata: Any = None,
                             *, flags: int = 0) -> Any:
        """A client's put. The wire value is decoded here (not by caproto's conversion, which
        turns NaN into INT_MIN, "" into 0 and a number into character codes) and handed as a
        plain Python value to the component's put handler, where `Param.coerce` decides."""
        if data_type in (ChannelType.PUT_ACKS, ChannelType.PUT_ACKT):
            return await super().write_from_dbr(data, data_type, metadata, flags=flags)
        try:
            value = wire_value(self.param, data, data_type)
        except ValueError as exc:
            REFUSALS.refuse(log, self.pvname, _shown(data, data_type), str(exc))
            raise PutRefusedOnWire(f"{self.pvname}: {exc}") from None
        if self._on_put is None:  # read-only (libca refuses before sending; other clients)
            REFUSALS.refuse(log, self.pvname, _shown(data, data_type), "read-only PV")
            raise PutRefusedOnWire(f"{self.pvname}: read-only PV")
        try:
            # The put handler runs here rather than in write()'s verify_value, so a refused put
            # leaves the record's alarm alone (caproto's write() would latch WRITE/MAJOR on it)
            # and caproto's preprocessing only ever sees the stored form of the value.
            result = await self._on_put(value, self)
        except Exception as exc:
            # handle_put has said what it refused (ndflow_logged); anything else is a put hook
            # failing: the client gets a CA error and the log one line, never a traceback.
            if not getattr(exc, "ndflow_logged", False):
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                REFUSALS.refuse(log, self.pvname, _shown(data, data_type), reason)
            raise
        if result is HANDLED:  # the hook has published the value itself
            return None
        try:
            return await self.write(self.to_wire(result), flags=flags, verify_value=False)
        except Exception as exc:  # caproto cannot hold what the handler made of it: a bug
            REFUSALS.refuse(log, self.pvname, _shown(data, data_type),
                            f"{type(exc).__name__}: {exc}")
            raise

    #: the IOC's access rules (set by the transport when it serves the channel)
    ca_access: AccessSecurity | None = None

    def check_access(self, hostname: str, username: str) -> AccessRights:
        """The EPICS access security rules for this client (caproto asks at channel creation
        and before every read and write): matched against the host name the client reported,
        or against its address with `client_ip` (asCheckClientIP)."""
        rights = self.policy_rights(hostname, username)
        if self._on_put is None:
            rights &= AccessRights.READ
        return rights

    def policy_rights(self, hostname: str, username: str) -> AccessRights:
        """What the access security rules grant this client on this record."""
        security = self.ca_access
        policy = security.policy if security is not None else OPEN
        address = CLIENT_ADDRESS.get() if policy.client_ip else ""
        return _RIGHTS[policy.access(self.spec.asg, username or "", address or hostname or "",
                                     self.spec.asl, address=bool(address))]

    async def auth_write(self, hostname: str, username: str, data: Any, data_type: Any,
                         metadata: Any, *, flags: int = 0, user_address: Any = None) -> Any:
        rights = self.check_access(hostname, username)
        if AccessRights.WRITE not in rights and self._on_put is not None:
            # one line in the log, as for any refused put; the client gets a CA error
            REFUSALS.refuse(log, self.pvname, _shown(data, data_type),
                            f"no write access for {username}@{hostname}")
        return await super().auth_write(hostname, username, data, data_type, metadata,
                                        flags=flags, user_address=user_address)

    async def verify_value(self, value: Any) -> Any:
        if self._on_put is None:
            raise PermissionError("read-only PV")
        result = await self._on_put(value, self)
        if result is HANDLED:
            raise SkipWrite()
        return self.to_wire(result)

    async def publish_value(self, value: Any) -> None:
        """Update from the IOC side: no put hook, subscribers notified."""
        alarm = self.param.alarm
        if alarm is not None and self.readback:
            status, severity = alarm.check(float(value))
            await self.write(value, verify_value=False, status=AlarmStatus[status],
                             severity=AlarmSeverity(severity))
        else:
            await self.write(value, verify_value=False)

    def sent(self) -> asyncio.Future | None:
        """None if the next update may be posted now, else a future done once it may: the
        latest one has been handed to every circuit, and one of the circuits that receive the
        whole array has taken it to write (which it does once everything before the one being
        written has gone to the socket), or none holds it.

        So an array's updates follow the fastest client that reads it, as RSRV sends each
        client what it reads: the queue of a slower client keeps the newest few
        (`_array_backlog`), older ones are dropped, and it reads on from those; one that stopped
        reading holds nobody back. A client that asked for a few elements only (a count) does
        not pace the whole array. With no client reading at all, the publisher's own limit
        (array_wait_s) paces it."""
        if self._ca_drained():
            return None
        waiter = self._ca_waiter
        if waiter is None or waiter.done():
            self._ca_waiter = waiter = asyncio.get_running_loop().create_future()
            self._ca_context.ndflow_waiting.add(self)
        return waiter

    def _ca_drained(self) -> bool:
        if self._ca_unsent:
            return False
        marks = self._ca_marks
        for circuit, position in list(marks.items()):
            if not circuit.connected:
                del marks[circuit]
            elif circuit.subscription_queue.gets >= position:
                marks.clear()  # taken by one: the next may go
                return True
        return not marks

    def _ca_wake(self) -> bool:
        """Resolve the future of `sent` if drained; True when none is left waiting."""
        if not self._ca_drained():
            return False
        waiter, self._ca_waiter = self._ca_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def _read(self, data_type: Any) -> Any:
        """caproto converts the value to the wire's (big-endian) form here, once per update and
        DBR type; it would convert it again for every subscriber's EventAddResponse (a second
        copy of the whole array). A large result is marked as already in wire form, so the
        second conversion hands it on as it is (see `_wire_passthrough`)."""
        metadata, values = await super()._read(data_type)
        if type(values) is np.ndarray and values.ndim == 1 and \
                values.nbytes >= WIRE_VIEW_MIN_BYTES:
            values = values.view(WireArray)
        return metadata, values

    def to_wire(self, value: Any) -> Any:
        """Stored parameter value -> what this channel holds."""
        p = self.param
        if p.kind is Kind.ENUM:
            return p.choice(int(value), readback=self.readback)
        if p.kind is Kind.ARRAY:
            return _on_wire(value)
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
            chan = self._make_field(field)
            # the record's access security group rules its fields too
            chan.check_access = self.policy_rights  # type: ignore[method-assign]
            self._fields[field] = chan
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


def make_channel(spec: PVSpec, value: Any) -> ParamChannel | None:
    """One caproto channel for the setpoint or readback view of a parameter (None for a kind
    Channel Access cannot carry)."""
    param, readback = spec.param, spec.readback
    if param.kind not in _CA_KINDS:
        return None
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
        kw.update(max_length=param.length, max_subscription_backlog=_array_backlog(param))
        if base is not ChannelByte:
            kw.update(units=param.units)
    if param.alarm is not None and param.kind in (Kind.INT, Kind.FLOAT):
        kw.update(_alarm_limits(param))
    chan = cls.__new__(cls)
    ParamChannel._ndflow_init(chan, spec)
    initial = chan.to_wire(value) if value is not None else _empty(param)
    cls.__init__(chan, value=initial, **kw)
    return chan


def _array_backlog(param: Param) -> int:
    """How many updates of a waveform caproto keeps queued per subscription before dropping
    the oldest (it keeps each of them alive until then): 1000 by default, 2 GB for a 1M Int16
    image. The publisher sends an array once the fastest client has taken the previous one
    (ParamChannel.sent), so a slower client's queue holds what arrived while it read: the
    newest few are plenty, older ones are dropped (latest wins, as the publisher does)."""
    nbytes = param.length * WIRE_DTYPES[np.dtype(param.dtype).str[1:]].itemsize
    return int(max(2, min(100, ARRAY_BACKLOG_BYTES // max(nbytes, 1))))


def _limits(param: Param) -> dict[str, float]:
    """A setpoint's limits as a record shows them: HOPR/LOPR as display limits and, when both
    ends are declared, DRVH/DRVL as control limits (an ao's DBR_CTRL limits, which clients such
    as ophyd check before writing). Writes outside them are clamped by Param.coerce, not
    refused by caproto: a client's put never reaches caproto's limit check (write_from_dbr
    writes the handler's value unverified; verify_value is ours too)."""
    if param.low is None and param.high is None:
        return {}
    cast = int if param.kind is Kind.INT else float
    lo = cast(param.low) if param.low is not None else 0
    hi = cast(param.high) if param.high is not None else 0
    limits = {"lower_disp_limit": lo, "upper_disp_limit": hi}
    if param.low is not None and param.high is not None:
        limits.update(lower_ctrl_limit=lo, upper_ctrl_limit=hi)
    return limits


def _alarm_limits(param: Param) -> dict[str, float]:
    """Alarm limits in the channel's control metadata, so clients (and screens) see them; an
    unset limit is 0, as in a record."""
    a = param.alarm
    cast = int if param.kind is Kind.INT else float
    return {name: cast(v) if v is not None else 0 for name, v in (
        ("lower_alarm_limit", a.lolo), ("lower_warning_limit", a.low),
        ("upper_warning_limit", a.high), ("upper_alarm_limit", a.hihi))}


def _on_wire(value: Any) -> Any:
    """An array as a CA waveform holds it: CA has no unsigned or 64-bit integers, so unsigned
    elements are viewed as the signed type of their size (the bits a C cast gives, no copy) and
    64-bit integers become doubles."""
    if not isinstance(value, np.ndarray):
        return value
    wire = WIRE_DTYPES.get(value.dtype.str[1:])
    if wire is None or value.dtype == wire:
        return value
    if wire.itemsize == value.dtype.itemsize and wire.kind in "iu":
        return value.view(wire)
    return value.astype(wire)


def _empty(param: Param) -> Any:
    if param.kind is Kind.ARRAY:
        return np.zeros(1, dtype=WIRE_DTYPES[np.dtype(param.dtype).str[1:]])
    return {Kind.INT: 0, Kind.FLOAT: 0.0, Kind.STRING: "", Kind.TEXT: ""}.get(param.kind, 0)


# --- a put's value off the wire -------------------------------------------------------------------
_NUMERIC_WIRE = (ChannelType.INT, ChannelType.LONG, ChannelType.FLOAT, ChannelType.DOUBLE,
                 ChannelType.ENUM, ChannelType.CHAR)


class PutRefusedOnWire(ValueError):
    """A put whose value could not even be read as the PV's kind (logged already)."""

    ndflow_logged = True


def wire_value(param: Param, data: Any, data_type: ChannelType) -> Any:
    """The value a client put, as plain Python: str for DBR_STRING (and DBR_CHAR into a string
    or text PV), int or float for numbers, a numpy array for a numeric waveform. Raises
    ValueError for what no rule of `Param.coerce` can read."""
    native = native_type(data_type)
    if native != data_type:  # DBR_STS_/TIME_/CTRL_ types: not puttable (libca refuses them too)
        raise ValueError(f"a put must use a plain DBR type, not {ChannelType(data_type).name}")
    kind = param.kind
    if native is ChannelType.STRING:
        strings = list(data)
        if not strings:
            raise ValueError("empty put (no element)")
        if kind is Kind.ARRAY:
            return np.array([_decode(s) for s in strings], dtype=object)  # refused by coerce
        if len(strings) > 1:
            raise ValueError(f"{len(strings)} strings for a scalar PV")
        return _decode(strings[0])
    numbers = np.asarray(data)
    if kind in (Kind.STRING, Kind.TEXT) and native is ChannelType.CHAR:
        return _decode(numbers.astype(np.uint8).tobytes())
    if native not in _NUMERIC_WIRE:
        raise ValueError(f"a put of type {ChannelType(native).name} is not supported")
    if kind is Kind.ARRAY:
        if numbers.size > param.length:
            raise ValueError(f"{numbers.size} elements for a waveform of {param.length}")
        return numbers.astype(numbers.dtype.newbyteorder("="))
    if numbers.size != 1:
        raise ValueError("empty put (no element)" if numbers.size == 0 else
                         f"{numbers.size} values for a scalar PV")
    return numbers.reshape(-1)[0].item()


def _decode(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).split(b"\0", 1)[0].decode("latin-1")
    return str(raw).split("\0", 1)[0]


def _shown(data: Any, data_type: ChannelType) -> str:
    """A put's value for a log line: the first element, and how many there were."""
    try:
        native = native_type(data_type)
        items = list(data) if native is ChannelType.STRING else np.asarray(data).reshape(-1)
        if native is ChannelType.CHAR and len(items) > 1:
            text = _decode(np.asarray(items, dtype=np.uint8).tobytes())
            return short_value(text)
        if not len(items):
            return "(nothing)"
        first = items[0]
        first = _decode(first) if isinstance(first, (bytes, bytearray)) else \
            first.item() if hasattr(first, "item") else first
        shown = short_value(first)
        return shown if len(items) == 1 else f"{shown} (+{len(items) - 1} more elements)"
    except Exception:  # never let describing a bad value fail the refusal
        return "(undecodable)"
