"""A rank's MPI thread never blocks on a message still coming (ndflow.cluster.inbox, .link).

The bookkeeping (`Inbox`: one pending message per sender, that sender blocked meanwhile, stalls
said, cancelled at shutdown) is tested without MPI; the link itself in-process over real MPI on
MPI.COMM_SELF (this process is rank 0 of 1 and sends to itself): a frame header whose pixels
have not come leaves the thread turning (its idle work, its sends) and the messages sent after
it waiting; the pixels handed on once in; no buffer, pixels larger than announced, and a
shutdown with pixels pending each give a missing frame with its cause."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from typing import Any

import numpy as np
import pytest

from ndflow.cluster.inbox import Inbox, Incoming

# --- the bookkeeping, without MPI ---------------------------------------------------------------


def frame(source: int, uid: int) -> Incoming:
    return Incoming(source, {"kind": "frame", "uid": uid}, np.zeros(4), since=10.0)


def test_a_sender_with_a_pending_message_is_blocked_and_the_others_are_open():
    inbox = Inbox(rank=3)
    assert not inbox and inbox.open(range(4)) == [0, 1, 2, 3]
    inbox.add(frame(1, 7))
    assert inbox.blocked(1) and not inbox.blocked(2)
    assert inbox.open(range(4)) == [0, 2, 3]
    with pytest.raises(RuntimeError, match="second frame from rank 1"):
        inbox.add(frame(1, 8))


def test_poll_hands_back_only_what_is_whole_and_unblocks_its_sender():
    inbox = Inbox(rank=3)
    for source, uid in ((1, 7), (2, 9)):
        inbox.add(frame(source, uid))
    whole = {1: False, 2: True}
    done = inbox.poll(lambda incoming: whole[incoming.source], now=10.1)
    assert [(i.source, i.header["uid"]) for i in done] == [(2, 9)]
    assert done[0].pixels is not None and "missing" not in done[0].header
    assert inbox.blocked(1) and not inbox.blocked(2)
    whole[1] = True
    assert [i.header["uid"] for i in inbox.poll(lambda i: whole[i.source], now=10.2)] == [7]
    assert not inbox and inbox.open(range(3)) == [0, 1, 2]


def test_an_mpi_error_makes_the_frame_missing_with_the_error_and_unblocks_its_sender(caplog):
    inbox = Inbox(rank=3)
    inbox.add(frame(1, 7))
    inbox.add(Incoming(2, None, None, since=10.0))  # its header never came

    def fails(incoming: Incoming) -> bool:
        raise RuntimeError("Message truncated")
    with caplog.at_level(logging.ERROR, logger="ndflow.cluster"):
        done = inbox.poll(fails, now=10.1)
    assert not inbox
    missing = done[0]
    assert missing.pixels is None
    assert missing.header["missing"] == (
        "DROPPED", "rank 3: frame 7 from rank 1 could not be received: RuntimeError: "
        "Message truncated")
    assert done[1].header is None  # nothing to hand on: said lost
    assert "a message from rank 2 is lost" in caplog.text


def test_a_message_pending_past_the_stall_time_is_said_once_and_when_it_comes(caplog):
    inbox = Inbox(rank=2, stall_s=1.0)
    inbox.add(frame(1, 7))
    with caplog.at_level(logging.WARNING, logger="ndflow.cluster"):
        for now in (10.5, 11.0, 11.5, 12.0):
            assert inbox.poll(lambda i: False, now) == []
        said = [r.getMessage() for r in caplog.records]
        assert said == ["rank 2: frame 7 from rank 1 has not come in full in 1.0 s (rank 1 "
                        "stopped?): its later messages wait for it, the other ranks' do not"]
        assert inbox.stalls == 1
        assert len(inbox.poll(lambda i: True, now=13.0)) == 1
    assert caplog.records[-1].getMessage() == "rank 2: frame 7 from rank 1 came in full after 3.0 s"


def test_only_a_receive_just_posted_for_a_message_come_is_polled_without_sleeping():
    """Without CMA a large message moves only while both sides call MPI, so a receive just
    posted for one that came is polled at once; pixels not sent yet (no receive posted), or
    a receive pending long (its sender likely stopped), wait on the thread's sleeps."""
    inbox = Inbox(rank=2)
    assert not inbox.moving(now=10.0)
    waiting = frame(1, 7)  # header in, its pixels not sent yet
    inbox.add(waiting)
    assert not inbox.moving(now=10.1, spin_s=0.25)
    waiting.request, waiting.posted = object(), 10.1  # the probe saw them: receive posted
    assert inbox.moving(now=10.2, spin_s=0.25)
    assert not inbox.moving(now=10.4, spin_s=0.25)
    inbox.add(Incoming(3, None, None, request=object(), since=10.3, posted=10.3))
    assert inbox.moving(now=10.4, spin_s=0.25)  # the younger one


class FakeSend:
    """A frame's send request: done once told."""

    def __init__(self) -> None:
        self.done = False

    def Test(self) -> bool:  # noqa: N802 (mpi4py's name)
        return self.done


def test_without_cma_a_frame_send_is_polled_until_done_or_spin_s_old():
    from ndflow.cluster.inbox import SPIN_S
    from ndflow.cluster.link import Link
    from collections import deque

    link = Link.__new__(Link)  # only its send bookkeeping, no MPI
    old, young = FakeSend(), FakeSend()
    now = time.monotonic()
    link._frame_sends = deque([(old, now - SPIN_S - 0.01), (young, now)])
    assert link._sending(time.monotonic())  # the old one given up on, the young one polled
    assert [s for s, _ in link._frame_sends] == [young]
    assert not link._sending(time.monotonic(), within_s=0.0)  # posted before now: gently
    young.done = True
    assert not link._sending(time.monotonic()) and not link._frame_sends


def test_shutdown_cancels_every_pending_message_and_each_frame_not_come_is_missing():
    inbox = Inbox(rank=2)
    for source, uid in ((0, 5), (1, 6), (3, 7)):
        inbox.add(frame(source, uid))
    came = {0: True, 1: False}

    def cancel(incoming: Incoming) -> bool:
        if incoming.source == 3:
            raise RuntimeError("cannot cancel")
        return came[incoming.source]
    out = inbox.cancel_all(cancel)
    assert not inbox
    assert [(i.header["uid"], i.pixels is not None) for i in out] == [
        (5, True), (6, False), (7, False)]
    assert out[1].header["missing"] == ("DROPPED",
                                        "rank 2 shut down before frame 6 came in full from rank 1")
    assert out[2].header["missing"][0] == "DROPPED"


# --- the link, over real MPI in this process (rank 0 of COMM_SELF) ------------------------------

MPI = pytest.importorskip("mpi4py.MPI")

from ndflow.cluster.link import Link  # noqa: E402  (needs mpi4py)
from ndflow.cluster.wire import FRAME, PUT, TAG  # noqa: E402

SHAPE = (512, 1024)  # 1 MiB of UInt16: above MPICH's eager limit
_left: list[Any] = []


class Rank:
    """A Link on COMM_SELF with what it hands on recorded; the test's own sends (a header
    without its pixels, the pixels later) go straight to MPI from this thread (MPICH gives
    MPI_THREAD_MULTIPLE)."""

    def __init__(self, buffer_for: Any = None) -> None:
        self.comm = MPI.COMM_SELF.Dup()  # a test's unmatched message never reaches another's
        self.got: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0
        self.link = Link(self.comm, lambda s, h, d: self.got.put((s, h, d)),
                         buffer_for or (lambda h: np.empty(tuple(h["shape"]), h["dtype"])),
                         self._on_idle)
        self.requests: list[Any] = []

    def _on_idle(self) -> None:
        self.idle += 1

    def header(self, uid: int, shape: tuple[int, ...] = SHAPE) -> None:
        self.requests.append(self.comm.isend(
            {"kind": FRAME, "uid": uid, "dtype": "<u2", "shape": shape}, 0, TAG))

    def pixels(self, data: np.ndarray) -> None:
        self.requests.append(self.comm.Isend(data, 0, TAG))

    def next(self, timeout: float = 5.0) -> tuple[int, dict, Any]:
        return self.got.get(timeout=timeout)

    def nothing_for(self, seconds: float) -> bool:
        try:
            self.got.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.link.stop(timeout=1.0)
        # a send never matched (a test that failed early) is left with its buffer: MPI may
        # still read it, and waiting for it would hang
        _left.extend(r for r in self.requests if not r.Test())


@pytest.fixture
def rank():
    ranks: list[Rank] = []

    def make(**kw: Any) -> Rank:
        r = Rank(**kw)
        r.link.start()
        ranks.append(r)
        return r
    yield make
    for r in ranks:
        r.close()


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_pixels_not_come_leave_the_thread_turning_and_are_handed_on_once_in(rank):
    """(One rank only here: a message from it after the pixels would be taken for them by the
    posted receive, as MPI's order says; the other senders flowing meanwhile is the system
    test's, tests/test_cluster_stopped_sender.py.)"""
    r = rank()
    r.header(1)
    time.sleep(0.1)
    idle = r.idle
    # the thread still turns: its idle work (ACKs, the heartbeat) goes on
    assert wait_until(lambda: r.idle >= idle + 5, 2.0), "the MPI thread is blocked"
    assert r.link.receiving == 1
    assert r.nothing_for(0.2), "a frame was handed on without its pixels"
    pixels = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    r.pixels(pixels)
    r.link.send(0, {"kind": PUT, "port": "STATS1", "name": "X", "value": 1})
    source, header, data = r.next()
    assert (source, header["uid"]) == (0, 1) and "missing" not in header
    np.testing.assert_array_equal(data, pixels)
    assert r.next()[1]["kind"] == PUT  # then what came after, in order
    assert r.link.receiving == 0


def test_a_frame_without_a_buffer_is_missing_and_its_pixels_are_still_taken_off(rank):
    def no_buffer(header: dict) -> np.ndarray:
        if header["uid"] == 1:
            raise MemoryError("pool full")
        return np.empty(tuple(header["shape"]), header["dtype"])
    r = rank(buffer_for=no_buffer)
    r.header(1)
    time.sleep(0.05)  # the pixels after the header was taken: the throwaway waits for them
    r.pixels(np.ones(SHAPE, np.uint16))
    r.header(2)
    r.pixels(np.full(SHAPE, 2, np.uint16))
    _, header, data = r.next()
    assert header["uid"] == 1 and data is None
    assert header["missing"] == ("NO_MEMORY", "rank 0: no buffer for the frame: MemoryError: "
                                 "pool full")
    _, header, data = r.next()  # the next frame is read right, not from the thrown-away bytes
    assert header["uid"] == 2 and "missing" not in header and (data == 2).all()


def test_pixels_larger_than_announced_make_a_missing_frame_and_the_link_goes_on(rank):
    r = rank()
    r.header(1, shape=(4, 4))
    r.pixels(np.ones(SHAPE, np.uint16))
    _, header, data = r.next()
    assert header["uid"] == 1 and data is None
    cause, message = header["missing"]
    assert cause == "DROPPED" and "frame 1 from rank 0 could not be received" in message
    r.link.send(0, {"kind": PUT, "port": "STATS1", "name": "X", "value": 2})
    assert r.next()[1]["value"] == 2


def test_stopping_with_pixels_pending_does_not_hang_and_the_frame_is_missing(rank, caplog):
    r = rank()
    r.header(1)
    time.sleep(0.1)  # taken, its pixels pending
    started = time.monotonic()
    r.link.stop(timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert not r.link._thread.is_alive()
    _, header, data = r.next()
    assert header["uid"] == 1 and data is None
    assert header["missing"] == ("DROPPED",
                                 "rank 0 shut down before frame 1 came in full from rank 0")


def test_a_long_wait_for_pixels_is_said_in_the_log(rank, caplog):
    with caplog.at_level(logging.WARNING, logger="ndflow.cluster"):
        r = rank()
        r.link._inbox.stall_s = 0.2
        r.header(3)
        assert wait_until(lambda: "has not come in full" in caplog.text, 3.0)
        r.pixels(np.ones(SHAPE, np.uint16))
        assert r.next()[1]["uid"] == 3
        assert wait_until(lambda: "came in full after" in caplog.text, 1.0)
    assert r.link._inbox.stalls == 1


def test_the_thread_sleeps_while_pixels_are_pending(rank):
    """A pending receive that does not progress is no reason to spin: the thread backs off
    to its longest sleep as with nothing to do (about 100-200 turns a second, not 10^4+)."""
    r = rank()
    r.header(1)
    assert wait_until(lambda: r.link.receiving == 1)
    time.sleep(0.6)  # past QUIET_S: the longest sleep
    idle = r.idle
    time.sleep(0.5)
    turns = r.idle - idle
    assert turns < 150, turns
    r.pixels(np.ones(SHAPE, np.uint16))
    assert r.next()[1]["uid"] == 1


def test_a_turn_held_past_held_s_is_said_with_where_and_how_long(rank, caplog):
    """The watch: a handler that holds the MPI thread (as MPI itself can, waiting on a stopped
    rank) is named, and the thread's going on is said with the time it was held."""
    from ndflow.cluster import link as link_module
    release = threading.Event()
    r = rank()
    r.link.on_message = lambda source, header, data: release.wait(5)
    with caplog.at_level(logging.WARNING, logger="ndflow.cluster"):
        r.link.send(0, {"kind": PUT, "port": "STATS1", "name": "X", "value": 1})
        assert wait_until(lambda: "made no progress" in caplog.text, 2 * link_module.HELD_S + 1)
        release.set()
        assert wait_until(lambda: "went on after" in caplog.text, 2.0)
    held, went = [m for m in caplog.messages if "MPI thread" in m]
    assert re.match(r"rank 0: its MPI thread has made no progress for \d+\.\d s, at ", held)
    assert "release.wait(5)` in <lambda>" in held  # the line it is held at
    assert float(went.split("after ")[1].split(" s")[0]) >= link_module.HELD_S


def test_a_quick_turn_is_never_said(rank, caplog):
    with caplog.at_level(logging.WARNING, logger="ndflow.cluster"):
        r = rank()
        for value in range(50):
            r.link.send(0, {"kind": PUT, "port": "STATS1", "name": "X", "value": value})
        for _ in range(50):
            r.next()
        time.sleep(0.6)
    assert "MPI thread" not in caplog.text


def test_threads_are_left_clean():
    assert not [t for t in threading.enumerate() if t.name.startswith("mpi-")]
