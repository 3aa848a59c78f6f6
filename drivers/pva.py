"""pvaDriver: frames from an NTNDArray PV (another IOC's NDPluginPva, a p4p server, PvaPy).

PVs as ADCore's pvaDriver.template: `PvName`/`PvName_RBV` (the PV to read, changeable at run
time), `PvConnection_RBV` (Down/Up), `OverrunCounter`/`OverrunCounter_RBV` (updates lost before
they reached us; writing 0 resets it); plus ADBase. Acquire=1 starts a pvAccess monitor on the
PV, Acquire=0 cancels it, and ImageMode Single/Multiple/Continuous count received frames, as
pvaDriver does. Each update becomes an NDArray from this driver's pool carrying the update's
uniqueId, timestamps, dimensions, attributes and codec (a compressed frame is passed on
compressed; plugins that need pixels say so, a Codec plugin in Decompress mode restores them,
and the HDF5 writer stores lz4hdf5/bslz4/blosc/zlib chunks as they are). The sizes, offsets,
binning, data type and colour mode of the latest frame show on the ADBase readbacks, as
pvaDriver sets them.

Threads. p4p (PVXS) calls our monitor handlers in its own threads; a handler only sets an Event.
- The link thread (`<port>-pva`, ndflow.drivers.pva_link) owns a small monitor of the PV's
  `uniqueId` alone, always open while a name is set: it tells connection (a status on
  disconnect, "not found", "not an NTNDArray") whether or not we acquire, and renews a channel
  left disconnected so that a restarted source is found within seconds. PvConnection_RBV is Up
  when that monitor is connected and, while acquiring, the frame monitor is live (pva_link).
- The acquisition thread (the base Driver's) opens the full monitor when an acquisition starts,
  pops updates in `produce_frame`, converts each (`ndflow.pva.ntndarray_in.from_value`) and copies
  the pixels into a pool buffer (the one copy, as pvaDriver's memcpy); it closes the monitor when
  the acquisition ends. A consumer slower than the source (a blocking plugin, AcquirePeriod,
  LossPolicy Pause) therefore leaves updates in the PVXS client queue (`queue_size` of them,
  pvRequest `record[queueSize=N]`), where PVXS squashes the surplus into the newest one.

Overruns. pvaDriver adds 1 per update whose overrunBitSet is not empty. p4p gives no access to
that bitset (nor to PVXS's MonitorStat squash counts), and a PVXS server (p4p, ndflow's own
Pva1:Image, NDPluginPvxs) always sends it empty: it squashes silently. So OverrunCounter counts
gaps in uniqueId instead: each id missing between two consecutive updates is one lost frame,
whether the server, the client queue or the network lost it. A uniqueId that does not increase
(the source restarted, or one that always sends 0, as p4p's NTNDArray.wrap) counts nothing and
restarts the count; nothing is counted across a disconnection. A source that skips ids itself
(NDPluginPva after its own queue dropped arrays) shows those as overruns too.

Deliberate differences from pvaDriver:
- The PV's current value when the monitor starts (or reconnects) is the last frame posted before
  it, not a new one: it is skipped when its uniqueId is the latest one already seen (pvaDriver
  takes it). So Acquire=1 in Single mode waits for the next frame the source posts. Acquire=1
  waits (up to FIRST_UPDATE_S) for that first update before the detector shows Acquire, so a
  client that starts its source once it sees Acquire loses no frame. When PvName changes while
  acquiring, the new frame monitor opens once the link's monitor has the new PV's value (the one
  skipped), and PvConnection_RBV is Down from the write until the new monitor is live.
- A frame with no dataTimeStamp and no timeStamp (p4p's wrap) is stamped with its arrival time.
- An update that is not a readable frame (not an NTNDArray, a booleanValue, sizes that disagree)
  is skipped with a status message naming the PV and the reason, and counted nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow import __version__
from ndflow.adcore import AD_BASE, MAX_QUEUE, NDARRAY_BASE
from ndflow.component import PutRefused
from ndflow.driver import CONTINUOUS, MULTIPLE, SINGLE, Driver, FrameContext
from ndflow.graph import PortGraph
from ndflow.ndarray import MissingCause, NDArray, xyz_dims
from ndflow.params import R, RW, enum_param, int_param, text_param
from ndflow.pool import NoMemory

from .pva_link import DOWN, RETRY_S, Connection, Link, short as _short

PV_NAME_LENGTH = 256  # the PvName waveform's NELM
WAIT_S = 0.1  # how often a waiting thread looks at its stop flag
#: how long Acquire=1 waits for a reachable PV's current value before acquiring regardless
FIRST_UPDATE_S = 2.0

PVA_PARAMS = (
    text_param("PvName", PV_NAME_LENGTH, "", RW, group="PVA",
               doc="the NTNDArray PV to read (changeable while acquiring)"),
    enum_param("PvConnection_RBV", ("Down", "Up"), DOWN, R, group="PVA"),
    int_param("OverrunCounter", 0, RW, low=0, group="PVA",
              doc="frames lost before they reached the driver (gaps in uniqueId); write 0 "
                  "to reset"),
)


class PVAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pv_name: str = Field("", max_length=PV_NAME_LENGTH - 1,
                         description="initial PvName: the NTNDArray PV to read")
    queue_size: int = Field(4, ge=1, le=MAX_QUEUE,
                            description="updates the pvAccess client queue holds for a slow "
                                        "consumer before the newest ones are squashed (overruns)")
    acquire_at_start: bool = Field(False, description="start Continuous acquisition at start")


class _Received(NDArray):
    """A frame read from the PV: it keeps the uniqueId and timestamps its source gave it (the
    base driver's stamp would number it by ArrayCounter), as pvaDriver's toArray does."""

    def stamp(self, unique_id: int, now: float | None = None) -> None:
        if not self.timestamp and self.epics_ts == (0, 0):  # a source that sent no time
            super().stamp(self.unique_id, now)


class PVADriver(Driver):
    screen = "pvaDriver"
    PARAMS = (NDARRAY_BASE, AD_BASE, PVA_PARAMS)
    kind = "pva"
    Options = PVAOptions
    manufacturer = "PVAccess driver"
    model = "Basic PVAccess driver"
    driver_version = __version__

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 options: PVAOptions | None = None, **kw: Any) -> None:
        self.options = options or PVAOptions()
        super().__init__(port, prefix, graph, pool_bytes, **kw)
        self.values.update({"PvName": self.options.pv_name, "ImageMode": CONTINUOUS,
                            "AcquireTime": 0.0, "AcquirePeriod": 0.0, "SizeX": 0, "SizeY": 0,
                            "SerialNumber_RBV": "No serial number",
                            "FirmwareVersion_RBV": "No firmware",
                            "SDKVersion_RBV": _p4p_version()})
        self._context: Any = None  # p4p.client.raw.Context, made in start()
        self._name = self.options.pv_name  # the PV both monitors read
        self._name_version = 0  # bumped by each PvName change
        self._renewals = 0  # bumped by each renewal of the PV's channel by the link
        self._lock = threading.Lock()  # the subscriptions, the name
        self._quit = threading.Event()
        self._connection = Connection(self._show_connection)
        self._link: Link | None = None  # made in start()
        # --- the acquisition thread's monitor
        self._sub: Any = None
        #: (name version, renewals) the monitor was opened for: reopened when they change
        self._sub_version = (-1, -1)
        self._opened_name = -1  # the name version a monitor was last opened for
        self._sub_retry = 0.0  # monotonic time before which it is not reopened...
        self._retry_version = -1  # ...if PvName is still the one that failed
        self._data = threading.Event()
        self._fresh = True  # the next update is the monitor's first since (re)connecting
        #: a first update with this uniqueId is the frame from before (re)connecting: skipped
        self._skip_id: int | None = None
        self._last_id: int | None = None  # uniqueId of the previous update, for gaps
        self._bad = ""  # the last unreadable-update message (said once per reason)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        from p4p.client.raw import Context
        # useenv=True: the raw Context would otherwise ignore EPICS_PVA_* (addresses, ports)
        self._context = Context("pva", nt=False, useenv=True)
        self._link = Link(self.port, self._context, self._connection, self.message,
                          self._renewed, self.log)
        self._link.start(self._name)
        if self.options.acquire_at_start:
            self._begin()

    def threads(self) -> list[threading.Thread]:
        return super().threads() + ([self._link.thread] if self._link is not None else [])

    def shutdown(self) -> None:
        self._quit.set()
        self._data.set()
        super().shutdown()
        self._close_sub()
        if self._link is not None:
            self._link.stop()
        if self._context is not None:
            self._context.close()
            self._context = None

    # --- PvName -----------------------------------------------------------------------------------
    def put_PvName(self, value: str) -> str:
        name = value.strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise PutRefused("PvName: control characters are not allowed in a PV name")
        with self._lock:
            self._name = name
            self._name_version += 1
            self._connection.frame_monitor_replaced()
        if self._link is not None:  # (before start(), start() opens the probe on it)
            self._link.rename(name)
        self._data.set()  # an acquisition waiting on the old PV reopens on this one
        return name

    def put_OverrunCounter(self, value: int) -> int:
        return value  # stored; counting goes on from it (0 resets), as an asyn parameter

    # --- connection ------------------------------------------------------------------------------
    def _show_connection(self, state: int) -> None:
        if self.values["PvConnection_RBV"] != state:
            self.set("PvConnection_RBV", state)

    def _renewed(self) -> None:
        """The link renewed the PV's channel (left disconnected): the frame monitor, still on
        the old one, is reopened on the new one by the acquisition thread."""
        with self._lock:
            self._renewals += 1
            self._connection.frame_monitor_replaced()
        self._data.set()

    # --- the acquisition thread: frames ---------------------------------------------------------
    def prepare(self, settings: dict[str, Any]) -> None:
        """Open the monitor and wait (up to FIRST_UPDATE_S, stoppable) for its first update, the
        PV's value now: once the detector shows Acquire, every frame the source posts is a new
        update of a live monitor (a source started right after Acquire=1 loses none). On a PV
        connected now, PvConnection_RBV stays Up meanwhile (no Down/Up at each Acquire=1); on
        one that is not, it shows Up once this monitor has its first update."""
        self._bad = ""
        with self._lock:
            name = self._name
        self._open_sub(self._link.seen_id(name) if self._link is not None else None)
        self._connection.frame_monitor(self._connection.probe_up)
        deadline = time.monotonic() + FIRST_UPDATE_S
        while self._sub is not None and not self._data.is_set() \
                and not self._stop_event.is_set() and time.monotonic() < deadline:
            self._data.wait(WAIT_S)

    def stop_hardware(self) -> None:
        self._close_sub()
        self._data.set()

    def produce_frame(self, ctx: FrameContext) -> NDArray | None:
        from p4p.client.raw import Disconnected, Finished, RemoteError
        while not ctx.stopped and not self._quit.is_set():
            sub = self._current_sub()
            if sub is None:
                self._data.wait(WAIT_S)
                self._data.clear()
                continue
            self._data.clear()  # before pop: an update arriving after it sets it again
            item = sub.pop()
            if item is None:
                self._data.wait(WAIT_S)
                continue
            if isinstance(item, Disconnected):  # the link thread says it
                # no gap is counted across the outage; the frame we had is not taken again
                self._fresh, self._skip_id, self._last_id = True, self._last_id, None
                self._connection.frame_monitor(False)
                continue
            if isinstance(item, (Finished, RemoteError)) or isinstance(item, Exception):
                self._close_sub(live=False, retry=True)
                if isinstance(item, RemoteError):
                    self._say_bad(f"PV {_short(self._name)}: server error: {item}")
                continue
            if self._connection.frames is False:  # subscribed: the server sends what follows
                with self._lock:  # (unless PvName changed since this monitor was opened)
                    if self._sub_version == (self._name_version, self._renewals):
                        self._connection.frame_monitor(True)
            try:
                frame = self._frame_of(item)
            except NoMemory as exc:  # its place is kept; the acquisition's end still counts it
                frame = NDArray.missing(MissingCause.NO_MEMORY, f"{self.port}: {exc}")
            if frame is None:
                continue
            if self._last_of(ctx):
                self._close_sub()  # the acquisition ends with this frame
            if ctx.acquisition.first_id is None and frame.valid:  # the sorter starts there
                ctx.acquisition.first_id = frame.unique_id
            return frame
        return None

    def _frame_of(self, value: Any) -> NDArray | None:
        """The NDArray of one update; None if it is not a new frame (the value from before the
        monitor started) or cannot be read (the status says why)."""
        from ndflow.pva.ntndarray_in import NTNDArrayError, from_value
        try:
            frame = from_value(value)
        except NTNDArrayError as exc:
            if "no union field selected" in str(exc):  # the server has no frame yet
                self._fresh = False
                return None
            self._say_bad(f"PV {_short(self._name)}: {exc}")
            return None
        uid = frame.unique_id
        fresh, self._fresh = self._fresh, False
        if fresh and uid == self._skip_id:  # posted before we started: not a new frame
            self._last_id = uid
            return None
        last, self._last_id = self._last_id, uid
        if last is not None and uid > last + 1:
            self.increment("OverrunCounter", uid - last - 1)
        self._bad = ""
        try:  # refused: the driver base puts a NO_MEMORY placeholder in the frame's place
            if frame.codec.compressed:
                out = self.output_buffer((frame.data.size,), np.uint8)
            else:
                out = self.output_buffer(frame.data.shape, frame.data.dtype)
        except NoMemory as exc:
            raise NoMemory(f"frame {uid}: {exc}") from None
        array = frame.to_ndarray(out, cls=_Received)
        self._show(array)
        return array

    def _show(self, array: NDArray) -> None:
        """ADBase readbacks of the latest frame, as pvaDriver sets them."""
        dims = array.dims
        if not dims:
            return
        x, y, _ = xyz_dims(3, array.color_mode) if len(dims) == 3 else (0, 1, 2)
        xd = dims[x]
        yd = dims[y] if y < len(dims) else None
        values = {"MaxSizeX_RBV": xd.size, "SizeX": xd.size, "MinX": xd.offset,
                  "BinX": xd.binning, "ReverseX": int(xd.reverse),
                  "DataType": array.data_type, "ColorMode": array.color_mode}
        if yd is not None:
            values.update({"MaxSizeY_RBV": yd.size, "SizeY": yd.size, "MinY": yd.offset,
                           "BinY": yd.binning, "ReverseY": int(yd.reverse)})
        self.set_if_changed(values)

    def _say_bad(self, text: str) -> None:
        if text != self._bad:  # once per reason, not once per update
            self._bad = text
            self.message(text, logging.WARNING)

    @staticmethod
    def _last_of(ctx: FrameContext) -> bool:
        mode = int(ctx.settings["ImageMode"])
        if mode == SINGLE:
            return True
        return mode == MULTIPLE and ctx.index + 1 >= int(ctx.settings["NumImages"])

    # --- the full monitor -------------------------------------------------------------------------
    def _current_sub(self) -> Any:
        """The monitor of the current PvName, (re)opened if the name changed, the link renewed
        the channel or the server ended the previous one; None while there is no name, or
        waiting to retry, or (a new name) waiting for the probe to hear from a server."""
        with self._lock:
            name, version = self._name, (self._name_version, self._renewals)
        if self._sub is not None and self._sub_version == version:
            return self._sub
        if self._sub is not None:  # Down until the new monitor's first update
            self._close_sub(live=False)
        if time.monotonic() < self._sub_retry and self._retry_version == version[0]:
            return None  # (a new name is tried at once: its first frame is not missed)
        if version[0] != self._opened_name:  # a new name
            # opened once the probe has the PV's value: it is then known as the one posted
            # before (skipped), whichever monitor is told first
            if self._link is not None and not self._link.answered(name):
                return None
            skip = self._link.seen_id(name) if self._link is not None else None
        else:  # the same PV again: its value is the frame we took last, unless a new one
            skip = self._last_id if self._last_id is not None else self._skip_id
        self._open_sub(skip)
        return self._sub

    def _open_sub(self, skip_id: int | None) -> None:
        """Open the frame monitor; its first update is skipped if its uniqueId is `skip_id`."""
        with self._lock:
            name, version = self._name, (self._name_version, self._renewals)
        self._close_sub(live=self._connection.frames)  # (its state is the caller's to say)
        self._fresh, self._skip_id, self._last_id = True, skip_id, None
        self._sub_version, self._opened_name = version, version[0]
        self._data.clear()
        if not name or self._context is None:
            return
        request = f"record[queueSize={self.options.queue_size}]field()"
        try:
            sub = self._context.monitor(name, self._data.set, request=request)
        except Exception as exc:
            self._say_bad(f"PvName {_short(name)}: cannot monitor: {exc}")
            self._sub_retry, self._retry_version = time.monotonic() + RETRY_S, version[0]
            return
        with self._lock:
            self._sub = sub

    def _close_sub(self, live: bool | None = None, retry: bool = False) -> None:
        """Close the frame monitor. `live`: the connection state it leaves (None: the
        acquisition ends, PvConnection_RBV follows the probe; False: Down until a new monitor
        has its first update)."""
        with self._lock:
            sub, self._sub = self._sub, None
        self._connection.frame_monitor(live)
        if retry:
            self._sub_retry = time.monotonic() + RETRY_S
            self._retry_version, self._sub_version = self._sub_version[0], (-1, -1)
        if sub is not None:
            sub.close()


def _p4p_version() -> str:
    try:
        from p4p import version
        return f"p4p {version.version}"
    except Exception:  # the version string is informative only
        return "p4p"

