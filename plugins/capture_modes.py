"""NDPluginFile's three capture modes (ADCore semantics) as two tables, and the code that
follows them.

`MODES` says what each FileWriteMode does with each request: an array arriving, Capture=1,
Capture=0, a full capture, WriteFile=1. `CAPTURE_TRANSITIONS` is whether a capture is on,
as `ioc/state.py` does the detector state: an event the table does not list is a bug, logged,
and leaves no capture on.

- Single: with AutoSave=Yes every array is written to its own file; WriteFile=1 writes the last
  array received; Capture=1 is refused.
- Capture: Capture=1 keeps arrays in memory until NumCapture are held, then (AutoSave=Yes, or at
  WriteFile=1) writes them all to one file. When the IOC stops mid-capture, AutoSave=Yes writes
  what is held and AutoSave=No logs how many are lost (ADCore loses them without a word).
- Stream: Capture=1 opens a file (at the first array with LazyOpen=Yes) and writes each array as
  it arrives, until NumCapture arrays (0 = no limit) or Capture=0.

The put side keeps the order of Capture puts (see `CaptureModes.put_Capture`) and, with
DrainOnStop, stops in line with the frames (`file_writer`'s docstring says why).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from concurrent.futures import Future
from typing import Any, Mapping

from ndflow.busy import Busy, finish
from ndflow.component import PutRefused
from ndflow.ndarray import MissingCause, NDArray
from ndflow.plugin import Inbox
from ndflow.sparse import densify_array
from ndflow.transport import HANDLED

from .file_path import WriteError

log = logging.getLogger("ndflow.file")


class Mode(enum.IntEnum):
    """FileWriteMode's choices, by index."""

    SINGLE = 0
    CAPTURE = 1
    STREAM = 2


SINGLE, CAPTURE, STREAM = Mode.SINGLE, Mode.CAPTURE, Mode.STREAM


class Request(enum.Enum):
    ARRAY = "an array (or a placeholder) arrives"
    START = "Capture=1"
    STOP = "Capture=0"
    FULL = "NumCapture arrays taken, or memory full with NumCapture=0"
    WRITE_FILE = "WriteFile=1"


class Step(enum.Enum):
    """What a writer does for a request in a mode."""

    SAVE = "AutoSave=Yes: write the array to a file of its own"
    HOLD = "hold the array in memory (if a capture is on)"
    APPEND = "write the array to the open file, opening it first (if a capture is on)"
    REFUSE = "refuse the put, saying why"
    BEGIN = "forget what is held; take arrays from now on"
    OPEN = "check FilePath; open the file now unless LazyOpen=Yes; take arrays from now on"
    SAVE_HELD = "AutoSave=Yes: write the arrays held to one file; close"
    WRITE_HELD = "write the arrays held to one file"
    WRITE_LAST = "write the last array received to a file"
    CLOSE = "close the open file"


M, Q, T = Mode, Request, Step
MODES: dict[tuple[Mode, Request], Step] = {
    (M.SINGLE, Q.ARRAY): T.SAVE,
    (M.CAPTURE, Q.ARRAY): T.HOLD,
    (M.STREAM, Q.ARRAY): T.APPEND,
    (M.SINGLE, Q.START): T.REFUSE,
    (M.CAPTURE, Q.START): T.BEGIN,
    (M.STREAM, Q.START): T.OPEN,
    (M.SINGLE, Q.STOP): T.CLOSE,
    (M.CAPTURE, Q.STOP): T.SAVE_HELD,
    (M.STREAM, Q.STOP): T.CLOSE,
    (M.CAPTURE, Q.FULL): T.SAVE_HELD,
    (M.STREAM, Q.FULL): T.CLOSE,
    (M.SINGLE, Q.WRITE_FILE): T.WRITE_LAST,
    (M.CAPTURE, Q.WRITE_FILE): T.WRITE_HELD,
    (M.STREAM, Q.WRITE_FILE): T.REFUSE,
}

REFUSALS = {
    (M.SINGLE, Q.START): "Capture needs FileWriteMode Capture or Stream",
    (M.STREAM, Q.WRITE_FILE): "WriteFile does nothing in Stream mode (use Capture)",
}


def step(mode: int, request: Request) -> Step:
    return MODES[(Mode(mode), request)]


class CaptureState(enum.Enum):
    IDLE = "idle"  # no capture: arrays are not taken (Single's AutoSave aside)
    ON = "on"  # a capture is on: arrays are taken (held, or streamed)


class CaptureEvent(enum.Enum):
    START = "start"  # Capture=1 has done its setup (a capture on until now ended first)
    END = "end"  # full, Capture=0, a write failed, or a new Capture=1 restarting it


CAPTURE_TRANSITIONS: dict[tuple[CaptureState, CaptureEvent], CaptureState] = {
    (CaptureState.IDLE, CaptureEvent.START): CaptureState.ON,
    (CaptureState.ON, CaptureEvent.END): CaptureState.IDLE,
    (CaptureState.IDLE, CaptureEvent.END): CaptureState.IDLE,  # stops may cross: harmless
}


class CaptureMachine:
    """Whether a capture is on. Not locked itself: the writer's `_state_lock` guards it with
    the buffer it goes with."""

    def __init__(self) -> None:
        self.state = CaptureState.IDLE

    @property
    def on(self) -> bool:
        return self.state is CaptureState.ON

    def fire(self, event: CaptureEvent) -> CaptureState:
        new = CAPTURE_TRANSITIONS.get((self.state, event))
        if new is None:
            log.error("capture: event %s not allowed when %s", event.value, self.state.value)
            new = CaptureState.IDLE
        self.state = new
        return new


#: an Inbox item: a function run in line with the frames (see _MarkedInbox)
_MARK = "mark"


class _MarkedInbox(Inbox):
    """The plugin's Inbox, plus marks: a function queued in line, behind every frame and
    placeholder already queued, that the worker runs when it gets there (as it runs a
    between_frames command: `get` hands it over as a callable)."""

    def mark(self, fn: Any) -> None:
        self.put(_MARK, fn)

    def get(self, timeout: float) -> Any:
        item = super().get(timeout)
        if isinstance(item, tuple) and item[0] == _MARK:
            return item[1]
        return item


class CaptureModes:
    """The capture half of a FileWriter (a mixin of `file_writer.FileWriter`, which provides
    the file operations `_write_files`, `_open_for`, `_write_one`, `_close`, the locks, the
    buffer and the status helpers)."""

    # --- the data path (worker thread) -----------------------------------------------------------
    def process(self, array: NDArray) -> None:
        self._handle_array(array)
        return None

    def process_missing(self, array: NDArray) -> None:
        self._handle_array(array)
        return None

    def _handle_array(self, array: NDArray) -> None:
        params = self._params()
        action = step(params["FileWriteMode"], Request.ARRAY)
        if action is Step.SAVE:
            if params["AutoSave"] and array.valid:
                with self._lock:
                    self._write_files([array], params)
            return
        if action is Step.HOLD:
            with self._state_lock:
                if not self._capture_state.on:
                    return
                self._buffer.append(array)
                held = len(self._buffer)
                self.set("NumCaptured_RBV", held)
                limit = params["NumCapture"]
                # NumCapture=0: as many as memory holds. The first frame refused for memory
                # (the buffer holds the pool, or the IOC's budget is reached) ends it, with
                # its row: placeholders cost no pixels but would pile up without end.
                memory_full = not limit and array.status.missing is MissingCause.NO_MEMORY
                if not memory_full and (not limit or held < limit):
                    return
                self._capture_state.fire(CaptureEvent.END)  # full: ends with this array
                kept = sum(1 for a in self._buffer if a.valid)
                arrays = self._held_to_save(params, Request.FULL)
            if memory_full:
                self.message(f"Capture ended: memory full with {kept} frames held (NumCapture 0 "
                             f"holds what memory allows; {array.status.message or 'no memory'})",
                             logging.WARNING)
            with self._lock:  # the buffer is out of reach of FreeCapture while written
                self._write_files(arrays, params)
                self._end_capture()
            return
        with self._lock:
            if self._capture_state.on:  # Capture=0 ends it before it waits for this lock
                self._stream(array, params)

    def _stream(self, array: NDArray, params: Mapping[str, Any]) -> None:
        if not array.valid and not self._open:
            # No file to take the row yet (its shape and type come from a real array).
            if self.multiple_arrays:
                self._early_missing.append(array)
            else:
                self.message(f"array {array.unique_id} lost ({array.status.missing.value}): "
                             "no file for it", logging.WARNING)
            return
        rows = [array]
        try:
            if not self._open or not self.multiple_arrays:
                self._close()
                self._open_for(array, params)
                rows = self._early_missing + rows
                self._early_missing = []
            for row in rows:
                self._write_one(row)
                self.increment("NumCaptured_RBV")
        except WriteError as exc:
            self._error(str(exc))
            self._close()
            self._end_capture()
            return
        if params["NumCapture"] and self.values["NumCaptured_RBV"] >= params["NumCapture"]:
            self._close()
            self._end_capture()

    def _take_buffer(self) -> list[NDArray]:
        """The captured arrays, leaving an empty buffer (state lock held)."""
        arrays, self._buffer = self._buffer, []
        return arrays

    def _held_to_save(self, params: Mapping[str, Any], request: Request) -> list[NDArray]:
        """The arrays a capture's end writes (state lock held): all held, taken out of the
        buffer, when the mode saves them (Capture with AutoSave=Yes); else none, and the buffer
        stays for WriteFile."""
        if step(params["FileWriteMode"], request) is Step.SAVE_HELD and params["AutoSave"]:
            return self._take_buffer()
        return []

    def _end_capture(self) -> None:
        with self._state_lock:
            self._capture_state.fire(CaptureEvent.END)
        self.set("Capture", 0)
        self._capture.release()

    # --- busy records (event-loop thread; file work in an executor, awaited) ---------------------
    # Capture puts run in two lanes: the I/O thread (starts, and stops without DrainOnStop), and
    # in line with the frames, through the worker (a DrainOnStop stop; and a start put while an
    # in-line stop is pending, so that it begins right behind it and takes the frames that come
    # after its put). Each put has a number, in the order the puts came, so the lanes cannot
    # undo each other: a stop ends only a capture an earlier put started, and a start does not
    # begin once a later stop has taken effect.
    async def put_Capture(self, value: int) -> Any:
        self._capture_puts += 1
        seq = self._capture_puts
        if not value:
            if self.values["DrainOnStop"] and self._running and self._workers:
                return await self._drain_then_stop(seq)
            with self._state_lock:  # no frame is taken from now on
                self._capture_state.fire(CaptureEvent.END)
                self._stopped_at = seq
                arrays = self._held_to_save(self.values, Request.STOP)
            # completes once the file is written and closed, as in ADCore
            await self._off_loop(self._stop_capture, arrays, seq)
            return HANDLED
        if step(self.values["FileWriteMode"], Request.START) is Step.REFUSE:
            message = REFUSALS[(Mode(self.values["FileWriteMode"]), Request.START)]
            self._fail(message)
            raise PutRefused(message)
        # This capture's own completion, armed before it starts (it may end at once) and
        # installed by the start, so the end of a capture before it cannot complete this put.
        busy = Busy()
        waiting = busy.arm()
        if self._in_line_ops:  # a stop still draining: begin right behind it
            outcome = await asyncio.shield(asyncio.wrap_future(
                self._in_line(self._begin_capture, busy, seq)))
        else:
            outcome = await self._off_loop(self._begin_capture, busy, seq)
        if outcome is not True:
            busy.release()
            if outcome is None:  # a later Capture=0 took effect first: over before it began
                return HANDLED
            raise PutRefused(outcome or "the capture could not start")
        return await finish(waiting, self.publisher)

    def _in_line(self, fn: Any, *args: Any) -> Future:
        """Run `fn(*args)` in the worker, in line behind the frames queued now (a mark); its
        result in the returned future, which stays in `_in_line_ops` until done."""
        result: Future = Future()
        self._in_line_ops.add(result)
        result.add_done_callback(self._in_line_ops.discard)

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # the put that waits says it
                result.set_exception(exc)
        self._inbox.mark(run)
        return result

    async def _drain_then_stop(self, seq: int) -> Any:
        """Capture=0 with DrainOnStop: a mark goes into the queue behind the frames already in
        it; the worker writes them, then stops the capture when it reaches the mark (Capture
        mode: writes the buffer with AutoSave) and closes the file. The put completes then.
        Frames queued after the mark find the capture over and are not taken."""
        def stop() -> None:
            with self._state_lock:
                self._stopped_at = max(self._stopped_at, seq)
                if self._capture_seq > seq:  # a capture a later put started: not ours to end
                    return
                self._capture_state.fire(CaptureEvent.END)
                arrays = self._held_to_save(self.values, Request.STOP)
            self._stop_capture(arrays, seq)
        return await finish(self._in_line(stop), self.publisher)

    def _start_capture(self, busy: Busy) -> bool:
        """Start a capture now (the reason on WriteMessage if it cannot)."""
        return self._begin_capture(busy, self._capture_puts) is True

    def _begin_capture(self, busy: Busy, seq: int) -> bool | str | None:
        """Start the capture put number `seq`: True; the reason it cannot start (the put
        refuses with it, and WriteMessage shows it); None if a later Capture=0 has already
        taken effect (nothing to start)."""
        with self._lock:
            with self._state_lock:
                if self._stopped_at > seq:
                    return None
                self._capture_state.fire(CaptureEvent.END)
                self._buffer = []
                self._capture_seq = seq
            self._close()
            self._early_missing = []
            self.set("NumCaptured_RBV", 0)
            v = dict(self.values)  # a put's work: the values as the client left them
            opens = step(v["FileWriteMode"], Request.START) is Step.OPEN
            failure = ""
            last = self._last_input
            if opens:
                failure = self._check_path(v["FilePath"], create=True) or ""
            if not failure and opens and not v["LazyOpen"] and last is not None and \
                    last.valid and self.multiple_arrays:
                try:
                    self._open_for(last if self.sparse_aware else densify_array(last), v)
                except WriteError as exc:
                    failure = str(exc)
                    self._fail(failure)
            if failure:
                self._end_capture()  # a capture running until now has ended too
                return failure
            previous, self._capture = self._capture, busy
            previous.release()  # a capture running until now restarts, as in ADCore
            self.set("Capture", 1)
            with self._state_lock:
                self._capture_state.fire(CaptureEvent.START)
            return True

    def _stop_capture(self, arrays: list[NDArray], seq: int | None = None) -> str | None:
        """The end of the capture Capture=0 put number `seq` stops (None: whichever is on):
        write what it held, close the file; the write's failure (said already), or None. A
        capture a later put started is left alone."""
        with self._lock:
            if seq is not None and self._capture_seq > seq:
                return None
            failure = self._write_files(arrays, dict(self.values))
            self._close()
            self._end_capture()
            return failure

    def _save_held_at_shutdown(self) -> None:
        """The IOC stops (its frames are all processed): a Capture-mode capture still holding
        arrays ends as Capture=0 would end it. With AutoSave=Yes they are written, so a stop
        (SIGTERM, Ctrl-C) in the middle of a capture keeps what was captured; with AutoSave=No
        they waited for a WriteFile=1 that can no longer come, and the log says how many are
        lost. ADCore loses them either way, and says nothing."""
        with self._state_lock:
            if not self._buffer:
                return
            self._capture_state.fire(CaptureEvent.END)
            arrays = self._held_to_save(self.values, Request.STOP)
            unsaved = len(self._buffer)
            self._buffer = []
        if arrays and self._stop_capture(arrays) is None:  # a failure is said there
            log.info("%s: the IOC stops: its %d captured arrays are written", self.port,
                     len(arrays))
        if unsaved:
            log.warning("%s: the IOC stops: %d captured arrays not written (AutoSave No, and "
                        "no WriteFile=1 came)", self.port, unsaved)

    async def put_WriteFile(self, value: int) -> Any:
        if not value:
            return 0
        self.set("WriteFile", 1)
        try:
            failure = await self._off_loop(self._write_now)
        finally:
            self.set("WriteFile", 0)
        if failure is not None:
            raise PutRefused(failure)
        return HANDLED

    def _write_now(self) -> str | None:
        """WriteFile's work (I/O thread): the failure, or None."""
        v = dict(self.values)
        action = step(v["FileWriteMode"], Request.WRITE_FILE)
        failure: str | None
        if action is Step.WRITE_HELD:
            with self._state_lock:
                arrays = self._take_buffer()
            with self._lock:
                return self._write_files(arrays, v, log=False)
        if action is Step.WRITE_LAST:
            last = self._last_input
            if last is None or not last.valid:
                failure = "WriteFile: no array received yet"
            else:
                with self._lock:
                    # the last input as received: densified here for a dense-only format
                    last = last if self.sparse_aware else densify_array(last)
                    return self._write_files([last], v, log=False)
        else:
            failure = REFUSALS[(Mode(v["FileWriteMode"]), Request.WRITE_FILE)]
        self._fail(failure)
        return failure

    def put_FreeCapture(self, value: int) -> int:
        if value:
            with self._state_lock:  # never held across a write: answers at once
                self._buffer = []
            self.set("NumCaptured_RBV", 0)
        return 0
