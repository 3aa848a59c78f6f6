"""NDPluginCircularBuff (`CB1:`): keep the last PreCount arrays, emit them and PostCount more on a
trigger, like a scope.

Follows ADCore's NDPluginCircularBuff.cpp (R3-14). While Capture=1 the last PreCount arrays wait
in a ring and nothing goes downstream. A trigger is a soft `Trigger=1` or the TriggerCalc expression
becoming non-zero for an array; the calc sees A = the value of the attribute named by TriggerA,
B = TriggerB's (NaN when the array lacks it), C = PreCount, D = PostCount, E = CurrentQty_RBV and
F = the triggered flag. On a trigger the ring is emitted, then the triggering array and the next
ones up to PostCount in all (PostCount=0 still emits the triggering array), ActualTriggerCount_RBV
counts the trigger, and capture re-arms or, after PresetTriggerCount triggers (0 = unlimited),
stops with "Acquisition Completed". FlushOnSoftTrg=Immediately emits the ring at the Trigger put
instead of with the next array. StatusMessage (a stringin, beside the plugin base's
StatusMessage_RBV) shows ADCore's state strings.

TriggerCalc is an EPICS calc expression written by any client, so it is never handed to Python's
eval(): `ndflow.calc` compiles it with the operators, precedences and functions of EPICS base's
postfix.c (the Veto plugin uses the same language).

Deliberate differences from ADCore:
- `Capture` and `Trigger` complete a put-callback when their work is done: Capture when the
  capture stops (preset reached or Capture=0), Trigger when its post-trigger arrays are out.
  ADCore's Trigger busy record stays busy after the last preset trigger until the next Capture
  write.
- Arrays are held by reference, not copied into a second pool (the pool frees a buffer only when
  nothing refers to it, so held frames stay intact).
- A bad TriggerCalc is kept (the readback shows it, as ADCore) but never triggers; the reason and
  position are shown on StatusMessage / StatusMessage_RBV. `:=` assignments and `;` are refused.
- The calc's variables G..L are 0, VAL and RNDM are not offered.
- CurrentQty_RBV drops to 0 when the ring is flushed (ADCore updates it only on the next buffered
  array).
- Lost-frame placeholders are passed on only during the post-trigger phase, without counting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from ndflow.busy import Busy, finish
from ndflow.calc import CalcError, attribute_number, compile_calc
from ndflow.ndarray import NDArray
from ndflow.params import R, STRING_MAX, W, bool_param, float_param, int_param, string_param, \
    text_param
from ndflow.plugin import Plugin

__all__ = ["CircularBuff", "CalcError", "compile_calc"]  # the calc names: older imports

DEFAULT_TRIGGER_CALC = "0"  # ADCore's value for an empty TriggerCalc

CB_PARAMS = (
    bool_param("Capture", "Done", "Capture", 0, rbv_choices=("Done", "Capturing"),
               also_setpoint=True, coalesce=False, group="Capture",
               doc="1 starts capturing; a put-callback completes when the capture ends"),
    string_param("StatusMessage", "Idle", R, group="Capture"),
    string_param("TriggerA", "", group="Trigger", doc="attribute name giving the calc's A"),
    string_param("TriggerB", "", group="Trigger", doc="attribute name giving the calc's B"),
    float_param("TriggerAVal", 0.0, R, precision=3, group="Trigger"),
    float_param("TriggerBVal", 0.0, R, precision=3, group="Trigger"),
    text_param("TriggerCalc", 256, DEFAULT_TRIGGER_CALC, group="Trigger",
               doc="EPICS calc expression of A, B (attributes), C..F; non-zero triggers"),
    float_param("TriggerCalcVal", 0.0, R, precision=3, group="Trigger"),
    int_param("PreCount", 100, low=0, group="Capture"),
    int_param("PostCount", 100, low=0, group="Capture"),
    int_param("CurrentQty_RBV", 0, R, group="Capture"),
    int_param("PostTriggerQty_RBV", 0, R, group="Capture"),
    # ADCore's Trigger busy record has VAL=1 and no initial process, and its readback
    # Trigger_RBV shows the separate "triggered" state.
    bool_param("Trigger", "Done", "Trigger", 1, W, coalesce=False, group="Trigger",
               doc="Soft trigger; a put-callback completes when its post-trigger arrays are out"),
    bool_param("Trigger_RBV", "Done", "Triggered", 0, R, coalesce=False, group="Trigger"),
    int_param("PresetTriggerCount", 1, low=0, group="Capture", doc="0 = unlimited"),
    int_param("ActualTriggerCount_RBV", 0, R, group="Capture"),
    bool_param("FlushOnSoftTrg", "OnNewImage", "Immediately", 0, group="Trigger"),
)


class CircularBuffOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pre_count: int = Field(100, ge=0, description="initial PreCount (ADCore macro PRECOUNT)")
    post_count: int = Field(100, ge=0, description="initial PostCount (ADCore macro POSTCOUNT)")


class CircularBuff(Plugin):
    """Locking, so that no CA put ever waits for a delivery (DESIGN.md 3, "Ports own their
    work"): `_lock` guards the ring and the capture state and is held only for the decisions
    about one array, never across delivery, so the Capture and Trigger puts (event loop) take
    it without waiting for downstream plugins. Deliveries, by the worker or by a Trigger put's
    immediate flush (in an executor thread, never the loop), go out one after the other under
    `_deliver_lock`, taken before `_lock` so arrays leave in the order they were decided. Busy
    puts complete when their last arrays are out: their waiters are taken under `_lock` and
    released after the delivery."""

    screen = "NDCircularBuff"
    kind = "circularbuff"
    plugin_type = "NDPluginCircularBuff"
    compression_aware = True  # it only holds and forwards arrays
    PARAMS = Plugin.PARAMS + (CB_PARAMS,)
    Options = CircularBuffOptions

    def __init__(self, *args: Any, options: CircularBuffOptions | None = None,
                 **kw: Any) -> None:
        kw["max_threads"] = 1  # ADCore runs it in one thread: the ring is one sequence
        super().__init__(*args, **kw)
        options = options or CircularBuffOptions()
        self.values["PreCount"] = options.pre_count
        self.values["PostCount"] = options.post_count
        self._lock = threading.RLock()  # ring and capture state; never held across delivery
        self._deliver_lock = threading.RLock()  # deliveries in order; never taken on the loop
        self._calc = compile_calc(DEFAULT_TRIGGER_CALC)
        self._ring: deque[NDArray] = deque(maxlen=0)
        self._capturing = False
        self._triggered = False
        self._soft = False
        self._flushed = False  # ADCore's previousTrigger_: the ring went out for this trigger
        self._post = 0
        self._actual = 0
        self._capture = Busy()  # Capture=1 put-callbacks: complete when the capture ends
        self._triggers = Busy()  # Trigger=1 put-callbacks: complete when post-trigger is out

    def _params(self) -> Mapping[str, Any]:
        """The parameters this frame is processed with (the base's snapshot)."""
        return getattr(self, "frame_settings", self.values)

    # --- status -----------------------------------------------------------------------------------
    def _status(self, text: str) -> None:
        self.set_if_changed({"StatusMessage": text[: STRING_MAX - 1]})  # set on every frame

    def _report(self, text: str) -> None:
        """A problem: the short form on StatusMessage, all of it on StatusMessage_RBV."""
        self._status(text)
        self.message(text, logging.WARNING)

    def _filling(self) -> str:
        return "Buffer filling" if self._ring.maxlen else "Dropping frames"

    def _set_triggered(self, on: bool) -> None:
        self._triggered = on
        if self.values["Trigger_RBV"] != int(on):
            self.set("Trigger_RBV", int(on))

    # --- completions of busy puts (lock held; release the returned waiters when done) ----------
    def _end_triggers(self) -> Busy:
        """Trigger back to Done; the Trigger puts waiting so far, to release once the arrays
        that end their trigger are out (a Trigger put after this one waits for the next)."""
        if self.values["Trigger"]:
            self.set("Trigger", 0)
        done, self._triggers = self._triggers, Busy()
        return done

    def _end_capture(self) -> Busy:
        done, self._capture = self._capture, Busy()
        return done

    # --- Capture ----------------------------------------------------------------------------------
    async def put_Capture(self, value: int) -> Any:
        if not value:
            with self._lock:
                done = self._stop("Acquisition Stopped")
            _release(done)
            return 0
        with self._lock:
            # a capture still running restarts, as in ADCore
            done = [self._end_capture(), self._end_triggers()]
            self._ring = deque(maxlen=self.values["PreCount"])
            self._capturing, self._soft, self._flushed = True, False, False
            self._post = self._actual = 0
            self._set_triggered(False)
            self.set_many({"CurrentQty_RBV": 0, "PostTriggerQty_RBV": 0,
                           "ActualTriggerCount_RBV": 0, "Capture": 1})
            self._status(self._filling())
            waiting = self._capture.arm()
        _release(done)
        return await finish(waiting, self.publisher)

    def _stop(self, status: str) -> list[Busy]:
        """End capturing (lock held): Capture=0; returns the put-callbacks to complete."""
        self._capturing, self._soft = False, False
        self._set_triggered(False)
        self._ring.clear()
        self.set_many({"CurrentQty_RBV": 0, "Capture": 0})
        self._status(status)
        return [self._end_triggers(), self._end_capture()]

    # --- soft trigger -----------------------------------------------------------------------------
    async def put_Trigger(self, value: int) -> Any:
        if not value:
            with self._lock:
                self._soft = False  # writing 0 disarms a soft trigger not yet used
            return 0
        with self._lock:
            capturing = self._capturing
            if capturing:
                self._soft = True
                self._set_triggered(True)
                waiting = self._triggers.arm()
                self.set("Trigger", 1)
            immediately = bool(self.values["FlushOnSoftTrg"])
        if not capturing:
            self._report("Trigger ignored: not capturing")
            return 0
        if immediately:  # delivered off the loop, after the delivery in progress if any
            await asyncio.get_running_loop().run_in_executor(None, self._flush_now)
        return await finish(waiting, self.publisher)

    def _flush_now(self) -> None:
        with self._deliver_lock:
            with self._lock:
                if not (self._capturing and self._ring):
                    return
                self._flushed = True
                arrays = self._take_ring()
                self._status("Flushing")
            self._deliver(arrays)

    def _take_ring(self) -> list[NDArray]:
        arrays = list(self._ring)
        self._ring.clear()
        self.set("CurrentQty_RBV", 0)
        return arrays

    def _deliver(self, outputs: list[NDArray]) -> None:
        with self._deliver_lock:  # also the base's placeholders, in line with ours
            super()._deliver(outputs)

    # --- settings ---------------------------------------------------------------------------------
    def put_PreCount(self, value: int) -> int:
        if self._capturing:
            self._report("Stop acquisition to set pre-count")
            return self.values["PreCount"]
        return value

    def put_TriggerCalc(self, value: str) -> str:
        text = value if value.strip() else DEFAULT_TRIGGER_CALC
        try:
            self._calc = compile_calc(text)  # one reference swap: the worker sees old or new
            if self.values["StatusMessage"].startswith("TriggerCalc:"):
                self._status("TriggerCalc OK")  # the error shown is no longer true
        except CalcError as exc:
            self._calc = None
            self._report(f"TriggerCalc: {exc}")
        return text

    # --- the data path (worker thread) ------------------------------------------------------------
    def process(self, array: NDArray) -> None:
        """Decide under `_lock`, deliver outside it (see the class docstring)."""
        params = self._params()
        with self._deliver_lock:
            with self._lock:
                outputs, done = self._take(array, params)
            try:
                if outputs:
                    self._deliver(outputs)
            finally:
                _release(done)
        return None

    def _take(self, array: NDArray, params: Mapping[str, Any]) -> tuple[list[NDArray],
                                                                        list[Busy]]:
        """What `array` sends downstream, and the busy puts it completes (lock held)."""
        if not self._capturing:
            return [], []
        if self._soft:
            self._set_triggered(True)
        elif not self._triggered:
            self._set_triggered(self._evaluate(array, params))
        if not self._triggered:
            self._ring.append(array)
            self.set("CurrentQty_RBV", len(self._ring))
            if len(self._ring) == self._ring.maxlen or not self._ring.maxlen:
                self._status("Buffer Wrapping" if self._ring.maxlen else "Dropping frames")
            return [], []
        self._status("Flushing")
        outputs = [] if self._flushed else self._take_ring()
        self._flushed = True
        self._post += 1
        self.set("PostTriggerQty_RBV", self._post)
        done = []
        if self._post >= params["PostCount"]:
            done = self._trigger_complete(params)
        return outputs + [array], done

    def process_missing(self, array: NDArray) -> None:
        with self._deliver_lock:
            with self._lock:
                passing = self._capturing and self._triggered
            if passing:
                self._deliver([array])
        return None

    def _evaluate(self, array: NDArray, params: Mapping[str, Any]) -> bool:
        env = {"A": _attribute_value(array, params["TriggerA"]),
               "B": _attribute_value(array, params["TriggerB"]),
               "C": float(params["PreCount"]), "D": float(params["PostCount"]),
               "E": float(self.values["CurrentQty_RBV"]), "F": float(self._triggered)}
        self.set_many({"TriggerAVal": env["A"], "TriggerBVal": env["B"]})
        calc = self._calc
        if calc is None:
            return False
        result = calc(env)
        self.set("TriggerCalcVal", result)
        return math.isfinite(result) and result != 0.0

    def _trigger_complete(self, params: Mapping[str, Any]) -> list[Busy]:
        self._actual += 1
        self.set("ActualTriggerCount_RBV", self._actual)
        preset = params["PresetTriggerCount"]
        if preset == 0 or self._actual < preset:
            self._flushed, self._soft, self._post = False, False, 0
            self._set_triggered(False)
            self.set("PostTriggerQty_RBV", 0)
            self._status(self._filling())
            return [self._end_triggers()]
        return self._stop("Acquisition Completed")

    def shutdown(self) -> None:
        with self._lock:
            self._ring.clear()
        super().shutdown()


def _release(done: list[Busy]) -> None:
    for busy in done:
        busy.release()


def _attribute_value(array: NDArray, name: str) -> float:
    """The attribute's value as a double, NaN when absent or not numeric (ADCore's getValue)."""
    return attribute_number(array.attributes, name)
