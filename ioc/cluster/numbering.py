"""Several acquisition ranks sharing whole frames: which frames each one makes, and their numbers.

With M acquisition ranks and a driver without modules, acquisition rank i (its position in
`cluster.acquisition`) makes frames i, i+M, i+2M, ... of every acquisition, so that the frames,
their uniqueIds and (for the sim) their pixels are the ones a single process would make:

- the acquisition's frame j has uniqueId `base + 1 + j`, base being the control rank's
  ArrayCounter when the acquisition starts (it shows the highest uniqueId made, as one process
  would), so rank i's k-th frame is `base + 1 + i + k*M` (`uid`);
- NumImages N is split: rank i makes the j < N with j % M == i, ceil/floor shares that add up
  to N (`share`); Single mode is N = 1 (rank 0 makes it) and Continuous has no end;
- each rank is paced at M x AcquirePeriod, so the cluster keeps AcquirePeriod (`rank_settings`),
  and rank i starts i/M of a rank's frame time after rank 0 (`stagger`), so the frames come
  evenly spaced and their timestamps rise with their uniqueIds, as from one process;
- an image that moves on every frame (the sim's LinearRamp and Sine) moves on by the frames the
  other ranks made in between (`RankNumbering.steps`). The position is `seq`, the number of
  frames the cluster made since the IOC started (the control rank adds each acquisition's
  frames, `ClusterNumbering.end`), not the uniqueId: a client setting ArrayCounter back does not
  move a single process's ramp back either.

Pure and in-process (no MPI): tests/unit/test_cluster_numbering.py checks it in microseconds.
"""

from __future__ import annotations

from typing import Any, Container, Iterator, Mapping

SINGLE, MULTIPLE, CONTINUOUS = 0, 1, 2


def share(total: int, ranks: int, index: int) -> int:
    """How many of an acquisition's `total` frames rank `index` of `ranks` makes."""
    return total // ranks + (1 if index < total % ranks else 0)


def wanted(settings: Mapping[str, Any]) -> int | None:
    """The frames the acquisition makes over the cluster; None: until stopped."""
    mode = int(settings.get("ImageMode", MULTIPLE))
    if mode == SINGLE:
        return 1
    return None if mode == CONTINUOUS else max(0, int(settings.get("NumImages", 1)))


def uid(base: int, ranks: int, index: int, k: int) -> int:
    """The uniqueId of rank `index`'s k-th frame (0-based) of an acquisition after `base`."""
    return base + 1 + index + k * ranks


def stagger(settings: Mapping[str, Any], ranks: int, index: int) -> float:
    """Seconds rank `index` of `ranks` waits before its first frame: its place among the
    cluster's frames, index x the cluster's frame time (a rank's, max(AcquireTime,
    ranks x AcquirePeriod), over `ranks`)."""
    exposure = max(0.0, float(settings.get("AcquireTime", 0.0)))
    period = max(0.0, float(settings.get("AcquirePeriod", 0.0)))
    return index * max(exposure, ranks * period) / ranks


#: the shared ranks' common timeline starts this long after the control rank sent START. START
#: reaches each rank after its MPI thread's sleep (up to 10 ms when idle) and a turn of its
#: event loop, so the ranks get it milliseconds apart, more on a busy host; timed from its
#: arrival, a rank whose START came later than its stagger (2 ms for two ranks at 4 ms frames)
#: made its frames after the other rank's for the whole acquisition. One comparison at 4 ms
#: frames (3 acquisitions of 40 frames, 2 acquisition ranks, 2 cores): frames out of
#: timestamp order 9-13 of 39 with this timeline, 13-18 timed from arrival
START_LEAD_S = 0.1
#: a START later than this after the control rank sent it (a rank that had to stop an older
#: acquisition first, or whose clock is off by more) is timed from its arrival instead
START_LATE_MAX_S = 0.5


def first_frame_in(stagger_s: float, late_s: float | None) -> float:
    """Seconds from now to this rank's first frame, `late_s` after the control rank sent START
    (its clock against ours; None: not said): its place on the timeline shared by the ranks,
    START_LEAD_S after START was sent, so a START that reached one rank later than another
    (the MPI thread's sleep, a busy event loop) does not put that rank's frames out of order.
    Negative: due already (the driver makes it at once and its grid catches up as far as
    ndflow.driver.EARLIEST allows)."""
    if late_s is None or not 0.0 <= late_s <= START_LATE_MAX_S:
        return stagger_s
    return START_LEAD_S + stagger_s - late_s


def rank_settings(settings: Mapping[str, Any], ranks: int, index: int) -> dict[str, Any] | None:
    """What rank `index` changes in its copy of the acquisition's settings (its share of the
    frames, the cluster's period times `ranks`); None when it makes no frame at all."""
    total = wanted(settings)
    period = float(settings.get("AcquirePeriod", 0.0)) * ranks
    if total is None:
        return {"AcquirePeriod": period}
    mine = share(total, ranks, index)
    if mine == 0:
        return None
    if int(settings.get("ImageMode", MULTIPLE)) == SINGLE:
        return {"AcquirePeriod": period}
    return {"NumImages": mine, "AcquirePeriod": period}


def owed(base: int, ranks: int, index: int, upto: int, seen: Container[int]) -> "Owed":
    """Rank `index`'s uniqueIds of the acquisition after `base`, up to `upto` (base + N; or,
    without an end, the highest uniqueId the cluster made), that are not in `seen` (a `Seen`:
    from its watermark on, less the few it saw after a gap)."""
    start = base + 1 + index
    watermark = getattr(seen, "next", start)
    if watermark > start and (watermark - start) % ranks == 0:
        start = watermark  # every one of the rank's before it was seen
    span = range(start, upto + 1, ranks)
    later = getattr(seen, "later", None)
    return Owed(span, {u for u in later if u in span} if later is not None else
                {u for u in span if u in seen})


class Owed:
    """UniqueIds a rank owes: a range of its uniqueIds less the few seen in it. A rank silent
    early in a long acquisition owes millions: held as a range, not one by one."""

    def __init__(self, span: range, seen: set[int]) -> None:
        self.span = span
        self.seen = seen

    def __iter__(self) -> Iterator[int]:
        return (u for u in self.span if u not in self.seen)

    def __len__(self) -> int:
        return len(self.span) - len(self.seen)

    def __contains__(self, unique_id: object) -> bool:
        return unique_id in self.span and unique_id not in self.seen

    def first_last(self) -> tuple[int, int]:
        """The lowest and highest (not empty)."""
        return (next(iter(self)), next(u for u in reversed(self.span) if u not in self.seen))


class GivenUp:
    """What the current acquisition gave up on, per acquisition rank (`Owed` spans): a late
    frame of it is dropped, counted late."""

    def __init__(self) -> None:
        self.spans: list[Owed] = []

    def add(self, owed: Owed) -> None:
        if len(owed):
            self.spans.append(owed)

    def clear(self) -> None:
        self.spans.clear()

    def __contains__(self, unique_id: object) -> bool:
        return any(unique_id in o for o in self.spans)


class Seen:
    """The uniqueIds of one acquisition rank's frames known sent or received in the current
    acquisition, held as the next one not seen yet (every one of the rank's before it was)
    plus a set of the later ones: a continuous acquisition of millions of frames holds a few,
    not ~70 bytes a frame."""

    def __init__(self) -> None:
        self.next = 0  # the rank's first uniqueId not seen yet
        self.step = 1
        self.later: set[int] = set()
        self.highest: int | None = None

    def reset(self, first: int, step: int) -> None:
        """A new acquisition: the rank's uniqueIds are first, first + step, ..."""
        self.next, self.step, self.highest = first, step, None
        self.later.clear()

    def add(self, unique_id: int) -> None:
        self.highest = unique_id if self.highest is None else max(self.highest, unique_id)
        if unique_id < self.next:
            return
        self.later.add(unique_id)
        while self.next in self.later:
            self.later.discard(self.next)
            self.next += self.step

    def __contains__(self, unique_id: object) -> bool:
        return isinstance(unique_id, int) and (unique_id < self.next or
                                               unique_id in self.later)


class RankNumbering:
    """One acquisition rank's numbering (its driver thread; `start` before the driver runs)."""

    def __init__(self, ranks: int, index: int) -> None:
        self.ranks = ranks
        self.index = index
        self.base = 0
        self.k = 0  # frames numbered in this acquisition
        self.last: int | None = None  # the last uniqueId given in this acquisition
        self._seq0 = 0
        self._last_seq: int | None = None  # the image's position (seq of the last frame made)
        self._reset_seq: int | None = None  # seq of the frame a pending reset happens at

    def start(self, base: int, seq: int, reset: bool) -> None:
        """An acquisition after uniqueId `base`, its first frame the cluster's frame `seq`;
        `reset`: a put since the previous acquisition resets the image, so a single process
        recomputes it at this acquisition's first frame, whichever rank makes it here (an
        earlier reset this rank made no frame after is replaced: the image it holds is
        recomputed, from this one)."""
        self.base, self._seq0, self.k, self.last = base, seq, 0, None
        if reset:
            self._reset_seq = seq

    def next_uid(self) -> int:
        u = uid(self.base, self.ranks, self.index, self.k)
        self.k += 1
        self.last = u
        return u

    def steps(self, reset: bool) -> int:
        """How many frames the image moves on for the frame about to be made (called before
        `next_uid` for it): from the frame it holds, or, on a reset, from the frame before the
        one a single process reset at."""
        seq = self._seq0 + self.index + self.k * self.ranks
        if reset:
            prev = seq - 1 if self._reset_seq is None else self._reset_seq - 1
        else:
            prev = seq - 1 if self._last_seq is None else self._last_seq
        # a frame without a reset: a reset START said is done with (this rank's sim took a
        # Reset put during an acquisition at its own next frame already)
        self._reset_seq = None
        self._last_seq = seq
        return max(1, seq - prev)


class ClusterNumbering:
    """The control rank's side: the position of the next acquisition's first frame."""

    def __init__(self) -> None:
        self.seq = 0

    def end(self, base: int, highest: int) -> None:
        """An acquisition after `base` is over; `highest`: the highest uniqueId it made (or
        owed: a frame a silent rank owed counts as made, as one process would have made it)."""
        self.seq += max(0, highest - base)
