"""A processing rank's acknowledgements (ndflow.cluster.acks.AckBatcher): when each feeder hears
of its frames and of the rank's backlog. A fake clock, no sleeps, no MPI."""

from __future__ import annotations

from ndflow.cluster.acks import AckBatcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


def batcher(feeders=(0,)) -> tuple[AckBatcher, Clock]:
    clock = Clock()
    return AckBatcher(feeders, hold_s=0.020, gap_s=0.005, clock=clock), clock


def test_an_arrival_alone_is_held_at_most_20_ms_then_said_with_the_counts():
    acks, clock = batcher()
    acks.add(0, 7)
    acks.add(0, 8)
    assert acks.take(backlog=2) == []  # no credit to give back: wait for one
    clock.advance(19.9)
    assert acks.take(backlog=2) == []
    clock.advance(0.2)
    [(feeder, ack)] = acks.take(backlog=2)
    assert feeder == 0
    assert (ack["uids"], ack["received"], ack["backlog"]) == ([7, 8], 2, 2)
    assert acks.take(backlog=2) == []  # all said


def test_a_frame_leaving_the_pipeline_is_said_with_the_arrivals_in_one_ack():
    acks, clock = batcher()
    acks.add(0, 1)
    assert acks.take(backlog=1) == []
    clock.advance(3)
    acks.add(0, 2)
    assert acks.take(backlog=2) == []
    clock.advance(4)
    [(_, ack)] = acks.take(backlog=1)  # frame 1 done: a credit back, said at once
    assert (ack["uids"], ack["received"], ack["backlog"]) == ([1, 2], 2, 1)


def test_with_a_backlog_credits_go_back_at_most_every_5_ms_and_at_once_when_idle():
    acks, clock = batcher()
    for uid in range(4):
        acks.add(0, uid)
    assert len(acks.take(backlog=3)) == 1  # one of four done
    clock.advance(2)
    assert acks.take(backlog=2) == []  # another done, 2 ms after the last ACK: wait
    clock.advance(2.9)
    assert acks.take(backlog=2) == []
    clock.advance(0.2)
    [(_, ack)] = acks.take(backlog=2)
    assert ack["backlog"] == 2
    clock.advance(1)
    [(_, ack)] = acks.take(backlog=0)  # idle: the feeder must know now, whatever the gap
    assert (ack["uids"], ack["backlog"]) == ([], 0)


def test_a_steady_stream_of_10_ms_frames_costs_one_ack_per_frame():
    """Credit dispatch with 4 credits, a 10 ms algorithm: each frame arrives 2 ms after the
    ACK that freed its credit. Before batching this took 1.7 messages a frame."""
    acks, clock = batcher()
    backlog, sent = 0, 0
    for uid in range(4):  # the credits' worth at the start
        acks.add(0, uid)
        backlog += 1
        sent += len(acks.take(backlog))
    said = []
    for uid in range(4, 104):
        clock.advance(8)
        backlog -= 1  # a frame done
        out = acks.take(backlog)
        clock.advance(2)
        acks.add(0, uid)  # the frame its credit bought
        backlog += 1
        out += acks.take(backlog)
        said += [u for _, ack in out for u in ack["uids"]]
        sent += len(out)
    said += [u for _, ack in acks.flush(backlog) for u in ack["uids"]]
    assert sent <= 104
    assert said == list(range(104))  # each once, in order


def test_flush_says_everything_unsaid_at_once_and_then_nothing_is_left():
    acks, clock = batcher(feeders=(0, 3))
    acks.add(0, 10)
    acks.add(3, 11)
    acks.add(0, 12)
    assert acks.take(backlog=3) == []
    clock.advance(1)  # no credit back, well within the hold: take would say nothing yet
    out = dict(acks.flush(backlog=3))
    assert out[0]["uids"] == [10, 12] and out[0]["received"] == 2
    assert out[3]["uids"] == [11] and out[3]["received"] == 1
    assert out[0]["backlog"] == out[3]["backlog"] == 3
    clock.advance(100)
    assert acks.take(backlog=3) == [] and acks.flush(backlog=3) == []


def test_a_feeder_without_frames_hears_a_changed_backlog_within_the_hold():
    acks, clock = batcher(feeders=(0, 3))
    acks.add(0, 1)
    acks.add(0, 2)
    assert acks.take(backlog=2) == []
    clock.advance(20.1)
    out = dict(acks.take(backlog=2))
    assert out[0]["uids"] == [1, 2] and out[3]["uids"] == []  # feeder 3: the backlog only
    assert out[3]["backlog"] == 2 and out[3]["received"] == 0


def test_take_with_nothing_unsaid_does_not_even_read_the_clock():
    acks, clock = batcher()
    acks.add(0, 1)
    acks.flush(backlog=1)

    def no_clock() -> float:
        raise AssertionError("the fast path read the clock")
    acks.clock = no_clock
    assert acks.take(backlog=1) == []


# --- the processing role: its ACKs all said before it says an acquisition drained -------------

class Driver:
    """What the processing role uses of a driver: its pool and its delivery (here a plugin
    that holds each frame `hold` seconds in its own thread, as a queued plugin does)."""

    def __init__(self, hold: float = 0.0) -> None:
        from ndflow.pool import ArrayPool
        self.pool = ArrayPool()
        self.hold = hold

    def emit(self, frame) -> None:
        import threading
        import time
        acquisition = frame.acquisition
        acquisition.in_flight.enter()

        def done() -> None:
            time.sleep(self.hold)
            acquisition.in_flight.leave()
        threading.Thread(target=done, daemon=True).start()


def test_every_frame_is_acknowledged_before_the_rank_says_its_acquisition_drained():
    """No MPI thread takes ACKs here (nothing calls say_acks): whatever the feeders hear comes
    from the flush the role does before `drained`, and must be every frame, with the final
    backlog (0), before DRAINED, so the control rank's counters and the feeders' credits are
    exact when Acquire completes."""
    import threading

    import numpy as np

    from ndflow.cluster.processing import ProcessingRole
    from ndflow.cluster.wire import frame_header
    from ndflow.ndarray import NDArray

    said: list[tuple] = []
    drained = threading.Event()

    def on_drained(aid: int) -> None:
        said.append(("drained", aid))
        drained.set()
    role = ProcessingRole(Driver(hold=0.01), feeders=[0, 3], rank=1, drained=on_drained,
                          say=lambda feeder, ack: said.append(("ack", feeder, ack)))
    role.start()
    try:
        for uid in range(1, 9):
            frame = NDArray(np.full((4, 4), uid, np.uint16), unique_id=uid)
            header = frame_header(frame, uid // 2)
            header["acq"] = 5
            data = role.buffer_for(header)
            data[...] = frame.data
            role.on_frame(0 if uid % 2 else 3, header, data)
        role.on_end(0, 5)
        role.on_end(3, 5)
        assert drained.wait(5), "the acquisition never drained"
    finally:
        role.stop()
    assert said[-1] == ("drained", 5)
    acks = [entry for entry in said if entry[0] == "ack"]
    assert sorted(u for _, _, ack in acks for u in ack["uids"]) == list(range(1, 9))
    last = {feeder: ack for _, feeder, ack in acks}
    assert last[0]["received"] == last[3]["received"] == 4
    assert last[0]["backlog"] == last[3]["backlog"] == 0
