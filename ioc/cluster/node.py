"""The two kinds of rank: the control rank (serves the IOC, runs the driver, dispatches frames,
writes the master file) and the processing ranks (run the plugin graph on the frames they get).

Both have built the same IOC from the same config (`ndflow.cluster.run`); what differs is what
their components are wired to. Every MPI call is in the rank's `Link` thread; the event loop
only ever queues messages and awaits futures.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ..busy import finish
from ..component import Component, PutRefused
from ..driver import Driver
from ..ndarray import Acquisition, FrameStatus, MissingCause, NDArray, resolve
from ..params import Access
from ..plugin import Plugin
from ..transport import HANDLED
from .config import ClusterConfig
from .dispatch import CreditDispatch, LookupTable, Missing, Reorder, RoundRobin
from .link import Link
from .master import build_master
from .views import SUMMED, AVERAGED, Aggregator, ClusterStatus, RankView, reported
from .wire import ACK, ACQ_END, DRAINED, FRAME, PUT, PUT_DONE, STOP, VALUES, frame_from, \
    frame_header

log = logging.getLogger("ndflow.cluster")

#: how long the control rank waits for the processing ranks to answer a mirrored put that
#: needs an answer (Capture), before it says which rank did not
PUT_REPLY_TIMEOUT = 30.0
#: a put a processing rank applies for a reply: answered when done, or after this long if it
#: is a busy put still running (Capture=1 runs until the capture ends)
BUSY_PUT_ANSWER = 1.0


def is_file_writer(component: Component) -> bool:
    return all(n in component.params for n in ("Capture", "NumCapture", "FileName",
                                                "FullFileName_RBV", "NumCaptured_RBV"))


def writes_hdf5(component: Component) -> bool:
    return is_file_writer(component) and getattr(component, "extension", "") in (".h5", ".hdf5")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def rank_file_name(name: str, rank: int) -> str:
    """The FileName a processing rank's writer uses: the master's name plus `_r<rank>`."""
    return f"{name}_r{rank}"


# ======================================================================================== control
class ControlNode:
    def __init__(self, ioc: Any, cluster: ClusterConfig, comm: Any) -> None:
        self.ioc = ioc
        self.cluster = cluster
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.workers = cluster.processing_ranks(self.size)
        self.link = Link(comm, self._on_message, self._no_frames, self._on_idle)
        self.lock = threading.Lock()
        ordering = cluster.order(self.size)
        self.policy = RoundRobin(ordering) if cluster.dispatch == "round_robin" else \
            CreditDispatch(self.workers, cluster.credits)
        self.lut = LookupTable()
        self.reorder = Reorder(cluster.window_s)
        self._sent = {r: 0 for r in self.workers}
        self._acked = {r: 0 for r in self.workers}
        self._backlog = {r: 0 for r in self.workers}
        self._last_heard = {r: time.monotonic() for r in self.workers}
        self._silent: set[int] = set()
        self._acq: Acquisition | None = None
        self._acqs: dict[int, tuple[Acquisition, set[int]]] = {}  # id -> (acq, ranks entered)
        self._acq_of_uid: dict[int, Acquisition] = {}
        self._announced: dict[int, set[int]] = {}  # rank -> acquisitions it has heard of
        self._replies: dict[int, tuple[Future, dict[int, dict]]] = {}
        self._next_reply = 1
        self._next_check = 0.0
        self.status = ClusterStatus()
        self.status.values.update({
            "NumRanks_RBV": self.size, "Dispatch_RBV": cluster.dispatch,
            "ProcessingRanks_RBV": " ".join(map(str, self.workers)),
            "RanksAnswering_RBV": len(self.workers)})
        self.plugins = [c for c in ioc.components if isinstance(c, Plugin)]
        self.views = {(r, p.port): RankView(p, r) for r in self.workers for p in self.plugins}
        self.aggregator = Aggregator({p.port: p for p in self.plugins}, self.views, self.workers)
        self._captures: dict[str, "MasterCapture"] = {}

    # --- set-up (before serving) -----------------------------------------------------------------
    def install(self) -> None:
        self.ioc.add_component(self.status)
        for view in self.views.values():
            self.ioc.add_component(view)
        for driver in (c for c in self.ioc.components if isinstance(c, Driver)):
            driver.emit = self.submit  # the driver's frames go to the processing ranks
        for plugin in self.plugins:
            self._mirror_puts(plugin)
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

    def _mirror_puts(self, component: Component) -> None:
        original = component.handle_put

        async def mirrored(param: Any, raw: Any, source: Any = None) -> Any:
            before = component.values.get(param.name)
            try:
                result = await original(param, raw, source)
            except Exception:
                # a refused put may still store its value (a FilePath outside the data roots
                # is kept, as ADCore keeps it, so nothing goes on writing to the old folder):
                # the ranks must not keep the old one either
                after = component.values.get(param.name)
                if param.name != "Capture" and not _same(after, before):
                    self.mirror(component, param.name, after)
                raise
            if param.name != "Capture":  # the master capture sends its own
                self.mirror(component, param.name, component.values.get(param.name))
            return result
        component.handle_put = mirrored  # type: ignore[method-assign]

    def mirror(self, component: Component, name: str, value: Any,
               reply: int = 0, complete: bool = False) -> None:
        """Send a put to every processing rank (any thread), in line with the frames."""
        writer = is_file_writer(component)
        for rank in self.workers:
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
        """Mirror a put and wait for every rank's answer {rank: {"ok", "error", "values"}}:
        once the put completed there (`complete`: Capture=0, which completes when the file is
        closed), or else once it is accepted (a busy put, Capture=1, runs on)."""
        future: Future = Future()
        with self.lock:
            token = self._next_reply
            self._next_reply += 1
            self._replies[token] = (future, {})
        self.mirror(component, name, value, reply=token, complete=complete)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            pass
        with self.lock:
            _, answers = self._replies.pop(token)
        for rank in self.workers:
            answers.setdefault(rank, {"ok": False, "error": f"rank {rank} did not answer "
                                      f"within {timeout:g} s"})
        return answers

    def stop(self) -> None:
        for rank in self.workers:
            self.link.send(rank, {"kind": STOP})
        self.link.stop()

    # --- frames (driver thread) ------------------------------------------------------------------
    def submit(self, frame: NDArray) -> None:
        """The driver's delivery (its thread): send `frame` to a processing rank. Round robin
        picks the rank once and waits for room there (strict: the order never skips a rank);
        credit picks again while it waits (whichever rank frees a credit first). After the
        window the frame is dropped, and its placeholder still goes to the rank, in order."""
        acquisition = frame.acquisition
        deadline = time.monotonic() + self.cluster.window_s
        strict = isinstance(self.policy, RoundRobin)
        chosen: int | None = None
        while True:
            with self.lock:
                if acquisition is not self._acq:
                    self._new_acquisition(acquisition)
                if chosen is None or not strict:
                    chosen = self.policy.choose()
                rank = chosen
                if rank is not None and self._outstanding(rank) >= self.cluster.credits:
                    rank = None  # it holds its credits (in transit or in its pipeline): wait
                if rank is None and time.monotonic() >= deadline:
                    rank = chosen if chosen is not None else self._fallback()
                    frame = frame.derive(None, status=FrameStatus(
                        MissingCause.DROPPED, f"rank {rank} had no room for it within "
                        f"{self.cluster.window_s:g} s"))
                    if acquisition is not None:
                        acquisition.note_lost(frame.unique_id, failed=False)
                if rank is not None:
                    self._dispatch(frame, rank, acquisition)
                    return
            time.sleep(0.0005)

    def _fallback(self) -> int:
        """A rank for a frame dropped at dispatch (its placeholder still takes its row there):
        the one with the least outstanding."""
        return min(self.workers, key=self._outstanding)

    def _outstanding(self, rank: int) -> int:
        """Frames sent to `rank` and not yet received, plus its pipeline's backlog as it last
        said: at most `credits`, so a slow rank makes the driver wait (then drop), in either
        dispatch mode, instead of piling frames up in its memory."""
        return self._sent[rank] - self._acked[rank] + self._backlog[rank]

    def _new_acquisition(self, acquisition: Acquisition | None) -> None:
        self._acq = acquisition
        self.lut.clear()  # the rotation goes on: one-frame acquisitions (step scans) share too
        if acquisition is not None:
            self._acqs[acquisition.id] = (acquisition, set())
            acquisition.acquired.add_done_callback(lambda _: self._acquisition_sent(acquisition))

    def _dispatch(self, frame: NDArray, rank: int, acquisition: Acquisition | None) -> None:
        """Record where `frame` goes and queue it (lock held)."""
        try:
            local = self.lut.assign(frame.unique_id, rank)
        except ValueError:  # ArrayCounter was set back within an acquisition: a new numbering
            self.lut.clear()
            local = self.lut.assign(frame.unique_id, rank)
        self.policy.sent(rank)
        self._sent[rank] += 1
        self.reorder.expect(frame.unique_id, rank)
        if acquisition is not None:
            self._acq_of_uid[frame.unique_id] = acquisition
            entered = self._acqs.setdefault(acquisition.id, (acquisition, set()))[1]
            if rank not in entered:  # WaitForPlugins covers this rank until it drains
                entered.add(rank)
                acquisition.in_flight.enter()
        header = frame_header(frame, local)
        announced = self._announced.setdefault(rank, set())
        if acquisition is not None and acquisition.id not in announced:
            # the rank's copy of the acquisition records the driver's effective parameters
            header["params"] = {k: v for k, v in acquisition.params.items()
                                if isinstance(v, (int, float, str))}
            announced.add(acquisition.id)
        self.link.send(rank, header, frame.data if frame.valid else None)
        self.status.set("FramesDispatched_RBV", self.status.values["FramesDispatched_RBV"] + 1)

    def _acquisition_sent(self, acquisition: Acquisition) -> None:
        """The driver is done with `acquisition` (its thread, after its last frame)."""
        with self.lock:
            ranks = set(self._acqs.get(acquisition.id, (acquisition, set()))[1])
            if not ranks:
                self._acqs.pop(acquisition.id, None)
            for rank in ranks:
                self.link.send(rank, {"kind": ACQ_END, "acq": acquisition.id})

    # --- messages (MPI thread) -------------------------------------------------------------------
    @staticmethod
    def _no_frames(header: dict) -> np.ndarray:
        raise RuntimeError("the control rank receives no frames")

    def _on_message(self, source: int, header: dict[str, Any], data: Any) -> None:
        kind = header["kind"]
        self._last_heard[source] = time.monotonic()
        if kind == ACK:
            self._on_ack(source, header)
        elif kind == VALUES:
            self._on_values(source, header["values"])
        elif kind == DRAINED:
            with self.lock:
                acquisition, ranks = self._acqs.get(header["acq"], (None, set()))
                if acquisition is not None and source in ranks:
                    ranks.discard(source)
                    acquisition.in_flight.leave()
                    if not ranks:
                        self._acqs.pop(header["acq"], None)
        elif kind == PUT_DONE:
            with self.lock:
                waiting = self._replies.get(header["reply"])
                if waiting is not None:
                    future, answers = waiting
                    answers[source] = header
                    if len(answers) >= len(self.workers):
                        resolve(future)

    def _on_ack(self, rank: int, header: dict[str, Any]) -> None:
        with self.lock:
            self._acked[rank] += len(header["uids"])
            self._backlog[rank] = header["backlog"]
            self.policy.report(rank, header["received"], header["backlog"])
            for uid in header["uids"]:
                self.reorder.arrive(uid, rank)
            acked = sum(self._acked.values())
        self.status.set("FramesAcknowledged_RBV", acked)
        self._pop_ordered()

    def _pop_ordered(self) -> None:
        with self.lock:
            ready = self.reorder.pop_ready()
            lost = []
            for entry in ready:
                acquisition = self._acq_of_uid.pop(entry.unique_id, None)
                if isinstance(entry, Missing):
                    lost.append((entry, acquisition))
            late, missing, delivered = self.reorder.late, self.reorder.missing, \
                self.reorder.delivered
        for entry, acquisition in lost:
            log.warning("frame %d missing: %s", entry.unique_id, entry.message)
            if acquisition is not None:
                acquisition.note_lost(entry.unique_id, failed=False)
        if ready or late != self.status.values["FramesLate_RBV"]:
            self.status.set_many({"FramesInOrder_RBV": delivered + missing,
                                  "FramesMissing_RBV": missing, "FramesLate_RBV": late})

    def _on_values(self, rank: int, values: dict[str, dict[str, Any]]) -> None:
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
        with self.lock:  # a rank with frames outstanding that says nothing for a window
            silent = {r for r in self.workers if self._sent[r] > self._acked[r] and
                      now - self._last_heard[r] > self.cluster.window_s}
            newly = silent - self._silent
            for rank in newly:
                self.reorder.give_up(rank, f"rank {rank} stopped answering")
            self._silent = (self._silent | silent) - {
                r for r in self._silent if now - self._last_heard[r] < self.cluster.window_s}
            answering = len(self.workers) - len(self._silent)
            text = " ".join(map(str, sorted(self._silent)))
        for rank in newly:
            log.error("processing rank %d stopped answering: its outstanding frames become "
                      "missing", rank)
        if self.status.values["SilentRanks_RBV"] != text:
            self.status.set_many({"SilentRanks_RBV": text, "RanksAnswering_RBV": answering})


class MasterCapture:
    """Capture on the control rank's file writer: mirrored to the processing ranks' writers
    (each its own file, `<FileName>_r<rank>`), the total counted over ranks, and, for HDF5,
    the master file written when the capture ends (ndflow.cluster.master)."""

    def __init__(self, node: ControlNode, writer: Component) -> None:
        self.node = node
        self.writer = writer
        self.capturing = False
        self.done: Future | None = None
        self.path: Path | None = None
        self._ending: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def put_capture(self, value: int) -> Any:
        self._loop = asyncio.get_running_loop()
        w = self.writer
        if not value:
            if not self.capturing and self._ending is None:
                return 0
            await self.stop()
            return HANDLED
        if w.values["FileWriteMode"] == 0:
            message = "Capture needs FileWriteMode Capture or Stream"
            w.set_many({"WriteStatus": 1, "WriteMessage": message})
            raise PutRefused(message)
        if self.capturing:
            await self.stop()
        self.path = None
        if writes_hdf5(w):
            try:  # the master's name, checked against the data roots; FullFileName_RBV
                self.path = w._next_file(dict(w.values))  # type: ignore[attr-defined]
            except Exception as exc:
                w.set_many({"WriteStatus": 1, "WriteMessage": str(exc)[:255]})
                raise PutRefused(str(exc)) from None
        w.set("NumCaptured_RBV", 0)
        self.node.aggregator.forget(w.port, "NumCaptured_RBV")
        answers = await self.node.ask(w, "Capture", 1)
        refused = {r: a for r, a in answers.items() if not a.get("ok")}
        if refused:
            rank, answer = sorted(refused.items())[0]
            self.node.mirror(w, "Capture", 0)
            message = f"rank {rank}: {answer.get('error') or 'capture refused'}"
            w.set_many({"WriteStatus": 1, "WriteMessage": message[:255]})
            raise PutRefused(message)
        w.set_many({"WriteStatus": 0, "WriteMessage": ""})
        self.capturing = True
        self.done = Future()
        w.set("Capture", 1)
        return await finish(self.done, w.publisher)

    def check_total(self) -> None:
        """Reports came in (MPI thread): end the capture once NumCapture frames are written."""
        w = self.writer
        limit = w.values["NumCapture"]
        if self.capturing and limit and w.values["NumCaptured_RBV"] >= limit and \
                self._loop is not None and self._ending is None:
            self._loop.call_soon_threadsafe(self._end_soon)

    def _end_soon(self) -> None:
        if self._ending is None and self.capturing:
            self._ending = asyncio.ensure_future(self._end())

    async def stop(self) -> None:
        """End the capture (once, whoever asks first: Capture=0 or the total reached)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        await asyncio.shield(self._ending)

    async def _end(self) -> None:
        """Stop every rank's capture (their queued frames are written first: DrainOnStop),
        write the master, and complete Capture=1's put."""
        w = self.writer
        try:
            answers = await self.node.ask(w, "Capture", 0, complete=True)
            self.capturing = False
            files = []
            for rank, answer in sorted(answers.items()):
                name = (answer.get("values") or {}).get("FullFileName_RBV", "")
                if not answer.get("ok"):
                    w.set_many({"WriteStatus": 1,
                                "WriteMessage": f"rank {rank}: {answer.get('error')}"[:255]})
                if name:
                    files.append((rank, Path(name)))
            if self.path is not None and files:
                limit = w.values["NumCapture"]
                fill = float(w.values.get("FillValue", 0.0))
                path = self.path
                try:
                    summary = await asyncio.get_running_loop().run_in_executor(
                        None, lambda: build_master(lambda p: w.open_hdf5(p), path, files,
                                                   limit, fill))
                    self.node.status.set("MasterFile_RBV", str(path)[:511])
                    w.set("NumCaptured_RBV", summary.frames)
                    log.info("master file %s: %d frames (%d missing) from ranks %s", path,
                             summary.frames, summary.missing, summary.ranks)
                except Exception as exc:
                    message = f"master file {path}: {type(exc).__name__}: {exc}"
                    log.error("%s", message)
                    w.set_many({"WriteStatus": 1, "WriteMessage": message[:255]})
            if w.values.get("AutoIncrement"):
                w.set("FileNumber", w.values["FileNumber"] + 1)
        finally:
            self.capturing = False
            self._ending = None
            w.set("Capture", 0)
            if w.publisher is not None:
                await w.publisher.drain()
            if self.done is not None:
                resolve(self.done)


# ===================================================================================== processing
class ProcessingNode:
    def __init__(self, ioc: Any, cluster: ClusterConfig, comm: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.ioc = ioc
        self.cluster = cluster
        self.control = cluster.control
        self.loop = loop
        drivers = [c for c in ioc.components if isinstance(c, Driver)]
        self.driver = drivers[0]
        self.plugins = [c for c in ioc.components if isinstance(c, Plugin)]
        self.link = Link(comm, self._on_message, self._buffer_for, self._on_idle)
        self.rank = self.link.rank
        self._acqs: dict[int, Acquisition] = {}
        self._feed: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed_frames, name="cluster-feed",
                                        daemon=True)
        self._acks: list[int] = []
        self.received = 0
        self._next_report = 0.0
        self._last_backlog = 0
        self._next_backlog = 0.0
        self._reported: dict[str, dict[str, Any]] = {}
        self._report_lock = threading.Lock()
        #: (port, name) of mirrored puts being applied: what they set is not news (a report
        #: taken between the put and its bookkeeping would send the rank's own FileName back)
        self._putting: dict[tuple[str, str], int] = {}
        self.stopped = asyncio.Event()
        self._emit = self.driver.emit  # the port's delivery to its subscribers

    def install(self) -> None:
        self._changed_values()  # the start values: only changes from here on are reported
        self._feeder.start()
        self.link.start()

    def stop(self) -> None:
        self._feed.put(None)
        self.link.stop(timeout=1.0)

    # --- MPI thread ------------------------------------------------------------------------------
    def _buffer_for(self, header: dict[str, Any]) -> np.ndarray:
        shape, dtype = tuple(header["shape"]), np.dtype(header["dtype"])
        data = self.driver.pool.alloc(shape, dtype)
        if data is None:  # the pool (or the IOC's budget) is full: received, then missing
            header["no_memory"] = True
            data = np.empty(shape, dtype)
        return data

    def _on_message(self, source: int, header: dict[str, Any], data: Any) -> None:
        kind = header["kind"]
        if kind == FRAME:
            frame = frame_from(header, data)
            if header.pop("no_memory", False):
                frame = frame.derive(None, status=FrameStatus(
                    MissingCause.NO_MEMORY, f"rank {self.rank}: no room in the array pool"))
            acquisition = self._acquisition(header)
            frame.acquisition = acquisition
            if acquisition is not None:
                acquisition.in_flight.enter()  # left by the feeder once delivered
                acquisition.frames += 1
                if acquisition.first_id is None:
                    acquisition.first_id = frame.unique_id
                if not frame.valid:
                    acquisition.note_lost(frame.unique_id, failed=False)
            self.received += 1
            self._acks.append(frame.unique_id)
            self._feed.put(frame)
        elif kind == ACQ_END:
            self._feed.put(("end", header["acq"]))
        elif kind == PUT:
            self.loop.call_soon_threadsafe(self._apply_put, header)
        elif kind == STOP:
            self.loop.call_soon_threadsafe(self.stopped.set)

    def _acquisition(self, header: dict[str, Any]) -> Acquisition | None:
        aid = header.get("acq", 0)
        if not aid:
            return None
        acquisition = self._acqs.get(aid)
        if acquisition is None:
            acquisition = Acquisition(aid, dict(header.get("params", {})))
            self._acqs[aid] = acquisition
        return acquisition

    def _on_idle(self) -> None:
        now = time.monotonic()
        backlog = self.backlog()
        if self._acks or (backlog != self._last_backlog and now >= self._next_backlog):
            # received frames at once; a changed backlog (credit dispatch) at most every 5 ms
            uids, self._acks = self._acks, []
            self._last_backlog = backlog
            self._next_backlog = now + 0.005
            self.link.send(self.control, {"kind": ACK, "uids": uids, "received": self.received,
                                          "backlog": backlog})
        if now >= self._next_report:
            self._next_report = now + self.cluster.report_interval_s
            changes = self._changed_values()
            if changes:
                self.link.send(self.control, {"kind": VALUES, "values": changes})

    def backlog(self) -> int:
        """How busy this rank is: its acquisitions' deliveries in flight (frames in the
        feeder, in plugin queues, in an algorithm's child). A frame still in two plugins counts
        twice; every rank runs the same graph, so ranks compare fairly, and a rank whose one
        slow plugin holds frames counts each of them (queue lengths alone miss the frames an
        algorithm's child holds)."""
        return sum(a.in_flight.count for a in list(self._acqs.values()))

    def _changed_values(self) -> dict[str, dict[str, Any]]:
        with self._report_lock:  # the MPI thread and a draining plugin's thread
            return self._changes()

    def _changes(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for plugin in self.plugins:
            last = self._reported.setdefault(plugin.port, {})
            changed = {}
            for param in plugin.params:
                if not reported(param) or (plugin.port, param.name) in self._putting:
                    continue
                value = plugin.values.get(param.name)
                if value is None:  # not computed yet (an array before the first frame)
                    continue
                if isinstance(value, np.ndarray):
                    if isinstance(last.get(param.name), np.ndarray) and \
                            np.array_equal(last[param.name], value):
                        continue
                    value = value.copy()
                elif last.get(param.name, object()) == value:
                    continue
                changed[param.name] = value
            if changed:
                last.update(changed)
                out[plugin.port] = changed
        return out

    # --- the feeder thread: frames into the plugin graph, in arrival order -----------------------
    def _feed_frames(self) -> None:
        while True:
            item = self._feed.get()
            if item is None:
                return
            if isinstance(item, tuple):  # an acquisition's end, after its last frame
                acquisition = self._acqs.get(item[1])
                if acquisition is not None:
                    acquisition.processed.add_done_callback(
                        lambda _, a=acquisition: self._drained(a))
                    acquisition.end_acquisition()
                continue
            try:
                self._emit(item)
            except Exception as exc:
                log.error("rank %d: frame %d: %s: %s", self.rank, item.unique_id,
                          type(exc).__name__, exc)
            finally:
                if item.acquisition is not None:
                    item.acquisition.in_flight.leave()

    def _drained(self, acquisition: Acquisition) -> None:
        """The acquisition's frames have left every plugin here: the final values first, so
        the control rank shows them before WaitForPlugins lets Acquire's put complete."""
        self._acqs.pop(acquisition.id, None)
        changes = self._changed_values()
        if changes:
            self.link.send(self.control, {"kind": VALUES, "values": changes})
        self.link.send(self.control, {"kind": DRAINED, "acq": acquisition.id})

    # --- puts from the control rank (event loop) -------------------------------------------------
    def _apply_put(self, header: dict[str, Any]) -> None:
        asyncio.ensure_future(self._put(header))

    async def _put(self, header: dict[str, Any]) -> None:
        component = self.ioc.graph.ports.get(header["port"])
        reply = header.get("reply")
        answer: dict[str, Any] = {"kind": PUT_DONE, "reply": reply, "ok": True}
        if component is None or header["name"] not in component.params:
            answer.update(ok=False, error=f"no {header['port']}:{header['name']} here")
        else:
            param = component.params[header["name"]]
            key = (component.port, param.name)
            with self._report_lock:  # not reported meanwhile
                self._putting[key] = self._putting.get(key, 0) + 1
            task = asyncio.ensure_future(component.handle_put(param, header["value"]))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            if reply and not header.get("complete"):
                done, _ = await asyncio.wait({task}, timeout=BUSY_PUT_ANSWER)
            else:
                done, _ = await asyncio.wait({task})
            if task in done:
                exc = task.exception()
                if exc is not None:
                    answer.update(ok=False, error=str(exc))
            if reply:
                answer["values"] = {n: component.values.get(n) for n in
                                    ("FullFileName_RBV", "NumCaptured_RBV", "WriteStatus",
                                     "WriteMessage") if n in component.values}
            if param.name in self._reported.get(component.port, {}) and \
                    param.name not in SUMMED and param.name not in AVERAGED:
                # what the put set is not news for the control rank (see views.reported)
                value = component.values.get(param.name)
                with self._report_lock:
                    self._reported[component.port][param.name] = \
                        value.copy() if isinstance(value, np.ndarray) else value
            with self._report_lock:
                self._putting[key] -= 1
                if not self._putting[key]:
                    del self._putting[key]
        if reply:
            self.link.send(self.control, answer)
