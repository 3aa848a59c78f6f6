"""Plugin base: NDPluginDriver's semantics, with one owner per port.

An upstream port calls `receive()`. With BlockingCallbacks=Yes the plugin processes in the
caller's thread; otherwise the array goes into the plugin's Inbox, bounded by QueueSize, served
by NumThreads worker threads. An array that finds the queue full is dropped, counted in
DroppedArrays, and its placeholder takes its place in line, so sinks learn what they lost in
unique_id order. MinCallbackTime and the refusal of compressed input are decided before queueing.

The owner (the worker, or the caller's thread with BlockingCallbacks) alone touches processing
state. A CA put that must change it is queued with `between_frames()` and runs between two frames;
a put of a parameter only bumps `params_version`, and the owner takes a new snapshot
(`frame_settings`) before its next frame, so a frame never sees a torn mix and a change applies from
exactly one frame on. Each acquisition records which values each plugin used from which frame
(`Acquisition.pipeline`). The event loop never waits for processing.

A subclass implements `process()`, which takes one NDArray and returns zero or more NDArrays for
downstream plugins, reading its parameters from `self.frame_settings`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, ClassVar, Iterable

from .adcore import NDARRAY_BASE, PLUGIN_BASE
from .arrayport import ArrayPort
from .channels import address_problem, channel_view
from .graph import GraphError, PortGraph
from .ndarray import Acquisition, FrameStatus, MissingCause, NDArray, resolve
from .params import R, bool_param, enum_param, int_param
from .pool import Block, NoMemory, heap_block
from .refusals import REFUSALS
from .sparse import densify_array
from .plugin_queues import QUEUED_FRAME, QUEUED_PASS, QUEUED_STOP, Inbox, Sorter
from .throttle import ByteRate

#: process() returns this when the result comes later, through complete() (child processes)
DEFERRED = object()

Outputs = NDArray | Iterable[NDArray] | None


DROP, BLOCK = 0, 1
#: ndflow: what happens to a frame that finds the queue full, and the frame accounting
LOSS_PARAMS = (
    enum_param("LossPolicy", ("Drop", "Block"), DROP, group="Plugin",
               doc="Drop: a frame finding the queue full is dropped and recorded as lost "
                   "(ADCore). Block: the upstream waits for room (lossless; the driver's pool "
                   "is the limit)"),
    int_param("FramesReceived_RBV", 0, R, group="Plugin",
              doc="frames that reached this plugin = ArrayCounter + DroppedArrays + throttled"),
    int_param("FramesThrottled_RBV", 0, R, group="Plugin",
              doc="frames skipped by MinCallbackTime / MaxArrayRate"),
    bool_param("BlockedUpstream_RBV", "No", "Yes", 0, R, group="Plugin",
               doc="an upstream port is waiting for room in the queue (LossPolicy Block)"),
)


class Plugin(ArrayPort):
    PARAMS = (NDARRAY_BASE, PLUGIN_BASE, LOSS_PARAMS)
    plugin_type: ClassVar[str] = "Unknown"
    #: False: compressed arrays are refused, as NDPluginDriver does for plugins that are not
    #: compression-aware (only Codec, the file writers and StdArrays-like sinks accept them)
    compression_aware: ClassVar[bool] = False
    #: False: a sparse frame (NDArray.sparse) is densified before process(), so a plugin never
    #: reads its intensity list as an image; True: process() gets it as it is
    sparse_aware: ClassVar[bool] = False
    #: False: a multi-channel frame (NDArray.channels) at NDArrayAddress 0 is refused with a
    #: status message (set the address to a channel); True: process() gets all channels, (C,
    #: H, W). At address J every plugin gets channel J alone (ndflow.channels)
    channels_aware: ClassVar[bool] = False

    def __init__(self, port: str, prefix: str, graph: PortGraph, input_port: str = "",
                 input_address: int = 0, enabled: bool = False, queue_size: int = 20,
                 max_threads: int = 1, blocking: bool = False, pool_bytes: int = 0,
                 new_block: Callable[[int], Block] = heap_block,
                 loss_policy: str = "drop") -> None:
        super().__init__(port, prefix, graph, pool_bytes, new_block)
        self.values.update({
            "PluginType_RBV": self.plugin_type, "NDArrayPort": input_port,
            "NDArrayAddress": input_address, "EnableCallbacks": int(enabled),
            "QueueSize": queue_size, "QueueFree": queue_size, "MaxThreads_RBV": max_threads,
            "BlockingCallbacks": int(blocking),
            "LossPolicy": BLOCK if loss_policy == "block" else DROP,
        })
        self.params.override("NumThreads", high=max_threads)
        self._inbox = Inbox()
        self._workers: list[threading.Thread] = []
        self._blocking_lock = threading.Lock()  # held by the caller's thread while it owns
        self._commands: deque[Callable[[], None]] = deque()  # between_frames, blocking mode
        self._last_callback = 0.0
        self._last_input: NDArray | None = None
        self._sorter = Sorter(self)
        self._byte_rate = ByteRate()  # MaxByteRate
        self._running = False
        #: the parameters the current frame is processed with (see freeze)
        self.frame_settings: dict[str, Any] = dict(self.values)
        self._frozen_version = -1
        self._frozen_acquisition: Acquisition | None = None
        self._freeze_lock = threading.Lock()

    # --- wiring -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        port = self.values["NDArrayPort"]
        if port:
            self.graph.connect(self, port, self.values["NDArrayAddress"])
        self._set_threads(self.values["NumThreads"])

    def put_NDArrayPort(self, value: str) -> str:
        return self._rewire(value, self.values["NDArrayAddress"], "NDArrayPort", value)

    def put_NDArrayAddress(self, value: int) -> int:
        return self._rewire(self.values["NDArrayPort"], value, "NDArrayAddress", value)

    def _rewire(self, port: str, address: int, name: str, requested: Any) -> Any:
        try:
            self.graph.connect(self, port, address)
        except GraphError as exc:
            self.message(f"{name} {requested!r} refused: {exc}; kept "
                         f"{self.values['NDArrayPort']!r}", logging.WARNING)
            return self.values[name]
        self.message(f"connected to {port or 'nothing'} address {address}")
        return requested

    # --- threads ------------------------------------------------------------------------------------
    def put_NumThreads(self, value: int) -> int:
        self._set_threads(value)
        return value

    def _set_threads(self, count: int) -> None:
        if not self._running:
            return
        while len(self._workers) > count:
            self._inbox.put(QUEUED_STOP)
            self._workers.pop()
        while len(self._workers) < count:
            worker = threading.Thread(target=self._work, name=f"{self.port}-worker", daemon=True)
            self._workers.append(worker)
            worker.start()

    def threads(self) -> list[threading.Thread]:
        return list(self._workers)

    def queue_fill(self) -> float:
        """How full the input queue is, 0..1 (what a pausing driver watches)."""
        return self._inbox.frames / max(1, self.values["QueueSize"])

    def shutdown(self) -> None:
        self._running = False
        for _ in self._workers:
            self._inbox.put(QUEUED_STOP)
        for worker in self._workers:
            worker.join(timeout=2)
        self._workers.clear()

    def _work(self) -> None:
        while True:
            # idle wake-ups flush the sorter; capped so no SortTime can overflow a wait
            item = self._inbox.get(min(self.values["SortTime"], 1.0) or 0.1)
            if item is None:
                self._sorter.flush_ready()
                continue
            if callable(item):
                self._run_command(item)
                continue
            kind, array, outputs = item
            if kind is QUEUED_STOP:
                return
            try:
                if kind is QUEUED_FRAME:
                    self._handle(array)
                else:  # a frame lost at this door, in line with the frames around it: the
                    # plugin records it (a file writer's row) and passes it on
                    self._finish(array, _as_list(self.process_missing(outputs[0])), None)
            except Exception as exc:  # a bug in the base or the sorter: report, keep serving
                self.log.error("%s: frame %s: %s: %s", self.prefix, array.unique_id,
                               type(exc).__name__, exc)
                self.log.debug("traceback", exc_info=True)
            finally:
                self._leave(array)

    # --- commands that change processing state ---------------------------------------------------------
    def between_frames(self, fn: Callable[[], None]) -> Future:
        """Run `fn` in this port's owner thread between two frames; never blocks the caller
        (the event loop), which may await the returned future (`busy.until`) to complete a put
        once it applied. With BlockingCallbacks the owner is whichever thread holds the port:
        if none does, `fn` runs at once in the caller."""
        done: Future = Future()

        def command() -> None:
            try:
                self._run_command(fn)
            finally:
                resolve(done)
        if not self._running:
            command()
        elif self.values["BlockingCallbacks"]:
            self._commands.append(command)
            self._try_commands()
        else:
            self._inbox.command(command)
        return done

    def _try_commands(self) -> None:
        """Run queued blocking-mode commands if no frame is being processed. Whoever appends
        tries, and whoever finishes a frame tries again, so no command is left behind."""
        while self._commands and self._blocking_lock.acquire(blocking=False):
            try:
                self._drain_commands()
            finally:
                self._blocking_lock.release()

    def _drain_commands(self) -> None:
        while self._commands:
            try:
                fn = self._commands.popleft()
            except IndexError:
                return
            self._run_command(fn)

    def _run_command(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.log.error("%s: command failed: %s: %s", self.prefix, type(exc).__name__, exc)
            self.message(f"command failed: {type(exc).__name__}: {exc}")

    # --- the data path --------------------------------------------------------------------------------
    def receive(self, array: NDArray) -> None:
        """Called by the upstream port, in its thread."""
        values = self.values
        if not values["EnableCallbacks"]:
            return
        self._count("FramesReceived_RBV")
        min_time = values["MinCallbackTime"]
        if min_time > 0:  # throttled before queueing, as NDPluginDriver does
            now = time.monotonic()
            if now - self._last_callback < min_time:
                self.increment("FramesThrottled_RBV")
                return
            self._last_callback = now
        if array.valid and array.codec.compressed and not self.compression_aware:
            self._refuse_compressed(array)
            return
        if array.valid and (array.channels or values["NDArrayAddress"]):
            problem = address_problem(array, values["NDArrayAddress"], self.channels_aware)
            if problem is not None:
                self._refuse(array, problem, "channel layout", rate_limited=True)
                return
        if values["BlockingCallbacks"]:
            # Done before this call returns, inside the upstream's own delivery: no in-flight
            # count needed (a deferred result counts itself, see _handle)
            with self._blocking_lock:
                self._handle(array)
                if self._commands:
                    self._drain_commands()
            if self._commands:
                self._try_commands()
            return
        self._enter(array)  # queued: the acquisition is not processed until this one leaves
        if not self._inbox.offer(array, values["QueueSize"]) and not (
                values["LossPolicy"] == BLOCK and self._offer_blocking(array)):
            self.increment("DroppedArrays")
            self._mark_lost(array, failed=False)
            self._inbox.put(QUEUED_PASS, array, [array.derive(
                None, status=FrameStatus(MissingCause.DROPPED, f"{self.port} queue full"))])

    def _offer_blocking(self, array: NDArray) -> bool:
        """LossPolicy Block: wait for room while the policy, the callbacks and the plugin last
        (a disabled or stopped plugin lets its upstream go, and the frame is then dropped)."""
        self.set("BlockedUpstream_RBV", 1)
        try:
            return self._inbox.offer(array, self.values["QueueSize"], self._still_blocking)
        finally:
            self.set("BlockedUpstream_RBV", 0)

    def _still_blocking(self) -> bool:
        v = self.values
        return self._running and bool(v["EnableCallbacks"]) and v["LossPolicy"] == BLOCK

    def _refuse_compressed(self, array: NDArray) -> None:
        self._refuse(array, f"array {array.unique_id} is compressed ({array.codec.name}); "
                            f"{self.plugin_type} needs uncompressed arrays (add a Codec "
                            f"plugin in Decompress mode upstream)", "compressed input")

    def _refuse(self, array: NDArray, text: str, cause: str, rate_limited: bool = False) -> None:
        """`array` cannot be processed here: said on the status, passed on as a placeholder
        (`rate_limited`: logged at most once per few seconds, as it repeats every frame)."""
        self.message(text, logging.WARNING, log=not rate_limited)
        if rate_limited:
            REFUSALS.line(self.log, f"{self.port}:{cause}", f"{self.port}: {text}")
        self._mark_lost(array, failed=True)
        self.increment("ArrayCounter")  # handled: it becomes a processing-error placeholder
        outputs = [array.derive(None, status=FrameStatus(
            MissingCause.PROCESSING_ERROR, f"{self.port}: {cause}"))]
        if self.values["BlockingCallbacks"]:
            with self._blocking_lock:
                self._finish(array, _as_list(self.process_missing(outputs[0])), None)
        else:
            self._enter(array)
            self._inbox.put(QUEUED_PASS, array, outputs)

    def _count(self, name: str) -> None:
        """increment() for the per-frame counters (plain, coalesced values): one locked add."""
        with self._count_lock:
            self.values[name] += 1
        self._dirty.add(name)

    @staticmethod
    def _enter(array: NDArray) -> None:
        if array.acquisition is not None:
            array.acquisition.in_flight.enter()

    @staticmethod
    def _leave(array: NDArray) -> None:
        if array.acquisition is not None:
            array.acquisition.in_flight.leave()

    @staticmethod
    def _mark_lost(array: NDArray, failed: bool) -> None:
        """`array` (a real frame) becomes a placeholder here: its acquisition counts it."""
        if array.acquisition is not None and array.valid:
            array.acquisition.note_lost(array.unique_id, failed)

    def _channel(self, array: NDArray) -> NDArray:
        """Channel NDArrayAddress of a multi-channel frame (checked in receive(); the address
        may have changed since, then the frame becomes a placeholder here)."""
        address = self.values["NDArrayAddress"]
        problem = address_problem(array, address, self.channels_aware)
        if problem is None:
            return channel_view(array, address)
        self.message(problem, logging.WARNING, log=False)
        REFUSALS.line(self.log, f"{self.port}:channel layout", f"{self.port}: {problem}")
        self._mark_lost(array, failed=True)
        return array.derive(None, status=FrameStatus(MissingCause.PROCESSING_ERROR,
                                                     f"{self.port}: channel layout"))

    def _handle(self, array: NDArray) -> None:
        if self._frozen_version != self.params_version or \
                self._frozen_acquisition is not array.acquisition:
            self.freeze(array)
        self._last_input = array
        if array.channels and array.valid and (self.values["NDArrayAddress"] or
                                               not self.channels_aware):
            array = self._channel(array)  # channel J alone, a view (or refused)
        self._count("ArrayCounter")
        self.describe(array, with_type=True)
        start = time.perf_counter()
        if array.valid:
            try:
                result = self.process(array if array.sparse is None or self.sparse_aware
                                      else densify_array(array))
                if result is DEFERRED:
                    self._enter(array)  # left again in complete()
                    return
                outputs = _as_list(result)
            except NoMemory as exc:  # an output buffer refused: the frame's place is kept
                outputs = [self.no_memory(exc, array)]
            except Exception as exc:  # a bug in one plugin must not stop the pipeline
                self.log.error("%s: processing array %d failed: %s: %s", self.prefix,
                               array.unique_id, type(exc).__name__, exc)
                self.log.debug("traceback", exc_info=True)
                self.message(f"array {array.unique_id}: {type(exc).__name__}: {exc}")
                self._mark_lost(array, failed=True)
                outputs = [array.derive(None, status=FrameStatus(MissingCause.PROCESSING_ERROR,
                                                                 str(exc)))]
        else:
            outputs = _as_list(self.process_missing(array))
        self._finish(array, outputs, time.perf_counter() - start)

    # --- frozen parameters ------------------------------------------------------------------------------
    def frame_snapshot(self) -> dict[str, Any]:
        """The parameter values the next frames are processed with (a subclass may add
        requests it keeps apart from the readback values)."""
        return dict(self.values)

    def freeze(self, array: NDArray | None = None) -> None:
        """A put changed a parameter, or a new acquisition begins: take one consistent snapshot
        and record it in `array`'s acquisition (owner thread, before the frame). Code that calls
        process() itself (tests, benchmarks) calls this after changing `values`."""
        with self._freeze_lock:
            version = self.params_version
            snapshot = self.frame_snapshot()
            settable = {p.name: snapshot[p.name] for p in self.params
                        if p.setting and p.name in snapshot}
            previous = self.frame_settings
            self.frame_settings = snapshot
            self._frozen_version = version
            acquisition = array.acquisition if array is not None else None
            if acquisition is None:
                return
            if acquisition is not self._frozen_acquisition:
                self._frozen_acquisition = acquisition
                acquisition.record_params(self.port, array.unique_id, settable)
            else:
                changed = {k: v for k, v in settable.items() if previous.get(k) != v}
                if not changed:
                    return
                acquisition.record_params(self.port, array.unique_id, changed)
            text = json.dumps({"acquisition": acquisition.id, "from": array.unique_id,
                               "params": settable}, separators=(",", ":"), default=str)
            self.set("EffectiveParams_RBV", text[: self.params["EffectiveParams_RBV"].length - 1])

    def complete(self, array: NDArray, outputs: Outputs, seconds: float | None = None) -> None:
        """Finish a frame whose process() returned DEFERRED (any thread)."""
        try:
            outs = _as_list(outputs)
            if any(o.status.missing in (MissingCause.PROCESSING_ERROR, MissingCause.TIMEOUT)
                   for o in outs):
                self._mark_lost(array, failed=True)
            self._finish(array, outs, seconds)
        finally:
            self._leave(array)

    def _finish(self, array: NDArray, outputs: list[NDArray], seconds: float | None) -> None:
        """What every processed frame goes through, returned at once or completed later."""
        if self.attribute_specs:
            for out in outputs:
                if out is not array and out.valid:  # never edit a shared input's list
                    self.attach_attributes(out)
        if seconds is not None:  # a per-frame status value: stored, published within an interval
            self.values["ExecutionTime_RBV"] = seconds * 1e3
            self._dirty.add("ExecutionTime_RBV")
        self._sorter.push(array, outputs)

    def _deliver(self, outputs: list[NDArray]) -> None:
        rate = self.values["MaxByteRate"]
        for out in outputs:
            if rate > 0 and out.valid and self._byte_rate.over(rate, out.compressed_size):
                # as NDPluginDriver: not passed on, counted; here its place is kept downstream
                self.increment("DroppedOutputArrays")
                self._mark_lost(out, failed=False)
                out = out.derive(None, status=FrameStatus(
                    MissingCause.DROPPED, f"{self.port}: over MaxByteRate {rate:g} bytes/s"))
            self.emit(out)

    def process(self, array: NDArray) -> Outputs:
        """Do the plugin's work on one valid array; return arrays for downstream plugins."""
        return None

    def process_missing(self, array: NDArray) -> Outputs:
        """A placeholder for a lost frame arrived; by default pass it on."""
        return array

    def put_ProcessPlugin(self, value: int) -> int:
        """Process the last array again, in a thread of its own: never in the event loop."""
        last = self._last_input
        if value and last is not None:  # a thread: receive() may process or wait for room
            threading.Thread(target=self.receive, args=(last,), daemon=True,
                             name=f"{self.port}-process").start()
        return 0

    def put_MaxArrayRate(self, value: float) -> float:
        self.values["MinCallbackTime"] = 1.0 / value if value > 0 else 0.0
        self.set("MinCallbackTime", self.values["MinCallbackTime"])
        return value

    def put_QueueSize(self, value: int) -> int:
        self.set("QueueFree", max(0, value - self._inbox.frames))
        self.set_many({"QueueFreeLow": value * 0.25, "QueueUseHIGH": value * 0.75,
                       "QueueUseHIHI": float(value)})
        return value

    @property
    def queued(self) -> int:
        """Frames waiting in this plugin's queue."""
        return self._inbox.frames

    def before_publish(self) -> None:
        super().before_publish()
        self.set_if_changed({"QueueFree": max(0, self.values["QueueSize"] - self.queued)})

    def periodic(self, elapsed: float) -> None:
        super().periodic(elapsed)
        self.set("QueueUse", self._inbox.frames)


def _as_list(outputs: Outputs) -> list[NDArray]:
    if outputs is None:
        return []
    if isinstance(outputs, NDArray):
        return [outputs]
    return list(outputs)
