"""Completion of busy records: ADCore's Acquire/Capture/TSAcquire pattern, written once.

A put of the active value (Capture=1) starts work that ends later, in a data-path thread; the
client's put-callback must complete only then. `Busy.arm()` (event loop) gives the put a future
to wait on, `Busy.release()` (any thread) completes every put waiting, and `finish()` waits the
way every busy put should: shielded, so a client that goes away cannot cancel the work, and
with the resulting monitor updates sent before the completion.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .channels import HANDLED
from .publisher import Publisher


class Busy:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[asyncio.Future] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> asyncio.Future:
        """A future for the put now running (event-loop thread)."""
        self._loop = asyncio.get_running_loop()
        future = self._loop.create_future()
        with self._lock:
            self._waiting.append(future)
        return future

    def release(self) -> None:
        """The work ended: complete every waiting put (any thread)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        loop = self._loop
        if waiting and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def finish(future: asyncio.Future, publisher: Publisher | None) -> Any:
    """Wait for `future`, then publish what the work changed; the put's value is handled."""
    await asyncio.shield(future)
    if publisher is not None:
        await publisher.drain()
    return HANDLED
