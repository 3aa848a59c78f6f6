"""A processing rank: the frames it is sent go into its plugin graph, as if its own driver had
made them.

Frames come from this rank's feeders (the acquisition ranks that send to it,
`ClusterConfig.feeders`), over MPI or, from its own acquisition role, handed over in-process.
A feeder thread hands them to the plugins in arrival order, so a blocking plugin never stalls
MPI. The rank keeps a copy of each acquisition (its id is the control rank's) so its plugins
and files record it as in one process; the copy ends when every feeder has said the
acquisition is over (ACQ_END), and once its frames have left every plugin the rank says so
(`drained`: DRAINED to the control rank, which holds Acquire's put-completion until then).
Received frames are acknowledged per feeder (`say_acks`, batched by `acks.AckBatcher`): to the
control rank, whose reorder stage needs them, and to the feeder, whose credit dispatch needs
them; all of them are said before DRAINED. With `cluster.assemble`
the module frames are rebuilt into whole frames before the plugins (`assembly`).

A feeder the control rank gave up on (GONE: it stopped answering) has ended the acquisition as
far as this rank is concerned: the control rank sends the frames it owed as placeholders (with
its cause; not acknowledged, nothing here waits for them), and a frame it sends for that
acquisition if it answers again is acknowledged (its credits) but dropped, so no frame is
recorded twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterable

import numpy as np

from ..driver import Driver
from ..ndarray import Acquisition, FrameStatus, MissingCause, NDArray
from .acks import AckBatcher
from .assembly import Assembler
from .wire import frame_from

log = logging.getLogger("ndflow.cluster")


class ProcessingRole:
    def __init__(self, driver: Driver, feeders: list[int], rank: int,
                 drained: Callable[[int], None], assemble: int = 0,
                 say: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """`assemble`: the number of detector modules to rebuild whole frames from (0: the
        frames go to the plugins as they come). `say(feeder, ACK header)`: hands an ACK on
        (to the link), from `say_acks` and before `drained`."""
        self.driver = driver
        self.assembler = Assembler(assemble, driver.pool, rank) if assemble else None
        self.rank = rank
        self.feeders = set(feeders)
        self.drained = drained  # (acquisition id) -> None, from the feeder thread
        self.say = say
        self._emit = driver.emit  # the port's delivery to its subscribers
        self._acqs: dict[int, Acquisition] = {}
        self._ends: dict[int, set[int]] = {}  # acquisition id -> feeders that ended it
        self._lock = threading.Lock()
        self._feed: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed_frames, name="cluster-feed",
                                        daemon=True)
        self.acks = AckBatcher(self.feeders)  # under _lock
        #: held while ACKs are taken and handed on, so none taken before a flush is sent after
        #: it (and after the DRAINED that follows it)
        self._saying = threading.Lock()
        self._gone: set[tuple[int, int]] = set()  # (feeder, acquisition id) given up on
        self.dropped = 0  # frames of a feeder given up on that came after all
        self._drained_ids: set[int] = set()  # recent acquisitions this rank drained

    def start(self) -> None:
        self._feeder.start()

    def stop(self) -> None:
        self._feed.put(None)

    # --- frames in (MPI thread, or the driver's thread for this rank's own frames) ---------------
    def buffer_for(self, header: dict[str, Any]) -> np.ndarray:
        shape, dtype = tuple(header["shape"]), np.dtype(header["dtype"])
        data = self.driver.pool.alloc(shape, dtype)
        if data is None:  # the pool (or the IOC's budget) is full: received, then missing
            header["no_memory"] = True
            data = np.empty(shape, dtype)
        return data

    def on_frame(self, feeder: int, header: dict[str, Any], data: Any) -> None:
        frame = frame_from(header, data)
        if header.pop("no_memory", False):
            frame = frame.derive(None, status=FrameStatus(
                MissingCause.NO_MEMORY, f"rank {self.rank}: no room in the array pool"))
        self._accept(feeder, header, frame)

    def local(self, header: dict[str, Any] | None, item: Any) -> None:
        """From this rank's own acquisition role: a frame (header, frame), or the end of an
        acquisition (None, its id)."""
        if header is None:
            self.on_end(self.rank, item)
        else:
            self._accept(self.rank, header, item)

    def _accept(self, feeder: int, header: dict[str, Any], frame: NDArray) -> None:
        aid, placeholder = header.get("acq", 0), bool(header.get("gone"))
        with self._lock:
            late = (feeder, aid) in self._gone and not placeholder
            if late:  # acknowledged (the feeder's credits), not recorded
                self.acks.add(feeder, frame.unique_id)
                self.dropped += 1
            # a missing row settled after this rank drained the acquisition: not opened again
            ended = placeholder and aid in self._drained_ids
        if late:
            log.warning("rank %d: frame %d of rank %d came after it was given up on: dropped "
                        "(it is a missing frame already)", self.rank, frame.unique_id, feeder)
            return
        frame.acquisition = None if ended else self._acquisition(aid, header.get("params"))
        with self._lock:
            if not placeholder:  # a placeholder for a silent feeder: nobody's credit
                self.acks.add(feeder, frame.unique_id)
            if self.assembler is not None:
                whole = self.assembler.add(frame)
                if whole is None:
                    return  # more modules of this frame to come
                frame = whole
        self._enter(frame)
        self._feed.put(frame)

    def _enter(self, frame: NDArray) -> None:
        """`frame` is on its way to the plugins: its acquisition holds it."""
        acquisition = frame.acquisition
        if acquisition is not None:
            acquisition.in_flight.enter()  # left by the feeder once delivered
            acquisition.frames += 1
            if acquisition.first_id is None:
                acquisition.first_id = frame.unique_id
            if not frame.valid:
                acquisition.note_lost(frame.unique_id, failed=False)

    def on_end(self, feeder: int, acquisition_id: int) -> None:
        with self._lock:
            if (feeder, acquisition_id) in self._gone:
                return  # ended already, by GONE
        self._feed.put(("end", acquisition_id, feeder))

    def on_gone(self, feeder: int, acquisition_id: int) -> None:
        """The control rank gave up on `feeder` for this acquisition: its part is over."""
        self.on_end(feeder, acquisition_id)
        with self._lock:
            self._gone.add((feeder, acquisition_id))
            while len(self._gone) > 256:
                self._gone.discard(min(self._gone, key=lambda g: g[1]))

    def _acquisition(self, aid: int, params: dict | None = None) -> Acquisition | None:
        if not aid:
            return None
        with self._lock:
            acquisition = self._acqs.get(aid)
            if acquisition is None:
                acquisition = Acquisition(aid, dict(params or {}))
                self._acqs[aid] = acquisition
            return acquisition

    # --- acknowledgements (MPI thread) ------------------------------------------------------------
    def say_acks(self, flush: bool = False) -> None:
        """Hand `say` the ACKs due now (MPI thread), or with `flush` every unsaid one (before
        `drained`, from the feeder thread)."""
        if self.say is None:
            return
        with self._saying:
            backlog = self.backlog()
            with self._lock:
                acks: Iterable = self.acks.flush(backlog) if flush else self.acks.take(backlog)
            for feeder, ack in acks:
                self.say(feeder, ack)

    def backlog(self) -> int:
        """How busy this rank is: its acquisitions' deliveries in flight (frames in the
        feeder, in plugin queues, in an algorithm's child). A frame still in two plugins counts
        twice; every rank runs the same graph, so ranks compare fairly, and a rank whose one
        slow plugin holds frames counts each of them (queue lengths alone miss the frames an
        algorithm's child holds)."""
        with self._lock:
            acquisitions = list(self._acqs.values())
        return sum(a.in_flight.count for a in acquisitions)

    # --- the feeder thread: frames into the plugin graph, in arrival order -----------------------
    def _feed_frames(self) -> None:
        while True:
            item = self._feed.get()
            if item is None:
                return
            if isinstance(item, tuple):  # an acquisition's end (from one feeder), after its frames
                self._end(item[1], item[2])
                continue
            self._deliver(item)

    def _deliver(self, frame: NDArray) -> None:
        try:
            self._emit(frame)
        except Exception as exc:
            log.error("rank %d: frame %d: %s: %s", self.rank, frame.unique_id,
                      type(exc).__name__, exc)
        finally:
            if frame.acquisition is not None:
                frame.acquisition.in_flight.leave()

    def _end(self, aid: int, feeder: int) -> None:
        ends = self._ends.setdefault(aid, set())
        ends.add(feeder)
        if not ends >= self.feeders:
            return  # more feeders to hear from
        del self._ends[aid]
        acquisition = self._acquisition(aid)
        if acquisition is None:
            return
        if self.assembler is not None:  # frames that never came whole: missing, in order
            with self._lock:
                incomplete = self.assembler.flush(aid)
            for frame in incomplete:
                self._enter(frame)
                self._deliver(frame)
        acquisition.processed.add_done_callback(lambda _, a=acquisition: self._drained(a))
        acquisition.end_acquisition()

    def _drained(self, acquisition: Acquisition) -> None:
        with self._lock:
            self._acqs.pop(acquisition.id, None)
            self._drained_ids.add(acquisition.id)
            if len(self._drained_ids) > 64:
                self._drained_ids.discard(min(self._drained_ids))
        self.say_acks(flush=True)  # every frame said before DRAINED: counts and credits exact
        self.drained(acquisition.id)
