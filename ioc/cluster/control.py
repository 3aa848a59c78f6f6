"""The control rank: serves the IOC (every PV a client sees), mirrors puts to the ranks that
need them, runs the acquisitions, restores frame order and completeness, and shows the other
ranks' values (`views`).

- **Puts mirrored**, in order, to the same component on other ranks: a plugin's to every
  processing rank, the driver's to every other acquisition rank (Acquire=1 excepted: the
  acquisition is started by START, with the control rank's acquisition id). Two values are per
  rank: a file writer's FileName gets `_r<rank>` and NumCapture is 0 there (`capture`).
- **Acquisitions** (`runs`): the driver's acquisition loop is wrapped; it ends when every
  acquisition rank is done (or given up on), and Acquire's put-completion with WaitForPlugins
  covers every processing rank.
- **Order**: one stream per acquisition rank (module, or share of the whole frames): a lookup
  table (frame -> processing rank, local index) and a reorder stage fed by where the frames
  went (directly, or DISPATCHED notes) and the processing ranks' acknowledgements. A frame not
  acknowledged within `window_s` becomes a missing frame (timeout, naming the rank).
- **Silence** (`watch`): a rank that owes something and says nothing for `window_s` is listed on
  Cluster:SilentRanks_RBV and its frames become missing.

Every MPI call is in the rank's `Link` thread; the event loop only queues messages and awaits
futures.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..component import Component
from ..driver import Driver
from ..ndarray import Acquisition, resolve
from ..plugin import Plugin
from .acquisition import AcquisitionRole
from .capture import MasterCapture
from .common import ACQ_DONE, DISPATCHED, is_file_writer, rank_file_name, same_value
from .config import ClusterConfig
from .dispatch import LookupTable, Missing, Reorder
from .link import Link
from .numbering import GivenUp, Seen
from .runs import Runs
from .views import Aggregator, ClusterStatus, RankView
from .watch import Watch
from .wire import ACK, DRAINED, PUT, PUT_DONE, STOP, VALUES

log = logging.getLogger("ndflow.cluster")

#: how long the control rank waits for the processing ranks to answer a mirrored put that
#: needs an answer (Capture), before it says which rank did not
PUT_REPLY_TIMEOUT = 30.0
#: how often a put waiting for the ranks' answers looks whether the rest are all silent
SILENT_POLL_S = 0.2
#: driver puts never mirrored: the acquisition is started by START, AcquireBusy follows it
_NOT_MIRRORED = {"AcquireBusy", "AcquireBusyCB", "ReleaseFrames"}


@dataclass
class Stream:
    """One acquisition rank's frames (one module's, for partial frames) on their way."""

    lut: LookupTable
    reorder: Reorder
    acquisition_id: int = -1
    acq_of_uid: dict[int, Acquisition] = field(default_factory=dict)
    #: uniqueIds of the current acquisition known sent or received (what a silent rank owes
    #: is the rest), and those given up on (a late acknowledgement of one is counted late)
    seen: Seen = field(default_factory=Seen)
    given_up: GivenUp = field(default_factory=GivenUp)
    #: acquisitions this rank was given up on: what it says it sent for them was dropped
    gone_acqs: set[int] = field(default_factory=set)
    last_frame: float = 0.0  # when one of its frames was last said sent or received


class ControlNode:
    def __init__(self, ioc: Any, cluster: ClusterConfig, comm: Any) -> None:
        self.ioc = ioc
        self.cluster = cluster
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.workers = cluster.processing_ranks(self.size)
        self.remote = [a for a in cluster.acquisition if a != self.rank]
        self.link = Link(comm, self._on_message, self._no_frames, self._on_idle)
        self.lock = threading.Lock()
        self.streams = {a: Stream(LookupTable(), Reorder(cluster.window_s))
                        for a in cluster.acquisition}
        self.sent = {r: 0 for r in self.workers}
        self.acked = {r: 0 for r in self.workers}
        self.given_up = 0  # frames of silent acquisition ranks made missing
        self.runs = Runs(self)
        self.watch = Watch(self)
        self._replies: dict[int, tuple[Future, dict[int, dict]]] = {}
        self._next_reply = 1
        self._next_check = 0.0
        self.status = ClusterStatus()
        self.status.values.update({
            "NumRanks_RBV": self.size, "Dispatch_RBV": cluster.dispatch,
            "ProcessingRanks_RBV": " ".join(map(str, self.workers)),
            "AcquisitionRanks_RBV": " ".join(map(str, cluster.acquisition)),
            "RanksAnswering_RBV": len(self.workers)})
        self.plugins = [c for c in ioc.components if isinstance(c, Plugin)]
        self.driver = next(c for c in ioc.components if isinstance(c, Driver))
        self.module_grid: tuple[int, int] = tuple(  # type: ignore[assignment]
            getattr(self.driver, "module_grid", (1, 1)))
        self.views = {(r, p.port): RankView(p, r) for r in self.workers for p in self.plugins}
        self.aggregator = Aggregator({p.port: p for p in self.plugins}, self.views, self.workers,
                                     cluster.module_groups(self.size))
        #: each other acquisition rank's driver counters, under R<rank>:<driver prefix>
        self.driver_views = {a: RankView(self.driver, a) for a in self.remote}
        self._driver_values: dict[str, Any] = {}  # the facade's, from the last reports
        self._captures: dict[str, MasterCapture] = {}
        self.acquisition: AcquisitionRole | None = None
        if self.rank in cluster.acquisition:
            self.acquisition = AcquisitionRole(self.driver, cluster, self.rank, self.size,
                                               self.link, record=self._record_local)

    # --- set-up (before serving) -----------------------------------------------------------------
    def install(self) -> None:
        self.ioc.add_component(self.status)
        for view in [*self.views.values(), *self.driver_views.values()]:
            self.ioc.add_component(view)
        own_run = self.driver._run
        self.driver._run = lambda acquisition: self.runs.run(acquisition, own_run)  # type: ignore
        if self.remote:
            self._mirror_puts(self.driver, self.remote)
        if self.acquisition is None:  # the driver's rate is the first acquisition rank's
            driver_periodic = self.driver.periodic

            def periodic_rate(elapsed: float) -> None:
                driver_periodic(elapsed)
                rate = self._driver_values.get("ArrayRate_RBV")
                if rate is not None:
                    self.driver.set("ArrayRate_RBV", rate)
            self.driver.periodic = periodic_rate  # type: ignore[method-assign]
        for plugin in self.plugins:
            self._mirror_puts(plugin, self.workers)
            original = plugin.periodic

            def periodic(elapsed: float, original=original, port=plugin.port) -> None:
                original(elapsed)
                self.aggregator.reapply_rates(port)
            plugin.periodic = periodic  # type: ignore[method-assign]
            if is_file_writer(plugin):
                capture = MasterCapture(self, plugin)
                self._captures[plugin.port] = capture
                plugin.put_hooks["Capture"] = capture.put_capture
        self.link.start()

    def _mirror_puts(self, component: Component, ranks: list[int]) -> None:
        original = component.handle_put
        driver = isinstance(component, Driver)

        async def mirrored(param: Any, raw: Any, source: Any = None) -> Any:
            before = component.values.get(param.name)
            if driver and param.name == "Acquire":  # a stop goes out at once, a start by START
                try:
                    stopping = not param.coerce(raw)[0]
                except (TypeError, ValueError):
                    stopping = False  # refused by the put itself
                if not stopping:
                    return await original(param, raw, source)
                self.mirror(component, "Acquire", 0, ranks=ranks)
                try:
                    return await original(param, raw, source)
                finally:  # again once the stop event is set: a START the driver thread sent
                    # in between (it had not seen the stop yet) is followed by this stop
                    self.mirror(component, "Acquire", 0, ranks=ranks)
            try:
                result = await original(param, raw, source)
            except Exception:
                # a refused put may still store its value (a FilePath outside the data roots
                # is kept, as ADCore keeps it, so nothing goes on writing to the old folder):
                # the ranks must not keep the old one either
                after = component.values.get(param.name)
                if param.name != "Capture" and not same_value(after, before):
                    self.mirror(component, param.name, after, ranks=ranks)
                raise
            if param.name != "Capture" and param.name not in _NOT_MIRRORED:
                self.mirror(component, param.name, component.values.get(param.name),
                            ranks=ranks)
            return result
        component.handle_put = mirrored  # type: ignore[method-assign]

    def mirror(self, component: Component, name: str, value: Any, reply: int = 0,
               complete: bool = False, ranks: list[int] | None = None) -> None:
        """Send a put to other ranks (any thread; default: every processing rank), in line
        with the frames."""
        writer = is_file_writer(component)
        for rank in self.workers if ranks is None else ranks:
            v = value
            if writer and name == "FileName":
                v = rank_file_name(value, rank)
            elif writer and name == "NumCapture":
                v = 0  # the control rank ends the capture when the total is reached
            header = {"kind": PUT, "port": component.port, "name": name, "value": v}
            if reply:
                header["reply"] = reply
                header["complete"] = complete
            self.link.send(rank, header)

    async def ask(self, component: Component, name: str, value: Any, complete: bool = False,
                  timeout: float = PUT_REPLY_TIMEOUT) -> dict[int, dict]:
        """Mirror a put to the processing ranks and wait for every one's answer {rank: {"ok",
        "error", "values"}}: once the put completed there (`complete`: Capture=0, which
        completes when the file is closed), or else once it is accepted (a busy put, Capture=1,
        runs on)."""
        future: Future = Future()
        with self.lock:
            token = self._next_reply
            self._next_reply += 1
            self._replies[token] = (future, {})
        self.mirror(component, name, value, reply=token, complete=complete)
        waiter = asyncio.wrap_future(future)
        deadline = time.monotonic() + timeout
        while not waiter.done() and time.monotonic() < deadline:
            # a rank listed silent is not waited for (its answer would come after the put
            # timeout): it gets a refusal that names it, at once
            with self.lock:
                answered = self._replies[token][1]
                if all(r in answered or r in self.watch.silent for r in self.workers):
                    break
            await asyncio.wait({waiter}, timeout=min(SILENT_POLL_S,
                                                     max(0.0, deadline - time.monotonic())))
        with self.lock:
            _, answers = self._replies.pop(token)
            silent = set(self.watch.silent)
        for rank in self.workers:
            answers.setdefault(rank, {"ok": False, "error": (
                f"rank {rank} stopped answering (Cluster:SilentRanks_RBV)" if rank in silent
                else f"rank {rank} did not answer within {timeout:g} s")})
        return answers

    def stop(self) -> None:
        for rank in sorted(set(self.workers) | set(self.remote)):
            self.link.send(rank, {"kind": STOP})
        self.link.stop()

    def write_masters_at_shutdown(self) -> None:
        """Every rank has stopped: the captures still on get their master files."""
        for capture in self._captures.values():
            try:
                capture.write_master_at_shutdown()
            except Exception as exc:
                log.error("master file %s at shutdown: %s: %s", capture.path,
                          type(exc).__name__, exc)

    # --- frames dispatched (driver thread, MPI thread) ------------------------------------------
    def _record_local(self, unique_id: int, rank: int, acquisition: Acquisition | None,
                      lost: bool) -> None:
        """This rank's own dispatcher sent a frame (its lock held)."""
        with self.lock:
            self._expect(self.rank, unique_id, rank, acquisition, lost)

    def _expect(self, stream_rank: int, unique_id: int, rank: int,
                acquisition: Acquisition | None, lost: bool) -> None:
        """Frame `unique_id` of acquisition rank `stream_rank` went to `rank` (lock held)."""
        stream = self.streams[stream_rank]
        aid = acquisition.id if acquisition is not None else 0
        if aid != stream.acquisition_id:
            stream.acquisition_id = aid
            stream.lut.clear()
        try:
            stream.lut.assign(unique_id, rank)
        except ValueError:  # ArrayCounter was set back within an acquisition: a new numbering
            stream.lut.clear()
            stream.lut.assign(unique_id, rank)
        stream.reorder.expect(unique_id, rank)
        stream.seen.add(unique_id)
        if rank in self.sent:
            self.sent[rank] += 1
        if acquisition is not None:
            stream.acq_of_uid[unique_id] = acquisition
            if lost:
                acquisition.note_lost(unique_id, failed=False)
        self.status.set("FramesDispatched_RBV", self.status.values["FramesDispatched_RBV"] + 1)

    # --- messages (MPI thread) -------------------------------------------------------------------
    @staticmethod
    def _no_frames(header: dict) -> np.ndarray:
        raise RuntimeError("the control rank receives no frames")

    def _on_message(self, source: int, header: dict[str, Any], data: Any) -> None:
        kind = header["kind"]
        self.watch.heard(source)
        if kind == ACK:
            self._on_ack(source, header)
        elif kind == VALUES:
            self._on_values(source, header["values"])
        elif kind == DISPATCHED:
            with self.lock:
                self.streams[source].last_frame = time.monotonic()
                gone = self.streams[source].gone_acqs
                for aid, uid, rank in header["frames"]:
                    if aid not in gone:  # else: sent after it was given up on, dropped
                        self._expect(source, uid, rank, self.runs.known.get(aid), False)
                for aid, uid in header["lost"]:
                    acquisition = self.runs.known.get(aid)
                    if acquisition is not None:
                        acquisition.note_lost(uid, failed=False)
        elif kind == ACQ_DONE:
            self.runs.on_acq_done(source, header)
        elif kind == DRAINED:
            self.runs.on_drained(source, header["acq"])
        elif kind == PUT_DONE:
            with self.lock:
                waiting = self._replies.get(header["reply"])
                if waiting is not None:
                    future, answers = waiting
                    answers[source] = header
                    if len(answers) >= len(self.workers):
                        resolve(future)

    def _on_ack(self, rank: int, header: dict[str, Any]) -> None:
        feeder = header.get("feeder", self.rank)
        if feeder == self.rank and self.acquisition is not None:
            self.acquisition.dispatcher.on_ack(rank, header)
        uids = header["uids"]
        if not uids:
            return
        with self.lock:
            stream = self.streams.get(feeder)
            if stream is None:
                return
            self.acked[rank] = self.acked.get(rank, 0) + len(uids)
            stream.last_frame = time.monotonic()
            for uid in uids:
                if uid in stream.given_up:  # a frame of a silent rank after all: dropped there
                    stream.reorder.late += 1
                    continue
                stream.seen.add(uid)
                stream.reorder.arrive(uid, rank)
            acked = sum(self.acked.values())
        self.status.set("FramesAcknowledged_RBV", acked)
        self._pop_ordered()

    def _pop_ordered(self) -> None:
        lost = []
        with self.lock:
            popped = False
            for stream in self.streams.values():
                ready = stream.reorder.pop_ready()
                popped = popped or bool(ready)
                for entry in ready:
                    acquisition = stream.acq_of_uid.pop(entry.unique_id, None)
                    if isinstance(entry, Missing):
                        lost.append((entry, acquisition))
            reorders = [s.reorder for s in self.streams.values()]
            done = [r.delivered + r.missing for r in reorders]
            # modules: every stream has every frame; shared whole frames: each has its share
            in_order = (sum(done) if self.cluster.shared else min(done)) + self.given_up
            missing = sum(r.missing for r in reorders) + self.given_up
            late = sum(r.late for r in reorders)
        for entry, acquisition in lost:
            log.warning("frame %d missing: %s", entry.unique_id, entry.message)
            if acquisition is not None:
                acquisition.note_lost(entry.unique_id, failed=False)
        if popped or late != self.status.values["FramesLate_RBV"] or \
                missing != self.status.values["FramesMissing_RBV"]:
            self.status.set_many({"FramesInOrder_RBV": in_order, "FramesMissing_RBV": missing,
                                  "FramesLate_RBV": late})

    def count_missing(self) -> None:
        """Frames were given up on: the status counts them (any thread)."""
        self._pop_ordered()

    def _on_values(self, rank: int, values: dict[str, dict[str, Any]]) -> None:
        mine = values.pop(self.driver.port, None)
        if mine:
            if rank in self.streams and ("ArrayCounter" in mine or
                                         "NumImagesCounter_RBV" in mine):
                with self.lock:  # its driver makes frames (held ones too: not overdue)
                    self.streams[rank].last_frame = time.monotonic()
            view = self.driver_views.get(rank)
            if view is not None:
                for name, value in mine.items():
                    if name in view.names:
                        view.set(view.names[name], value)
            if rank in self.remote and self.acquisition is None:
                # the driver's counters: the first acquisition rank's (each module counts
                # alike), or over the ranks sharing whole frames (`runs`); each rank's own
                # are under R<rank>:
                with self.lock:
                    facade = self.runs.driver_values(rank, mine)
                for name, value in facade.items():
                    if name in self.driver.params:
                        self._driver_values[name] = value
                        self.driver.set(name, value)
        if not values or rank not in self.sent:
            return
        ports = self.aggregator.update(rank, values)
        for port in ports:
            capture = self._captures.get(port)
            if capture is not None:
                capture.check_total()

    def _on_idle(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 0.05
        self._pop_ordered()
        self.watch.check(now)
        self.runs.settle_gone(now)
