"""FrameStream: frames handed from any thread to asyncio code as an async iterator.

The Lima2 goals ask for events, not callbacks: a consumer writes

    async for frame in stream:
        ...

in its own task, at its own pace, and the producer (a plugin's worker thread, a pvAccess
client's callback) never waits for it. Between the two sits a bounded queue. When the consumer
falls behind, the oldest frame waiting is dropped for the new one (an observer wants what is
current) and counted on `overflow`, so a consumer can tell it missed frames and how many; the
producer's cost per frame is one `call_soon_threadsafe`.

`gaps` counts frames the stream knows were produced upstream but never reached it (a transport
that coalesced updates for a slow client); the producer reports them with `note_gap()`.

No protocol library, no plugin: the observation plugin (in-process) and the pvAccess client
both hand their frames to one of these.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

_CLOSED = object()


class FrameStream(Generic[T]):
    """A bounded, overflow-counting queue read with `async for`; fed with `push()` from any
    thread. Made in (and bound to) the consumer's running event loop."""

    def __init__(self, maxsize: int = 16, on_close: Callable[["FrameStream[T]"], None] | None
                 = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self.loop = asyncio.get_running_loop()
        self.overflow = 0  # frames dropped because the consumer was behind
        self.gaps = 0  # frames lost upstream of this stream (note_gap)
        self.received = 0  # frames pushed (delivered + overflow)
        self._items: collections.deque[Any] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close = on_close
        #: set once frames produced from now on will arrive (a remote subscription is live)
        self.live = asyncio.Event()

    # --- producer side (any thread) -----------------------------------------------------------
    def push(self, item: T) -> None:
        """Queue `item`; never blocks. Safe from any thread, also after close (then ignored)."""
        if self._closed:
            return
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self._closed = True
            self._detach()  # the producer forgets this stream

    def set_live(self) -> None:
        """Frames produced from now on reach this stream (any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.live.set)
        except RuntimeError:
            self._closed = True

    async def wait_live(self, timeout: float | None = None) -> None:
        """Wait until frames produced from now on reach the stream (asyncio.TimeoutError)."""
        await asyncio.wait_for(self.live.wait(), timeout)

    def note_gap(self, count: int = 1) -> None:
        """`count` frames were lost before reaching this stream (any thread)."""
        if count > 0 and not self._closed:
            try:
                self.loop.call_soon_threadsafe(self._add_gap, count)
            except RuntimeError:
                self._closed = True

    def finish(self) -> None:
        """No more frames: the iteration ends once the queued ones are read (any thread)."""
        try:
            self.loop.call_soon_threadsafe(self._put, _CLOSED)
        except RuntimeError:
            self._closed = True

    # --- loop side ----------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        if self._closed:
            return
        if item is _CLOSED:
            self._closed = True
        else:
            self.received += 1
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.overflow += 1
        self._items.append(item)
        self._ready.set()

    def _add_gap(self, count: int) -> None:
        self.gaps += count

    def __aiter__(self) -> "FrameStream[T]":
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is _CLOSED:
            self._items.clear()
            self._detach()
            raise StopAsyncIteration
        return item

    async def get(self, timeout: float | None = None) -> T:
        """The next frame, waiting at most `timeout` seconds (asyncio.TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    @property
    def queued(self) -> int:
        return sum(1 for item in self._items if item is not _CLOSED)

    def close(self) -> None:
        """Stop receiving (the consumer's side; its loop thread). Queued frames are dropped."""
        self._closed = True
        self._items.clear()
        self._ready.set()
        self._detach()

    def _detach(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    async def __aenter__(self) -> "FrameStream[T]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
