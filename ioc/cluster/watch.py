"""Which ranks stopped answering: the control rank's watch over the others (its MPI thread).

Every other rank sends something at least every `report_interval_s` (its changed values, or an
empty report as a heartbeat). A rank that owes something and has said nothing for `window_s`
is silent, listed on `Cluster:SilentRanks_RBV` until it is heard from again. What it owes is
given up on at every check while it stays quiet (an acquisition started since owes again):
- a processing rank with frames outstanding, or an acquisition waiting for its DRAINED: the
  frames it was sent time out at once (missing, "rank N stopped answering") and the
  acquisitions no longer wait for its DRAINED;
- an acquisition rank in a running acquisition it has not ended: the acquisition no longer
  waits for it, and the frames it owes become missing as the others make theirs (`runs`);
  DetectorState_RBV goes to Error and StatusMessage_RBV names the rank. A rank that answers but
  whose frames are overdue (none said sent or received for twice the window plus the time a
  frame takes it: its driver hangs) is given up on alike, and stays listed until a frame of it
  comes again; only for a driver with a bounded frame time (`bounded_frame_time`, the sim)
  making a share or a module of every frame: a driver waiting for outside input may wait.

MPI gives no more than that: a rank stopped (SIGSTOP, a hung host) makes MPICH notice nothing
and its messages wait, so it is found by its silence; a rank killed takes the job down (hydra
ends every rank), so there is nothing to recover.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..state import DetectorState

if TYPE_CHECKING:
    from .control import ControlNode

log = logging.getLogger("ndflow.cluster")


class Watch:
    def __init__(self, node: "ControlNode") -> None:
        self.node = node
        now = time.monotonic()
        self.last_heard = {r: now for r in sorted(set(node.workers) | set(node.remote))}
        self.silent: set[int] = set()
        self.stalled: dict[int, float] = {}  # answering acquisition rank -> when given up on

    def heard(self, rank: int) -> None:
        self.last_heard[rank] = time.monotonic()

    def _bounded(self) -> bool:
        """Whether "no frame for long" means a hang: only for a driver whose frame takes a
        bounded time (the sim) making a share or a module of every frame; a driver waiting on
        outside input (a FITS file to come) may make none for any time."""
        cluster = self.node.cluster
        return bool(getattr(self.node.driver, "bounded_frame_time", False)) and \
            bool(cluster.shared or cluster.partial)

    def check(self, now: float) -> None:
        """Declare the ranks silent that owe something and said nothing for a window; a rank
        heard from again within the window leaves the list."""
        node = self.node
        window = node.cluster.window_s
        with node.lock:
            quiet = {r for r, t in self.last_heard.items() if now - t > window}
            holding = node.runs.holding()  # processing ranks an acquisition waits to drain
            processing = {r for r in node.workers
                          if node.sent[r] > node.acked[r] or r in holding} & quiet
            owing = node.runs.owing()  # skips the ranks given up on in this acquisition
            overdue: set[int] = set()
            if self._bounded():
                limit = 2 * window + node.runs.frame_time()
                overdue = {r for r in owing if now - node.streams[r].last_frame > limit}
            # every rank still quiet is given up on again in each acquisition: one stopped
            # in the previous acquisition owes this one's frames too
            acquiring = (owing & quiet) | overdue
            newly = (processing | acquiring) - self.silent
            why = {r: f"acquisition rank {r} stopped answering" if r in quiet else
                   f"acquisition rank {r} made no frame for "
                   f"{now - node.streams[r].last_frame:.0f} s" for r in acquiring}
            for rank, cause in why.items():
                node.runs.give_up(rank, cause)
                if rank not in quiet:
                    self.stalled[rank] = now
            self.stalled = {r: t for r, t in self.stalled.items()
                            if node.streams[r].last_frame <= t}  # no frame of it since
            self.silent = (self.silent | newly) - {
                r for r in self.silent if now - self.last_heard[r] < window and
                r not in self.stalled}
            for rank in self.silent & set(node.workers) & quiet:
                # at every check: an acquisition started since it went quiet must not wait
                # for its DRAINED either, nor for the frames it was sent
                for stream in node.streams.values():
                    stream.reorder.give_up(rank, f"rank {rank} stopped answering")
                # its frames are missing now; a DRAINED it sends later is ignored
                node.runs.release(rank)
            answering = len(node.workers) - len(self.silent & set(node.workers))
            text = " ".join(map(str, sorted(self.silent)))
        for rank in sorted(newly & processing):
            log.error("processing rank %d stopped answering (last heard %.1f s ago): its "
                      "outstanding frames become missing", rank, now - self.last_heard[rank])
        for rank, cause in sorted(why.items()):
            log.error("%s: the acquisition goes on without it, the frames it owes become "
                      "missing", cause)
            node.driver.set("DetectorState_RBV", int(DetectorState.Error))
            node.driver.message(cause, logging.ERROR, log=False)
        if node.status.values["SilentRanks_RBV"] != text:
            node.status.set_many({"SilentRanks_RBV": text, "RanksAnswering_RBV": answering})
