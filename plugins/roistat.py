"""NDPluginROIStat (`ROIStat1:` + `ROIStat1:1:`..`8:`): simple statistics of up to 8 regions.

Follows NDPluginROIStat.cpp with NDROIStat.template and NDROIStatN.template (ADCore 3.14):
- Each ROI N (asyn address N-1, PVs under `N:`) with Use=Yes is clipped to the array per frame:
  Min to 0..n-1, Size to 1..n-Min. The clipped values show on MinX_RBV/SizeX_RBV (the requests
  are kept, so a larger array later gets the full region back) and MaxSizeX_RBV/MaxSizeY_RBV
  show the array's size. Only 1-D and 2-D arrays are used (X = dims[0]).
- MinValue, MaxValue, MeanValue = Total / elements, Total, and Net = Total - background, where
  the background is the mean of the BgdWidth-wide border of the region times its elements: the
  BgdWidth rows at the top and bottom (the whole width) and the BgdWidth columns at the left
  and right of the rows between them (each width clipped to the region; borders wider than half
  the region overlap and count twice, as ADCore's loops do). BgdWidth 0: Net = Total.
  Values are taken as doubles; with NaN in a float region Total/Mean/Net are NaN and Min/Max
  skip NaN unless the region starts with one (ADCore's running comparison).
- Time series (the plugin's own, not NDPluginTimeSeries): TSControl Erase/Start clears and
  starts, Start continues (if not full), Stop stops and publishes, Read publishes, Erase clears
  and publishes. While TSAcquiring, each array stores the five results of every used ROI and
  the array's time stamp at TSCurrentPoint; at TSNumPoints acquisition stops and the waveforms
  `N:TSMinValue`, `TSMaxValue`, `TSMeanValue`, `TSTotal`, `TSNet`, `TSTimestamp` are
  published, TSCurrentPoint long. TSRead (a longout scanned every second in ADCore, writing its
  value 3 = Read into TSControl while acquiring) publishes about once a second here.
- N:Reset zeroes ROI N's results, ResetAll every ROI's. The output is the input array.

Deliberate differences: a TSNumPoints change clears the series and restarts at point 0 (ADCore
reallocates but keeps TSCurrentPoint, which may then lie beyond the new end); BgdWidth is clamped
to >= 0 (a negative width is an unsigned huge one in ADCore's loops); arrays that are not 1-D or
2-D, or NaN in a used region, are explained once on StatusMessage_RBV (ADCore only traces);
TSAcquiring carries no MINOR alarm while acquiring; the bo records without state names
(ResetAll, N:Reset) show "0"/"1", as this project's other such records do; the periodic read
always reads (ADCore's TSRead would write whatever value it was given into TSControl).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.ndarray import NDArray
from ndflow.notes import Notes
from ndflow.params import R, RW, W, Param, ParamTable, array_param, bool_param, enum_param, \
    float_param, int_param, string_param
from ndflow.plugin import Outputs, Plugin
from ndflow.plugins.requested import KeepsRequests

RESULTS = ("MinValue", "MaxValue", "MeanValue", "Total", "Net")
#: the per-ROI time-series waveforms, in NDPluginROIStat.h's TS type order
TS_CHANNELS = ("TSMinValue", "TSMaxValue", "TSMeanValue", "TSTotal", "TSNet", "TSTimestamp")
TS_COMMANDS = ("Erase/Start", "Start", "Stop", "Read", "Erase")
ERASE_START, START, STOP, READ, ERASE = range(5)
#: per-ROI requests the data path clips (shown clipped on the _RBV, kept as written here)
REQUESTS = ("MinX", "MinY", "SizeX", "SizeY")


class ROIStatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nrois: int = Field(8, ge=1, le=64, description="ROIs (ADCore maxROIs; commonPlugins: 8)")
    nchans: int = Field(2048, ge=1, le=1 << 20, description="time-series length (NCHANS)")


# --- computation (pure functions) ---------------------------------------------------------------


def clip(offset: int, size: int, n: int) -> tuple[int, int]:
    """(offset, size) of a region request clipped to `n` pixels, as processCallbacks does."""
    offset = min(max(int(offset), 0), n - 1)
    return offset, min(max(int(size), 1), n - offset)


def _extreme(region: np.ndarray, smallest: bool) -> float:
    """Min or max as ADCore's running comparison gives it: NaN is skipped unless the region
    starts with NaN (then every comparison with it is false and NaN stays)."""
    value = float(region.min() if smallest else region.max())
    if math.isnan(value) and not math.isnan(float(region.flat[0])):
        value = float(np.nanmin(region) if smallest else np.nanmax(region))
    return value


def statistics(data: np.ndarray, offset_x: int, size_x: int, offset_y: int = 0,
               size_y: int = 1, bgd_width: int = 0) -> dict[str, float]:
    """MinValue, MaxValue, MeanValue, Total, Net of a clipped region of a 1-D or 2-D array."""
    if data.ndim == 1:
        region = data[offset_x: offset_x + size_x]
    else:
        region = data[offset_y: offset_y + size_y, offset_x: offset_x + size_x]
    n = region.size
    total = float(region.sum(dtype=np.float64))
    net = total
    if bgd_width > 0:
        if region.ndim == 1:
            width = min(bgd_width, size_x)
            border = [region[:width], region[size_x - width:]]
        else:
            wx, wy = min(bgd_width, size_x), min(bgd_width, size_y)
            middle = region[wy: size_y - wy]
            border = [region[:wy], region[size_y - wy:], middle[:, :wx], middle[:, size_x - wx:]]
        pixels = sum(b.size for b in border)
        counts = sum(float(b.sum(dtype=np.float64)) for b in border)
        net = total - counts / pixels * n
    return {"MinValue": _extreme(region, True), "MaxValue": _extreme(region, False),
            "MeanValue": total / n, "Total": total, "Net": net}


class SeriesBuffer:
    """ROIStat's time series: one row per ROI and channel (TS_CHANNELS), a shared current point,
    Fixed-length only. Thread-safe: frames record from worker threads, commands come from puts."""

    def __init__(self, nrois: int, nchans: int) -> None:
        self.nchans = nchans
        self._data = np.zeros((nrois, len(TS_CHANNELS), nchans))
        self._lock = threading.Lock()
        self.points = nchans
        self.current = 0
        self.acquiring = False
        self.unpublished = False

    def erase(self) -> None:
        with self._lock:
            self._data[:] = 0.0
            self.current = 0

    def set_points(self, points: int) -> None:
        with self._lock:
            self.points = max(1, min(int(points), self.nchans))
            self._data[:] = 0.0
            self.current = 0

    def start(self, erase: bool) -> bool:
        """Start (after erasing, or continuing if not full); returns whether it is acquiring."""
        with self._lock:
            if erase:
                self._data[:] = 0.0
                self.current = 0
            if self.current < self.points:
                self.acquiring = True
            return self.acquiring

    def record(self, rows: dict[int, Sequence[float]], timestamp: float) -> bool | None:
        """Store one array's results (ROI index -> RESULTS values) at the current point. Returns
        None when not acquiring, else whether this point filled the series (it then stops)."""
        with self._lock:
            if not self.acquiring or self.current >= self.points:
                return None
            for roi, values in rows.items():
                self._data[roi, :-1, self.current] = values
                self._data[roi, -1, self.current] = timestamp
            self.current += 1
            self.unpublished = True
            if self.current >= self.points:
                self.acquiring = False
                return True
            return False

    def snapshot(self) -> np.ndarray:
        """The points so far: (ROIs, channels, current), a copy."""
        with self._lock:
            self.unpublished = False
            return self._data[:, :, : self.current].copy()


# --- the plugin -----------------------------------------------------------------------------------


class ROIStat(KeepsRequests, Plugin):
    screen = "NDROIStat"
    kind = "roistat"
    plugin_type = "NDPluginROIStat"
    Options = ROIStatOptions

    def __init__(self, *args: Any, options: ROIStatOptions | None = None, **kw: Any) -> None:
        self.options = options or ROIStatOptions()
        self.roi_ids = range(1, self.options.nrois + 1)
        self.series = SeriesBuffer(self.options.nrois, self.options.nchans)
        super().__init__(*args, **kw)
        self.keep_requests(f"{n}:{name}" for n in self.roi_ids for name in REQUESTS)
        self._notes = Notes(self)  # a data problem on StatusMessage_RBV, said once
        for n in self.roi_ids:
            self.put_hooks[f"{n}:Reset"] = self._reset_hook(n)

    def declare(self) -> ParamTable:
        nchans = self.options.nchans
        table = super().declare()
        params: list[Param] = [
            bool_param("ResetAll", "0", "1", 0, W, group="ROIStat",
                       doc="Zero every ROI's results"),
            enum_param("TSControl", TS_COMMANDS, ERASE_START, W, group="Time series"),
            int_param("TSRead", READ, W, group="Time series",
                      doc="written into TSControl while acquiring (3 = Read)"),
            int_param("TSNumPoints", nchans, W, low=1, high=nchans, group="Time series"),
            int_param("TSCurrentPoint", 0, R, group="Time series"),
            bool_param("TSAcquiring", "Done", "Acquiring", 0, R, group="Time series"),
        ]
        for n in self.roi_ids:
            group = f"ROI {n}"
            params += [
                bool_param(f"{n}:Use", "No", "Yes", 0, RW, group=group),
                string_param(f"{n}:Name", "", W, group=group),
                bool_param(f"{n}:Reset", "0", "1", 0, W, group=group,
                           doc="Zero this ROI's results"),
                int_param(f"{n}:BgdWidth", 0, RW, low=0, group=group,
                          doc="border width (pixels) whose mean is the background of Net"),
                int_param(f"{n}:MinX", 0, RW, group=group, doc="first pixel (clipped per array)"),
                int_param(f"{n}:MinY", 0, RW, group=group, doc="first pixel (clipped per array)"),
                int_param(f"{n}:SizeX", 1, RW, group=group, doc="pixels (clipped per array)"),
                int_param(f"{n}:SizeY", 1, RW, group=group, doc="pixels (clipped per array)"),
                int_param(f"{n}:MaxSizeX_RBV", 0, R, group=group),
                int_param(f"{n}:MaxSizeY_RBV", 0, R, group=group),
                *(float_param(f"{n}:{name}_RBV", 0.0, R, precision=0, group=group)
                  for name in RESULTS),
                *(array_param(f"{n}:{name}", "f8", nchans, group=group) for name in TS_CHANNELS),
            ]
        for p in params:
            table.params[p.name] = p
        return table

    # --- puts -----------------------------------------------------------------------------------
    def _zero(self, n: int) -> None:
        self.set_many({f"{n}:{name}_RBV": 0.0 for name in RESULTS})

    def _reset_hook(self, n: int) -> Callable[[int], int]:
        """The put hook of `n:Reset` (a name with ':' cannot be a put_<Name> method)."""
        def reset(value: int) -> int:
            self._zero(n)
            return value
        return reset

    def put_ResetAll(self, value: int) -> int:
        for n in self.roi_ids:
            self._zero(n)
        return value

    def put_TSControl(self, value: int) -> int:
        self._control(value)
        return value

    def put_TSRead(self, value: int) -> int:
        if self.series.acquiring and 0 <= value < len(TS_COMMANDS):
            self._control(value)  # TSRead's OUT writes its value to TSControl (SDIS: acquiring)
        return value

    def put_TSNumPoints(self, value: int) -> int:
        self.series.set_points(value)
        self.set("TSCurrentPoint", 0)
        return value

    def _control(self, command: int) -> None:
        series = self.series
        if command in (ERASE_START, START):
            acquiring = series.start(erase=command == ERASE_START)
            self.set_many({"TSAcquiring": int(acquiring), "TSCurrentPoint": series.current})
        elif command == STOP:
            series.acquiring = False
            self.set("TSAcquiring", 0)
            self._publish_series()
        elif command == READ:
            self._publish_series()
        elif command == ERASE:
            series.erase()
            self.set("TSCurrentPoint", 0)
            self._publish_series()

    def _publish_series(self) -> None:
        data = self.series.snapshot()
        for i, n in enumerate(self.roi_ids):
            for c, name in enumerate(TS_CHANNELS):
                wave = data[i, c]
                wave.flags.writeable = False
                self.set(f"{n}:{name}", wave)

    # --- data path ------------------------------------------------------------------------------
    def process(self, array: NDArray) -> Outputs:
        data = array.data
        if data.ndim not in (1, 2) or data.size == 0:
            problem = (f"ROIStat needs a 1-D or 2-D array, not {list(reversed(data.shape))}; "
                       "nothing computed")
            self._notes.say(f"array {array.unique_id}: {problem}", topic=problem)
            return None
        v = self.frame_settings
        nx = data.shape[-1]
        ny = data.shape[0] if data.ndim == 2 else 0
        published: dict[str, Any] = {}
        rows: dict[int, list[float]] = {}
        problems = []
        for i, n in enumerate(self.roi_ids):
            if not v[f"{n}:Use"]:
                continue
            ox, sx = clip(v[f"{n}:MinX"], v[f"{n}:SizeX"], nx)
            shown = {f"{n}:MaxSizeX_RBV": nx, f"{n}:MaxSizeY_RBV": ny,
                     f"{n}:MinX": ox, f"{n}:SizeX": sx}
            oy, sy = 0, 1
            if data.ndim == 2:
                oy, sy = clip(v[f"{n}:MinY"], v[f"{n}:SizeY"], ny)
                shown.update({f"{n}:MinY": oy, f"{n}:SizeY": sy})
            self.set_if_changed(shown)
            results = statistics(data, ox, sx, oy, sy, int(v[f"{n}:BgdWidth"]))
            if math.isnan(results["Total"]):
                problems.append(f"ROI {n}: NaN in the region")
            published.update({f"{n}:{name}_RBV": results[name] for name in RESULTS})
            rows[i] = [results[name] for name in RESULTS]
        self.set_many(published)
        if problems:
            problem = f"{'; '.join(problems)}; Total/Mean/Net are NaN"
            self._notes.say(f"array {array.unique_id}: {problem}", topic=problem)
        else:
            self._notes.say("")
        finished = self.series.record(rows, array.timestamp)
        if finished is not None:
            self.set("TSCurrentPoint", self.series.current)
            if finished:
                self.set("TSAcquiring", 0)
                self._publish_series()
        return array.derive(array.data)  # the base adds this plugin's NDAttributesFile

    def periodic(self, elapsed: float) -> None:
        """TSRead's 1-second scan: publish new points while acquiring."""
        super().periodic(elapsed)
        if self.series.acquiring and self.series.unpublished:
            self._publish_series()
