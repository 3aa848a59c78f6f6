"""NDPluginTimeSeries for a plugin that yields one value per channel per array (Stats, Attribute).

ADCore runs the time series as a port of its own (STATS1_TS fed by STATS1 address 1, ATTR1_TS)
that receives a 1-D NDArray of channel values per frame. Here the owning plugin calls
`TimeSeries.record()` directly; the object serves NDTimeSeries.template's PVs under a sub-prefix
of the owner's prefix (`Stats1:TS:TSAcquire`) and each channel's waveform under the name the
owner's template gives it (`Stats1:TSTotal`, `Attr1:1:TSArrayValue`).

Semantics follow NDPluginTimeSeries.cpp: TSAcquire=1 clears the buffer and starts (a busy
record: the put completes when acquisition stops), TSAcquire=0 stops and publishes. Every
round(TSAveragingTime / TSTimePerPoint) recorded values (1 when TSTimePerPoint is 0) are
averaged into one point. "Fixed length" stops when TSNumPoints points are stored and publishes
waveforms of the points taken so far; "Circ. buffer" wraps and publishes all TSNumPoints points
oldest first. TSTimeAxis is the nominal axis ADCore computes from the averaging time.

Deliberate differences: no NDPluginBase PVs under the sub-prefix and no NDArray output (it is not
a port); TSTimestamp carries each point's array timestamp (ADCore declares it but never fills
it); instead of TSRead's SCAN=1 second the waveforms are published about once a second while
acquiring, at stop, and whenever TSRead is written.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

import numpy as np

from ndflow.busy import Busy, finish
from ndflow.component import Component
from ndflow.params import INT32_MAX, R, RW, W, Param, array_param, bool_param, enum_param, \
    float_param, int_param

FIXED = 0  # TSAcquireMode "Fixed length" (1 is "Circ. buffer")
#: arrays averaged into one point at most: TSNumAverage is a 32-bit PV
MAX_AVERAGE = INT32_MAX


class TimeSeries:
    """Records one value per channel per array into fixed-size buffers and publishes them."""

    def __init__(self, channels: Sequence[str], nchans: int, sub: str = "TS:") -> None:
        """`channels`: the owner's parameter name of each channel's waveform; `nchans`: the
        waveform length (ADCore's NCHANS); `sub`: the sub-prefix of the control PVs."""
        self.channels = list(channels)
        self.nchans = nchans
        self.sub = sub
        self.owner: Component | None = None
        self._lock = threading.Lock()
        self._data = np.zeros((len(self.channels), nchans))
        self._stamps = np.zeros(nchans)
        self._sum = np.zeros(len(self.channels))
        self._summed = 0
        self._current = 0
        self._started = time.monotonic()
        self._unpublished = False
        self._busy = Busy()  # TSAcquire=1 put-callbacks, completed by stop()
        self._averaging_requested = 0.1

    def name(self, short: str) -> str:
        return f"{self.sub}{short}"

    def params(self) -> list[Param]:
        n, group = self.name, "Time series"
        return [
            enum_param(n("TSAcquire"), ("Done", "Acquire"), 0, W, rbv_choices=("Done", "Acquiring"),
                       aliases=(n("TSAcquiring"),), coalesce=False, group=group,
                       doc="1 clears and starts (completes when stopped), 0 stops"),
            bool_param(n("TSRead"), "Done", "Read", 1, W, group=group,
                       doc="Publish the time-series waveforms now"),
            int_param(n("TSNumPoints"), self.nchans, W, low=1, high=self.nchans, group=group),
            int_param(n("TSCurrentPoint"), 0, R, group=group),
            # At most a day (ndflow.adcore.MAX_SECONDS). TSNumAverage = AveragingTime /
            # TimePerPoint must fit its 32-bit PV: a declared limit cannot say "0, or at least
            # x", so a tiny TimePerPoint (1e-300) is taken and the count is capped at
            # MAX_AVERAGE (_compute_num_average), the readback showing the time it makes.
            float_param(n("TSTimePerPoint"), 0.0, RW, precision=3, low=0.0, high=86400.0,
                        units="s", group=group,
                        doc="Time between input arrays; 0 = one point per array"),
            float_param(n("TSAveragingTime"), 0.1, RW, precision=3, low=0.0, high=86400.0,
                        units="s", group=group,
                        doc="Time averaged into one point: a whole number of TSTimePerPoint, "
                            f"at most {MAX_AVERAGE} of them"),
            int_param(n("TSNumAverage"), 1, R, group=group),
            float_param(n("TSElapsedTime"), 0.0, R, precision=3, units="s", group=group),
            enum_param(n("TSAcquireMode"), ("Fixed length", "Circ. buffer"), FIXED, RW,
                       group=group),
            array_param(n("TSTimestamp"), "f8", self.nchans, group=group),
            array_param(n("TSTimeAxis"), "f8", self.nchans, group=group),
            *(array_param(c, "f8", self.nchans, group=group) for c in self.channels),
        ]

    def attach(self, owner: Component) -> None:
        """Register the put hooks with the owner (our names contain the sub-prefix, e.g.
        "TS:TSAcquire", so they cannot be `put_<Name>` methods)."""
        self.owner = owner
        hooks = {"TSAcquire": self._put_acquire, "TSRead": self._put_read,
                 "TSNumPoints": self._put_num_points, "TSTimePerPoint": self._put_time_per_point,
                 "TSAveragingTime": self._put_averaging_time,
                 "TSAcquireMode": self._put_acquire_mode}
        for short, hook in hooks.items():
            owner.put_hooks[self.name(short)] = hook
        owner.values[self.name("TSTimeAxis")] = self._time_axis()

    # --- data path (any thread) ----------------------------------------------------------------
    @property
    def acquiring(self) -> bool:
        return bool(self.owner.values[self.name("TSAcquire")])

    def record(self, values: Sequence[float], timestamp: float) -> None:
        """Add one array's channel values (in `channels` order) and its timestamp."""
        if not self.acquiring:
            return
        v = self.owner.values
        points = v[self.name("TSNumPoints")]
        with self._lock:
            if self._current >= points:  # another thread filled the last point just now
                return
            self._sum += np.asarray(values, dtype=np.float64)
            self._summed += 1
            if self._summed < v[self.name("TSNumAverage")]:
                return
            self._data[:, self._current] = self._sum / self._summed
            self._stamps[self._current] = timestamp
            self._sum[:] = 0.0
            self._summed = 0
            self._current += 1
            self._unpublished = True
            finished = False
            if self._current >= points:
                if v[self.name("TSAcquireMode")] == FIXED:
                    finished = True
                else:
                    self._current = 0
            elapsed = time.monotonic() - self._started
            current = self._current
        self.owner.set_many({self.name("TSCurrentPoint"): current,
                             self.name("TSElapsedTime"): elapsed})
        if finished:
            self.stop()

    def stop(self) -> None:
        """End acquisition: publish, show Done and complete a pending TSAcquire=1 put."""
        self.owner.values[self.name("TSAcquire")] = 0
        self.publish()
        self.owner.set(self.name("TSAcquire"), 0)
        self._busy.release()

    def publish(self) -> None:
        """Post the waveforms: Fixed length the points so far, Circ. buffer all, oldest first."""
        v = self.owner.values
        with self._lock:
            points = v[self.name("TSNumPoints")]
            if v[self.name("TSAcquireMode")] == FIXED:
                order = np.arange(self._current)
            else:
                order = (np.arange(points) + self._current) % points
            data = self._data[:, order]
            stamps = self._stamps[order]
            self._unpublished = False
        for i, channel in enumerate(self.channels):
            self.owner.set(channel, _frozen(data[i]))
        self.owner.set(self.name("TSTimestamp"), _frozen(stamps))

    def periodic(self) -> None:
        """About once a second (owner's periodic): publish new points while acquiring."""
        if self.acquiring and self._unpublished:
            self.publish()

    # --- put hooks (event loop) ----------------------------------------------------------------
    async def _put_acquire(self, value: int) -> Any:
        if not value:
            if self.acquiring:
                self.stop()
            return 0
        self._reset()
        # Armed before any frame can see TSAcquire=1: a frame that fills the last point may stop
        # (and release) as soon as the value is set; released before the arm, this put would
        # wait for the next stop, which never comes.
        waiting = self._busy.arm()
        self.owner.set(self.name("TSAcquire"), 1)
        return await finish(waiting, self.owner.publisher)

    def _put_read(self, value: int) -> int:
        self.publish()
        return value

    def _put_num_points(self, value: int) -> int:
        self.owner.values[self.name("TSNumPoints")] = value
        self._reset()
        self._publish_axis()
        return value

    def _put_acquire_mode(self, value: int) -> int:
        self.owner.values[self.name("TSAcquireMode")] = value
        self._reset()
        self._publish_axis()
        return value

    def _put_time_per_point(self, value: float) -> float:
        self.owner.values[self.name("TSTimePerPoint")] = value
        self._compute_num_average()
        return value

    def _put_averaging_time(self, value: float) -> float:
        """The readback shows the averaging time actually used (a whole number of points)."""
        self._averaging_requested = value
        return self._compute_num_average()

    # --- helpers ---------------------------------------------------------------------------------
    def _reset(self) -> None:
        with self._lock:
            self._data[:] = 0.0
            self._stamps[:] = 0.0
            self._sum[:] = 0.0
            self._summed = 0
            self._current = 0
            self._started = time.monotonic()
        self.owner.set(self.name("TSCurrentPoint"), 0)

    def _compute_num_average(self) -> float:
        """ADCore's round(AveragingTime / TimePerPoint), at least 1 and at most MAX_AVERAGE
        (1e-300 s per point would make 1e299, inf for a denormal): the averaging time
        actually used is what the readback shows."""
        per_point = self.owner.values[self.name("TSTimePerPoint")]
        if per_point <= 0:
            number, actual = 1, self._averaging_requested
        else:
            ratio = self._averaging_requested / per_point + 0.5  # may be inf: not int()-ed
            number = max(1, int(ratio)) if ratio < MAX_AVERAGE else MAX_AVERAGE
            actual = per_point * number
            if number == MAX_AVERAGE:
                self.owner.message(
                    f"{self.name('TSNumAverage')} capped at {MAX_AVERAGE}: averaging "
                    f"{self._averaging_requested:g} s over points {per_point:g} s apart; "
                    f"TSAveragingTime is {actual:g} s", logging.WARNING)
        self.owner.values[self.name("TSAveragingTime")] = actual
        self.owner.set(self.name("TSAveragingTime"), actual)
        self.owner.set(self.name("TSNumAverage"), number)
        with self._lock:
            self._sum[:] = 0.0
            self._summed = 0
        self._publish_axis()
        return actual

    def _time_axis(self) -> np.ndarray:
        v = self.owner.values
        points = v[self.name("TSNumPoints")]
        step = v[self.name("TSAveragingTime")]
        index = np.arange(points, dtype=np.float64)
        axis = index * step if v[self.name("TSAcquireMode")] == FIXED else \
            -(points - 1 - index) * step
        return _frozen(axis)

    def _publish_axis(self) -> None:
        self.owner.set(self.name("TSTimeAxis"), self._time_axis())


def _frozen(values: np.ndarray) -> np.ndarray:
    """A private read-only copy, so caproto can serialise it while we keep recording."""
    out = np.array(values, dtype=np.float64)
    out.flags.writeable = False
    return out
