"""The control rank's watch over the other ranks (ndflow.cluster.watch), in-process with a
stand-in for the control node: which ranks are declared silent, why, and when they leave the
list. Times are given, not slept."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from ndflow.adcore import DETECTOR_STATES
from ndflow.cluster.control import Stream
from ndflow.cluster.dispatch import LookupTable, Reorder
from ndflow.cluster.views import ClusterStatus
from ndflow.cluster.watch import Watch
from ndflow.drivers.fits import FITSDriver
from ndflow.drivers.sim import SimDetector
from ndflow.graph import PortGraph

WINDOW = 1.0
FRAME = 0.1  # the time one acquisition rank takes per frame


class Runs:
    """The acquisitions' side: acquisition ranks 1 and 2 owe the running acquisition's frames."""

    def __init__(self) -> None:
        self.owes = {1, 2}
        self.given_up: dict[int, str] = {}
        self.released: list[int] = []
        self.holds: set[int] = set()  # processing ranks an acquisition waits to drain

    def holding(self) -> set[int]:
        return self.holds - set(self.released)

    def owing(self) -> set[int]:
        return self.owes - set(self.given_up)

    def frame_time(self) -> float:
        return FRAME

    def give_up(self, rank: int, why: str) -> None:
        self.given_up[rank] = why

    def release(self, rank: int) -> None:
        self.released.append(rank)


def node(now: float, workers: tuple[int, ...] = (3,), driver: Any = None) -> SimpleNamespace:
    """Acquisition ranks 1 and 2 sharing whole frames; `workers` the processing ranks."""
    streams = {a: Stream(LookupTable(), Reorder(WINDOW), last_frame=now) for a in (1, 2)}
    return SimpleNamespace(lock=threading.Lock(),
                           cluster=SimpleNamespace(window_s=WINDOW, shared=True, partial=False),
                           workers=list(workers), remote=[1, 2],
                           sent={w: 0 for w in workers}, acked={w: 0 for w in workers},
                           runs=Runs(), streams=streams, status=ClusterStatus(),
                           driver=driver or SimDetector("SIM1", "cam1:", PortGraph()))


def silent(n: SimpleNamespace) -> str:
    return n.status.values["SilentRanks_RBV"]


def test_a_quiet_acquisition_rank_is_given_up_on_and_leaves_the_list_when_heard_again():
    n = node(0.0)
    watch = Watch(n)
    watch.last_heard = {1: 0.0, 2: 0.0, 3: 0.0}
    watch.check(0.9)  # within the window: nothing
    assert silent(n) == "" and not n.runs.given_up
    watch.last_heard.update({1: 1.4, 3: 1.4})  # rank 2 says nothing any more
    n.streams[1].last_frame = 1.4
    watch.check(1.5)
    assert silent(n) == "2"
    assert n.runs.given_up == {2: "acquisition rank 2 stopped answering"}
    assert n.driver.values["DetectorState_RBV"] == DETECTOR_STATES.index("Error")
    assert n.driver.values["StatusMessage_RBV"] == "acquisition rank 2 stopped answering"
    assert n.status.values["RanksAnswering_RBV"] == 1  # processing rank 3 still answers
    n.runs.owes = set()  # rank 1 ended the acquisition, rank 2 was given up on
    watch.last_heard.update({1: 5.0, 3: 5.0})
    watch.check(5.1)
    assert silent(n) == "2"  # still quiet
    watch.last_heard[2] = 5.0  # resumed
    watch.check(5.1)
    assert silent(n) == ""


def test_an_acquisition_rank_that_answers_but_makes_no_frame_is_given_up_on_until_it_does():
    """Overdue: no frame said sent or received for twice the window plus a frame's time."""
    n = node(0.0)
    watch = Watch(n)
    watch.last_heard = {1: 2.0, 2: 2.0, 3: 2.0}
    n.streams[2].last_frame = 2.0
    watch.check(2.0)  # rank 1's last frame 2.0 s ago: not yet overdue (limit 2.1 s)
    assert silent(n) == ""
    watch.last_heard = {1: 3.0, 2: 3.0, 3: 3.0}
    n.streams[2].last_frame = 3.0
    watch.check(3.0)
    assert silent(n) == "1"
    assert n.runs.given_up == {1: "acquisition rank 1 made no frame for 3 s"}
    watch.last_heard = {1: 4.0, 2: 4.0, 3: 4.0}
    watch.check(4.0)  # it answers, but still makes nothing: listed
    assert silent(n) == "1"
    n.streams[1].last_frame = 4.5  # a frame of it again
    watch.check(4.6)
    assert silent(n) == ""


def test_a_quiet_processing_rank_with_frames_outstanding_is_given_up_on():
    n = node(0.0)
    n.runs.owes = set()
    watch = Watch(n)
    watch.last_heard = {1: 0.0, 2: 0.0, 3: 0.0}
    watch.check(5.0)  # nothing owed: quiet is not silent
    assert silent(n) == ""
    n.sent[3] = 4
    n.acked[3] = 2
    watch.check(5.0)
    assert silent(n) == "3" and n.runs.released == [3]
    assert n.status.values["RanksAnswering_RBV"] == 0


def test_a_rank_still_quiet_is_given_up_on_in_the_next_acquisition_too():
    """Stopped in acquisition A and still stopped when B starts: B must not wait for it."""
    n = node(0.0)
    watch = Watch(n)
    watch.last_heard = {1: 1.4, 2: 0.0, 3: 1.4}
    watch.check(1.5)
    assert silent(n) == "2" and set(n.runs.given_up) == {2}
    n.runs.given_up = {}  # A settled; B starts, START went to both ranks
    n.streams[1].last_frame = n.streams[2].last_frame = 10.0
    watch.last_heard.update({1: 10.0, 3: 10.0})
    watch.check(10.1)
    assert n.runs.given_up == {2: "acquisition rank 2 stopped answering"}
    assert silent(n) == "2"
    assert n.driver.values["StatusMessage_RBV"] == "acquisition rank 2 stopped answering"


def test_a_quiet_processing_rank_an_acquisition_waits_to_drain_is_released_every_check():
    """Acquisition-with-processing (ranks 1 and 2 both): rank 2 keeps its own frames, so none
    is outstanding at the control rank, but the acquisition waits for its DRAINED; and a later
    acquisition waits for it again."""
    n = node(0.0, workers=(1, 2))
    watch = Watch(n)
    n.runs.holds = {1, 2}
    watch.last_heard = {1: 1.4, 2: 0.0}
    watch.check(1.5)
    assert silent(n) == "2"
    assert n.runs.released == [2]
    assert n.status.values["RanksAnswering_RBV"] == 1
    n.runs.holds = {1, 2}  # the next acquisition
    n.runs.released = []
    watch.last_heard[1] = 3.0
    watch.check(3.1)
    assert n.runs.released == [2]


def test_a_driver_waiting_for_outside_input_is_never_overdue():
    """A FITS driver waits for the next file as long as it takes: answering, it is not given
    up on however long it makes no frame."""
    n = node(0.0, driver=FITSDriver("FITS1", "cam1:", PortGraph()))
    n.cluster.shared = False
    watch = Watch(n)
    watch.last_heard = {1: 100.0, 2: 100.0, 3: 100.0}
    watch.check(100.0)
    assert silent(n) == "" and not n.runs.given_up
