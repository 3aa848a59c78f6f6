"""The control rank's acquisitions over the cluster: started on every acquisition rank, over when
each is done, held until each processing rank drained them, and settled when a rank went silent.

- `run` wraps the driver's acquisition loop (its thread): each processing rank holds the
  acquisition's in-flight count until it says the frames left its plugins (DRAINED), so Acquire's
  put-completion with WaitForPlugins covers every rank; the other acquisition ranks get START
  (with, for shared whole frames, the uniqueId base and image position: `numbering`) and the
  acquisition is over when each said ACQ_DONE, or was given up on (`give_up`, from `watch`).
- A rank given up on owes frames: as the others go on (up to the highest uniqueId they made,
  `settle_gone`, every second) and once they are done, each becomes a missing frame of
  the acquisition with its cause ("acquisition rank 2 stopped answering"), sent as a
  placeholder to a processing rank so every sink records its row (the rank files, hence the
  master; a module's placeholder carries the module's attributes and goes to that module's
  processing ranks), and the processing ranks hear the rank's end (GONE: a frame it sends for that
  acquisition later is dropped there, counted late here).
- Stopped (Continuous, or a stop), each rank sharing whole frames ends at its own frame: a
  uniqueId below the highest made that its rank never made becomes a missing frame too
  ("acquisition stopped before acquisition rank N made it"), as one process counts it.
- START says whether a put since the last one resets the image (`_reset`): a rank whose share
  of an acquisition was no frame still holds an older Reset, which is not a new one.
- The driver's facade (`driver_values`): for shared whole frames ArrayCounter is the highest
  uniqueId made and NumImagesCounter_RBV, ArrayRate_RBV the sums over the acquisition ranks;
  otherwise the first acquisition rank's. A rank that went silent puts DetectorState_RBV in
  Error, its StatusMessage_RBV naming the rank, until the next acquisition.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..ndarray import Acquisition, MissingCause, NDArray
from ..state import DetectorState
from .common import DRIVER_REPORTED, GONE, START
from .numbering import ClusterNumbering, Owed, owed, wanted
from .wire import frame_header

if TYPE_CHECKING:
    from .control import ControlNode

log = logging.getLogger("ndflow.cluster")

#: how often, at most, the frames a silent acquisition rank owes are settled while the others
#: go on making theirs
SETTLE_EVERY_S = 1.0


class Runs:
    def __init__(self, node: "ControlNode") -> None:
        self.node = node
        self.lock = node.lock
        self.acqs: dict[int, tuple[Acquisition, set[int]]] = {}  # id -> (acq, ranks to drain)
        self.known: dict[int, Acquisition] = {}  # recent acquisitions by id
        self._acquired: dict[int, set[int]] = {}  # id -> remote acquisition ranks done
        self._acquired_event = threading.Event()
        self._gone: dict[int, dict[int, str]] = {}  # id -> {acquisition rank given up on: why}
        self._highest: dict[int, int] = {}  # id -> the highest uniqueId a rank said it made
        #: silent acquisition rank -> the highest uniqueId up to which its owed frames were
        #: made missing in the current acquisition (`settle_gone`)
        self._settled: dict[int, int] = {}
        self._next_settle = 0.0
        self.numbering = ClusterNumbering()
        self.current: Acquisition | None = None
        self.base = 0  # ArrayCounter when the current acquisition started
        self.fault = ""  # a silent acquisition rank, said until the next acquisition
        self._by_rank: dict[int, dict[str, Any]] = {}  # acquisition rank -> its driver values

    # --- the driver thread -----------------------------------------------------------------------
    def run(self, acquisition: Acquisition, own_run: Any) -> None:
        """The driver's acquisition loop, cluster-wide."""
        node, driver = self.node, self.node.driver
        shared = node.cluster.shared
        with self.lock:
            self.acqs[acquisition.id] = (acquisition, set(node.workers))
            self.known[acquisition.id] = acquisition
            while len(self.known) > 64:
                self.known.pop(next(iter(self.known)))
            self._acquired[acquisition.id] = set()
            self.current, self.base = acquisition, int(driver.values["ArrayCounter"])
            now = time.monotonic()
            ranks = len(node.cluster.acquisition)
            for rank, stream in node.streams.items():  # uniqueIds may be used again
                if shared:  # (ArrayCounter set back)
                    stream.seen.reset(self.base + 1 + node.cluster.acquisition.index(rank),
                                      ranks)
                else:
                    stream.seen.reset(self.base + 1, 1)
                stream.given_up.clear()
                stream.last_frame = now
            self._settled.clear()
            fault, self.fault = self.fault, ""
        if fault and node.acquisition is None:  # the first acquisition rank's state again
            first = self._by_rank.get(node.remote[0], {}) if node.remote else {}
            driver.set("DetectorState_RBV", int(first.get("DetectorState_RBV",
                                                          int(DetectorState.Idle))))
            driver.set("StatusMessage_RBV", str(first.get("StatusMessage_RBV", "")))
        for _ in node.workers:
            acquisition.in_flight.enter()
        start = {"kind": START, "acq": acquisition.id, "sent": time.time()}
        if shared:
            start.update(base=self.base, seq=self.numbering.seq, reset=self._reset())
        for rank in node.remote:
            node.link.send(rank, start)
        if driver._stop_event.is_set() and node.remote:
            # stopped before START went out: the ranks ignored that stop (nothing ran yet), so
            # they get it again, after START (one link, in order)
            node.mirror(driver, "Acquire", 0, ranks=node.remote)
        try:
            if node.acquisition is not None:
                node.acquisition.begin(acquisition)
                own_run(acquisition)
        except BaseException:  # the control rank's own run failed: the others stop too
            if node.remote:
                node.mirror(driver, "Acquire", 0, ranks=node.remote)
            driver._stop_event.set()
            self._wait_remote(acquisition)
            self._settle(acquisition)
            raise
        self._wait_remote(acquisition)
        self._settle(acquisition)

    def _reset(self) -> int:
        """1 when a put since the last START resets the image (the sim's Reset): the
        acquisition's first frame recomputes it, whichever rank makes it. The control rank's
        driver makes no frame here, so its Reset is taken back as one process's first frame
        would (a rank whose share was no frame still holds an older Reset: not a new one)."""
        driver = self.node.driver
        if not driver.values.get("Reset"):
            return 0
        driver.set("Reset", 0)
        return 1

    def _wait_remote(self, acquisition: Acquisition) -> None:
        """Until every other acquisition rank is done with `acquisition` (or given up on);
        after a stop, at most a window more (a rank that does not answer is said)."""
        stop = self.node.driver._stop_event
        window = self.node.cluster.window_s
        deadline: float | None = None
        while True:
            with self.lock:
                done = self._acquired.get(acquisition.id, set())
                waiting = sorted(set(self.node.remote) - done)
                if not waiting:
                    self._acquired.pop(acquisition.id, None)
                    return
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + window
            if deadline is not None and time.monotonic() > deadline:
                log.error("acquisition %d: acquisition rank%s %s did not end within %g s of "
                          "the stop", acquisition.id, "s" * (len(waiting) > 1),
                          " ".join(map(str, waiting)), window)
                with self.lock:
                    self._acquired.pop(acquisition.id, None)
                return
            self._acquired_event.wait(0.05)
            self._acquired_event.clear()

    def _settle(self, acquisition: Acquisition) -> None:
        """The acquisition is over: the frames its silent ranks owe become missing frames,
        and the image position moves on by the frames the cluster made."""
        node = self.node
        with self.lock:
            gone = sorted(self._gone.pop(acquisition.id, {}).items())
            highest = self._highest.pop(acquisition.id, self.base)
            made = {s.seen.highest for s in node.streams.values()} - {None}
        total = wanted(acquisition.settings)
        if total is None or node.driver._stop_event.is_set():  # up to the last frame made
            upto = max(made | {highest})
        else:  # all of them, as one process would have made them
            upto = self.base + total
        for rank, why in gone:
            self._missing(acquisition, rank, self._unsettled(rank, upto), why,
                          MissingCause.TIMEOUT)
        if node.cluster.shared and (total is None or node.driver._stop_event.is_set()):
            # each rank stopped at its own frame: the uniqueIds below the highest made that
            # its rank never made are missing frames too (as one process, every one counts)
            gone_ranks = {r for r, _ in gone}
            for rank in node.cluster.acquisition:
                if rank not in gone_ranks:
                    self._missing(acquisition, rank, self._owed(rank, upto),
                                  f"acquisition stopped before acquisition rank {rank} "
                                  "made it", MissingCause.DROPPED, end=False)
        if gone and node.cluster.shared:  # as one process, the counter counts them
            driver = node.driver
            driver.set("ArrayCounter", max(int(driver.values["ArrayCounter"]), upto))
        if node.cluster.shared:
            self.numbering.end(self.base, max(highest, upto if gone else highest))

    def _owed(self, rank: int, upto: int) -> Owed:
        """Acquisition rank `rank`'s uniqueIds of the current acquisition up to `upto` not
        seen sent or received."""
        with self.lock:
            return self._owed_locked(rank, upto)

    def _owed_locked(self, rank: int, upto: int) -> Owed:
        cluster = self.node.cluster
        ranks, index = (len(cluster.acquisition), cluster.acquisition.index(rank)) \
            if cluster.shared else (1, 0)
        return owed(self.base, ranks, index, upto, self.node.streams[rank].seen)

    def _unsettled(self, rank: int, upto: int) -> Owed:
        """What silent rank `rank` owes up to `upto` that `settle_gone` did not make missing
        yet; from now on settled."""
        with self.lock:
            owes = self._owed_locked(rank, upto)
            after = self._settled.get(rank, 0)
            span = owes.span
            if span and after >= span.start:
                span = span[(after - span.start) // span.step + 1:]
            self._settled[rank] = max(after, upto)
            return Owed(span, {u for u in owes.seen if u in span})

    def settle_gone(self, now: float) -> None:
        """(MPI thread) While the other acquisition ranks go on, the frames a silent one owes
        up to the highest uniqueId they made become missing now (at most every
        SETTLE_EVERY_S), not when the acquisition ends: in a long acquisition the in-order
        prefix (FramesInOrder_RBV, the consumers in order) moves on past them."""
        if now < self._next_settle:
            return
        self._next_settle = now + SETTLE_EVERY_S
        with self.lock:
            current = self.current
            gone = dict(self._gone.get(current.id, {})) if current is not None else {}
            made = [s.seen.highest for r, s in self.node.streams.items() if r not in gone]
        upto = max((h for h in made if h is not None), default=None)
        if not gone or upto is None:
            return
        for rank, why in sorted(gone.items()):
            self._missing(current, rank, self._unsettled(rank, upto), why,
                          MissingCause.TIMEOUT, end=False, level=logging.DEBUG)

    def _missing(self, acquisition: Acquisition, rank: int, uids: Owed, message: str,
                 cause: MissingCause, end: bool = True, level: int | None = None) -> None:
        """Frames `uids` of acquisition rank `rank` become missing (`cause`, `message`), each
        sent as a placeholder to a processing rank that answers so its sinks record the row;
        `end`: the rank stopped answering, the processing ranks hear that its part of the
        acquisition is over (GONE).

        Whole frames: to the rank's processing ranks that answer, else to any that does
        (acquisition-with-processing: the silent rank is its own only target). A module's
        placeholder carries the module's attributes (its file's rows are tagged with them)
        and goes only to that module's processing ranks that answer; with none (the module's
        rank processes it itself) or assembling ranks, the master gives the module's missing
        row instead."""
        node, cluster = self.node, self.node.cluster
        if not len(uids) and not end:
            return
        module = cluster.module_of(rank)
        module_attributes = node.driver.module_attributes(module) if module is not None else {}
        with self.lock:
            stream = node.streams[rank]
            stream.given_up.add(uids)
            count = len(uids)
            node.given_up += count
            targets = cluster.targets(rank, node.size)
            silent = node.watch.silent
            answering = [t for t in targets if t not in silent]
            if not cluster.partial:
                answering = answering or [w for w in node.workers if w not in silent] or targets
            elif not module_attributes or cluster.assemble:
                # assembling ranks need each frame's modules on one rank, which a placeholder
                # sent here need not reach: their flush at the acquisition's end makes those
                # frames missing instead
                answering = []
        if count:
            first, last = uids.first_last()
            log.log(level or (logging.ERROR if end else logging.WARNING),
                    "acquisition %d: %d frame%s of acquisition rank %d missing (%d..%d): %s",
                    acquisition.id, count, "s" * (count > 1), rank, first, last, message)
        for n, uid in enumerate(uids):
            acquisition.note_lost(uid, failed=False)
            if answering:
                frame = NDArray.missing(cause, message)
                frame.attributes.update(module_attributes)
                frame.stamp(uid)
                frame.acquisition = acquisition
                header = frame_header(frame, -1)
                header.update(feeder=rank, gone=True)
                node.link.send(answering[n % len(answering)], header)
        for target in sorted(set(targets)) if end else ():
            node.link.send(target, {"kind": GONE, "acq": acquisition.id, "feeder": rank})
        node.count_missing()

    # --- the MPI thread --------------------------------------------------------------------------
    def on_acq_done(self, source: int, header: dict[str, Any]) -> None:
        with self.lock:
            aid = header["acq"]
            acquisition = self.known.get(aid)
            if aid in self._acquired and source not in self._gone.get(aid, {}) and \
                    source not in self._acquired[aid]:
                self._acquired[aid].add(source)
                if header.get("last") is not None:
                    self._highest[aid] = max(self._highest.get(aid, 0), header["last"])
                if acquisition is not None and self.node.cluster.shared:  # each its share
                    acquisition.frames += header["frames"]
            if acquisition is not None and not self.node.cluster.shared:  # each every frame
                acquisition.frames = max(acquisition.frames, header["frames"])
        self._acquired_event.set()

    def on_drained(self, source: int, aid: int) -> None:
        with self.lock:
            acquisition, ranks = self.acqs.get(aid, (None, set()))
            if acquisition is not None and source in ranks:
                self.release(source, aid)

    def release(self, rank: int, aid: int | None = None) -> None:
        """Processing rank `rank` no longer holds acquisition `aid` (every one: None), drained
        or silent (lock held)."""
        for key, (acquisition, ranks) in list(self.acqs.items()):
            if (aid is None or key == aid) and rank in ranks:
                ranks.discard(rank)
                acquisition.in_flight.leave()
                if not ranks:
                    self.acqs.pop(key, None)

    def holding(self) -> set[int]:
        """Processing ranks an acquisition still waits to drain (lock held)."""
        return {r for _, ranks in self.acqs.values() for r in ranks}

    def owing(self) -> set[int]:
        """Acquisition ranks the current acquisition waits for (lock held)."""
        current = self.current
        if current is None or current.id not in self._acquired:
            return set()
        return set(self.node.remote) - self._acquired[current.id] - \
            set(self._gone.get(current.id, {}))

    def frame_time(self) -> float:
        """How long one acquisition rank takes per frame of the current acquisition at least:
        its exposure, or its share of the period."""
        current = self.current
        if current is None:
            return 0.0
        ranks = len(self.node.cluster.acquisition) if self.node.cluster.shared else 1
        return max(float(current.settings.get("AcquireTime", 0.0)),
                   float(current.settings.get("AcquirePeriod", 0.0)) * ranks)

    def give_up(self, rank: int, why: str) -> None:
        """Acquisition rank `rank` stopped answering, or making frames (lock held; `why` is
        the cause its missing frames carry): the acquisition no longer
        waits for it, and it is told to stop (it acts on it if it ever answers again). Without
        an end (Continuous) the whole acquisition stops: the frames the rank owes are the ones
        up to the last the others made."""
        current = self.current
        if current is None or current.id not in self._acquired:
            return
        self._gone.setdefault(current.id, {})[rank] = why
        gone = self.node.streams[rank].gone_acqs
        gone.add(current.id)
        while len(gone) > 16:
            gone.discard(min(gone))
        self._acquired[current.id].add(rank)
        self.fault = why
        driver = self.node.driver
        self.node.mirror(driver, "Acquire", 0, ranks=[rank])
        if wanted(current.settings) is None:
            self.node.mirror(driver, "Acquire", 0, ranks=[r for r in self.node.remote
                                                          if r != rank])
            driver._stop_event.set()
        self._acquired_event.set()

    def driver_values(self, rank: int, values: dict[str, Any]) -> dict[str, Any]:
        """The facade's driver values after acquisition rank `rank` reported `values`."""
        node = self.node
        mine = self._by_rank.setdefault(rank, {})
        mine.update((k, v) for k, v in values.items() if k in DRIVER_REPORTED)
        first = node.remote[0] if node.remote else None
        # only what this report says: a value a client put here since is not undone
        out = {k: v for k, v in values.items() if k in DRIVER_REPORTED} if rank == first else {}
        if node.cluster.shared:
            ranks = [self._by_rank.get(r, {}) for r in node.remote]
            counter = values.get("ArrayCounter")
            if counter is not None:
                out["ArrayCounter"] = max(int(counter), int(node.driver.values["ArrayCounter"]))
            elif "ArrayCounter" in out:
                del out["ArrayCounter"]
            for name in ("NumImagesCounter_RBV", "ArrayRate_RBV"):
                out[name] = sum(v.get(name, 0) for v in ranks)
        if self.fault:
            out["DetectorState_RBV"] = int(DetectorState.Error)
            out["StatusMessage_RBV"] = self.fault
        return out
