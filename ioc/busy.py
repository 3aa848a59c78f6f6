"""Completion of busy records: ADCore's Acquire/Capture/TSAcquire pattern, written once.

One primitive serves every busy record: a `concurrent.futures.Future`, completed by whatever
thread ends the work and awaited on the event loop through `asyncio.wrap_future` (the
Acquisition's `acquired`/`processed` futures behind Acquire and AcquireBusy are the same kind).
A put of the active value (Capture=1) starts work that ends later, in a data-path thread; the
client's put-callback must complete only then. `Busy.arm()` gives the put a future to wait on,
`Busy.release()` (any thread) completes every put waiting, and `finish()` waits the way every
busy put should: shielded, so a client that goes away cannot cancel the work, and with the
resulting monitor updates sent before the completion.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from .transport import HANDLED, accepted
from .ndarray import resolve
from .publisher import Publisher


class Busy:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Future] = []

    def arm(self) -> Future:
        """A future for the put now running (any thread)."""
        future: Future = Future()
        with self._lock:
            self._waiting.append(future)
        return future

    def release(self) -> None:
        """The work ended: complete every waiting put (any thread)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for future in waiting:
            resolve(future)


async def until(future: Future) -> None:
    """Wait on the event loop for `future`, shielded from a departing client's cancel. The put
    is accepted from here on: a client that does not wait for completion is answered now."""
    accepted()
    await asyncio.shield(asyncio.wrap_future(future))


async def finish(future: Future, publisher: Publisher | None) -> Any:
    """Wait for `future`, then publish what the work changed; the put's value is handled."""
    await until(future)
    if publisher is not None:
        await publisher.drain()
    return HANDLED
