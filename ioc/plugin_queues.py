"""A plugin's two lines of frames: the queue in front of it (`Inbox`) and the order its outputs
leave in when several threads process (`Sorter`): NDPluginDriver's queue and its SortMode.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from .ndarray import Acquisition, NDArray

if TYPE_CHECKING:
    from .plugin import Plugin

# what an Inbox holds: (kind, array, outputs)
QUEUED_FRAME, QUEUED_PASS, QUEUED_STOP = "frame", "pass", "stop"


class Inbox:
    """A non-blocking plugin's input line. Frames are bounded by QueueSize when offered (the
    check and the append are one step, so the bound holds by construction); placeholders of
    frames dropped at the door keep their place in line without counting, since they hold no
    pixels. Commands (between_frames) go before the next frame."""

    def __init__(self) -> None:
        self._items: deque[tuple[str, Any, Any]] = deque()
        self._commands: deque[Callable[[], None]] = deque()
        self._frames = 0
        self._cond = threading.Condition(threading.Lock())
        self._room = threading.Condition(self._cond._lock)  # type: ignore[attr-defined]

    @property
    def frames(self) -> int:
        """Frames waiting (placeholders not counted)."""
        return self._frames

    def offer(self, array: NDArray, limit: int, wait: Callable[[], bool] | None = None) -> bool:
        """Queue `array` if fewer than `limit` frames wait. With `wait`, a full queue makes the
        caller wait for room while `wait()` stays true (Block policy); else it is refused."""
        with self._cond:
            while self._frames >= limit:
                if wait is None or not wait():
                    return False
                self._room.wait(0.1)
            self._frames += 1
            self._items.append((QUEUED_FRAME, array, None))
            self._cond.notify()
        return True

    def put(self, kind: str, array: Any = None, outputs: Any = None) -> None:
        """A placeholder or a stop: never refused."""
        with self._cond:
            self._items.append((kind, array, outputs))
            self._cond.notify()

    def command(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._commands.append(fn)
            self._cond.notify()

    def get(self, timeout: float) -> tuple[str, Any, Any] | Callable[[], None] | None:
        """The next command, else the next item; None after `timeout` with nothing to do."""
        with self._cond:
            if not self._items and not self._commands:
                self._cond.wait(timeout)
            if self._commands:
                return self._commands.popleft()
            if not self._items:
                return None
            item = self._items.popleft()
            if item[0] is QUEUED_FRAME:
                self._frames -= 1
                self._room.notify()
            return item


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
