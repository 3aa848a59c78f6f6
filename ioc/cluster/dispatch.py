"""Which processing rank gets a frame, where each frame went, and the frames back in order.

Pure in-process classes (no MPI, no threads of their own), so their rules are tested in
microseconds (tests/unit/test_cluster_dispatch.py); `ndflow.cluster.acquisition` (the
dispatcher) and `ndflow.cluster.control` (the ordering) drive them from their MPI thread and the
driver's thread, under their own locks.

- `RoundRobin`: global frame i goes to `ordering[i % N]` (Lima2's RoundRobin topology; Jungfrau
  does strict round robin). Fixed, so the frame -> rank map needs no message.
- `CreditDispatch`: the rank with the fewest frames outstanding gets the next one, if it has
  fewer than `credits` (Pilatus4-style load balancing). Outstanding = frames sent that the rank
  has not yet said it received, plus the rank's own pipeline backlog as it last reported it.
- `LookupTable`: global frame (unique id) -> (rank, local index: the n-th frame that rank got),
  and back, in growable numpy arrays (a dict per frame would cost ~100 B; this costs 8).
- `Reorder`: frames are expected in dispatch order and acknowledged in any order; `pop_ready`
  gives the contiguous prefix in global order, and a frame not acknowledged `window_s` after it
  was sent becomes a `Missing` entry with its cause, never a silent gap. A late acknowledgement
  after that is counted (`late`), not delivered twice.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..ndarray import MissingCause


class RoundRobin:
    def __init__(self, ordering: Iterable[int]) -> None:
        self.ordering = list(ordering)
        if not self.ordering:
            raise ValueError("round robin needs at least one rank")
        self._next = 0

    def choose(self) -> int:
        rank = self.ordering[self._next % len(self.ordering)]
        self._next += 1
        return rank

    def sent(self, rank: int) -> None:
        """Round robin keeps no account of what is outstanding."""

    def report(self, rank: int, received: int, backlog: int) -> None:
        pass

    def reset(self) -> None:
        """A new acquisition starts at the head of the ordering again (as Lima2 prepares)."""
        self._next = 0


class CreditDispatch:
    def __init__(self, ranks: Iterable[int], credits: int) -> None:
        self.ranks = list(ranks)
        if not self.ranks:
            raise ValueError("credit dispatch needs at least one rank")
        self.credits = credits
        self._sent = {r: 0 for r in self.ranks}
        self._received = {r: 0 for r in self.ranks}  # as last reported
        self._backlog = {r: 0 for r in self.ranks}
        self._turn = 0  # ties go round, so equally idle ranks share the frames evenly

    def outstanding(self, rank: int) -> int:
        return self._sent[rank] - self._received[rank] + self._backlog[rank]

    def choose(self) -> int | None:
        """The least busy rank with a credit left, or None if every rank is full."""
        n = len(self.ranks)
        best, best_load = None, None
        for i in range(n):
            rank = self.ranks[(self._turn + i) % n]
            load = self.outstanding(rank)
            if load < self.credits and (best_load is None or load < best_load):
                best, best_load = rank, load
        if best is not None:
            self._turn = (self.ranks.index(best) + 1) % n
        return best

    def sent(self, rank: int) -> None:
        self._sent[rank] += 1

    def report(self, rank: int, received: int, backlog: int) -> None:
        """`rank` has received `received` frames in all and holds `backlog` of them still."""
        if rank in self._sent:
            self._received[rank] = min(received, self._sent[rank])
            self._backlog[rank] = max(0, backlog)

    def reset(self) -> None:
        pass


class LookupTable:
    """Global frame -> (rank, local index) and (rank, local index) -> global frame."""

    UNKNOWN = -1

    def __init__(self, capacity: int = 32768) -> None:
        self._base: int | None = None  # the unique id of row 0
        self._rank = np.full(capacity, self.UNKNOWN, np.int32)
        self._local = np.full(capacity, self.UNKNOWN, np.int64)
        self._counts: dict[int, int] = {}
        self._reverse: dict[int, list[int]] = {}

    def clear(self) -> None:
        self._base = None
        self._rank[:] = self.UNKNOWN
        self._local[:] = self.UNKNOWN
        self._counts.clear()
        self._reverse.clear()

    def assign(self, unique_id: int, rank: int) -> int:
        """`unique_id` goes to `rank`: its local index there (0, 1, ... per rank)."""
        if self._base is None:
            self._base = unique_id
        row = unique_id - self._base
        if row < 0:
            raise ValueError(f"frame {unique_id} is before the table's first ({self._base}); "
                             "clear() it for a new numbering")
        if row >= len(self._rank):
            grow = max(row + 1, 2 * len(self._rank))
            self._rank = np.concatenate([self._rank, np.full(grow - len(self._rank),
                                                             self.UNKNOWN, np.int32)])
            self._local = np.concatenate([self._local, np.full(grow - len(self._local),
                                                               self.UNKNOWN, np.int64)])
        local = self._counts.get(rank, 0)
        self._counts[rank] = local + 1
        self._rank[row] = rank
        self._local[row] = local
        self._reverse.setdefault(rank, []).append(unique_id)
        return local

    def lookup(self, unique_id: int) -> tuple[int, int] | None:
        if self._base is None:
            return None
        row = unique_id - self._base
        if not 0 <= row < len(self._rank) or self._rank[row] == self.UNKNOWN:
            return None
        return int(self._rank[row]), int(self._local[row])

    def reverse(self, rank: int, local: int) -> int | None:
        frames = self._reverse.get(rank, [])
        return frames[local] if 0 <= local < len(frames) else None

    def count(self, rank: int) -> int:
        return self._counts.get(rank, 0)

    def num_contiguous(self) -> int:
        """Frames known from the first on, without a hole."""
        if self._base is None:
            return 0
        unknown = np.flatnonzero(self._rank == self.UNKNOWN)
        return int(unknown[0]) if len(unknown) else len(self._rank)


@dataclass(frozen=True)
class Ready:
    unique_id: int
    item: Any


@dataclass(frozen=True)
class Missing:
    unique_id: int
    cause: MissingCause
    message: str


class Reorder:
    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._expected: deque[tuple[int, float, int]] = deque()  # (uid, deadline, rank)
        self._arrived: dict[int, Any] = {}
        self._gone: set[int] = set()  # declared missing: a later arrival is late
        self.late = 0
        self.missing = 0
        self.delivered = 0

    def expect(self, unique_id: int, rank: int) -> None:
        """`unique_id` was sent to `rank` now (in dispatch order)."""
        self._expected.append((unique_id, self.clock() + self.window_s, rank))

    def arrive(self, unique_id: int, item: Any = None) -> None:
        if unique_id in self._gone:
            self._gone.discard(unique_id)
            self.late += 1
            return
        self._arrived[unique_id] = item

    def pending(self) -> int:
        return len(self._expected)

    def pop_ready(self, now: float | None = None) -> list[Ready | Missing]:
        """The frames that may go on, in global order: acknowledged ones, and those whose
        window has passed as Missing (timeout, naming the rank)."""
        now = self.clock() if now is None else now
        out: list[Ready | Missing] = []
        while self._expected:
            uid, deadline, rank = self._expected[0]
            if uid in self._arrived:
                out.append(Ready(uid, self._arrived.pop(uid)))
                self.delivered += 1
            elif now >= deadline:
                out.append(Missing(uid, MissingCause.TIMEOUT, f"rank {rank} did not "
                                   f"acknowledge it within {self.window_s:g} s"))
                self._gone.add(uid)
                self.missing += 1
            else:
                break
            self._expected.popleft()
        return out

    def give_up(self, rank: int, message: str) -> None:
        """`rank` stopped answering: its frames still expected time out at the next pop."""
        self._expected = deque((uid, -1.0 if r == rank else d, r)
                               for uid, d, r in self._expected)
