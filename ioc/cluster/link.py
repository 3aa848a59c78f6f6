"""A rank's one MPI thread: every MPI call of the rank is made here, never on the event loop.

Funnelling every call through one thread needs only MPI_THREAD_SERIALIZED (checked at start;
MPICH gives MULTIPLE), and keeps MPI's busy-polling out of the IOC's threads. The thread sends
what other threads queued (`send`, any thread) with non-blocking Isend, so a slow receiver
never stops it from receiving, and polls for incoming messages with Iprobe, sleeping a little
when idle (MPICH's blocking receive spins a whole core, which a 2-core host cannot spare).

A frame is a pickled header then its pixels with the uppercase (buffer) API, same tag, same
sender: MPI's non-overtaking rule keeps the pair together and, per destination, everything in
the order it was queued (a put mirrored before a frame reaches the rank before that frame).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from .wire import FRAME, TAG

log = logging.getLogger("ndflow.cluster")

#: sleep between polls: short while messages flow, longer when idle for a while
_BUSY_SLEEP, _IDLE_SLEEP = 0.0001, 0.002


class Link:
    def __init__(self, comm: Any,
                 on_message: Callable[[int, dict[str, Any], np.ndarray | None], None],
                 buffer_for: Callable[[dict[str, Any]], np.ndarray],
                 on_idle: Callable[[], None] | None = None) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            raise RuntimeError("the MPI library gives no MPI_THREAD_SERIALIZED; ndflow's MPI "
                               "thread needs it")
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.on_message = on_message
        self.buffer_for = buffer_for
        self.on_idle = on_idle
        self._out: deque[tuple[int, dict[str, Any], np.ndarray | None]] = deque()
        self._pending: list[tuple[list[Any], Any]] = []  # requests, buffers kept alive
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_frames = 0
        self.sent_bytes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mpi-rank{self.rank}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (up to `timeout`), then end the thread."""
        deadline = time.monotonic() + timeout
        while (self._out or self._pending) and time.monotonic() < deadline and \
                self._thread is not None and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def send(self, dest: int, header: dict[str, Any], data: np.ndarray | None = None) -> None:
        """Queue a message (any thread); `data` is kept alive until MPI is done with it."""
        self._out.append((dest, header, data))
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._out) + len(self._pending)

    def _run(self) -> None:
        MPI, comm = self.MPI, self.comm
        status = MPI.Status()
        idle_since = time.monotonic()
        while not self._stop.is_set():
            busy = False
            try:
                while self._out:
                    dest, header, data = self._out.popleft()
                    requests = [comm.isend(header, dest, TAG)]
                    if data is not None:
                        buffer = np.ascontiguousarray(data)
                        requests.append(comm.Isend(buffer, dest, TAG))
                        self.sent_frames += 1
                        self.sent_bytes += buffer.nbytes
                        data = (data, buffer)
                    self._pending.append((requests, data))
                    busy = True
                if self._pending:
                    self._pending = [p for p in self._pending if not MPI.Request.Testall(p[0])]
                while comm.Iprobe(MPI.ANY_SOURCE, TAG, status):
                    source = status.Get_source()
                    header = comm.recv(source=source, tag=TAG)
                    data = None
                    if header.get("kind") == FRAME and "dtype" in header:
                        data = self.buffer_for(header)
                        comm.Recv(data, source=source, tag=TAG)
                    self.on_message(source, header, data)
                    busy = True
                if self.on_idle is not None:
                    self.on_idle()
            except Exception as exc:  # a bug in a handler: said, and the link keeps going
                log.error("rank %d: MPI thread: %s: %s", self.rank, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)
            now = time.monotonic()
            if busy:
                idle_since = now
            elif not self._out:
                self._wake.wait(_BUSY_SLEEP if now - idle_since < 0.05 else _IDLE_SLEEP)
                self._wake.clear()
