"""Messages still coming, frames' pixels mostly: at most one per sending rank (the MPI thread's).

Why not a blocking receive: a frame is a header then its pixels (`wire`), and a blocking Recv
of the pixels waits as long as their sender does. A sender stopped (SIGSTOP, a hung host)
between the two messages, or during a large transfer that needs it to make progress (MPICH
copies a message above its eager limit through shared memory only while both sides call MPI,
unless it can read the sender's memory directly: CMA, which needs ptrace rights), held the
receiver's whole MPI thread: no heartbeat, report or ACK went out and no other rank was heard,
so the control rank listed the healthy receiver as silent too and made its frames missing. So
nothing is received blocking, and this class keeps what waits: a message whose header or
pixels have not all come; the link tests each pending receive on later turns of its loop
(`poll`).

Order: MPI keeps one sender's messages in order, but the handler sees them in the order they
are taken. While a sender's message is pending nothing more is taken from it (`blocked`,
`open`), so its frames and other messages reach the handler in the order it sent them, while
the other senders' keep flowing.

Pure bookkeeping, no MPI here: the link passes the calls that test and cancel a receive, so
this is tested in-process without ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger("ndflow.cluster")

#: a frame's pixels pending this long are said (once): their sender is stopped or hung. A
#: frame's transfer takes milliseconds; the control rank's silence window is seconds.
STALL_S = 1.0
#: a receive posted for a message come (its probe saw it) less than this long ago is taken to
#: be moving: the link polls it without sleeping.
#: Without CMA (MPICH reading the sender's memory directly, which needs ptrace rights) a 2 MiB
#: message crosses shared memory in about 260 slices, each moved only while both sides call
#: MPI: polled with even 50 us sleeps it takes 37 ms instead of 0.24 (mpi4py, this host). With
#: CMA it is in at once and this never applies. Longer than this, its sender is likely stopped:
#: the thread goes back to its sleeps rather than spin on it.
SPIN_S = 0.25


@dataclass
class Incoming:
    """One message on its way: its header (None until it came), then a frame's pixels."""

    source: int
    header: dict[str, Any] | None
    #: where the pixels go: a pool buffer, or a throwaway one (`keep` False: the frame is
    #: missing already, the bytes are only taken off the link); None while its size is unknown
    data: Any
    keep: bool = True
    request: Any = None  # the receive, once posted
    since: float = 0.0  # when its header was probed
    posted: float | None = None  # when the receive in progress was posted (its message came)
    said: bool = False  # its long wait was logged

    def fail(self, cause: str, message: str) -> None:
        """The frame becomes a missing one (`cause`: a MissingCause name) without its pixels;
        a message whose header never came is lost (said)."""
        self.keep = False
        if self.header is None:
            log.error("a message from rank %d is lost: %s", self.source, message)
        else:
            self.header["missing"] = (cause, message)

    @property
    def what(self) -> str:
        uid = self.header.get("uid") if self.header is not None else None
        return f"frame {uid}" if uid is not None else "a message"

    @property
    def pixels(self) -> Any:
        """What the handler is given: the pixels, or None for a frame missing."""
        return self.data if self.keep else None


class Inbox:
    def __init__(self, rank: int, stall_s: float = STALL_S) -> None:
        self.rank = rank
        self.stall_s = stall_s
        self._waiting: dict[int, Incoming] = {}  # source -> its frame, in the order added
        self.stalls = 0  # receives said stalled (a stopped or hung sender)

    def __len__(self) -> int:
        return len(self._waiting)

    def moving(self, now: float, spin_s: float = SPIN_S) -> bool:
        """Whether a receive is under way, posted for a message that came, recently enough to
        be polled without sleeping (pixels not sent yet are not moving)."""
        return any(i.request is not None and i.posted is not None and now - i.posted < spin_s
                   for i in self._waiting.values())

    def blocked(self, source: int) -> bool:
        """Whether nothing more may be taken from `source` (its pixels are pending)."""
        return source in self._waiting

    def open(self, sources: Iterable[int]) -> list[int]:
        """The sources whose next message may be taken."""
        return [s for s in sources if s not in self._waiting]

    def add(self, incoming: Incoming) -> None:
        if incoming.source in self._waiting:  # the link took a message from a blocked source
            raise RuntimeError(f"rank {self.rank}: a second frame from rank {incoming.source} "
                               "while its previous frame's pixels are pending")
        self._waiting[incoming.source] = incoming

    def check(self, incoming: Incoming, done: Callable[[Incoming], bool]) -> bool:
        """`done(incoming)`: whether it is whole now. `done` raising (an MPI error: pixels
        larger than the header said) finishes it: a frame becomes a missing one naming the
        error."""
        try:
            return done(incoming)
        except Exception as exc:
            incoming.fail("DROPPED", f"rank {self.rank}: {incoming.what} from rank "
                          f"{incoming.source} could not be received: {type(exc).__name__}: "
                          f"{exc}")
            return True

    def poll(self, done: Callable[[Incoming], bool], now: float) -> list[Incoming]:
        """Test each pending message with `done` (`check`); returns those finished, no longer
        pending, for the handler. One pending longer than `stall_s` is said once, and again
        when it ends."""
        finished: list[Incoming] = []
        for source, incoming in list(self._waiting.items()):
            if self.check(incoming, done):
                del self._waiting[source]
                finished.append(incoming)
                if incoming.said:
                    log.warning("rank %d: %s from rank %d came in full after %.1f s",
                                self.rank, incoming.what, source, now - incoming.since)
            elif not incoming.said and now - incoming.since >= self.stall_s:
                incoming.said = True
                self.stalls += 1
                log.warning("rank %d: %s from rank %d has not come in full in %.1f s (rank %d "
                            "stopped?): its later messages wait for it, the other ranks' do "
                            "not", self.rank, incoming.what, source, now - incoming.since,
                            source)
        return finished

    def cancel_all(self, cancel: Callable[[Incoming], bool]) -> list[Incoming]:
        """At shutdown: each pending receive is cancelled (`cancel` returns True when the
        message came in full after all); a frame that did not becomes a missing one (dropped,
        with why). Returns every message that was pending, none left."""
        pending = list(self._waiting.values())
        self._waiting.clear()
        for incoming in pending:
            try:
                came = cancel(incoming)
            except Exception as exc:
                log.debug("rank %d: cancelling a receive: %s", self.rank, exc)
                came = False
            if not came:
                incoming.fail("DROPPED", f"rank {self.rank} shut down before {incoming.what} "
                              f"came in full from rank {incoming.source}")
        return pending
