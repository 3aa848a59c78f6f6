"""Writing a circuit's buffers to its socket without copying them, images from a thread.

A monitor update of an image is megabytes. caproto joins a batch's buffers into one bytes
object (a copy of the image) and writes it from the event loop; we hand the buffers to the
socket as they are (`os.writev`). Large batches are written by the circuit's own sender thread,
as RSRV's per-client send threads do: the kernel's copy and the reading client it wakes (which
on loopback takes the CPU from the writer) then cost that thread, not the event loop.

The thread writes its batches one after another, in the order handed to it, and waits for the
socket itself when the client is slower. So the next image starts the moment the previous one
has gone, without a round trip through the event loop. Measured at 1024x1024 Int16 into one
pyepics monitor on 2 cores, from the end of one image's write to the start of the next: median
0.91 ms (mean 1.36) with that round trip, 0.09 ms (mean 0.84) without; the writes themselves
take 1-2 ms. The circuit hands over the next batch while the current one is written and then
waits for the current one to end, so at most one batch waits behind the one being written.
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import threading
from typing import Any, Callable, Iterable

#: buffers smaller than this are joined before the write (one iovec); larger ones go as they are
JOIN_BELOW = 16384
#: buffers per writev (Linux allows 1024)
IOV_MAX = 512
#: a batch at least this large is written by the circuit's sender thread
SENDER_THREAD_BYTES = 256 * 1024
#: how often a write waiting for a full socket looks whether its circuit has closed, ms
POLL_MS = 100


class CircuitWriter:
    """One circuit's sender thread: writes batches to `fd` in order, each in full.

    `fd` is the circuit's own duplicate of its socket's descriptor. The thread closes it once
    it has stopped, after the batches handed to it before `close()` (cut short once closing),
    so a descriptor number the event loop has closed and reused is never written to. The first
    error (the client went away) is kept in `error`; later batches are skipped.

    A daemon thread of its own (not an executor's, which the interpreter joins at exit): a write
    waiting for a client that stopped reading must not keep the IOC from exiting. Made in the
    event loop's thread; `submit` and `close` are called there too."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[tuple[list[memoryview], asyncio.Future] | None] = \
            queue.SimpleQueue()
        self._last: asyncio.Future | None = None  # the batch handed over last
        self._closing = threading.Event()
        self.error: OSError | None = None
        threading.Thread(target=self._run, name="ndflow-ca-send", daemon=True).start()

    @property
    def idle(self) -> bool:
        """Nothing handed over is still being written."""
        return self._last is None or self._last.done()

    @property
    def last(self) -> asyncio.Future | None:
        """Done once every batch handed over so far has been written (or skipped)."""
        return self._last

    def submit(self, parts: list[memoryview]) -> asyncio.Future:
        """Write `parts` after the batches handed over before."""
        self._last = done = self._loop.create_future()
        self._jobs.put((parts, done))
        return done

    def close(self) -> None:
        """Stop: batches not yet written are skipped, the descriptor is closed by the thread
        once the write under way has stopped (within POLL_MS)."""
        self._closing.set()
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                parts, done = job
                if self.error is None and not self._closing.is_set():
                    try:
                        write_all(self._fd, parts, self._closing.is_set)
                    except OSError as exc:
                        self.error = exc
                    except Exception as exc:  # a bug here must not leave the circuit waiting
                        self.error = OSError(f"cannot write to the client: {exc!r}")
                try:
                    self._loop.call_soon_threadsafe(_set_done, done)
                except RuntimeError:  # the event loop has closed: nobody waits
                    pass
        finally:
            os.close(self._fd)


def _set_done(done: asyncio.Future) -> None:
    if not done.done():
        done.set_result(None)


def write_now(fd: int, parts: list[memoryview]) -> int:
    """Write as much of `parts` as the (non-blocking) socket takes now; the bytes written."""
    done = 0
    while parts:
        chunk = parts[:IOV_MAX]
        try:
            written = os.writev(fd, chunk)
        except (BlockingIOError, InterruptedError):
            break
        done += written
        parts = after(parts, written)
        if written < sum(len(part) for part in chunk):
            break
    return done


def write_all(fd: int, parts: list[memoryview], stop: Callable[[], bool]) -> None:
    """Write all of `parts` to the non-blocking socket, waiting while it is full (the GIL
    released), unless `stop()` turns true meanwhile. Raises the socket's error."""
    poller: Any = None
    while parts:
        parts = after(parts, write_now(fd, parts))
        if not parts or stop():
            return
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
        poller.poll(POLL_MS)  # an error or hang-up ends it too: the next writev raises it


def parts_of(buffers: Iterable[Any]) -> list[memoryview]:
    """The buffers as byte views, small neighbours joined (a batch of scalar updates is a few
    hundred 16-byte headers and small payloads), large ones as they are."""
    parts: list[memoryview] = []
    small: list[Any] = []
    for buf in buffers:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if view.ndim != 1 or view.format != "B" or view.itemsize != 1:
            view = view.cast("B")
        if not view.nbytes:
            continue
        if view.nbytes < JOIN_BELOW:
            small.append(view)
            continue
        if small:
            parts.append(memoryview(b"".join(small)))
            small = []
        parts.append(view)
    if small:
        parts.append(memoryview(b"".join(small)))
    return parts


def after(parts: list[memoryview], written: int) -> list[memoryview]:
    """What remains of `parts` once the first `written` bytes have gone."""
    for i, part in enumerate(parts):
        if written < len(part):
            return ([part[written:]] if written else [part]) + parts[i + 1:]
        written -= len(part)
    return []
