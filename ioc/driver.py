"""Driver base: the acquisition loop lives here, once, for every detector.

A concrete driver only says how to `prepare` an acquisition from its frozen parameters, how to
`produce_frame` (waiting for its exposure through `ctx.wait`, which returns early on stop), and
optionally how to `stop_hardware`. The base implements ImageMode Single/Multiple/Continuous,
NumImages, AcquirePeriod pacing, the counters, ArrayCallbacks, DetectorState_RBV through the
transition table, and Acquire's put-completion: a put-callback of Acquire=1 completes when the
acquisition is over and, with WaitForPlugins=Yes, when the plugins have processed its frames.

Parameter sets: writes always update the *user* values (and their _RBV at once); an acquisition
runs on the snapshot taken when it started (`acquisition.params`, also on EffectiveParams_RBV), so
a value written while acquiring takes effect at the next Acquire=1.
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
from .channels import HANDLED
from .graph import PortGraph
from .ndarray import (EPICS_EPOCH_OFFSET, VALID, Acquisition, AttrSource, MissingCause,
                      NDArray, NDAttribute)
from .params import Access, Kind
from .state import DetectorState, Event, StateMachine

SINGLE, MULTIPLE, CONTINUOUS = 0, 1, 2
PLUGIN_WAIT_TIMEOUT = 60.0


@dataclass
class FrameContext:
    """What `produce_frame` gets: the frozen parameters and an interruptible wait."""

    acquisition: Acquisition
    index: int  # 0-based frame number within the acquisition
    stop_event: threading.Event

    @property
    def params(self) -> Mapping[str, Any]:
        return self.acquisition.params

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

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 **pool_kw: Any) -> None:
        # Frames live in shared memory so a Python algorithm reads them with zero copies.
        pool_kw.setdefault("new_block", shm.block)
        super().__init__(port, prefix, graph, pool_bytes, **pool_kw)
        self.values.update({"Manufacturer_RBV": self.manufacturer, "Model_RBV": self.model,
                            "DriverVersion_RBV": self.driver_version})
        self.state = StateMachine(lambda s: self.set("DetectorState_RBV", int(s)))
        self._starts: queue.Queue[Acquisition | None] = queue.Queue()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.acquiring = False
        self.acquisition: Acquisition | None = None
        self._done: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_frame_status = VALID  # of the latest frame: replay reports a missing one

    # --- what a concrete driver provides -------------------------------------------------------------
    def prepare(self, params: dict[str, Any]) -> None:
        """Set the hardware up for an acquisition with these parameters. A driver may correct
        values here (clamping a region to the sensor); the corrected dict is what the
        acquisition uses."""

    def produce_frame(self, ctx: FrameContext) -> NDArray | np.ndarray | None:
        """Expose and read out one frame. Return None if stopped during the exposure."""
        raise NotImplementedError

    def stop_hardware(self) -> None:
        """Abort an exposure in progress (the loop has already been told to stop)."""

    def color_mode_of(self, params: Mapping[str, Any]) -> int:
        """The ADCore NDColorMode value of frames made with these parameters."""
        return int(params["ColorMode"])

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._acquisition_thread, name=f"{self.port}-acq",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop_event.set()
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
        if not self.acquiring:
            self._begin()
        done = self._done
        acquisition = self.acquisition
        await asyncio.shield(done)
        if self.values["WaitForPlugins"] and acquisition is not None:
            loop = asyncio.get_running_loop()
            idle = await loop.run_in_executor(None, acquisition.in_flight.wait_idle,
                                              PLUGIN_WAIT_TIMEOUT)
            if not idle:
                self.log.warning("%s: plugins still busy after %.0f s; completing Acquire",
                                 self.prefix, PLUGIN_WAIT_TIMEOUT)
        if self.publisher is not None:
            await self.publisher.drain()
        return HANDLED

    def _begin(self) -> None:
        """Start an acquisition (event-loop thread)."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self.acquiring = True
        self._stop_event.clear()
        self.acquisition = Acquisition.start(self.values)
        self.set("Acquire", 1)
        self.set("AcquisitionId_RBV", self.acquisition.id)
        self.set("EffectiveParams_RBV", self._describe_params(self.acquisition.params))
        self._starts.put(self.acquisition)

    def _describe_params(self, params: Mapping[str, Any]) -> str:
        settable = {p.name: params[p.name] for p in self.params
                    if p.access is not Access.R and p.kind is not Kind.ARRAY
                    and p.name != "Acquire"}
        text = json.dumps(settable, separators=(",", ":"))
        return text[: self.params["EffectiveParams_RBV"].length - 1]

    def _finished(self) -> None:
        """The acquisition thread is done with the current acquisition."""
        self.acquiring = False
        self.set("Acquire", 0)
        done, loop = self._done, self._loop
        if done is not None and loop is not None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    # --- the loop -------------------------------------------------------------------------------------
    def _acquisition_thread(self) -> None:
        while True:
            acquisition = self._starts.get()
            if acquisition is None:
                return
            try:
                self._run(acquisition)
            except Exception as exc:  # a driver bug: report, go to Error, keep serving
                self.log.error("%s: acquisition failed: %s: %s", self.prefix,
                               type(exc).__name__, exc)
                self.log.debug("traceback", exc_info=True)
                self.state.fire(Event.FAULT)
                self.message(f"acquisition failed: {exc}", logging.ERROR)
            finally:
                self._finished()

    def _run(self, acquisition: Acquisition) -> None:
        params = acquisition.params
        self.prepare(params)  # type: ignore[arg-type]
        self.set("EffectiveParams_RBV", self._describe_params(params))
        if self.state.state is DetectorState.Error:
            self.state.fire(Event.RESET)
        self.state.fire(Event.START)
        self.message("Acquiring data")
        self.set("NumImagesCounter_RBV", 0)
        mode = int(params["ImageMode"])
        wanted = 1 if mode == SINGLE else int(params["NumImages"])
        taken = 0
        while True:
            started = time.monotonic()
            started_wall = time.time()
            if self.state.state is not DetectorState.Acquire:
                self.state.fire(Event.NEXT)
            ctx = FrameContext(acquisition, taken, self._stop_event)
            frame = self.produce_frame(ctx)
            if self._stop_event.is_set():
                break
            self.state.fire(Event.EXPOSED)
            taken += 1
            self._publish_frame(frame, acquisition, taken, started_wall)
            if mode == SINGLE or (mode == MULTIPLE and taken >= wanted):
                self.message("Waiting for acquisition")
                self.state.fire(Event.DONE)
                return
            delay = float(params["AcquirePeriod"]) - (time.monotonic() - started)
            if delay > 0:
                self.state.fire(Event.WAIT)
                if self._stop_event.wait(delay):
                    break
        self.state.fire(Event.STOP)
        self.state.fire(Event.STOPPED_CONTINUOUS if mode == CONTINUOUS else Event.STOPPED)

    def _publish_frame(self, frame: NDArray | np.ndarray | None, acquisition: Acquisition,
                       number: int, started_wall: float) -> None:
        params = acquisition.params
        if frame is None:
            frame = NDArray.missing(MissingCause.DETECTOR_FAULT, "driver returned no frame")
        elif isinstance(frame, np.ndarray):
            frame = NDArray.from_numpy(frame, color_mode=self.color_mode_of(params))
        counter = self.increment("ArrayCounter")
        self.set("NumImagesCounter_RBV", number)
        # A driver that knows when the frame was taken (a file's DATE-OBS) has set it already.
        taken = frame.timestamp + EPICS_EPOCH_OFFSET if frame.timestamp else started_wall
        frame.stamp(counter, taken)
        frame.acquisition = acquisition
        if acquisition.first_id is None:
            acquisition.first_id = counter
        self.last_frame_status = frame.status
        if frame.valid:
            frame.attributes.setdefault("ColorMode", NDAttribute(
                "ColorMode", frame.color_mode, "Color mode", AttrSource.DRIVER))
            self.attach_attributes(frame)
            self.describe(frame, with_type=False)
        else:
            self.message(f"frame {counter} missing: {frame.status.missing.value} "
                         f"{frame.status.message}".rstrip(), logging.WARNING)
        if params["ArrayCallbacks"]:
            self.emit(frame)
