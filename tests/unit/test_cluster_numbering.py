"""Several acquisition ranks sharing whole frames (ndflow.cluster.numbering), in-process: the
NumImages split, the uniqueIds, what a silent rank owes, and the sim's frames made over M
"ranks" (M sims in one process, each with its rank's numbering) equal to one sim's, uid for uid.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ndflow.cluster.numbering import (CONTINUOUS, MULTIPLE, SINGLE, ClusterNumbering,
                                      START_LATE_MAX_S, START_LEAD_S, GivenUp, RankNumbering, Seen,
                                      first_frame_in, owed, rank_settings, share, stagger, uid)
from ndflow.driver import FrameContext
from ndflow.drivers.sim import LINEAR_RAMP, SINE, SimDetector, SimOptions
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition


@pytest.mark.parametrize("total", [0, 1, 2, 5, 7, 12])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_each_frame_is_made_by_exactly_one_rank_and_the_shares_add_up(total, ranks):
    made = []
    for i in range(ranks):
        n = share(total, ranks, i)
        assert n in (total // ranks, -(-total // ranks))  # floor or ceil
        made += [uid(10, ranks, i, k) for k in range(n)]
    assert sorted(made) == list(range(11, 11 + total))


def test_each_rank_runs_its_share_at_m_times_the_period():
    settings = {"ImageMode": MULTIPLE, "NumImages": 5, "AcquirePeriod": 0.1}
    assert rank_settings(settings, 2, 0) == {"NumImages": 3, "AcquirePeriod": 0.2}
    assert rank_settings(settings, 2, 1) == {"NumImages": 2, "AcquirePeriod": 0.2}
    assert rank_settings({**settings, "NumImages": 1}, 2, 1) is None  # no frame: not run
    single = {**settings, "ImageMode": SINGLE}
    assert rank_settings(single, 3, 0) == {"AcquirePeriod": pytest.approx(0.3)}
    assert rank_settings(single, 3, 1) is None and rank_settings(single, 3, 2) is None
    assert rank_settings({**settings, "ImageMode": CONTINUOUS}, 2, 1) == {"AcquirePeriod": 0.2}


def test_the_ranks_start_staggered_so_their_frames_come_evenly_spaced():
    """Rank i starts i cluster frame times after rank 0: with M ranks each taking T per frame,
    frame j (rank j % M, its (j // M)-th) starts at j * T / M, as from one process."""
    for settings in ({"AcquireTime": 0.01, "AcquirePeriod": 0.1},
                     {"AcquireTime": 0.05, "AcquirePeriod": 0.0},
                     {"AcquireTime": 0.3, "AcquirePeriod": 0.1}):
        ranks = 3
        rank_time = max(settings["AcquireTime"], ranks * settings["AcquirePeriod"])
        starts = sorted(stagger(settings, ranks, j % ranks) + (j // ranks) * rank_time
                        for j in range(9))
        assert np.allclose(np.diff(starts), rank_time / ranks), settings
        assert stagger(settings, ranks, 0) == 0.0
    assert stagger({"AcquireTime": 0.0, "AcquirePeriod": 0.0}, 2, 1) == 0.0  # free-running


def test_the_first_frame_is_timed_from_when_start_was_sent_not_from_its_arrival():
    """Two ranks that got START 0.01 and 0.08 s after it was sent (a loaded host) still make
    their first frames a stagger apart, on the timeline that starts START_LEAD_S after it was
    sent; a START later than START_LATE_MAX_S (or with no time, or from a clock ahead of ours)
    is timed from its arrival, as before."""
    rank_stagger = 0.05
    arrivals = {0: 0.01, 1: 0.08}
    starts = {i: late + first_frame_in(i * rank_stagger, late) for i, late in arrivals.items()}
    assert starts == {0: pytest.approx(START_LEAD_S), 1: pytest.approx(START_LEAD_S + 0.05)}
    assert first_frame_in(0.05, START_LEAD_S + 0.08) == pytest.approx(-0.03)  # due: at once
    assert first_frame_in(0.05, None) == 0.05
    assert first_frame_in(0.05, START_LATE_MAX_S + 0.1) == 0.05
    assert first_frame_in(0.05, -0.2) == 0.05


def test_a_rank_started_late_stays_between_the_other_ranks_frames():
    """The driver's grid starts at Acquisition.first_due (ndflow.driver): a rank of two whose
    first frame came 0.02 s late (within a quarter period) makes its next frames on the shared
    timeline again, between the other rank's; without first_due its grid would stay 0.02 late."""
    from ndflow.driver import next_frame_due
    period, first_due, late = 0.1, 0.05, 0.02  # rank 1 of 2, 0.05 s stagger, 2 x 0.05 s each
    started, due = first_due + late, first_due
    for k in range(1, 6):
        due = next_frame_due(due, period, started)
        started = due  # no overshoot
        assert started == pytest.approx(first_due + k * period)


def test_a_silent_rank_owes_its_frames_not_seen():
    assert list(owed(100, 2, 1, 110, seen=[102, 104])) == [106, 108, 110]
    assert list(owed(100, 3, 0, 107, seen=[])) == [101, 104, 107]
    assert list(owed(100, 1, 0, 103, seen=[101])) == [102, 103]  # one rank (modules): all
    assert list(owed(100, 2, 0, 100, seen=[])) == []


def test_a_rank_silent_early_in_a_long_acquisition_owes_a_range_not_each_frame():
    seen = Seen()
    seen.reset(first=2, step=2)
    for u in (2, 4, 8):
        seen.add(u)
    owes = owed(0, 2, 1, 10_000_000, seen)
    assert len(owes) == 4_999_997 and owes.first_last() == (6, 10_000_000)
    assert isinstance(owes.span, range) and owes.seen == {8}  # nothing held per frame
    given_up = GivenUp()
    given_up.add(owes)
    assert 6 in given_up and 9_999_998 in given_up
    assert 8 not in given_up and 4 not in given_up and 7 not in given_up


def test_what_a_rank_was_seen_to_make_is_held_in_a_few_entries():
    """Sent or received in any order; a long acquisition keeps only the frames after a gap."""
    seen = Seen()
    seen.reset(first=102, step=2)  # rank 1 of 2 after uniqueId 100
    for u in (104, 102, 108):
        seen.add(u)
    assert 102 in seen and 104 in seen and 106 not in seen and 108 in seen
    assert list(owed(100, 2, 1, 112, seen)) == [106, 110, 112]
    assert len(owed(100, 2, 1, 112, seen)) == 3 and 108 not in owed(100, 2, 1, 112, seen)
    assert seen.highest == 108
    for u in range(106, 200_000, 2):
        seen.add(u)
    assert not seen.later and seen.next == 200_000  # nothing held per frame
    seen.reset(first=1, step=2)  # the next acquisition, ArrayCounter set back
    assert 102 not in seen and seen.highest is None


def sim(data_type: str) -> SimDetector:
    return SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(
        max_size_x=16, max_size_y=8, data_type=data_type))


def acquire(det: SimDetector, numbering: RankNumbering | None, base: int, seq: int,
            total: int, values: dict, reset: bool = False) -> dict[int, np.ndarray]:
    """One acquisition of `total` frames over the cluster, this sim's share: {uid: pixels};
    `reset`: START says a put since the last one resets the image (the control rank's)."""
    params = {**det.values, "AcquireTime": 0.001, "ImageMode": MULTIPLE, "NumImages": total,
              **values}
    count = total
    if numbering is not None:
        numbering.start(base, seq, reset)
        det.frame_steps = numbering.steps
        count = share(total, numbering.ranks, numbering.index)
    det.prepare(params)
    acquisition = Acquisition(1, params)
    out = {}
    for k in range(count):
        frame = det.produce_frame(FrameContext(acquisition, k, threading.Event()))
        number = numbering.next_uid() if numbering is not None else base + 1 + k
        out[number] = frame.data.copy()
    return out


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("data_type,mode,gain,color", [("UInt8", LINEAR_RAMP, 40.0, 0),
                                                       ("Int8", LINEAR_RAMP, -30.0, 0),
                                                       ("UInt8", LINEAR_RAMP, 40.0, 1),
                                                       ("Float32", LINEAR_RAMP, 0.7, 0),
                                                       ("Int16", SINE, 100.0, 0)])
def test_frames_made_over_ranks_equal_one_process_frames(ranks, data_type, mode, gain, color):
    """Three acquisitions (5, then 1, then 4 frames after a Reset and a counter set back):
    the ramp/sine moves on across acquisitions and resets at the first frame after the
    reset, whichever rank makes it; UInt8 wraps as one process's adds do, Float32 rounds as
    they do."""
    values = {"SimMode": mode, "Gain": gain, "ColorMode": color}  # 1: RGB1
    one = sim(data_type)
    many = [sim(data_type) for _ in range(ranks)]
    numberings = [RankNumbering(ranks, i) for i in range(ranks)]
    cluster = ClusterNumbering()
    for base, total, reset in ((0, 5, True), (5, 1, False), (2, 4, True)):
        if reset:
            for det in (one, *many):
                det.values["Reset"] = 1
        expected = acquire(one, None, base, 0, total, values)
        got: dict[int, np.ndarray] = {}
        for det, numbering in zip(many, numberings):
            made = acquire(det, numbering, base, cluster.seq, total, values, reset)
            assert not set(made) & set(got), "a frame made twice"
            got.update(made)
        cluster.end(base, base + total)
        assert sorted(got) == sorted(expected) == list(range(base + 1, base + 1 + total))
        for number, pixels in expected.items():
            np.testing.assert_array_equal(got[number], pixels, err_msg=f"uid {number}")


@pytest.mark.parametrize("third_reset", [True, False])
def test_a_reset_again_after_an_acquisition_a_rank_made_no_frame_of(third_reset):
    """3 frames; 1 frame after a Reset (rank 0 makes it, rank 1 none: its sim still holds the
    Reset); 4 frames, after another Reset or none. Rank 1's frames count from the latest
    reset a put asked for, as one process's do."""
    values = {"SimMode": LINEAR_RAMP, "Gain": 40.0}
    one = sim("UInt16")
    many = [sim("UInt16") for _ in range(2)]
    numberings = [RankNumbering(2, i) for i in range(2)]
    cluster = ClusterNumbering()
    for base, total, reset in ((0, 3, True), (3, 1, True), (4, 4, third_reset)):
        if reset:
            for det in (one, *many):
                det.values["Reset"] = 1
        expected = acquire(one, None, base, 0, total, values)
        got: dict[int, np.ndarray] = {}
        for det, numbering in zip(many, numberings):
            got.update(acquire(det, numbering, base, cluster.seq, total, values, reset))
        cluster.end(base, base + total)
        assert sorted(got) == list(range(base + 1, base + 1 + total))
        for number, pixels in expected.items():
            np.testing.assert_array_equal(got[number], pixels, err_msg=f"uid {number}")
