"""NDPluginScatter (`Scatter1:`): each array goes to one downstream plugin, the next in turn.

Why: one instance of a slow plugin (Stats on large frames) cannot keep up with the detector;
several instances reading Scatter each get a share of the frames and run in parallel, and
NDPluginGather merges their outputs back into one stream.

Follows NDPluginScatter.cpp (ADCore 3.14) and NDScatter.template:
- Every other plugin passes an array to *all* the plugins listening on its port; Scatter passes
  it to exactly one. The choice is ADCore's "modified round robin": the clients are tried in turn
  starting after the one that took the previous array; a client whose input queue is full is
  skipped (nothing is counted against it), and if every client is full the last one tried takes
  the array anyway and drops it (its DroppedArrays counts it, and a placeholder keeps the
  frame's place downstream). The next array is tried first on the client after the one that
  took (or dropped) this one. So while every queue stays full the turn does not move and the
  same client drops them all: ADCore's docs say the drops rotate, its code (followed here)
  starts the next round where this one started.
- A client skipped by its MinCallbackTime is passed over too, as in ADCore (where a throttled
  client leaves the "try the next one" flag set); a client with BlockingCallbacks always takes
  the array. Clients with EnableCallbacks=Disable are not in the turn at all (in ADCore they have
  no interrupt registration).
- The array itself is not modified; attributes from NDAttributesFile are added to the output.
- `ScatterMethod` has the one choice ADCore defines, "Round robin".

A placeholder for a frame lost upstream is scattered like a frame (to one client), so a Gather
downstream still sees every unique id exactly once.

Deliberate differences: ADCore walks the asyn interrupt list, whose entries for other reasons
or addresses are skipped but still count toward "the last one tried"; here only the plugins
listening on address 0 of this port take part, so the last candidate is always a real client.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from ndflow.ndarray import NDArray
from ndflow.params import RW, Param, enum_param
from ndflow.plugin import Plugin

SCATTER_METHODS = ("Round robin",)

SCATTER_PARAMS: tuple[Param, ...] = (
    enum_param("ScatterMethod", SCATTER_METHODS, 0, RW, group="Scatter",
               doc="how the next client is chosen (ADCore defines only Round robin)"),
)


def would_accept(target: Any, now: float | None = None) -> bool:
    """Whether `target` (a plugin listening on Scatter's port) would queue an array now instead
    of dropping or skipping it: enabled, not throttled by MinCallbackTime, and either blocking
    or with room in its queue. A read of its state, so it can change before the array arrives;
    the array is then dropped and counted there, as a full queue would."""
    values = getattr(target, "values", None)
    if values is None:
        return True
    if not values.get("EnableCallbacks", 1):
        return False
    min_time = values.get("MinCallbackTime", 0.0)
    if min_time > 0:
        last = getattr(target, "_last_callback", 0.0)
        if (time.monotonic() if now is None else now) - last < min_time:
            return False
    if values.get("BlockingCallbacks", 0):
        return True
    return target.queue_fill() < 1.0


def choose(targets: Sequence[Any], start: int, accepts: Any = would_accept) -> tuple[int, int]:
    """ADCore's modified round robin: (index of the chosen target, index to start from next
    time). Targets are tried from `start` on, cyclically; the first that `accepts` takes the
    array, and if none does the last one tried (the one before `start`) takes it and drops it.
    `targets` must not be empty."""
    n = len(targets)
    start %= n
    for i in range(n):
        index = (start + i) % n
        if i == n - 1 or accepts(targets[index]):
            return index, (index + 1) % n
    raise AssertionError("unreachable")


class Scatter(Plugin):
    screen = "NDScatter"
    kind = "scatter"
    plugin_type = "NDPluginScatter"
    channels_aware = True  # passes arrays on unchanged
    PARAMS = Plugin.PARAMS + (SCATTER_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._turn_lock = threading.Lock()
        self._next = 0  # the client tried first for the next array

    def process(self, array: NDArray) -> NDArray:
        # a new NDArray sharing the pixels: NDAttributesFile attributes go on it, never on the
        # input's own list (other plugins read the same input)
        return array.derive(array.data)

    def emit(self, array: NDArray) -> None:
        """Hand `array` to one listener instead of all of them."""
        targets = [t for t in self.graph.subscribers(self.port, 0)
                   if getattr(t, "values", {}).get("EnableCallbacks", 1)]
        if not targets:
            return
        with self._turn_lock:
            index, self._next = choose(targets, self._next)
        # outside the lock: a blocking client processes in this thread
        targets[index].receive(array)
