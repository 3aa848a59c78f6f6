"""A rank other than the control rank: its roles (acquisition, processing, or both) behind one
MPI link.

Both roles are optional parts of one node (`ClusterConfig`: a rank may hold several roles). The
node routes each message to its role, applies the puts the control rank mirrors (`mirror`), and
reports what its data path changed: its plugins' values (processing) and its driver's counters
(acquisition). Every MPI call is in the rank's `Link` thread; the event loop only ever applies
puts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..driver import Driver
from ..plugin import Plugin
from .acquisition import AcquisitionRole
from .common import DRIVER_REPORTED, GONE, START
from .config import ClusterConfig
from .link import Link
from .mirror import PutApplier, Reporter
from .processing import ProcessingRole
from .views import reported
from .wire import ACK, ACQ_END, DRAINED, FRAME, PUT, STOP, VALUES

log = logging.getLogger("ndflow.cluster")


class WorkerNode:
    def __init__(self, ioc: Any, cluster: ClusterConfig, comm: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.ioc = ioc
        self.cluster = cluster
        self.control = cluster.control
        self.loop = loop
        self.link = Link(comm, self._on_message, self._buffer_for, self._on_idle)
        self.rank = rank = self.link.rank
        size = self.link.size
        driver = next(c for c in ioc.components if isinstance(c, Driver))
        reporting: list = []
        self.processing: ProcessingRole | None = None
        if rank in cluster.processing_ranks(size):
            # before the acquisition role takes the driver's delivery: this role keeps it
            modules = len(cluster.acquisition) if cluster.partial and cluster.assemble else 0
            self.processing = ProcessingRole(driver, cluster.feeders(rank, size), rank,
                                             self._drained, assemble=modules,
                                             say=self._send_ack)
            reporting += [(c, reported) for c in ioc.components if isinstance(c, Plugin)]
        self.acquisition: AcquisitionRole | None = None
        if rank in cluster.acquisition:
            local = self.processing.local if self.processing is not None else None
            self.acquisition = AcquisitionRole(driver, cluster, rank, size, self.link,
                                               local=local, report=self._report)
            reporting.append((driver, lambda p: p.name in DRIVER_REPORTED))
        self.reporter = Reporter(reporting)
        self.puts = PutApplier(ioc.graph.ports, self.reporter,
                               lambda answer: self.link.send(self.control, answer))
        self._next_report = 0.0
        #: held from taking the changes to queueing them: a report taken by one thread (the
        #: heartbeat) cannot go out after a later message of another (the driver's ACQ_DONE),
        #: which let Acquire's put complete before the final ArrayCounter arrived
        self._reporting = threading.Lock()
        self._driver_steps: asyncio.Future | None = None  # the last driver put or START
        self.stopped = asyncio.Event()

    def install(self) -> None:
        self.reporter.changed()  # the start values: only changes from here on are reported
        if self.processing is not None:
            self.processing.start()
        self.link.start()

    def stop(self) -> None:
        if self.processing is not None:
            self.processing.stop()
        self.link.stop(timeout=1.0)

    # --- MPI thread ------------------------------------------------------------------------------
    def _buffer_for(self, header: dict[str, Any]) -> np.ndarray:
        if self.processing is None:
            raise RuntimeError(f"rank {self.rank} is no processing rank: a frame came")
        return self.processing.buffer_for(header)

    def _on_message(self, source: int, header: dict[str, Any], data: Any) -> None:
        kind = header["kind"]
        if kind == FRAME and self.processing is not None:
            # a placeholder the control rank sends for a silent acquisition rank is that rank's
            self.processing.on_frame(header.get("feeder", source), header, data)
        elif kind == ACQ_END and self.processing is not None:
            self.processing.on_end(source, header["acq"])
        elif kind == GONE and self.processing is not None:
            self.processing.on_gone(header["feeder"], header["acq"])
        elif kind == ACK and self.acquisition is not None:
            self.acquisition.dispatcher.on_ack(source, header)
        elif kind == PUT and self.acquisition is not None and \
                header["port"] == self.acquisition.driver.port:
            self.loop.call_soon_threadsafe(self._in_line, lambda: self.puts.put(header))
        elif kind == PUT:
            self.loop.call_soon_threadsafe(self.puts.apply, header)
        elif kind == START and self.acquisition is not None:
            role = self.acquisition
            self.loop.call_soon_threadsafe(self._in_line, lambda: role.start(
                header["acq"], header.get("base", 0), header.get("seq", 0),
                bool(header.get("reset")), header.get("sent")))
        elif kind == STOP:
            self.loop.call_soon_threadsafe(self.stopped.set)
        else:
            log.warning("rank %d: unexpected %s from rank %d", self.rank, kind, source)

    def _in_line(self, step: Callable[[], Any]) -> None:
        """Event loop: run `step` (a driver put, or START) once the driver steps before it
        are done, so an acquisition starts with the values put before it and a stop put after
        it finds it running."""
        previous = self._driver_steps

        async def run() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # a bug: said, and the next steps still run
                log.error("rank %d: %s: %s", self.rank, type(exc).__name__, exc)
        self._driver_steps = asyncio.ensure_future(run())

    def _on_idle(self) -> None:
        now = time.monotonic()
        if self.processing is not None:
            self.processing.say_acks()  # batched (ndflow.cluster.acks)
        if self.acquisition is not None:
            self.acquisition.flush()
        if now >= self._next_report:
            self._next_report = now + self.cluster.report_interval_s
            self._report(heartbeat=True)

    def _send_ack(self, feeder: int, ack: dict[str, Any]) -> None:
        if feeder == self.rank and self.acquisition is not None:
            self.acquisition.dispatcher.on_ack(self.rank, ack)
        else:
            self.link.send(feeder, ack)
        if feeder != self.control and ack["uids"]:
            self.link.send(self.control, ack)  # its reorder stage

    def _report(self, heartbeat: bool = False) -> None:
        """Send the values that changed (MPI thread, the feeder thread, or the driver's);
        `heartbeat`: even if nothing did, so the control rank knows this rank answers (a rank
        silent for `window_s` while it owes frames is given up on)."""
        with self._reporting:
            changes = self.reporter.changed()
            if changes or heartbeat:
                self.link.send(self.control, {"kind": VALUES, "values": changes})

    def _drained(self, acquisition_id: int) -> None:
        """The acquisition's frames have left every plugin here: the final values first, so
        the control rank shows them before WaitForPlugins lets Acquire's put complete."""
        self._report()
        self.link.send(self.control, {"kind": DRAINED, "acq": acquisition_id})
