"""One p4p SharedPV per PV, typed as QSRV types an EPICS 7 record.

- longout/longin: NTScalar int32; ao/ai: NTScalar double; stringout/stringin: NTScalar string;
  each with alarm, timeStamp, display (limits, description, units, precision, form), control
  (limits) and valueAlarm (alarm limits), all from the parameter's declaration;
- bo/bi/mbbo/mbbi: NTEnum (index and choices);
- a char waveform (paths, file names): NTScalarArray of signed bytes ending in NUL, as QSRV
  serves FTVL=CHAR and ophyd-async expects;
- a numeric waveform: NTScalarArray of its element type (unsigned and 64-bit included, which
  Channel Access cannot carry);
- a frame (Kind.NDARRAY): NTNDArray, its updates made by `ntndarray_stream.NTNDArrayStream`.

A put is decoded from the Value the client sent into a plain Python value and handed to the
component's put handler in the IOC's event loop; its completion follows the client's request:
with `record[block=true]` (ophyd-async's `wait=True`, `pvput -w`) the put completes when the work
does (an Acquire when the acquisition ends, as a CA put-callback); without, once the value is
accepted (`ndflow.transport.accepted`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import numpy as np
from p4p import Type, Value
from p4p.nt import NTEnum, NTScalar
from p4p.server import raw

from ..access import Access
from ..params import Kind, Param, short_value
from ..refusals import REFUSALS
from ..transport import HANDLED, PVSpec, accepting

log = logging.getLogger("ndflow.pva")

#: numpy element type -> PVA scalar type code
TYPE_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "i8": "l",
              "u8": "L", "f4": "f", "f8": "d"}
_NO_ALARM = {"severity": 0, "status": 0, "message": "NO_ALARM"}
_RECORD_ALARM = 3  # alarm.status "RECORD": a record's alarm check, as QSRV reports HIHI/LOW...


class _LoopSharedPV(raw.SharedPV):
    """A SharedPV whose handler runs in the IOC's event loop (it may be a coroutine): PVXS calls
    handlers in its own threads, the put path belongs to the loop. The first client's connect
    and the last one's disconnect are told to `on_clients` at once, in PVXS's thread, before
    the new channel serves anything (a value posted then is what its first get sees)."""

    def __init__(self, loop_of: Callable[[], asyncio.AbstractEventLoop | None],
                 on_clients: Callable[[bool], None] | None = None, **kw: Any) -> None:
        self._loop_of = loop_of
        self._on_clients = on_clients
        super().__init__(**kw)

    def _onFirstConnect(self, _junk: Any) -> None:
        if self._on_clients is not None:
            self._on_clients(True)

    def _onLastDisconnect(self, _junk: Any) -> None:
        if self._on_clients is not None:
            self._on_clients(False)

    def _exec(self, op: Any, method: Callable, *args: Any) -> None:
        if op is None and method in (self._onFirstConnect, self._onLastDisconnect):
            method(*args)
            return
        loop = self._loop_of()
        if loop is None or loop.is_closed():
            if op is not None:
                op.done(error="the IOC is not serving")
            return
        loop.call_soon_threadsafe(_call, op, method, args)


def _call(op: Any, method: Callable, args: tuple) -> None:
    try:
        result = method(*args)
        if asyncio.iscoroutine(result):
            asyncio.ensure_future(result)
    except Exception as exc:  # a handler must never take the loop down
        log.error("pvAccess handler failed: %s", exc)
        if op is not None:
            op.done(error=str(exc))


class PVAEndpoint:
    """One PV over pvAccess; `value` is what clients see (in `to_wire` form).

    A value is built into a pvData Value and posted only while some client has the channel
    open: most of an IOC's thousands of PVs have no PVA client, and building a Value for each
    change of each of them cost the event loop about 8% of its time. The first client's
    connect posts the latest value, with the time stamp of its change, before the channel
    serves anything."""

    def __init__(self, spec: PVSpec, value: Any, transport: Any) -> None:
        self.spec = spec
        self.param = spec.param
        self.readback = spec.readback
        self.pvname = spec.param.name  # replaced by the full name when served
        self.choices = _choices(spec)
        self.type = _type_of(spec.param)
        self.value = self.to_wire(value) if value is not None else _empty(spec.param)
        self.transport = transport
        self._stamp = _now()
        self._clients = False  # a client has the channel open: post each change
        self._unposted = False  # a change not posted because nobody was connected
        self._lock = threading.Lock()
        self.pv = _LoopSharedPV(lambda: transport.loop, self._clients_changed,
                                handler=self,  # read-only PVs refuse puts with our message
                                initial=self._initial())

    # --- values ---------------------------------------------------------------------------------
    def to_wire(self, value: Any) -> Any:
        kind = self.param.kind
        if kind is Kind.ENUM:
            return int(value)
        if kind is Kind.INT:
            return int(value)
        if kind is Kind.FLOAT:
            return float(value)
        if kind in (Kind.STRING, Kind.TEXT):
            return str(value)
        return value

    async def publish_value(self, value: Any) -> None:
        self.post(value)

    def post(self, value: Any) -> None:
        """Show `value` (to_wire form) to every client (any thread: PVXS locks)."""
        with self._lock:  # against _clients_changed: no change is lost, none posted twice
            self.value = value
            self._stamp = _now()
            if not self._clients:
                self._unposted = True
                return
            self._post(value, self._stamp)

    def _post(self, value: Any, stamp: dict[str, int]) -> None:
        fields = {"value": self._field(value), "timeStamp": stamp, "alarm": self._alarm(value)}
        self.pv.post(Value(self.type, fields))

    def _clients_changed(self, connected: bool) -> None:
        """PVXS's thread: the first client connects (post what it has missed) or the last one
        leaves."""
        with self._lock:
            self._clients = connected
            if connected and self._unposted:
                self._unposted = False
                self._post(self.value, self._stamp)

    def _field(self, value: Any) -> Any:
        kind = self.param.kind
        if kind is Kind.ENUM:
            return {"index": value}
        if kind is Kind.TEXT:
            return _text_bytes(value, self.param.length)
        return value

    def _alarm(self, value: Any) -> dict:
        alarm = self.param.alarm
        if alarm is None or not self.readback or self.param.kind not in (Kind.INT, Kind.FLOAT):
            return _NO_ALARM
        status, severity = alarm.check(float(value))
        return {"severity": severity, "status": _RECORD_ALARM if severity else 0,
                "message": status}

    def _initial(self) -> Value:
        p = self.param
        fields: dict[str, Any] = {"value": self._field(self.value), "timeStamp": _now(),
                                  "alarm": self._alarm(self.value)}
        if p.kind is Kind.ENUM:
            fields["value"] = {"index": self.value, "choices": list(self.choices)}
        elif p.kind in (Kind.INT, Kind.FLOAT, Kind.STRING):
            fields["display"] = {"description": p.doc[:255], "units": p.units}
            if p.kind is not Kind.STRING:
                fields["display"].update(_limits(p, "display"))
                fields["display"]["precision"] = p.precision
                fields["control"] = _limits(p, "control")
                if p.alarm is not None:
                    fields["valueAlarm"] = _value_alarm(p)
        return Value(self.type, fields)

    # --- a client's put (the event loop) --------------------------------------------------------
    async def put(self, pv: Any, op: Any) -> None:
        request = op.pvRequest()
        try:
            value = wire_value(self.param, op.value())
        except (ValueError, TypeError, KeyError) as exc:
            REFUSALS.refuse(log, self.pvname, "(undecodable)", str(exc))
            op.done(error=f"{self.pvname}: {exc}")
            return
        user, host = _client(op)
        rights = self.transport.access.access(self.spec.asg, user, host, self.spec.asl,
                                              address=True)
        if rights < Access.WRITE:  # the access security rules, as over CA
            REFUSALS.refuse(log, self.pvname, short_value(value),
                            f"no write access for {user}@{host}")
            op.done(error=f"{self.pvname}: no write access")
            return
        on_put = self.spec.on_put
        if on_put is None:
            REFUSALS.refuse(log, self.pvname, short_value(value), "read-only PV")
            op.done(error=f"{self.pvname}: read-only PV")
            return
        block = _blocking(request)
        accepted = asyncio.get_running_loop().create_future()
        with accepting(lambda: accepted.done() or accepted.set_result(None)):
            work = asyncio.ensure_future(on_put(value, self))
        if not block:  # complete as soon as the value is accepted; the work goes on
            await asyncio.wait([work, accepted], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                op.done()
                work.add_done_callback(_quiet)
                return
        try:
            result = await work
        except Exception as exc:
            if not getattr(exc, "ndflow_logged", False):
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                REFUSALS.refuse(log, self.pvname, short_value(value), reason)
            op.done(error=str(exc) or type(exc).__name__)
            return
        if result is not HANDLED:
            self.post(self.to_wire(result))
        op.done()


def make_endpoint(spec: PVSpec, value: Any, transport: Any) -> PVAEndpoint | None:
    if spec.param.kind is Kind.NDARRAY:
        from .frames import FrameEndpoint
        return FrameEndpoint(spec, transport)
    return PVAEndpoint(spec, value, transport)


# --- types and metadata ---------------------------------------------------------------------------
_TYPES: dict[tuple, Type] = {}


def _type_of(p: Param) -> Type:
    key = (p.kind, p.dtype)
    if key not in _TYPES:
        if p.kind is Kind.ENUM:
            _TYPES[key] = NTEnum.buildType()
        elif p.kind is Kind.INT:
            _TYPES[key] = NTScalar.buildType("i", display=True, control=True, valueAlarm=True,
                                             form=True)
        elif p.kind is Kind.FLOAT:
            _TYPES[key] = NTScalar.buildType("d", display=True, control=True, valueAlarm=True,
                                             form=True)
        elif p.kind is Kind.STRING:
            _TYPES[key] = NTScalar.buildType("s", display=True, form=True)
        elif p.kind is Kind.TEXT:
            _TYPES[key] = NTScalar.buildType("ab")
        else:
            _TYPES[key] = NTScalar.buildType("a" + TYPE_CODES[np.dtype(p.dtype).str[1:]])
    return _TYPES[key]


def _choices(spec: PVSpec) -> tuple[str, ...]:
    p = spec.param
    if p.kind is not Kind.ENUM:
        return ()
    return p.rbv_choices if spec.readback and p.rbv_choices else p.choices


def _limits(p: Param, which: str) -> dict[str, float]:
    """Display limits as HOPR/LOPR; control limits (DRVH/DRVL) only when both ends are declared,
    as the CA channel shows them."""
    if p.low is None and p.high is None or which == "control" and (p.low is None or p.high is None):
        return {}
    cast = int if p.kind is Kind.INT else float
    return {"limitLow": cast(p.low or 0), "limitHigh": cast(p.high or 0)}


def _value_alarm(p: Param) -> dict[str, Any]:
    a = p.alarm
    cast = int if p.kind is Kind.INT else float
    return {"active": True,
            "lowAlarmLimit": cast(a.lolo or 0), "lowWarningLimit": cast(a.low or 0),
            "highWarningLimit": cast(a.high or 0), "highAlarmLimit": cast(a.hihi or 0),
            "lowAlarmSeverity": 2 if a.lolo is not None else 0,
            "lowWarningSeverity": 1 if a.low is not None else 0,
            "highWarningSeverity": 1 if a.high is not None else 0,
            "highAlarmSeverity": 2 if a.hihi is not None else 0}


def _empty(p: Param) -> Any:
    if p.kind is Kind.ARRAY:
        return np.zeros(0, dtype=p.dtype)
    return {Kind.INT: 0, Kind.FLOAT: 0.0, Kind.STRING: "", Kind.TEXT: "", Kind.ENUM: 0}[p.kind]


def _text_bytes(text: str, length: int) -> np.ndarray:
    raw = text.encode("latin-1", "replace")[: max(length - 1, 0)] + b"\0"
    return np.frombuffer(raw, dtype=np.int8)


def _now() -> dict[str, int]:
    t = time.time()
    seconds = int(t)
    return {"secondsPastEpoch": seconds, "nanoseconds": int((t - seconds) * 1e9)}


# --- a put's value off the wire -------------------------------------------------------------------
def wire_value(p: Param, value: Value) -> Any:
    """The value a client put, as plain Python (as `ndflow.ca.channels.wire_value` gives it):
    the choice index for an enum, int/float/str for scalars, a str for a char waveform, a numpy
    array for a numeric waveform. Raises ValueError for what cannot be read."""
    changed = value.changedSet()
    if p.kind is Kind.ENUM:
        if "value.index" not in changed and "value" not in changed:
            raise ValueError("the put changes no value.index")
        return int(value["value.index"])
    if "value" not in changed:
        raise ValueError("the put changes no value")
    v = value["value"]
    if p.kind is Kind.TEXT:
        if isinstance(v, str):
            return v.split("\0", 1)[0]
        return np.asarray(v).astype(np.uint8).tobytes().split(b"\0", 1)[0].decode("latin-1")
    if p.kind is Kind.ARRAY:
        arr = np.asarray(v)
        if arr.size > p.length:
            raise ValueError(f"{arr.size} elements for a waveform of {p.length}")
        return arr
    if isinstance(v, np.ndarray):
        raise ValueError(f"{v.size} values for a scalar PV")
    return v


def _client(op: Any) -> tuple[str, str]:
    """(user, host) of a put: the account the client authenticated as and its address (PVA has
    no reported host name; QSRV matches HAGs against the peer's address too)."""
    try:
        user = op.account() or ""
    except Exception:
        user = ""
    try:
        peer = op.peer() or ""
    except Exception:
        peer = ""
    host = peer.rsplit(":", 1)[0].strip("[]") if peer else ""
    return user, host


def _blocking(request: Value) -> bool:
    """Whether the client asked to wait for completion (`record[block=true]`)."""
    try:
        block = request["record._options.block"]
    except (KeyError, AttributeError, TypeError):
        return False
    return str(block).lower() in ("true", "1")


def _quiet(task: asyncio.Future) -> None:
    """A put completed early: its refusal (logged by handle_put) has no client to go to."""
    if not task.cancelled():
        task.exception()
