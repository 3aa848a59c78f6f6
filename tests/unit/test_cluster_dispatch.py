"""The cluster's dispatch rules, lookup table and reorder stage, in process (no MPI)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ndflow.cluster.dispatch import (CreditDispatch, LookupTable, Missing, Ready, Reorder,
                                     RoundRobin)
from ndflow.ndarray import MissingCause


def test_round_robin_follows_the_ordering_and_restarts():
    rr = RoundRobin([2, 1, 1])
    assert [rr.choose() for _ in range(7)] == [2, 1, 1, 2, 1, 1, 2]
    rr.reset()
    assert rr.choose() == 2
    with pytest.raises(ValueError):
        RoundRobin([])


def test_credit_gives_frames_to_the_least_busy_rank_and_stops_when_all_are_full():
    credit = CreditDispatch([1, 2], credits=3)
    picks = []
    for _ in range(6):
        rank = credit.choose()
        picks.append(rank)
        credit.sent(rank)
    assert Counter(picks) == {1: 3, 2: 3}  # idle ranks share evenly
    assert credit.choose() is None  # every rank holds its 3 credits
    # rank 2 received all 3 and finished them; rank 1 received its 3 but holds them
    credit.report(2, received=3, backlog=0)
    credit.report(1, received=3, backlog=3)
    assert [credit.choose() for _ in range(1)] == [2]


def test_credit_favours_a_fast_rank_over_a_slow_one():
    credit = CreditDispatch([1, 2], credits=4)
    got = Counter()
    done = {1: 0, 2: 0}
    received = {1: 0, 2: 0}
    for step in range(200):
        rank = credit.choose()
        if rank is not None:
            credit.sent(rank)
            received[rank] += 1
            got[rank] += 1
        # rank 1 finishes a frame every step, rank 2 every fourth
        for r, every in ((1, 1), (2, 4)):
            if step % every == 0 and done[r] < received[r]:
                done[r] += 1
            credit.report(r, received[r], received[r] - done[r])
    assert got[1] > 2 * got[2] > 0


def test_lookup_table_maps_both_ways_and_grows():
    lut = LookupTable(capacity=4)
    for uid in range(10, 30):
        lut.assign(uid, 1 + uid % 2)
    assert lut.lookup(10) == (1, 0) and lut.lookup(11) == (2, 0) and lut.lookup(29) == (2, 9)
    assert lut.reverse(2, 9) == 29 and lut.reverse(1, 10) is None
    assert lut.lookup(9) is None and lut.lookup(30) is None
    assert lut.num_contiguous() == 20 and lut.count(1) == 10
    with pytest.raises(ValueError):
        lut.assign(5, 1)
    lut.clear()
    assert lut.lookup(10) is None and lut.num_contiguous() == 0


def test_reorder_gives_the_contiguous_prefix_in_order_whatever_the_arrival_order():
    now = [0.0]
    reorder = Reorder(window_s=1.0, clock=lambda: now[0])
    for uid in range(1, 101):
        reorder.expect(uid, 1 + uid % 2)
    arrivals = list(range(1, 101))
    random.Random(4).shuffle(arrivals)
    seen = []
    for uid in arrivals:
        reorder.arrive(uid, f"frame {uid}")
        seen += reorder.pop_ready()
    assert [r.unique_id for r in seen] == list(range(1, 101))
    assert all(isinstance(r, Ready) and r.item == f"frame {r.unique_id}" for r in seen)


def test_reorder_turns_a_frame_that_never_comes_into_a_missing_one_in_its_place():
    now = [0.0]
    reorder = Reorder(window_s=2.0, clock=lambda: now[0])
    for uid in (1, 2, 3, 4):
        reorder.expect(uid, 7 if uid == 2 else 1)
    for uid in (1, 3, 4):
        reorder.arrive(uid)
    assert [r.unique_id for r in reorder.pop_ready()] == [1]  # 2 still within its window
    now[0] = 2.5
    out = reorder.pop_ready()
    assert [r.unique_id for r in out] == [2, 3, 4]
    assert isinstance(out[0], Missing) and out[0].cause is MissingCause.TIMEOUT
    assert "rank 7" in out[0].message
    reorder.arrive(2)  # too late: counted, not delivered
    assert reorder.late == 1 and reorder.pop_ready() == [] and reorder.missing == 1


def test_reorder_give_up_times_out_a_dead_ranks_frames_at_once():
    reorder = Reorder(window_s=100.0, clock=lambda: 0.0)
    for uid in range(1, 5):
        reorder.expect(uid, 1 + uid % 2)
    reorder.arrive(1)
    reorder.give_up(1, "rank 1 stopped answering")
    out = reorder.pop_ready()
    # 2 (rank 1) times out; 3 (rank 2) has not arrived and is still within its window
    assert [(type(r).__name__, r.unique_id) for r in out] == [("Ready", 1), ("Missing", 2)]


def test_credit_picks_the_least_loaded_rank_not_the_next_in_turn():
    credit = CreditDispatch([1, 2, 3], credits=10)
    for rank, sent, backlog in ((1, 5, 5), (2, 1, 1), (3, 3, 3)):
        for _ in range(sent):
            credit.sent(rank)
        credit.report(rank, received=sent, backlog=backlog)
    assert credit.outstanding(2) == 1
    assert [credit.choose() for _ in range(3)] == [2, 2, 2]  # nothing sent meanwhile
    credit.sent(2)
    credit.sent(2)
    assert credit.choose() in (2, 3)  # 3 outstanding each now: a tie
