"""Observation point (`Obs1:`): a sink on any port that keeps the last H sampled frames, serves
them by uniqueId (Lima2's frame getters) and streams them to asyncio code.

Lima2 labels each stage of a pipeline (input, processed, sparse...) and keeps its last frames
in a bounded ring, so a client can ask for "frame N of stage X" (`getFrame(idx)`) and read the
last index. Here any port can be observed: point NDArrayPort at it.

- Sampling: a frame is kept when it is the first, or every `SampleEvery`-th, frame with data of
  its acquisition (1 = all), and then only if at least 1/`MaxRate` seconds passed since the
  last one kept (`MaxRate` 0 = no limit). The count restarts with each acquisition, so the same
  frames are observed every run.
- History: the last `HistorySize` sampled frames, held by reference (no copy). They therefore
  stay in the upstream port's pool and count against it and the IOC's memory budget (a full
  pool drops new frames upstream, with their cause); `MaxMemory` (MB, 0 = no own limit) caps
  what this point holds, the oldest going first. `History_RBV` lists the uniqueIds held, oldest
  first; `LastIndex_RBV` is the newest's; `HeldMemory_RBV` their bytes.
- Frames out: `Image` is the latest sampled frame and `FrameByIndex` the one asked for with
  `FrameIndex` (a uniqueId; -1 = the latest), both NTNDArray over pvAccess (as Pva1:Image; not
  Channel Access). `FrameIndexStatus_RBV` says Found or Not held; the put completes once the
  frame is posted, so a client's put-with-callback then get sees it. Each sampled frame carries
  the attribute `SampleIndex` (1, 2, ... per observation point) so a remote reader can tell a
  frame it missed.
- Python: `frames()` gives asyncio code the sampled frames as an async iterator (events, not
  callbacks), each once, through a bounded queue whose overflow is counted
  (`ndflow.framestream`). Remote clients use `ndflow.pva.client.Observer`.

Missing-frame placeholders are counted on `FramesMissing_RBV` and never held (they have no
pixels to show). The worker alone changes the history; a put takes a short lock to read it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.framestream import FrameStream
from ndflow.ndarray import AttrSource, NDArray, NDAttribute
from ndflow.params import R, W, ParamTable, array_param, enum_param, float_param, int_param, \
    ndarray_param
from ndflow.plugin import Plugin
from ndflow.sparse import densify_array

MB = 1024 * 1024
LATEST = -1  # FrameIndex: the newest frame held (Lima2's getFrame(-1))
NOT_ASKED, FOUND, NOT_HELD = 0, 1, 2


# ------------------------------------------------------------------------------------------------
# Sampling and history (pure: unit-tested without an IOC)
# ------------------------------------------------------------------------------------------------

class Sampler:
    """Decides which frames an observation point keeps: every k-th frame with data of an
    acquisition (the first included), then at most `max_rate` per second."""

    def __init__(self) -> None:
        self._seen = 0  # frames with data seen in this acquisition
        self._last_kept = -math.inf
        self._acquisition: Any = None

    def take(self, every: int, max_rate: float, now: float, acquisition: Any = None) -> bool:
        """Whether the next frame (of `acquisition`, at monotonic time `now`) is kept."""
        if acquisition is not self._acquisition:
            self._acquisition = acquisition
            self._seen = 0
        position = self._seen
        self._seen += 1
        if position % max(1, every):
            return False
        if max_rate > 0 and now - self._last_kept < 1.0 / max_rate:
            return False
        self._last_kept = now
        return True

    def reset(self) -> None:
        self._seen = 0
        self._last_kept = -math.inf


class History:
    """The last frames kept, by uniqueId, oldest first, bounded by a count and by bytes.
    Thread-safe: each method holds a lock for a few dict operations only."""

    def __init__(self) -> None:
        self._frames: OrderedDict[int, NDArray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, frame: NDArray, size: int, max_bytes: int = 0) -> int:
        """Hold `frame` (replacing an older one of the same uniqueId), then drop the oldest
        beyond `size` frames or `max_bytes` bytes (0 = no byte limit). Returns how many were
        dropped for bytes alone (the budget, not HistorySize, bounded the history)."""
        with self._lock:
            old = self._frames.pop(frame.unique_id, None)
            if old is not None:
                self._bytes -= _held_bytes(old)
            self._frames[frame.unique_id] = frame
            self._bytes += _held_bytes(frame)
            return self._trim(size, max_bytes)

    def trim(self, size: int, max_bytes: int = 0) -> int:
        with self._lock:
            return self._trim(size, max_bytes)

    def _trim(self, size: int, max_bytes: int) -> int:
        while len(self._frames) > max(0, size):
            self._drop_oldest()
        for_bytes = 0
        while max_bytes > 0 and self._bytes > max_bytes and self._frames:
            self._drop_oldest()
            for_bytes += 1
        return for_bytes

    def _drop_oldest(self) -> None:
        _, frame = self._frames.popitem(last=False)
        self._bytes -= _held_bytes(frame)

    def get(self, unique_id: int) -> NDArray | None:
        """The frame held with this uniqueId (LATEST: the newest), or None."""
        with self._lock:
            if unique_id == LATEST:
                return next(reversed(self._frames.values()), None)
            return self._frames.get(unique_id)

    def ids(self) -> list[int]:
        with self._lock:
            return list(self._frames)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)


def _held_bytes(frame: NDArray) -> int:
    return frame.compressed_size


# ------------------------------------------------------------------------------------------------
# The plugin
# ------------------------------------------------------------------------------------------------

class ObserveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: int = Field(10, ge=0, description="initial HistorySize")
    max_history: int = Field(1000, ge=1, le=1_000_000,
                             description="the largest HistorySize (History_RBV's length)")
    max_memory_mb: float = Field(100.0, ge=0, description="initial MaxMemory (MB, 0: no limit "
                                                          "of its own)")


def _observe_params(max_history: int) -> tuple:
    return (
        int_param("HistorySize", 10, low=0, high=max_history, group="History",
                  doc="how many sampled frames are held (the oldest goes first)"),
        int_param("SampleEvery", 1, low=1, group="Sampling",
                  doc="keep the first and every k-th frame with data of an acquisition"),
        float_param("MaxRate", 0.0, low=0.0, units="Hz", precision=2, group="Sampling",
                    doc="keep at most this many frames per second (0: no limit)"),
        float_param("MaxMemory", 100.0, low=0.0, units="MB", precision=1, group="History",
                    doc="bytes the held frames may take (0: only the pool and IOC budget)"),
        array_param("History_RBV", "int32", max_history, group="History",
                    doc="uniqueIds of the frames held, oldest first"),
        int_param("HistoryCount_RBV", 0, R, group="History", doc="frames held"),
        int_param("LastIndex_RBV", 0, R, group="History",
                  doc="uniqueId of the newest frame held (0: none)"),
        float_param("HeldMemory_RBV", 0.0, R, units="MB", precision=2, group="History",
                    doc="bytes of the frames held"),
        int_param("FramesSampled_RBV", 0, R, group="Sampling", doc="frames kept so far"),
        int_param("FramesMissing_RBV", 0, R, group="Sampling",
                  doc="missing-frame placeholders received (never held)"),
        int_param("Clear", 0, W, coalesce=False, group="History",
                  doc="1 drops every frame held"),
        int_param("FrameIndex", LATEST, low=-1, also_setpoint=True, coalesce=False,
                  group="Frame by index",
                  doc="uniqueId of the frame to post on FrameByIndex (-1: the newest)"),
        enum_param("FrameIndexStatus_RBV", ("Idle", "Found", "Not held"), NOT_ASKED, R,
                   coalesce=False, group="Frame by index",
                   doc="whether the frame asked for with FrameIndex was held"),
        ndarray_param("Image", group="Image", widget="image",
                      doc="the latest sampled frame as NTNDArray (pvAccess only)"),
        ndarray_param("FrameByIndex", group="Frame by index", widget="image",
                      doc="the frame asked for with FrameIndex, as NTNDArray (pvAccess only)"),
    )


class Observe(Plugin):
    """See the module docstring. One worker thread: the history is one sequence."""

    screen = "NDObserve"
    kind = "observe"
    plugin_type = "NDPluginObserve"
    compression_aware = True  # it holds and posts frames, compressed ones as they are
    channels_aware = True  # a multi-channel frame is held and posted whole (C, H, W)
    sparse_aware = True  # densified only when sampled (the base would densify every frame)
    Options = ObserveOptions

    def __init__(self, *args: Any, options: ObserveOptions | None = None, **kw: Any) -> None:
        self.options = options or ObserveOptions()
        kw["max_threads"] = 1
        super().__init__(*args, **kw)
        self.values["HistorySize"] = min(self.options.history, self.options.max_history)
        self.values["MaxMemory"] = self.options.max_memory_mb
        self.values["History_RBV"] = np.zeros(0, dtype=np.int32)
        self.history = History()
        self._sampler = Sampler()
        self._sampled = 0
        self._history_changed = False
        self._budget_said = -1  # frames held when the budget's limit was last shown
        self._streams: list[FrameStream[NDArray]] = []
        self._streams_lock = threading.Lock()

    def declare(self) -> ParamTable:
        table = super().declare()
        for param in _observe_params(self.options.max_history):
            table.params[param.name] = param
        return table

    # --- the data path (worker thread) ----------------------------------------------------------
    def process(self, array: NDArray) -> None:
        params = self.frame_settings
        if not self._sampler.take(params["SampleEvery"], params["MaxRate"], time.monotonic(),
                                  array.acquisition):
            return None
        self._sampled += 1
        if array.sparse is not None:  # shown and served as the dense frame it stands for
            array = densify_array(array)
        frame = array.derive(array.data)  # same pixels; its own attribute list
        frame.attributes["SampleIndex"] = NDAttribute(
            "SampleIndex", self._sampled, "sampled frames of this observation point",
            AttrSource.PARAM, self.prefix + "FramesSampled_RBV")
        for_bytes = self.history.add(frame, params["HistorySize"], _budget(params))
        if for_bytes:
            self._say_budget()
        self._history_changed = True  # History_RBV and co. are made at publish time
        self.values["FramesSampled_RBV"] = self._sampled
        self._dirty.add("FramesSampled_RBV")
        self.set("Image", frame)  # posted from this thread (never the event loop)
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.push(frame)
        return None

    def process_missing(self, array: NDArray) -> None:
        self.increment("FramesMissing_RBV")
        return None  # a sink: nothing goes downstream

    def before_publish(self) -> None:
        """The history's PVs, once per publish interval rather than per frame."""
        super().before_publish()
        if self._history_changed:
            self._history_changed = False
            self._show_history()

    def _show_history(self) -> None:
        ids = self.history.ids()
        self.set_many({"History_RBV": np.asarray(ids, dtype=np.int32),
                       "HistoryCount_RBV": len(ids),
                       "LastIndex_RBV": ids[-1] if ids else 0,
                       "HeldMemory_RBV": self.history.nbytes / MB})

    def _say_budget(self) -> None:
        """Say it when the number of frames the budget allows changes, not at every frame."""
        held = len(self.history)
        if held != self._budget_said:
            self._budget_said = held
            self.message(f"history limited to {held} frames by MaxMemory "
                         f"{self.values['MaxMemory']:g} MB", logging.INFO, log=False)

    # --- settings -------------------------------------------------------------------------------
    def put_HistorySize(self, value: int) -> int:
        self.history.trim(value, _budget({**self.values, "HistorySize": value}))
        self._show_history()
        return value

    def put_MaxMemory(self, value: float) -> float:
        if self.history.trim(self.values["HistorySize"], int(value * MB)):
            self._say_budget()
        self._show_history()
        return value

    def put_SampleEvery(self, value: int) -> int:
        self.between_frames(self._sampler.reset)  # the new period starts at the next frame
        return value

    def put_Clear(self, value: int) -> int:
        if value:
            self.history.clear()
            self._show_history()
        return 0

    async def put_FrameIndex(self, value: int) -> int:
        """Post the frame held with uniqueId `value` on FrameByIndex (built off the event loop);
        the put completes once it is posted or found not held."""
        frame = self.history.get(value)
        if frame is None:
            self.set("FrameIndexStatus_RBV", NOT_HELD)
            self.message(f"frame {value} is not held (held: {_span(self.history.ids())})",
                         logging.INFO, log=False)
            return value
        await asyncio.get_running_loop().run_in_executor(None, self.set, "FrameByIndex", frame)
        self.set("FrameIndexStatus_RBV", FOUND)
        return value

    # --- Python API -----------------------------------------------------------------------------
    def frames(self, maxsize: int = 16) -> FrameStream[NDArray]:
        """The sampled frames from now on, for `async for` in the running event loop; each
        frame once, at most `maxsize` waiting (older ones dropped and counted on the stream's
        `overflow`). Close the stream (or leave its `async with`) to stop."""
        stream: FrameStream[NDArray] = FrameStream(maxsize, on_close=self._forget)
        with self._streams_lock:
            self._streams.append(stream)
        stream.live.set()  # in-process: the next frame sampled reaches it
        return stream

    def _forget(self, stream: FrameStream[NDArray]) -> None:
        with self._streams_lock:
            if stream in self._streams:
                self._streams.remove(stream)

    def shutdown(self) -> None:
        super().shutdown()
        with self._streams_lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.finish()
        self.history.clear()


def _budget(params: Any) -> int:
    return int(params["MaxMemory"] * MB)


def _span(ids: list[int]) -> str:
    if not ids:
        return "none"
    return f"{len(ids)} frames, {min(ids)}..{max(ids)}"
