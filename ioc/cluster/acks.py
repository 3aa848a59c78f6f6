"""When a processing rank acknowledges frames to their feeders: few messages, credits on time.

An acknowledgement (ACK) tells a feeder (the acquisition rank that sent the frames) which of
its frames arrived (`uids`: the control rank's reorder stage needs them) and how many frames
the rank still holds (`backlog`: credit dispatch gives the next frame to the least busy rank).
Saying each arrival and each change of the backlog as it happens cost 1.7 messages per frame
per feeder: an arrival and, a few ms later, the frame leaving the pipeline, each one message
of pickling, queueing, MPI and unpickling on both ranks.

An arrival alone frees no credit (the feeder counts the frame outstanding whether it is in
transit or in the rank's backlog), so `AckBatcher` holds it until there is credit to give back
(the backlog fell below what the feeder believes: told backlog + frames not yet said) and says
both in one message:

- credit back and the rank idle (backlog 0): at once, the rank is waiting for frames;
- credit back and a backlog left: at most every `gap_s` (5 ms) per feeder;
- anything else unsaid (arrivals, a backlog that rose): after `hold_s` (20 ms) at most, so the
  control rank's order and counters lag by no more;
- `flush`: everything at once (before the rank says DRAINED: every count exact at the end).

With frames of a few ms or more each, that is one message per frame; faster frames share
messages. Not thread-safe: its owner (`ProcessingRole`) calls it under its lock; the clock is
injectable so the rules are tested without sleeping (tests/unit/test_cluster_processing.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from .wire import ACK

#: the longest an arrival or backlog change waits unsaid, and the shortest time between two
#: ACKs to one feeder while the rank has a backlog
HOLD_S, GAP_S = 0.020, 0.005


class AckBatcher:
    def __init__(self, feeders: Iterable[int], hold_s: float = HOLD_S, gap_s: float = GAP_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.clock = clock
        self.feeders = sorted(set(feeders))
        self.received: dict[int, int] = {f: 0 for f in self.feeders}
        self._uids: dict[int, list[int]] = {}  # feeder -> ids received, not yet said
        self._told: dict[int, int] = {f: 0 for f in self.feeders}  # backlog it last heard
        #: feeder -> when its oldest unsaid news came; empty: every feeder heard `_backlog`
        self._since: dict[int, float] = {}
        self._last: dict[int, float] = {}  # feeder -> when it last got an ACK
        self._backlog = 0  # the backlog `take` last saw
        self.sent = 0  # ACK messages made

    def add(self, feeder: int, unique_id: int) -> None:
        """A frame from `feeder` arrived."""
        self.received[feeder] = self.received.get(feeder, 0) + 1
        uids = self._uids.get(feeder)
        if uids is None:
            self._uids[feeder] = [unique_id]
            self._since.setdefault(feeder, self.clock())
        else:
            uids.append(unique_id)

    def take(self, backlog: int) -> list[tuple[int, dict[str, Any]]]:
        """[(feeder, ACK header)] due now, the rank holding `backlog` frames."""
        if not self._since and backlog == self._backlog:
            return []  # nothing unsaid, the backlog as every feeder heard it: the common case
        self._backlog = backlog
        now = self.clock()
        due = []
        for f in self._feeders():
            uids = self._uids.get(f, ())
            if not uids and self._told.get(f, 0) == backlog:
                self._since.pop(f, None)
                continue
            since = self._since.setdefault(f, now)
            if now - since >= self.hold_s:
                due.append(f)
            elif self._told.get(f, 0) + len(uids) > backlog and (  # credit to give back
                    backlog == 0 or now - self._last.get(f, -1e9) >= self.gap_s):
                due.append(f)
        return [self._ack(f, backlog, now) for f in due]

    def flush(self, backlog: int) -> list[tuple[int, dict[str, Any]]]:
        """An ACK for every feeder with anything unsaid, now."""
        self._backlog = backlog
        now = self.clock()
        return [self._ack(f, backlog, now) for f in self._feeders()
                if self._uids.get(f) or self._told.get(f, 0) != backlog]

    def _feeders(self) -> list[int]:
        return self.feeders if not self._uids.keys() - set(self.feeders) else \
            sorted(set(self.feeders) | self._uids.keys())

    def _ack(self, feeder: int, backlog: int, now: float) -> tuple[int, dict[str, Any]]:
        uids = self._uids.pop(feeder, [])
        self._told[feeder] = backlog
        self._since.pop(feeder, None)
        self._last[feeder] = now
        self.sent += 1
        return feeder, {"kind": ACK, "feeder": feeder, "uids": uids,
                        "received": self.received.get(feeder, 0), "backlog": backlog}
