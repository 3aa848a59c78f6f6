"""Plugin base: NDPluginDriver's semantics.

An upstream port calls `receive()`. With BlockingCallbacks=Yes the plugin processes in the
caller's thread; otherwise the array goes on a queue of QueueSize served by NumThreads worker
threads, and an array that finds the queue full is dropped, counted in DroppedArrays and passed on
as a missing-frame placeholder so sinks know what they lost. A subclass implements `process()`,
which takes one NDArray and returns zero or more NDArrays for downstream plugins.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, ClassVar, Iterable

from .adcore import NDARRAY_BASE, PLUGIN_BASE
from .arrayport import ArrayPort
from .graph import GraphError, PortGraph
from .ndarray import Acquisition, FrameStatus, MissingCause, NDArray
from .pool import Block, heap_block

_STOP = object()
#: process() returns this when the result comes later, through complete() (child processes)
DEFERRED = object()

Outputs = NDArray | Iterable[NDArray] | None


class Plugin(ArrayPort):
    PARAMS = (NDARRAY_BASE, PLUGIN_BASE)
    plugin_type: ClassVar[str] = "Unknown"
    #: False: compressed arrays are refused, as NDPluginDriver does for plugins that are not
    #: compression-aware (only Codec, the file writers and StdArrays-like sinks accept them)
    compression_aware: ClassVar[bool] = False

    def __init__(self, port: str, prefix: str, graph: PortGraph, input_port: str = "",
                 input_address: int = 0, enabled: bool = False, queue_size: int = 20,
                 max_threads: int = 1, blocking: bool = False, pool_bytes: int = 0,
                 new_block: Callable[[int], Block] = heap_block) -> None:
        super().__init__(port, prefix, graph, pool_bytes, new_block)
        self.values.update({
            "PluginType_RBV": self.plugin_type, "NDArrayPort": input_port,
            "NDArrayAddress": input_address, "EnableCallbacks": int(enabled),
            "QueueSize": queue_size, "QueueFree": queue_size, "MaxThreads_RBV": max_threads,
            "BlockingCallbacks": int(blocking),
        })
        self.params.override("NumThreads", high=max_threads)
        self._queue: queue.Queue = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._blocking_lock = threading.Lock()
        self._last_callback = 0.0
        self._last_input: NDArray | None = None
        self._sorter = Sorter(self)
        self._running = False

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
            self._queue.put(_STOP)
            self._workers.pop()
        while len(self._workers) < count:
            worker = threading.Thread(target=self._work, name=f"{self.port}-worker", daemon=True)
            self._workers.append(worker)
            worker.start()

    def shutdown(self) -> None:
        self._running = False
        for _ in self._workers:
            self._queue.put(_STOP)
        for worker in self._workers:
            worker.join(timeout=2)
        self._workers.clear()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.values["SortTime"] or 0.1)
            except queue.Empty:
                self._sorter.flush_ready()
                continue
            if item is _STOP:
                return
            try:
                self._handle(item)
            finally:
                self.set("QueueFree", max(0, self.values["QueueSize"] - self._queue.qsize()))
                self._leave(item)

    # --- the data path --------------------------------------------------------------------------------
    def receive(self, array: NDArray) -> None:
        """Called by the upstream port, in its thread."""
        if not self.values["EnableCallbacks"]:
            return
        self._enter(array)
        if self.values["BlockingCallbacks"]:
            try:
                with self._blocking_lock:
                    self._handle(array)
            finally:
                self._leave(array)
            return
        if self._queue.qsize() >= self.values["QueueSize"]:
            self.increment("DroppedArrays")
            try:
                self._sorter.push(array, [array.derive(
                    None, status=FrameStatus(MissingCause.DROPPED, f"{self.port} queue full"))])
            finally:
                self._leave(array)
            return
        self._queue.put(array)
        self.set("QueueFree", max(0, self.values["QueueSize"] - self._queue.qsize()))
        self.set("NumQueuedArrays", self._queue.qsize())

    @staticmethod
    def _enter(array: NDArray) -> None:
        if array.acquisition is not None:
            array.acquisition.in_flight.enter()

    @staticmethod
    def _leave(array: NDArray) -> None:
        if array.acquisition is not None:
            array.acquisition.in_flight.leave()

    def _handle(self, array: NDArray) -> None:
        now = time.monotonic()
        min_time = self.values["MinCallbackTime"]
        if min_time > 0 and now - self._last_callback < min_time:
            self._sorter.push(array, [])
            return
        self._last_callback = now
        self._last_input = array
        self.increment("ArrayCounter")
        self.describe(array, with_type=True)
        start = time.perf_counter()
        if array.valid and array.codec.compressed and not self.compression_aware:
            self.message(f"array {array.unique_id} is compressed ({array.codec.name}); "
                         f"{self.plugin_type} needs uncompressed arrays (add a Codec "
                         f"plugin in Decompress mode upstream)", logging.WARNING)
            outputs = [array.derive(None, status=FrameStatus(
                MissingCause.PROCESSING_ERROR, f"{self.port}: compressed input"))]
        elif array.valid:
            try:
                result = self.process(array)
                if result is DEFERRED:
                    self._enter(array)  # left again in complete()
                    return
                outputs = _as_list(result)
            except Exception as exc:  # a bug in one plugin must not stop the pipeline
                self.log.error("%s: processing array %d failed: %s: %s", self.prefix,
                               array.unique_id, type(exc).__name__, exc)
                self.log.debug("traceback", exc_info=True)
                self.message(f"array {array.unique_id}: {type(exc).__name__}: {exc}")
                outputs = [array.derive(None, status=FrameStatus(MissingCause.PROCESSING_ERROR,
                                                                 str(exc)))]
        else:
            outputs = _as_list(self.process_missing(array))
        self._finish(array, outputs, time.perf_counter() - start)

    def complete(self, array: NDArray, outputs: Outputs, seconds: float | None = None) -> None:
        """Finish a frame whose process() returned DEFERRED (any thread)."""
        try:
            self._finish(array, _as_list(outputs), seconds)
        finally:
            self._leave(array)

    def _finish(self, array: NDArray, outputs: list[NDArray], seconds: float | None) -> None:
        """What every processed frame goes through, returned at once or completed later."""
        for out in outputs:
            if out is not array and out.valid:  # never edit a shared input's list
                self.attach_attributes(out)
        if seconds is not None:
            self.set("ExecutionTime_RBV", seconds * 1e3)
        self._sorter.push(array, outputs)

    def _deliver(self, outputs: list[NDArray]) -> None:
        for out in outputs:
            self.emit(out)

    def process(self, array: NDArray) -> Outputs:
        """Do the plugin's work on one valid array; return arrays for downstream plugins."""
        return None

    def process_missing(self, array: NDArray) -> Outputs:
        """A placeholder for a lost frame arrived; by default pass it on."""
        return array

    def put_ProcessPlugin(self, value: int) -> int:
        if value and self._last_input is not None:
            self.receive(self._last_input)
        return 0

    def put_MaxArrayRate(self, value: float) -> float:
        self.values["MinCallbackTime"] = 1.0 / value if value > 0 else 0.0
        self.set("MinCallbackTime", self.values["MinCallbackTime"])
        return value

    def put_QueueSize(self, value: int) -> int:
        self.set("QueueFree", max(0, value - self._queue.qsize()))
        self.set_many({"QueueFreeLow": value * 0.25, "QueueUseHIGH": value * 0.75,
                       "QueueUseHIHI": float(value)})
        return value

    def periodic(self, elapsed: float) -> None:
        super().periodic(elapsed)
        self.set("QueueUse", self._queue.qsize())


def _as_list(outputs: Outputs) -> list[NDArray]:
    if outputs is None:
        return []
    if isinstance(outputs, NDArray):
        return [outputs]
    return list(outputs)


class Sorter:
    """Puts a plugin's outputs back in unique_id order when several threads process (SortMode).

    Unsorted: outputs go out as soon as they exist. Sorted: they wait until every smaller id has
    gone out, for at most SortTime, and at most SortSize of them are held."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        # (unique id, tie, arrival, acquisition, outputs)
        self._heap: list[tuple[int, int, float, Acquisition | None, list[NDArray]]] = []
        self._tie = itertools.count()
        self._last_id: int | None = None
        self._acquisition: Acquisition | None = None

    def _sorting(self) -> bool:
        v = self.plugin.values
        return bool(v["SortMode"]) and (v["NumThreads"] > 1 or self._heap)

    def push(self, array: NDArray, outputs: list[NDArray]) -> None:
        """`outputs` of input `array` are ready to go downstream."""
        if not self._sorting():
            self._last_id = array.unique_id
            self._acquisition = array.acquisition
            self.plugin._deliver(outputs)
            return
        with self._lock:
            heapq.heappush(self._heap, (array.unique_id, next(self._tie), time.monotonic(),
                                        array.acquisition, outputs))
        self.flush_ready()

    def flush_ready(self) -> None:
        """Send on what may go: called per output and, when idle, by the worker threads.
        Popping and delivering happen under one lock, so two threads releasing 5 and 6 cannot
        deliver 6 first."""
        with self._deliver_lock:
            with self._lock:
                ready = self._pop_ready()
            for outs in ready:
                self.plugin._deliver(outs)

    def _expected(self, acquisition: Acquisition | None) -> int | None:
        """The id that may go out at once: the next one, or a new acquisition's first."""
        if acquisition is not None and acquisition is not self._acquisition:
            return acquisition.first_id
        return None if self._last_id is None else self._last_id + 1

    def _pop_ready(self) -> list[list[NDArray]]:
        v = self.plugin.values
        ready = []
        now = time.monotonic()
        while self._heap:
            uid, _, arrived, acquisition, outs = self._heap[0]
            # The expected id (or a late one) goes out at once; a later one waits, for at most
            # SortTime and while fewer than SortSize are held, for the gap before it to fill.
            expected = self._expected(acquisition)
            in_order = expected is None or uid <= expected
            too_many = len(self._heap) > v["SortSize"]
            stale = now - arrived >= v["SortTime"]
            if not (in_order or too_many or stale):
                break
            heapq.heappop(self._heap)
            self._note_order(uid, acquisition)
            ready.append(outs)
        self.plugin.set_if_changed({"SortFree": max(0, v["SortSize"] - len(self._heap))})
        return ready

    def _note_order(self, unique_id: int, acquisition: Acquisition | None) -> None:
        new_run = acquisition is not None and acquisition is not self._acquisition
        if not new_run and self._last_id is not None and unique_id < self._last_id:
            self.plugin.increment("DisorderedArrays")
        if new_run or self._last_id is None or unique_id > self._last_id:
            self._last_id = unique_id
        self._acquisition = acquisition
