"""The publisher sits between the data path and the transports (Channel Access, pvAccess).

Driver and plugin threads never touch a transport. A component's `set()` only marks a name dirty;
a task in the server's event loop collects the dirty names of every component once per interval
and writes their latest values to every endpoint (coalescing), so a fast detector costs the same
publishing work as a slow one and cannot push a server into the overload collapse measured in perf-anchors §3
(0 updates/s at 100% CPU). Values that must never be merged (Acquire_RBV going 0->1->0) are queued
in order the moment they are set, after collecting everything set before them, so nothing set
earlier in any thread is overtaken.

Arrays (large waveforms) are paced by what the clients drain: the latest array of a PV is posted as
soon as the transport says the previous update of that PV has left its queues (the endpoint's
optional `sent()`, see transport.DrainAware; Channel Access follows its fastest client), so a fast
detector never fills a transport's queues and a slow client gets fewer, newer images. An endpoint without `sent()` never
waits for a drain, but gets the latest array at most once per interval, as a scalar would, and
within `undrained_bytes_per_s` (not once per frame: building each one costs the event loop a
copy). An optional byte budget (`array_bytes_per_s`, None: none) caps the rate of every array PV
on top.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from .transport import Endpoint, Transport

log = logging.getLogger("ndflow.publisher")


class Publisher:
    #: the longest wait for an array's previous update to leave (a client that stopped reading
    #: must not stop the images of the others); then the next one is posted anyway
    array_wait_s = 0.5
    #: an endpoint that cannot tell when its updates have left gets an array at most once per
    #: interval and at most this many bytes per second (building each one costs a copy)
    undrained_bytes_per_s = 400e6

    def __init__(self, interval: float = 0.02, array_bytes_per_s: float | None = None) -> None:
        self.interval = interval
        self.array_bytes_per_s = array_bytes_per_s  # None or <= 0: no budget, paced by drain
        # reentrant: a component's collect() may set (and so post) values while collected
        self._lock = threading.RLock()
        self._collecting = False
        self._pending: list[list[Any]] = []  # [channel, value], flushed in order
        self._position: dict[Endpoint, int] = {}
        self._barrier = -1  # index of the last entry that must not be overtaken
        self._arrays: dict[Endpoint, np.ndarray] = {}  # the latest array not yet posted
        self._array_due: dict[Endpoint, float] = {}  # not posted again before (budget)
        # posted, its update not yet out of the transport's queues: the endpoint's sent()
        # awaitable and the timer that stops waiting for it
        self._in_flight: dict[Endpoint, tuple[Any, asyncio.TimerHandle]] = {}
        self._hooked: dict[Endpoint, Any] = {}  # the last awaitable given a done-callback
        self._array_timer: float | None = None  # when the armed array-pass timer fires
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._array_wake: asyncio.Event | None = None
        self._wake_requested = False
        self._array_wake_requested = False
        self._flush_lock: asyncio.Lock | None = None
        self._sources: list[Any] = []  # components whose dirty values are collected
        self.posted = 0  # values handed to the transports, for tests and benchmarks
        self.transports: list[Transport] = []  # serving: asked when updates have been sent

    # --- data-path side (any thread) ------------------------------------------------------------
    def add_source(self, component: Any) -> None:
        """Collect `component`'s dirty values at every flush (see Component.collect)."""
        if component not in self._sources:
            self._sources.append(component)

    def ordered(self) -> AbstractContextManager[bool]:
        """Held (`with publisher.ordered():`) while a component stores an ordered value and posts
        it to each of its channels, so no other thread's post lands in between. Reentrant:
        post() takes it again."""
        return self._lock

    def post(self, channel: Endpoint, value: Any, coalesce: bool = True) -> None:
        with self._lock:
            if not coalesce:
                self._collect_locked()  # what was set before this value goes out before it
            self._post_locked(channel, value, coalesce)
            if not coalesce:
                self._request_wake()

    def _post_locked(self, channel: Endpoint, value: Any, coalesce: bool = True) -> None:
        pos = self._position.get(channel)
        if coalesce and pos is not None and pos > self._barrier:
            self._pending[pos][1] = value
        else:
            self._position[channel] = len(self._pending)
            self._pending.append([channel, value])
            if not coalesce:
                self._barrier = len(self._pending) - 1

    def _collect_locked(self) -> None:
        if self._collecting:
            return
        self._collecting = True
        try:
            self._collect_sources()
        finally:
            self._collecting = False

    def _collect_sources(self) -> None:
        for source in self._sources:
            try:
                source.collect(self._post_locked)
            except Exception as exc:  # one component's bad value must not stop the others
                log.error("cannot collect values of %s: %s", getattr(source, "port", source), exc)

    def post_array(self, channel: Endpoint, array: np.ndarray) -> None:
        """Latest array wins; posted once the previous one has left (and the budget allows)."""
        with self._lock:
            self._arrays[channel] = array
            if channel in self._in_flight:
                return  # posted when the previous one has left
            timer = self._array_timer
            if timer is not None and timer <= self._array_due.get(channel, 0.0):
                return  # not due yet, and a pass is armed for before it is
            if not self._array_wake_requested and self._loop is not None:
                self._array_wake_requested = True
                self._loop.call_soon_threadsafe(self._array_wake.set)

    def _request_wake(self) -> None:
        if not self._wake_requested and self._loop is not None:
            self._wake_requested = True
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- event-loop side --------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._array_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._wake.set()
        self._array_wake.set()
        arrays = asyncio.create_task(self._run_arrays(), name="publisher-arrays")
        try:
            while True:  # scalars: collected and flushed once per interval, latest value wins
                await self._flush(force=False)
                try:  # an ordered value (Acquire_RBV) wakes the flush early
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                with self._lock:
                    self._wake_requested = False
        finally:
            arrays.cancel()
            with self._lock:
                waits, self._in_flight = list(self._in_flight.values()), {}
                self._hooked.clear()
                self._loop = None
            for _, timer in waits:
                timer.cancel()

    # --- arrays -----------------------------------------------------------------------------------
    async def _run_arrays(self) -> None:
        """One pass posts every pending array whose endpoint is ready: its previous update has
        left the transport's queues (`sent()`), and the budget (or, for an endpoint that cannot
        tell, the interval) allows. Not paced by the scalar interval."""
        while True:
            await self._array_wake.wait()
            self._array_wake.clear()
            with self._lock:
                self._array_wake_requested = False
            async with self._flush_lock:
                delay = await self._post_arrays(force=False)
            if delay is not None:
                fires = time.monotonic() + delay
                with self._lock:
                    if self._array_timer is not None and self._array_timer <= fires:
                        continue
                    self._array_timer = fires
                self._loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        with self._lock:
            self._array_timer = None
        self._wake_arrays()

    def _wake_arrays(self) -> None:
        """(event loop) Run the array pass again."""
        with self._lock:
            self._array_wake_requested = True
        self._array_wake.set()

    async def _post_arrays(self, force: bool) -> float | None:
        """Post the pending arrays that are ready (all of them if `force`, under the flush
        lock); the delay until the budget lets the next one go, if one waits for it."""
        now = time.monotonic()
        due: list[tuple[Endpoint, np.ndarray]] = []
        next_delay: float | None = None
        with self._lock:
            for channel in list(self._arrays):
                if not force:
                    if channel in self._in_flight:
                        continue  # _sent runs a pass once the previous one has left
                    wait = self._array_due.get(channel, 0.0) - now
                    if wait > 0:
                        next_delay = wait if next_delay is None else min(next_delay, wait)
                        continue
                due.append((channel, self._arrays.pop(channel)))
        budget = self.array_bytes_per_s
        for channel, array in due:
            sent = getattr(channel, "sent", None)
            wait = 0.0  # the drain paces it
            if sent is None:  # no drain to go by: as a scalar, and no more bytes than this
                wait = max(self.interval, array.nbytes / self.undrained_bytes_per_s)
            if budget is not None and budget > 0:
                wait = max(wait, array.nbytes / budget)
            if wait > 0:
                with self._lock:
                    self._array_due[channel] = now + wait
            await self._write(channel, array)
            if sent is not None:
                self._watch(channel, sent)
        return next_delay

    def _watch(self, channel: Endpoint, sent: Any) -> None:
        """Hold the channel's next array until this update has left the transport's queues."""
        if channel in self._in_flight:  # a forced post while one was under way: the wait
            return  # already running covers the newest update too
        try:
            waiter = sent()
        except Exception as exc:  # a transport's bug must not stop the images
            log.error("%s: cannot tell whether the array has left: %s", channel.param.name, exc)
            return
        if waiter is None:
            return  # nothing queued: ready now
        if not isinstance(waiter, asyncio.Future):
            waiter = asyncio.ensure_future(waiter)
        if waiter.done():
            return
        timer = self._loop.call_later(self.array_wait_s, self._sent, channel, waiter)
        with self._lock:
            self._in_flight[channel] = (waiter, timer)
        if self._hooked.get(channel) is not waiter:  # an endpoint may hand out one future
            self._hooked[channel] = waiter  # until it is done: one callback on it is enough
            waiter.add_done_callback(lambda _: self._sent(channel, waiter))

    def _sent(self, channel: Endpoint, waiter: Any) -> None:
        """The update has left (or the wait for a client that stopped reading ended: it must
        not stop the images of the others): the next array may go."""
        with self._lock:
            if waiter.done() and self._hooked.get(channel) is waiter:
                del self._hooked[channel]
            entry = self._in_flight.get(channel)
            if entry is None or entry[0] is not waiter:
                return
            del self._in_flight[channel]
            again = channel in self._arrays
        entry[1].cancel()
        if isinstance(waiter, asyncio.Task) and not waiter.done():
            waiter.cancel()  # a coroutine's wait we started, given up
        if again:
            self._wake_arrays()

    async def drain(self) -> None:
        """Publish everything pending now, arrays included, and wait until the transports have
        handed the resulting monitor updates to the clients' connections. Used before a
        put-callback completes, so a client that monitors ArrayCounter_RBV sees the final count
        no later than the completion (servers send put responses directly but monitors through
        queues)."""
        await self.flush_values(arrays=True)

    async def flush_values(self, arrays: bool = False) -> None:
        """Publish the pending scalar values now (arrays too if asked, else they keep their
        budget) and wait until they are queued to the clients. Every put does this before it
        completes, so whatever its hook set (a status message, related readbacks) is visible to
        a client right after."""
        if self._flush_lock is None:
            return
        await self._flush(force=arrays)
        await self.settle()

    async def settle(self) -> None:
        """Wait until every transport has handed queued monitor updates to the clients."""
        if self.transports:
            await asyncio.gather(*(t.settle() for t in self.transports))

    async def _flush(self, force: bool) -> None:
        async with self._flush_lock:
            with self._lock:
                self._collect_locked()
                pending, self._pending = self._pending, []
                self._position.clear()
                ordered = self._barrier >= 0
                self._barrier = -1
            # Arrays first: when Acquire_RBV goes to Done, the last image must already be out,
            # since ophyd's SingleTrigger reads the image as soon as it sees Done.
            if force or ordered:
                await self._post_arrays(force=True)
            for channel, value in pending:
                await self._write(channel, value)

    async def _write(self, channel: Endpoint, value: Any) -> None:
        try:
            if not isinstance(value, np.ndarray) and _same(channel.value, value):
                return
            await channel.publish_value(value)
            self.posted += 1
        except Exception as exc:  # a bad value must not stop publishing of the others
            log.error("cannot publish %r to %s: %s", value, channel.param.name, exc)


def _same(current: Any, new: Any) -> bool:
    try:
        return bool(current == new) and type(current) is type(new)
    except Exception:
        return False
