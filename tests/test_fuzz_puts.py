"""Every bad input refused cleanly (issue item 4, acceptance 2 and 3): a fuzzing client against
the default IOC.

Every writable PV (enumerated from the declarations, in-process, with the IOC's own config) gets
NaN, +-Inf, +-2**40, 99 and 5.5 as DBR_DOUBLE, "" and numbers written as text as DBR_STRING, and a
10,000-character string. For each put the declaration's own rule (`Param.coerce`) says what must
happen, and the test checks that it did:

- refused: the client gets a CA error (the put-callback status is not ECA_NORMAL) and the value
  is unchanged;
- clamped or truncated (DRVL/DRVH, a string's size): the put succeeds and the readback is the
  clamped value;
- accepted: the put succeeds and the readback is the value (or what the PV's put hook made of
  it: a rewiring refused, a path normalised).

Then: no put hung (every put-callback came back within its timeout), the IOC is alive, every
plugin still processes a frame (its worker thread lives), a Single acquisition with
put-completion works and Stats1 computes on it, and the IOC log has no traceback and at most one
line per PV every few seconds (rate limit).

Puts go out as pyepics (libca) put-callbacks in batches, one batch per value, with a status
callback (pyepics' own caput ignores the status of a put-callback); readbacks are read in
batches too. The 10,000-character string goes to the 40-character and scalar PVs through
caproto's client, since libca refuses locally to send more elements than a PV has.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from epics import ca, dbr

from ndflow.refusals import REFUSALS
from ndflow.component import Component
from ndflow.config import load_config
from ndflow.params import Access, Kind, Param
from ndflow.server import IOC

from test_acquisition import get, put, wait_for

PUT_TIMEOUT = 5.0  # a batch of put-callbacks must all come back within this
READ_TIMEOUT = 5.0
RATE_LIMIT_S = REFUSALS.interval  # the IOC logs a PV at most once per interval
#: busy records: a put of their active value starts something that lasts; such a put is never
#: sent (none of the fuzz values is one: every enum value below is refused)
BUSY = {"Acquire", "AcquireBusy", "Capture", "WriteFile", "ReadFile", "Trigger", "TSAcquire",
        "AutoOffsetScale", "FlushNow", "PreAllocBuffers", "ProcessPlugin", "ReleaseFrames",
        "SaveBackground", "SaveFlatField", "Reload"}
#: what a fuzz round sends: (label, how, value); how = "double" (DBR_DOUBLE), "string"
#: (DBR_STRING) or "chars" (a long string as characters)
ROUNDS = [
    ("NaN", "double", math.nan), ("+Inf", "double", math.inf), ("-Inf", "double", -math.inf),
    ("+2**40", "double", 2.0 ** 40), ("-2**40", "double", -2.0 ** 40),
    ("99", "double", 99.0), ("5.5", "double", 5.5),
    ('""', "string", ""), ('"1.5"', "string", "1.5"), ('"-1"', "string", "-1"),
    ('"1e3"', "string", "1e3"), ('" 7 "', "string", " 7 "), ('"0x10"', "string", "0x10"),
    ("10k chars", "chars", "x" * 10_000),
]


@dataclass
class Target:
    pv: str  # the setpoint
    readback: str  # where the stored value shows (X_RBV, or X itself for a setpoint-only PV)
    param: Param
    hooked: bool  # a put hook may change or refuse the value
    component: str

    @property
    def busy(self) -> bool:
        return self.param.name.rsplit(":", 1)[-1] in BUSY


def declared_targets(prefix: str) -> list[Target]:
    """Every writable PV of the default IOC, asked of the declarations in-process (the same
    config `ndflow run` serves; nothing is started)."""
    config, lines = load_config(None)
    config.prefix = prefix
    ioc = IOC(config, lines)
    try:
        targets = []
        for c in ioc.components:
            full = prefix + c.prefix
            for p in c.params:
                if not p.setpoint_name:
                    continue
                hooked = bool(c.put_hooks.get(p.name) or getattr(c, f"put_{p.name}", None)
                              or type(c).after_put is not Component.after_put)
                readback = p.readback_name if p.access is Access.RW else p.setpoint_name
                targets.append(Target(full + p.setpoint_name, full + readback, p, hooked, c.port))
        return targets
    finally:
        ioc.shutdown()


# --- what the declaration says must happen --------------------------------------------------------
def decoded(target: Target, how: str, value: Any) -> Any:
    """The value the IOC's put handler gets for this wire form (as Channel Access carries it)."""
    kind = target.param.kind
    if how == "double":
        return np.array([value]) if kind is Kind.ARRAY else value
    if how == "string":
        return np.array([value], dtype=object) if kind is Kind.ARRAY else value
    # characters: text for a string PV; a text PV gets at most NELM of them (libca cuts them);
    # a scalar or a short waveform refuses 10,000 elements
    if kind is Kind.TEXT:
        return value[: target.param.length]
    if kind is Kind.STRING:
        return value
    raise ValueError("10000 elements for a scalar PV")


def expected(target: Target, how: str, value: Any) -> tuple[str, Any]:
    """('refused', None), ('clamped', stored) or ('accepted', stored)."""
    try:
        stored, note = target.param.coerce(decoded(target, how, value))
    except (TypeError, ValueError):
        return "refused", None
    return ("clamped" if note else "accepted"), stored


def same(param: Param, readback: Any, stored: Any) -> bool:
    if param.kind is Kind.ARRAY:
        return readback is not None and np.array_equal(np.asarray(readback).reshape(-1)[:len(
            np.asarray(stored).reshape(-1))], np.asarray(stored).reshape(-1))
    if param.kind is Kind.FLOAT:
        return readback is not None and float(readback) == float(stored)
    if param.kind in (Kind.INT, Kind.ENUM):
        return readback is not None and int(readback) == int(stored)
    if param.kind is Kind.STRING:  # pyepics strips a DBR_STRING's trailing blanks
        return readback == stored.rstrip()
    return readback == stored


# --- libca with the put-callback status -----------------------------------------------------------
class LibcaClient:
    """pyepics' libca, with put-callbacks whose status is kept (epics.caput drops it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[int, int] = {}
        self._keep: dict[int, Any] = {}
        self._next = 0
        self._callback = dbr.make_callback(self._done, dbr.event_handler_args)
        self.chids: dict[str, Any] = {}

    def _done(self, args: Any) -> None:
        with self._lock:
            self._status[args.usr] = args.status

    def connect(self, names: list[str]) -> None:
        for name in names:
            if name not in self.chids:
                self.chids[name] = ca.create_channel(name, connect=False, auto_cb=False)
        missing = [n for n in names if not ca.connect_channel(self.chids[n], timeout=10)]
        assert not missing, f"cannot connect {missing[:5]}"

    def put(self, pv: str, how: str, value: Any, count: int | None = None) -> int:
        """Send one put-callback; returns its key for `wait`."""
        if how == "double":
            values = np.atleast_1d(np.asarray(value, dtype=np.float64))
            ftype, data = dbr.DOUBLE, (ctypes.c_double * len(values))(*values)
        elif how == "string":
            ftype, data = dbr.STRING, (dbr.string_t * 1)()
            data[0].value = value.encode("latin-1")
        else:  # characters, NUL-terminated if they fit
            raw = value.encode("latin-1") + b"\0"
            raw = raw[: count or len(raw)]
            ftype, data = dbr.CHAR, (ctypes.c_ubyte * len(raw))(*raw)
        with self._lock:
            key = self._next
            self._next += 1
            usr = ctypes.py_object(key)
            self._keep[key] = (data, usr)
        status = ca.libca.ca_array_put_callback(ftype, len(data), self.chids[pv], data,
                                                 self._callback, usr)
        assert status == dbr.ECA_NORMAL, f"{pv}: libca refused to send the put ({status})"
        return key

    def wait(self, keys: list[int], timeout: float = PUT_TIMEOUT) -> dict[int, int | None]:
        """The status of every put; None for one whose callback did not come (a hang)."""
        ca.flush_io()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(k in self._status for k in keys):
                    break
            ca.poll(evt=1e-3, iot=0.01)
        with self._lock:
            out = {k: self._status.pop(k, None) for k in keys}
            for k, status in out.items():
                # a put whose callback has not come keeps its buffer and usr object: libca may
                # still call back with it (freeing it made the client segfault under load)
                if status is not None:
                    self._keep.pop(k, None)
        return out

    def read(self, targets: list[Target]) -> dict[str, Any]:
        """Every target's readback, requested together."""
        for t in targets:
            ca.get(self.chids[t.readback], wait=False)
        ca.flush_io()
        out = {}
        for t in targets:
            value = ca.get_complete(self.chids[t.readback], timeout=READ_TIMEOUT)
            if t.param.kind is Kind.TEXT and value is not None:  # as stored: pyepics' own
                raw = np.asarray(value, dtype=np.uint8).tobytes()  # as_string strips blanks
                value = raw.split(b"\0", 1)[0].decode("latin-1")
            out[t.pv] = value
        return out


class CaprotoChars:
    """caproto's sans-I/O client on one circuit, for what libca cannot send: 10,000 characters
    into a PV of fewer elements (a 40-character string, a scalar). Each put waits for its answer,
    a WriteNotifyResponse or an ErrorResponse naming the put (caproto's threading client never
    matches the latter to its write and times out)."""

    def __init__(self, names: list[str]) -> None:
        from caproto import bcast_socket
        from caproto.sync.client import make_channel
        self.udp = bcast_socket()
        self.udp.bind(("", 0))
        self.udp.settimeout(PUT_TIMEOUT)
        self.channels = {name: make_channel(name, self.udp, 0, PUT_TIMEOUT) for name in names}

    def put(self, pv: str, text: str) -> bool | None:
        """True if the IOC accepted the put, False for a CA error, None if no answer came."""
        import caproto
        from caproto.sync.client import recv, send
        chan = self.channels[pv]
        request = chan.write(data=np.frombuffer(text.encode(), dtype=np.uint8),
                             data_type=caproto.ChannelType.CHAR, notify=True)
        send(chan.circuit, request, pv)
        deadline = time.monotonic() + PUT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                commands = recv(chan.circuit)
            except OSError:  # the socket's timeout
                continue
            for command in commands:
                if isinstance(command, caproto.WriteNotifyResponse) and \
                        command.ioid == request.ioid:
                    return command.status.success == 1
                if isinstance(command, caproto.ErrorResponse) and \
                        command.original_request.parameter2 == request.ioid:
                    return False
        return None

    def close(self) -> None:
        from caproto.sync.client import global_circuits, sockets
        self.udp.close()
        for circuit in {chan.circuit for chan in self.channels.values()}:
            sock = sockets.pop(circuit, None)
            if sock is not None:
                sock.close()
            global_circuits.pop((circuit.address, circuit.priority), None)


# --- the test -------------------------------------------------------------------------------------
def test_fuzz_every_writable_pv(default_ioc):
    started = time.monotonic()
    p = default_ioc.prefix
    targets = declared_targets(p)
    client = LibcaClient()
    client.connect(sorted({t.pv for t in targets} | {t.readback for t in targets}))
    original = client.read(targets)
    assert all(original[t.pv] is not None for t in targets), "a readback did not answer"
    caproto_targets = [t.pv for t in targets if t.param.kind is not Kind.TEXT]
    chars = CaprotoChars(caproto_targets)

    tally: Counter[str] = Counter()
    failures: list[str] = []
    previous = dict(original)

    def send(batch: list[Target], how: str, value: Any, label: str) -> dict[str, bool]:
        """Put `value` to every PV of `batch`: {pv: accepted?}; a put with no answer within
        PUT_TIMEOUT (a hang) is a failure."""
        status: dict[str, bool] = {}
        via_caproto = [t for t in batch if how == "chars" and t.param.kind is not Kind.TEXT]
        caproto_pvs = {t.pv for t in via_caproto}
        keys = {client.put(t.pv, how, value, count=t.param.length if how == "chars" else None):
                t.pv for t in batch if t.pv not in caproto_pvs}
        for t in via_caproto:
            answer = chars.put(t.pv, value)
            if answer is None:
                failures.append(f"{label}: put to {t.pv} had no answer in {PUT_TIMEOUT} s")
            else:
                status[t.pv] = answer
        for key, result in client.wait(list(keys)).items():
            if result is None:
                failures.append(f"{label}: put to {keys[key]} did not complete in "
                                f"{PUT_TIMEOUT} s")
            else:
                status[keys[key]] = result == dbr.ECA_NORMAL
        return status

    def judge(t: Target, outcome: str, stored: Any, ok: bool, before: Any, after: Any,
              final: bool, label: str) -> bool:
        """Whether the put kept its declaration's rule; `final`: no second chance left, so
        a difference is a failure (or a hook's doing), not a reason to look again."""
        if outcome == "refused":
            if ok:  # coerce runs before any hook: nothing may take what it refuses
                failures.append(f"{label}: {t.pv} accepted what its declaration refuses")
                return True
            if same_or_equal(t, after, before):
                return True
            if final:
                failures.append(f"{label}: refused put changed {t.pv}: {before!r} -> {after!r}")
            return final
        if not ok:
            if t.hooked:  # the PV's hook refused it, with its reason
                return True
            failures.append(f"{label}: {t.pv} refused a value its declaration takes "
                            f"({stored!r})")
            return True
        if same(t.param, after, stored):
            return True
        if final:
            if t.hooked:
                tally["adjusted by a put hook"] += 1
            else:
                failures.append(f"{label}: {t.pv} reads {after!r}, its declaration stores "
                                f"{stored!r}")
        return final

    try:
        for label, how, value in ROUNDS:
            plan = {t.pv: expected(t, how, value) for t in targets}
            sent = [t for t in targets
                    if not (t.busy and plan[t.pv][0] != "refused")]  # never start a busy record
            tally["skipped busy"] += len(targets) - len(sent)
            status = send(sent, how, value, label)
            now = client.read(sent)
            recheck = []
            for t in sent:
                if t.pv not in status:
                    continue
                outcome, stored = plan[t.pv]
                tally["puts"] += 1
                tally[outcome if status[t.pv] else "refused (CA error)" if outcome == "refused"
                      else "refused by a put hook (CA error)"] += 1
                if not judge(t, outcome, stored, status[t.pv], previous[t.pv], now[t.pv],
                             False, label):
                    recheck.append(t)
            # A readback that differs may have been changed by another PV's put hook in the
            # same batch (MaxArrayRate sets MinCallbackTime, Stats' Reset zeroes its results):
            # those PVs get the value again without the others, then any still odd alone.
            def look_again(group: list[Target], final: bool) -> list[Target]:
                before = client.read(group)
                again = send(group, how, value, label)
                after = client.read(group)
                now.update(after)
                tally["re-checked"] += len(group)
                return [t for t in group if t.pv in again and not judge(
                    t, *plan[t.pv], again[t.pv], before[t.pv], after[t.pv], final, label)]

            if recheck:
                for t in look_again(recheck, final=False):
                    look_again([t], final=True)
            previous.update(now)
            assert default_ioc.proc.poll() is None, f"IOC died in round {label}"
    finally:
        chars.close()
    fuzz_seconds = time.monotonic() - started

    # --- restore what changed (never a busy record), then check everything still works ----------
    final = client.read(targets)
    changed = [t for t in targets if not t.busy and not same_or_equal(t, final[t.pv],
                                                                     original[t.pv])]
    keys = {}
    for t in changed:
        how, value, count = restore_form(t, original[t.pv])
        keys[client.put(t.pv, how, value, count=count)] = t.pv
    results = client.wait(list(keys))
    assert all(v is not None for v in results.values()), "a restoring put did not complete"
    restored = client.read(changed)
    late = [t for t in changed if not same_or_equal(t, restored[t.pv], original[t.pv])]
    deadline = time.monotonic() + 3.0
    while late and time.monotonic() < deadline:
        # a value linked to another PV (an overlay following its ROI, as commonPlugins links
        # them) takes its source's restored value within a second
        time.sleep(0.25)
        again = client.read(late)
        late = [t for t in late if not same_or_equal(t, again[t.pv], original[t.pv])]
    if late:
        # coupled values (an overlay's PositionX and CenterX, each computed from the other and
        # SizeX, as in ADCore) restored before their partner: restore them once more, now that
        # every partner holds its original value
        keys = {}
        for t in late:
            how, value, count = restore_form(t, original[t.pv])
            keys[client.put(t.pv, how, value, count=count)] = t.pv
        assert all(v is not None for v in client.wait(list(keys)).values())
        again = client.read(late)
        late = [t for t in late if not same_or_equal(t, again[t.pv], original[t.pv])]
    not_restored = [t.pv for t in late]
    assert not not_restored, f"not restored: {not_restored[:10]}"

    assert not failures, f"{len(failures)} puts broke their declaration's rule:\n" + \
        "\n".join(failures[:40])
    assert default_ioc.proc.poll() is None, "the IOC died"
    check_still_working(p)

    log = default_ioc.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:4000]
    lines = check_log_rate(log, targets)
    total = time.monotonic() - started
    print(f"\nfuzz: {len(targets)} writable PVs, {tally['puts']} puts in {fuzz_seconds:.1f} s "
          f"(total with checks {total:.1f} s): " + ", ".join(f"{k} {v}" for k, v in
                                                           sorted(tally.items())) +
          f"; log: {sum(lines.values())} lines about {len(lines)} PVs, at most "
          f"{max(lines.values())} for one")
    assert tally["refused (CA error)"] > 0 and tally["clamped"] > 0


def same_or_equal(t: Target, a: Any, b: Any) -> bool:
    if t.param.kind is Kind.ARRAY:
        return a is not None and b is not None and np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def restore_form(t: Target, value: Any) -> tuple[str, Any, int | None]:
    kind = t.param.kind
    if kind is Kind.TEXT:
        return "chars", value, min(len(value) + 1, t.param.length)
    if kind is Kind.STRING:
        return "string", value, None
    if kind is Kind.ARRAY:
        return "double", np.asarray(value, dtype=np.float64), None
    return "double", float(value), None


PLUGINS = ["image1:", "ROI1:", "ROI2:", "ROI3:", "ROI4:", "Stats1:", "Stats2:", "Stats3:",
           "Stats4:", "Stats5:", "Proc1:", "Trans1:", "Codec1:", "CB1:", "Attr1:"]


def check_still_working(p: str) -> None:
    """Every plugin's worker thread processes a frame, and a Single acquisition with
    put-completion completes with Stats1's statistics computed on it."""
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("SizeX", 64),
                        ("SizeY", 48), ("SimMode", "LinearRamp"), ("Gain", 1.0),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("ArrayCallbacks", 1)]:
        put(p + "cam1:" + name, value)
    for plugin in PLUGINS:
        put(p + plugin + "EnableCallbacks", "Enable")
    put(p + "Stats1:ComputeStatistics", "Yes")
    before = {pl: get(p + pl + "ArrayCounter_RBV") for pl in PLUGINS}
    cam_before = get(p + "cam1:ArrayCounter_RBV")
    t0 = time.monotonic()
    put(p + "cam1:Acquire", 1, wait=True, timeout=20)  # put-completion: the frame is processed
    assert time.monotonic() - t0 < 20
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == cam_before + 1, 5)
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    stuck = [pl for pl in PLUGINS
             if not wait_for(lambda pl=pl: get(p + pl + "ArrayCounter_RBV") > before[pl], 5)]
    assert not stuck, f"plugins that no longer process frames: {stuck}"
    assert get(p + "Stats1:UniqueId_RBV") == get(p + "cam1:UniqueId_RBV")
    ramp = np.arange(64)[None, :] + np.arange(48)[:, None]  # LinearRamp, Gain 1, 1 ms: inc 1
    assert get(p + "Stats1:Total_RBV") > 0
    assert get(p + "Stats1:MaxValue_RBV") <= 255 and get(p + "Stats1:MeanValue_RBV") > 0
    assert ramp.size == get(p + "Stats1:ArraySize0_RBV") * get(p + "Stats1:ArraySize1_RBV")
    for plugin in PLUGINS:
        if plugin != "image1:":
            put(p + plugin + "EnableCallbacks", "Disable")


def check_log_rate(log: str, targets: list[Target]) -> Counter[str]:
    """Each refusal or clamp is a line naming the PV and the value, and a PV has at most one
    line, plus the count of those held back, per rate-limit interval: never three lines within
    one interval, however often the fuzz hit it."""
    times: dict[str, list[float]] = defaultdict(list)
    names = {t.pv for t in targets}
    line_re = re.compile(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) \w+ \S+: (\S+): ")
    for line in log.splitlines():
        m = line_re.match(line)
        if m and m.group(5) in names:
            h, mi, sec, ms = (int(g) for g in m.group(1, 2, 3, 4))
            times[m.group(5)].append(h * 3600 + mi * 60 + sec + ms / 1000)
    assert times, "no refusal was logged"
    crowded = {pv: ts for pv, ts in times.items()
               if any(ts[i + 2] - ts[i] < RATE_LIMIT_S - 0.5 for i in range(len(ts) - 2))}
    assert not crowded, f"more than 2 lines per {RATE_LIMIT_S} s for {list(crowded)[:5]}"
    refused = [line for line in log.splitlines() if "put refused, value " in line]
    assert refused and all(re.search(r" \S+:\S+: put refused, value .+: .+", line)
                           for line in refused)
    return Counter({pv: len(ts) for pv, ts in times.items()})
