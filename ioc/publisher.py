"""The publisher sits between the data path and the transports (Channel Access, pvAccess).

Driver and plugin threads never touch a transport. A component's `set()` only marks a name dirty;
a task in the server's event loop collects the dirty names of every component once per interval
and writes their latest values to every endpoint (coalescing), so a fast detector costs the same
publishing work as a slow one and cannot push a server into the overload collapse measured in perf-anchors §3
(0 updates/s at 100% CPU). Arrays are posted at once but paced by a byte budget. Values that must
never be merged (Acquire_RBV going 0->1->0) are queued in order the moment they are set, after
collecting everything set before them, so nothing set earlier in any thread is overtaken.
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
    def __init__(self, interval: float = 0.02, array_bytes_per_s: float = 400e6) -> None:
        self.interval = interval
        self.array_bytes_per_s = array_bytes_per_s
        # reentrant: a component's collect() may set (and so post) values while collected
        self._lock = threading.RLock()
        self._collecting = False
        self._pending: list[list[Any]] = []  # [channel, value], flushed in order
        self._position: dict[Endpoint, int] = {}
        self._barrier = -1  # index of the last entry that must not be overtaken
        self._arrays: dict[Endpoint, np.ndarray] = {}
        self._array_due: dict[Endpoint, float] = {}
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
        """Latest array wins; posted no faster than the byte budget allows."""
        with self._lock:
            self._arrays[channel] = array
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

    async def _run_arrays(self) -> None:
        """Arrays are paced by the byte budget alone, not by the scalar interval."""
        while True:
            await self._array_wake.wait()
            self._array_wake.clear()
            with self._lock:
                self._array_wake_requested = False
            async with self._flush_lock:
                delay = await self._flush_arrays(force=False)
            if delay is not None:
                self._loop.call_later(delay, self._array_wake.set)

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
                await self._flush_arrays(True)
            for channel, value in pending:
                await self._write(channel, value)

    async def _flush_arrays(self, force: bool) -> float | None:
        now = time.monotonic()
        due: list[tuple[Endpoint, np.ndarray]] = []
        next_delay: float | None = None
        with self._lock:
            for channel in list(self._arrays):
                ready_at = self._array_due.get(channel, 0.0)
                if force or ready_at <= now:
                    due.append((channel, self._arrays.pop(channel)))
                else:
                    wait = ready_at - now
                    next_delay = wait if next_delay is None else min(next_delay, wait)
        for channel, array in due:
            self._array_due[channel] = now + array.nbytes / self.array_bytes_per_s
            await self._write(channel, array)
        return next_delay

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
