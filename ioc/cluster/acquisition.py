"""An acquisition rank: runs the driver and sends its frames to the processing ranks.

Any rank in `cluster.acquisition` has this role, the control rank included. Its driver's delivery
(`emit`) is replaced by the `Dispatcher`, which sends each frame whole to one of this rank's
processing ranks (`ClusterConfig.targets`: every processing rank for whole frames, the module's
ranks for partial frames), strict round robin or by credit, and says where each went
(`record`: the control rank's ordering, directly on the control rank, else in DISPATCHED notes).
A frame for this rank itself (acquisition-with-processing) goes into its own plugin graph with
no MPI hop.

On a rank other than the control rank, acquisitions are the control rank's: START carries the
control rank's acquisition id, the driver runs it with its own (mirrored) values, and when the
driver is done the rank says so (ACQ_DONE) and ends the acquisition on its processing ranks
(ACQ_END, to every one of them, frames or not, so each knows when it has all its feeders'
frames).

Several acquisition ranks sharing whole frames (`numbering`): the rank numbers its frames as
one process would (the driver's `next_unique_id`), makes its share of NumImages at M x
AcquirePeriod, and tells a sim how far its image moves on per frame (`frame_steps`); a rank
whose share is no frame ends the acquisition at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from ..busy import until
from ..driver import Driver
from ..ndarray import Acquisition, FrameStatus, MissingCause, NDArray
from ..state import RunState
from .common import ACQ_DONE, DISPATCHED
from .config import ClusterConfig
from .dispatch import CreditDispatch, RoundRobin
from .numbering import RankNumbering, first_frame_in, rank_settings, stagger
from .wire import ACQ_END, frame_header

log = logging.getLogger("ndflow.cluster")
#: how long a START waits for an older acquisition still running on this rank to end
STOP_WAIT_S = 5.0

#: (unique id, processing rank, acquisition, lost at dispatch) -> None
Record = Callable[[int, int, Acquisition | None, bool], None]
#: (header, frame): a frame for this rank's own plugin graph; (None, acquisition id): its end
Local = Callable[[dict[str, Any] | None, Any], None]


class Dispatcher:
    def __init__(self, cluster: ClusterConfig, targets: list[int], link: Any, rank: int,
                 record: Record, local: Local | None,
                 shown: dict[int, dict[str, Any]] | None = None) -> None:
        """`shown`: per acquisition id, the settings the processing ranks' copies record
        (default the acquisition's own: a rank's share of NumImages is not the cluster's)."""
        self.shown = shown if shown is not None else {}
        self.cluster = cluster
        self.rank = rank
        self.ranks = sorted(set(targets))
        self.policy = RoundRobin(targets) if cluster.dispatch == "round_robin" else \
            CreditDispatch(self.ranks, cluster.credits)
        self.link = link
        self.record = record
        self.local = local
        self.lock = threading.Lock()
        #: notified (lock held) when a rank's acknowledgement frees a credit: `submit` waits on
        #: it (a polling sleep cost the driver's thread 2,000 wake-ups a second)
        self._credit_back = threading.Condition(self.lock)
        self._sent = {r: 0 for r in self.ranks}
        self._acked = {r: 0 for r in self.ranks}
        self._backlog = {r: 0 for r in self.ranks}
        self._count: dict[int, int] = {}  # frames of the current acquisition per rank
        self._acq: Acquisition | None = None
        self._announced: dict[int, set[int]] = {}  # rank -> acquisitions it has heard of

    def submit(self, frame: NDArray) -> None:
        """The driver's delivery (its thread): send `frame` to a processing rank. Round robin
        picks the rank once and waits for room there (strict: the order never skips a rank);
        credit picks again while it waits (whichever rank frees a credit first). After the
        window the frame is dropped, and its placeholder still goes to the rank, in order."""
        acquisition = frame.acquisition
        deadline = time.monotonic() + self.cluster.window_s
        strict = isinstance(self.policy, RoundRobin)
        chosen: int | None = None
        with self.lock:
            while True:
                if acquisition is not self._acq:
                    self._acq = acquisition
                    self._count.clear()
                if chosen is None or not strict:
                    chosen = self.policy.choose()
                rank = chosen
                if rank is not None and self._outstanding(rank) >= self.cluster.credits:
                    rank = None  # it holds its credits (in transit or in its pipeline): wait
                lost = False
                now = time.monotonic()
                if rank is None and now >= deadline:
                    rank = chosen if chosen is not None else \
                        min(self.ranks, key=self._outstanding)
                    frame = frame.derive(None, status=FrameStatus(
                        MissingCause.DROPPED, f"rank {rank} had no room for it within "
                        f"{self.cluster.window_s:g} s"))
                    lost = True
                if rank is not None:
                    self._dispatch(frame, rank, acquisition, lost)
                    return
                self._credit_back.wait(min(deadline - now, 0.05))  # woken by a credit back

    def _outstanding(self, rank: int) -> int:
        """Frames sent to `rank` and not yet received, plus its pipeline's backlog as it last
        said: at most `credits`, so a slow rank makes the driver wait (then drop), in either
        dispatch mode, instead of piling frames up in its memory."""
        return self._sent[rank] - self._acked[rank] + self._backlog[rank]

    def _dispatch(self, frame: NDArray, rank: int, acquisition: Acquisition | None,
                  lost: bool) -> None:
        """Record where `frame` goes and send it (lock held)."""
        local = self._count.get(rank, 0)
        self._count[rank] = local + 1
        self.policy.sent(rank)
        self._sent[rank] += 1
        self.record(frame.unique_id, rank, acquisition, lost)
        header = frame_header(frame, local)
        announced = self._announced.setdefault(rank, set())
        if acquisition is not None and acquisition.id not in announced:
            # the rank's copy of the acquisition records the driver's effective parameters
            settings = self.shown.get(acquisition.id, acquisition.settings)
            header["params"] = {k: v for k, v in settings.items()
                                if isinstance(v, (int, float, str))}
            announced.add(acquisition.id)
            if len(announced) > 64:
                announced.discard(min(announced))
        if rank == self.rank and self.local is not None:
            self.local(header, frame)  # its own plugin graph: no MPI hop, no copy
        else:
            self.link.send(rank, header, frame.data if frame.valid else None)

    def on_ack(self, rank: int, header: dict[str, Any]) -> None:
        """`rank` received `len(uids)` more of this rank's frames (`received` in all) and holds
        `backlog` frames in its pipeline."""
        with self.lock:
            if rank not in self._sent:
                return
            before = self._outstanding(rank)
            self._acked[rank] += len(header["uids"])
            self._backlog[rank] = header["backlog"]
            self.policy.report(rank, header["received"], header["backlog"])
            if self._outstanding(rank) < before:
                self._credit_back.notify_all()

    def end(self, acquisition_id: int) -> None:
        """The driver is done with an acquisition: every processing rank of this one hears it,
        after the acquisition's frames."""
        with self.lock:
            for rank in self.ranks:
                if rank == self.rank and self.local is not None:
                    self.local(None, acquisition_id)
                else:
                    self.link.send(rank, {"kind": ACQ_END, "acq": acquisition_id})


class AcquisitionRole:
    def __init__(self, driver: Driver, cluster: ClusterConfig, rank: int, size: int, link: Any,
                 record: Record | None = None, local: Local | None = None,
                 report: Callable[[], None] | None = None) -> None:
        """`record`: where frames went, for the control rank's ordering (on the control rank);
        None: sent to the control rank in DISPATCHED notes. `report`: sends this rank's
        changed values, called before ACQ_DONE so the control rank shows the final counters
        when Acquire's put completes."""
        self.driver = driver
        self.report = report
        self.cluster = cluster
        self.rank = rank
        self.link = link
        module = cluster.module_of(rank)
        if module is not None:
            driver.module = module  # type: ignore[attr-defined]
        self._notes: list[tuple[int, int, int]] = []
        self._lost: list[tuple[int, int]] = []
        self._notes_lock = threading.Lock()
        self._shown: dict[int, dict[str, Any]] = {}
        self.dispatcher = Dispatcher(cluster, cluster.targets(rank, size), link, rank,
                                     record or self._note, local, self._shown)
        driver.emit = self.dispatcher.submit  # type: ignore[method-assign]
        self.numbering: RankNumbering | None = None
        if cluster.shared:
            self.numbering = RankNumbering(len(cluster.acquisition),
                                           cluster.acquisition.index(rank))
            driver.next_unique_id = self._next_uid  # type: ignore[method-assign]
            if hasattr(driver, "frame_steps"):
                driver.frame_steps = self.numbering.steps  # type: ignore[attr-defined]

    def _next_uid(self) -> int:
        """The driver's next uniqueId (its thread); ArrayCounter shows it (the highest this
        rank made: the control rank shows the highest over ranks)."""
        assert self.numbering is not None
        uid = self.numbering.next_uid()
        self.driver.set("ArrayCounter", uid)
        return uid

    def begin(self, acquisition: Acquisition) -> None:
        """`acquisition` is starting on this rank's driver: end it downstream when it is
        acquired (driver thread, after its last frame)."""
        acquisition.acquired.add_done_callback(lambda _: self._acquired(acquisition))

    # --- a rank other than the control rank ------------------------------------------------------
    async def start(self, acquisition_id: int, base: int = 0, seq: int = 0,
                    reset: bool = False, sent: float | None = None) -> None:
        """START (event loop): run the control rank's acquisition `acquisition_id` with this
        rank's values (the control rank's, mirrored), as Acquire=1 would; shared whole frames:
        this rank's share, after uniqueId `base`, the first frame at image position `seq`,
        `reset`: a put since the last START resets the image at that frame (this rank's own
        Reset may be an older one, from an acquisition it made no frame of); `sent`: when the
        control rank sent START (time.time()), which the shared ranks' timeline starts from.

        An older acquisition still running here is one the control rank has ended already:
        this rank was given up on while stopped, or it is still making the frame it had begun
        when the stop came. It is stopped, and waited for (up to STOP_WAIT_S), before this one
        starts; before, the START was refused and the new acquisition ended at once."""
        d = self.driver
        running = d.acquisition if d.acquiring else None
        if running is not None and running.id < acquisition_id:
            log.warning("rank %d: acquisition %d asked while %d runs: %d stopped first",
                        self.rank, acquisition_id, running.id, running.id)
            await d.put_Acquire(0)
            try:
                await asyncio.wait_for(until(running.acquired), STOP_WAIT_S)
            except asyncio.TimeoutError:
                pass
        self._start_now(acquisition_id, base, seq, reset, sent)

    def _start_now(self, acquisition_id: int, base: int, seq: int, reset: bool,
                   sent: float | None = None) -> None:
        d = self.driver
        delay = 0.0
        if d.acquiring:
            log.error("rank %d: acquisition %d asked while %d runs: ignored", self.rank,
                      acquisition_id, d.acquisition.id if d.acquisition else 0)
            self._nothing(acquisition_id, failed=True)
            return
        settings = dict(d.values)
        if self.numbering is not None:
            self.numbering.start(base, seq, reset)
            changes = rank_settings(settings, self.numbering.ranks, self.numbering.index)
            if changes is None:  # no frame of this acquisition is this rank's
                d.set("NumImagesCounter_RBV", 0)
                self._nothing(acquisition_id, failed=False)
                return
            self._shown[acquisition_id] = dict(settings)
            while len(self._shown) > 8:
                self._shown.pop(next(iter(self._shown)))
            late = time.time() - sent if isinstance(sent, (int, float)) else None
            delay = first_frame_in(stagger(settings, self.numbering.ranks,
                                           self.numbering.index), late)
            settings.update(changes)
        d.acquiring = True
        d._stop_event.clear()
        acquisition = Acquisition(acquisition_id, settings, on_state=d._run_state_entered)
        if self.numbering is not None:  # on the timeline shared with the other ranks
            acquisition.first_due = time.monotonic() + delay
        acquisition.on_lost = d._frames_lost
        d.acquisition = acquisition
        d.set("Acquire", 1)
        self.begin(acquisition)
        acquisition.acquired.add_done_callback(lambda _: self._done(acquisition))
        if delay > 0:  # its place among the cluster's frames (a stop meanwhile ends it at once)
            asyncio.get_running_loop().call_later(delay, d._starts.put, acquisition)
        else:
            d._starts.put(acquisition)

    def _nothing(self, acquisition_id: int, failed: bool) -> None:
        """This rank makes nothing of `acquisition_id`: its processing ranks must not wait."""
        self.dispatcher.end(acquisition_id)
        if self.report is not None:
            self.report()
        self.link.send(self.cluster.control, {"kind": ACQ_DONE, "acq": acquisition_id,
                                              "frames": 0, "failed": failed, "last": None})

    def _note(self, unique_id: int, rank: int, acquisition: Acquisition | None,
              lost: bool) -> None:
        aid = acquisition.id if acquisition is not None else 0
        with self._notes_lock:
            self._notes.append((aid, unique_id, rank))
            if lost:
                self._lost.append((aid, unique_id))

    def flush(self) -> None:
        """Send the DISPATCHED notes taken since the last flush (MPI thread, or at an end)."""
        with self._notes_lock:
            if not self._notes:
                return
            notes, lost = self._notes, self._lost
            self._notes, self._lost = [], []
            self.link.send(self.cluster.control, {"kind": DISPATCHED, "frames": notes,
                                                  "lost": lost})

    def _acquired(self, acquisition: Acquisition) -> None:
        self.flush()
        self.dispatcher.end(acquisition.id)

    def _done(self, acquisition: Acquisition) -> None:
        failed = acquisition.state is RunState.ACQ_FAILED
        if self.report is not None:
            self.report()
        last = self.numbering.last if self.numbering is not None else None
        self.link.send(self.cluster.control, {"kind": ACQ_DONE, "acq": acquisition.id,
                                              "frames": acquisition.frames, "failed": failed,
                                              "last": last})
