"""Driver base: the acquisition loop lives here, once, for every detector.

A concrete driver only says how to `prepare` an acquisition from its frozen parameters, how to
`produce_frame` (waiting for its exposure through `ctx.wait`, which returns early on stop), and
optionally how to `stop_hardware`. The base implements ImageMode Single/Multiple/Continuous,
NumImages, AcquirePeriod pacing (frames start on a grid of AcquirePeriod, so the rate is
1/AcquirePeriod on average though each wait overshoots a little; a frame starts no sooner than
3/4 of a period after the one before, so a late frame moves the grid instead of being followed
by a burst that catches up), the counters, ArrayCallbacks, DetectorState_RBV through the
transition table, and Acquire's put-completion: a put-callback of Acquire=1 completes when the
acquisition is over and, with WaitForPlugins=Yes, when the plugins have processed its frames.

Parameter sets: writes always update the *user* values (and their _RBV at once); an acquisition
runs on the snapshot taken when it started (`acquisition.settings`, also on EffectiveParams_RBV), so
a value written while acquiring takes effect at the next Acquire=1.

Acquisition and processing are decoupled (Lima2): each Acquisition owns its completions
(`acquired`, `processed`) and its run state, published on ProcessingState_RBV. AcquireBusy (ADCore's
busy record) goes to 1 with Acquire=1 and back to 0 when the acquisition is over, or, with
WaitForPlugins=Yes, when its frames have left every plugin; Acquire's put-callback follows it.
Acquisition N+1 may start as soon as the detector is done with N, while N's frames are still in
the plugins. DeferredProcessing holds an acquisition's frames in memory (bounded by the pool) and
sends them into the plugins when it ends, or on ReleaseFrames=1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from . import shm
from .adcore import AD_BASE, NDARRAY_BASE
from .arrayport import ArrayPort
from .busy import until
from .refusals import REFUSALS
from .transport import HANDLED
from .graph import PortGraph
from .ndarray import (EPICS_EPOCH_OFFSET, VALID, Acquisition, AttrSource, MissingCause,
                      NDArray, NDAttribute)
from .params import ParamTable, R, bool_param, enum_param, float_param
from .pool import BUDGET, NoMemory
from .state import DetectorState, Event, RunState, StateMachine

SINGLE, MULTIPLE, CONTINUOUS = 0, 1, 2
DROP, PAUSE = 0, 1

#: ndflow: every driver's overload policy (added to each driver's declarations)
DRIVER_PARAMS = (
    enum_param("LossPolicy", ("Drop", "Pause"), DROP, group="Collect",
               doc="Drop: frames the pipeline cannot take are lost (and counted). Pause: the "
                   "acquisition waits while a plugin queue downstream or the IOC's memory "
                   "budget is fuller than PauseThreshold"),
    float_param("PauseThreshold", 80.0, low=1.0, high=100.0, precision=0, units="%",
                group="Collect", doc="queue or memory-budget use that pauses (LossPolicy Pause)"),
    bool_param("Paused_RBV", "No", "Yes", 0, R, group="Collect"),
    float_param("PausedTime_RBV", 0.0, R, precision=3, units="s", group="Collect",
                doc="time the latest acquisition spent paused"),
)
DEFER_OFF, DEFER_UNTIL_DONE, DEFER_UNTIL_RELEASED = 0, 1, 2
PLUGIN_WAIT_TIMEOUT = 60.0
#: a frame starts no sooner than this many AcquirePeriods after the one before (the grid makes
#: up a wait's overshoot, 0.05-0.15 ms here, from the next wait; never a burst after a late one)
EARLIEST = 0.75


def next_frame_due(due: float, period: float, started: float) -> float:
    """When the next frame starts, `due` being when this one was due and `started` when it
    began: on the grid of `period`, but never sooner than EARLIEST periods after this frame
    began. A wait's overshoot is made up by the next wait (pacing each frame from its own start
    made 1000 frames at 1 ms take 1.13 s), and a frame late by more moves the grid instead of
    causing a burst (frames of shared acquisition ranks keep their stagger)."""
    return max(due + period, started + EARLIEST * period)


@dataclass
class FrameContext:
    """What `produce_frame` gets: the frozen parameters and an interruptible wait."""

    acquisition: Acquisition
    index: int  # 0-based frame number within the acquisition
    stop_event: threading.Event

    @property
    def settings(self) -> Mapping[str, Any]:
        return self.acquisition.settings

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False if the acquisition was stopped meanwhile."""
        if seconds <= 0:
            return not self.stop_event.is_set()
        return not self.stop_event.wait(seconds)

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()


class Driver(ArrayPort):
    PARAMS = (NDARRAY_BASE, AD_BASE)
    manufacturer: ClassVar[str] = "Unknown"
    model: ClassVar[str] = "Unknown"
    driver_version: ClassVar[str] = "Unknown"
    #: whether several MPI acquisition ranks can share its whole frames (rank i of M makes
    #: frames i, i+M, ...; ndflow.cluster.numbering): only a driver that makes each frame
    #: itself, as one process would have at that uniqueId (the sim), not one reading frames
    #: from outside (each rank would read every file)
    shares_frames: ClassVar[bool] = False
    #: whether its frames take a bounded time (exposure, period): a cluster rank of it that
    #: makes no frame for long hangs; a driver waiting for outside input may wait any time
    bounded_frame_time: ClassVar[bool] = False

    def declare(self) -> ParamTable:
        return ParamTable.of(*self.PARAMS, DRIVER_PARAMS)

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 loss_policy: str = "drop", **pool_kw: Any) -> None:
        # Frames live in shared memory so a Python algorithm reads them with zero copies.
        pool_kw.setdefault("new_block", shm.block)
        super().__init__(port, prefix, graph, pool_bytes, **pool_kw)
        self.values.update({"Manufacturer_RBV": self.manufacturer, "Model_RBV": self.model,
                            "DriverVersion_RBV": self.driver_version,
                            "LossPolicy": PAUSE if loss_policy == "pause" else DROP})
        self.state = StateMachine(lambda s: self.set("DetectorState_RBV", int(s)))
        self._starts: queue.Queue[Acquisition | None] = queue.Queue()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.acquiring = False
        self.acquisition: Acquisition | None = None  # the latest
        self._draining: set[Acquisition] = set()  # acquired, frames not all processed yet
        self._draining_lock = threading.Lock()
        self._held: dict[Acquisition, list[NDArray]] = {}  # deferred processing
        self._held_lock = threading.Lock()
        self.last_frame_status = VALID  # of the latest frame: replay reports a missing one

    # --- what a concrete driver provides -------------------------------------------------------------
    def prepare(self, settings: dict[str, Any]) -> None:
        """Set the hardware up for an acquisition with these parameter values. A driver may
        correct values here (clamping a region to the sensor); the corrected dict is what the
        acquisition uses."""

    def produce_frame(self, ctx: FrameContext) -> NDArray | np.ndarray | None:
        """Expose and read out one frame. Return None if stopped during the exposure."""
        raise NotImplementedError

    def stop_hardware(self) -> None:
        """Abort an exposure in progress (the loop has already been told to stop)."""

    def color_mode_of(self, params: Mapping[str, Any]) -> int:
        """The ADCore NDColorMode value of frames made with these parameters."""
        return int(params["ColorMode"])

    def module_attributes(self, module: int) -> dict[str, NDAttribute]:
        """The NDAttributes a frame of detector `module` carries with the current parameters:
        a missing frame takes that module's place in its file with them when the rank making
        it stopped answering (ndflow.cluster). Empty for a driver without modules."""
        return {}

    def next_unique_id(self) -> int:
        """The next frame's uniqueId (acquisition thread): ArrayCounter + 1. A cluster rank that
        makes every M-th frame numbers its frames as one process would (ndflow.cluster)."""
        return self.increment("ArrayCounter")

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._acquisition_thread, name=f"{self.port}-acq",
                                        daemon=True)
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        return [self._thread] if self._thread is not None else []

    def shutdown(self) -> None:
        self._stop_event.set()
        with self._held_lock:  # held frames will not be processed: let waiters go
            for acquisition, frames in self._held.items():
                for _ in frames:
                    acquisition.in_flight.leave()
            self._held.clear()
        self._starts.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- Acquire --------------------------------------------------------------------------------------
    async def put_Acquire(self, value: int) -> Any:
        if not value:
            if self.acquiring:
                self.message("Acquisition stopped")
                self._stop_event.set()
                self.stop_hardware()
            return 0
        acquisition = self.acquisition if self.acquiring else self._begin()
        if acquisition is not None:
            await self._until_not_busy(acquisition)
        if self.publisher is not None:
            await self.publisher.drain()
        return HANDLED

    async def put_AcquireBusy(self, value: int) -> Any:
        """AcquireBusy is driven by acquisitions; a put of 1 waits for the current one (as a
        put-callback on a busy record does), and a put cannot clear it."""
        acquisition = self.acquisition
        if value and acquisition is not None and self.values["AcquireBusy"]:
            await self._until_not_busy(acquisition)
            if self.publisher is not None:
                await self.publisher.drain()
            return HANDLED
        return self.values["AcquireBusy"]

    async def _until_not_busy(self, acquisition: Acquisition) -> None:
        """Wait, shielded (a departing client cannot cancel the acquisition), for what clears
        AcquireBusy for `acquisition`."""
        await until(acquisition.acquired)
        if not acquisition.settings.get("WaitForPlugins"):
            return
        try:
            await asyncio.wait_for(until(acquisition.processed), PLUGIN_WAIT_TIMEOUT)
        except asyncio.TimeoutError:
            self.log.warning("%s: plugins still busy after %.0f s; completing Acquire",
                             self.prefix, PLUGIN_WAIT_TIMEOUT)

    def _begin(self) -> Acquisition:
        """Start an acquisition (event-loop thread)."""
        self.acquiring = True
        self._stop_event.clear()
        acquisition = Acquisition.start(self.values, on_state=self._run_state_entered)
        acquisition.on_lost = self._frames_lost
        self.set("FramesLost_RBV", 0)
        self.acquisition = acquisition
        self.set("Acquire", 1)
        self.set("AcquireBusy", 1)
        self.set("AcquireBusyCB", 1)
        self.set("ProcessingState_RBV", int(RunState.RUNNING))
        self.set("AcquisitionId_RBV", acquisition.id)
        self.set("EffectiveParams_RBV", self._describe_params(acquisition.settings))
        clears = acquisition.processed if acquisition.settings.get("WaitForPlugins") \
            else acquisition.acquired
        clears.add_done_callback(lambda _: self._not_busy(acquisition))
        acquisition.processed.add_done_callback(lambda _: self._processed(acquisition))
        self._starts.put(acquisition)
        return acquisition

    def _not_busy(self, acquisition: Acquisition) -> None:
        """Entry action of AcquireBusy=Done (any thread); a later acquisition keeps it busy."""
        if acquisition is self.acquisition and not self.acquiring:
            self.set("AcquireBusyCB", 0)
            self.set("AcquireBusy", 0)

    def queued_arrays(self) -> int:
        """NumQueuedArrays, driver-wide: deliveries of this driver's frames (and of the arrays
        plugins made from them) that plugins have not finished, held frames included: what
        WaitForPlugins waits for before Acquire's put-callback completes."""
        with self._draining_lock:
            runs = set(self._draining)
        current = self.acquisition
        if current is not None:
            runs.add(current)
        return sum(run.in_flight.count for run in runs)

    def _processed(self, acquisition: Acquisition) -> None:
        with self._draining_lock:
            self._draining.discard(acquisition)
            self.set("ProcessingPending_RBV", len(self._draining))

    def _frames_lost(self, acquisition: Acquisition) -> None:
        if acquisition is self.acquisition:
            self.set("FramesLost_RBV", len(acquisition.lost))

    def _run_state_entered(self, acquisition: Acquisition, state: RunState) -> None:
        if acquisition is self.acquisition:
            self.set("ProcessingState_RBV", int(state))

    def _describe_params(self, params: Mapping[str, Any]) -> str:
        settable = {p.name: params[p.name] for p in self.params
                    if p.setting and p.name != "ReleaseFrames"}
        text = json.dumps(settable, separators=(",", ":"))
        return text[: self.params["EffectiveParams_RBV"].length - 1]

    def _finished(self, acquisition: Acquisition, failed: bool) -> None:
        """The acquisition thread is done with `acquisition`. Only its own completions are
        resolved, so an Acquire=1 landing meanwhile is never completed by this one's end."""
        if acquisition is self.acquisition:
            self.acquiring = False
            self.set("Acquire", 0)
        mode = int(acquisition.settings.get("DeferredProcessing", DEFER_OFF))
        if mode == DEFER_UNTIL_DONE:
            self._release([acquisition])
        acquisition.end_acquisition(failed)
        with self._draining_lock:  # _processed may have run already: then it is not pending
            if not acquisition.processed.done():
                self._draining.add(acquisition)
            self.set("ProcessingPending_RBV", len(self._draining))

    # --- deferred processing --------------------------------------------------------------------------
    def _hold(self, frame: NDArray, acquisition: Acquisition) -> None:
        acquisition.in_flight.enter()  # processing is not done while frames are held
        with self._held_lock:
            self._held.setdefault(acquisition, []).append(frame)
            held = sum(len(f) for f in self._held.values())
        self.set("DeferredFrames_RBV", held)

    def put_ReleaseFrames(self, value: int) -> int:
        if value:
            with self._held_lock:
                waiting = list(self._held)
            self._release(waiting)
        return 0

    def _release(self, acquisitions: list[Acquisition]) -> None:
        """Send held frames into the plugins, in a thread of their own (never the event loop,
        and never holding up the next acquisition)."""
        with self._held_lock:
            batches = [(a, self._held.pop(a, [])) for a in acquisitions]
        if any(frames for _, frames in batches):
            threading.Thread(target=self._send_held, args=(batches,), daemon=True,
                             name=f"{self.port}-release").start()

    def _send_held(self, batches: list[tuple[Acquisition, list[NDArray]]]) -> None:
        for acquisition, frames in batches:
            for frame in frames:
                try:
                    self.emit(frame)
                finally:
                    acquisition.in_flight.leave()
        with self._held_lock:
            held = sum(len(f) for f in self._held.values())
        self.set("DeferredFrames_RBV", held)

    # --- the loop -------------------------------------------------------------------------------------
    def _acquisition_thread(self) -> None:
        while True:
            acquisition = self._starts.get()
            if acquisition is None:
                return
            failed = False
            try:
                self._run(acquisition)
            except Exception as exc:  # a driver bug: report, go to Error, keep serving
                failed = True
                self.log.error("%s: acquisition failed: %s: %s", self.prefix,
                               type(exc).__name__, exc)
                self.log.debug("traceback", exc_info=True)
                self.state.fire(Event.FAULT)
                self.message(f"acquisition failed: {exc}", logging.ERROR)
            finally:
                self._finished(acquisition, failed)

    def _run(self, acquisition: Acquisition) -> None:
        settings = acquisition.settings
        self.prepare(settings)  # type: ignore[arg-type]
        self.set("EffectiveParams_RBV", self._describe_params(settings))
        if self.state.state is DetectorState.Error:
            self.state.fire(Event.RESET)
        self.state.fire(Event.START)
        self.message("Acquiring data")
        self.set("NumImagesCounter_RBV", 0)
        mode = int(settings["ImageMode"])
        wanted = 1 if mode == SINGLE else int(settings["NumImages"])
        taken = 0
        self._paused = 0.0
        self.set("PausedTime_RBV", 0.0)
        # when the next frame is due: on a grid of AcquirePeriod, from when the first one was
        due = acquisition.first_due if acquisition.first_due is not None else time.monotonic()
        while True:
            if int(settings.get("LossPolicy", DROP)) == PAUSE:
                self._pause_while_overloaded(float(settings["PauseThreshold"]) / 100.0)
                if self._stop_event.is_set():
                    break
            started = time.monotonic()
            started_wall = time.time()
            if self.state.state is not DetectorState.Acquire:
                self.state.fire(Event.NEXT)
            ctx = FrameContext(acquisition, taken, self._stop_event)
            try:
                frame = self.produce_frame(ctx)
            except NoMemory as exc:  # output_buffer refused: the frame's place is kept
                frame = NDArray.missing(MissingCause.NO_MEMORY, f"{self.port}: {exc}")
            if self._stop_event.is_set():
                break
            self.state.fire(Event.EXPOSED)
            taken += 1
            self._publish_frame(frame, acquisition, taken, started_wall)
            if mode == SINGLE or (mode == MULTIPLE and taken >= wanted):
                self.message("Waiting for acquisition")
                self.state.fire(Event.DONE)
                return
            due = next_frame_due(due, float(settings["AcquirePeriod"]), started)
            delay = due - time.monotonic()
            if delay > 0:
                self.state.fire(Event.WAIT)
                if self._stop_event.wait(delay):
                    break
        self.state.fire(Event.STOP)
        self.state.fire(Event.STOPPED_CONTINUOUS if mode == CONTINUOUS else Event.STOPPED)

    def _pause_while_overloaded(self, threshold: float) -> None:
        """LossPolicy Pause: wait (stoppable) while a plugin downstream has its queue, or the
        IOC its memory budget, fuller than `threshold`; the time is counted."""
        if not self._overloaded(threshold):
            return
        began = time.monotonic()
        self.set("Paused_RBV", 1)
        self.message("Paused: the pipeline is full")
        while self._overloaded(threshold) and not self._stop_event.wait(0.002):
            pass
        self._paused += time.monotonic() - began
        self.set("PausedTime_RBV", self._paused)
        self.set("Paused_RBV", 0)
        self.message("Acquiring data")

    def _overloaded(self, threshold: float) -> bool:
        if BUDGET.over(threshold):
            return True
        seen: set[str] = set()
        frontier = [self.port]
        while frontier:  # every plugin downstream, through the graph as it is now
            port = frontier.pop()
            for plugin in self.graph.subscribers(port, 0) + self.graph.addressed(port):
                if plugin.port in seen:
                    continue
                seen.add(plugin.port)
                frontier.append(plugin.port)
                if plugin.queue_fill() >= threshold:
                    return True
        return False

    def _publish_frame(self, frame: NDArray | np.ndarray | None, acquisition: Acquisition,
                       number: int, started_wall: float) -> None:
        settings = acquisition.settings
        if frame is None:
            frame = NDArray.missing(MissingCause.DETECTOR_FAULT, "driver returned no frame")
        elif isinstance(frame, np.ndarray):
            frame = NDArray.from_numpy(frame, color_mode=self.color_mode_of(settings))
        counter = self.next_unique_id()
        self.set("NumImagesCounter_RBV", number)
        # A driver that knows when the frame was taken (a file's DATE-OBS) has set it already.
        taken = frame.timestamp + EPICS_EPOCH_OFFSET if frame.timestamp else started_wall
        frame.stamp(counter, taken)
        frame.acquisition = acquisition
        if acquisition.first_id is None:
            acquisition.first_id = counter
        self.last_frame_status = frame.status
        if frame.valid:
            if "ColorMode" not in frame.attributes:
                frame.attributes["ColorMode"] = NDAttribute(
                    "ColorMode", frame.color_mode, "Color mode", AttrSource.DRIVER)
            self.attach_attributes(frame)
            self.describe(frame, with_type=False)
        else:
            acquisition.note_lost(counter, failed=False)
            text = f"frame {counter} missing: {frame.status.missing.value} " \
                   f"{frame.status.message}".rstrip()
            self.message(text, log=False)  # every frame on the status; the log rate-limited
            REFUSALS.line(self.log, f"{self.port}:missing", f"{self.port}: {text}")
        acquisition.frames += 1
        if not settings["ArrayCallbacks"]:
            return
        if int(settings.get("DeferredProcessing", DEFER_OFF)) != DEFER_OFF:
            self._hold(frame, acquisition)
        else:
            self.emit(frame)
