"""A rank's one MPI thread: every MPI call of the rank is made here, never on the event loop.

Funnelling every call through one thread needs only MPI_THREAD_SERIALIZED (checked at start;
MPICH gives MULTIPLE), and keeps MPI's busy-polling out of the IOC's threads. The thread sends
what other threads queued (`send`, any thread) with non-blocking Isend, so a slow receiver
never stops it from receiving, and polls for incoming messages with probes, sleeping when idle
(MPICH's blocking receive spins a whole core, which a 2-core host cannot spare).

The sleep backs off: 50 us after a message came, four times longer each time up to 5 ms while
nothing comes (a message sent from here does not shorten it: the thread is woken for those),
and up to 10 ms once no frame has gone or come for half a second (an idle IOC; the processing
ranks' value reports, five a second, do not keep it awake). Every wake-up costs CPU whatever it
finds (25 us on a quiet 2-core VM, 60 us on a loaded one: the timer, two context switches, the
GIL), so the fixed 0.1 ms poll this replaces cost 5,000 wake-ups a second per rank, about 2 ms
of CPU per frame at 60 frames/s; backing off it is 100 to 700. A message queued here (`send`)
wakes the thread at once; one from another rank waits at most one sleep (5 ms while frames
flow), which the credits in flight cover (ndflow.cluster.dispatch). 5 ms rather than 2: a
processing rank of the 10 ms bench algorithm gets a frame every 16 ms, and its MPI thread woke
14 times per frame with 2 ms, 8 with 5 ms (its CPU per frame 1.1 -> 0.86 ms, bench/cluster.py);
frames less than 1 ms apart meet the same short sleeps as before, and a 2 ms algorithm's
frame rate was the same with either (320-330 frames/s on two ranks).

A frame is a pickled header then its pixels with the uppercase (buffer) API, same tag, same
sender: MPI's non-overtaking rule keeps the pair together and, per destination, everything in
the order it was queued (a put mirrored before a frame reaches the rank before that frame).
Nothing is received blocking (`inbox`): a message is matched by its probe and received with
a non-blocking call, a frame's pixels too; a receive not finished at once is tested on later
turns, and meanwhile nothing more is taken from that sender, each other sender probed on its
own instead of ANY_SOURCE (a blocking Recv of the pixels held the whole thread as long as a
stopped sender, so the control rank took the healthy receiver for silent too). A receive
posted for a message come is polled without sleeping for a while (`inbox.SPIN_S`: without
CMA, MPICH moves a large message only while both sides call MPI), then on the sleeps as when
idle; pixels not sent yet (the probe shows nothing) leave the thread on its sleeps. Without CMA
the sender polls each frame's send the same way, for as long (the receiver's turns alone moved
2 MiB frames at 12 a second; both, at 670). The first YIELD_S of a transfer is polled with
sched_yield, the rest with sleep(0): a transfer between two polling ranks is over in 1-3 ms,
and a peer slow or stopped then costs the host little more than the sleeps did.

A watch (`_watch`, its own thread, four looks a second) says when a turn of the MPI thread
takes longer than HELD_S, and where the thread is held: the line of this module, an MPI call
or a handler. MPICH's shared-memory queues are not lock-free against a stopped process: a rank
stopped between the two steps of putting a message into another rank's queue (the tail swapped,
the link not yet written) makes that rank's next receive spin inside MPI until it resumes
(MPIDU_genqi_nem_mpsc_dequeue: "busy wait for the enqueuing to finish"). No heartbeat leaves the
held rank meanwhile, so the control rank rightly lists it silent too; the watch's lines say why.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import sysconfig
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from . import single_copy
from .inbox import SPIN_S, Inbox, Incoming
from .wire import FRAME, TAG

log = logging.getLogger("ndflow.cluster")

#: sleep between polls: the first after a message, then longer up to the longest; the
#: longest once no frame has passed for QUIET_S
FIRST_SLEEP_S, LONGEST_SLEEP_S, QUIET_SLEEP_S, QUIET_S = 50e-6, 0.005, 0.01, 0.5
#: each sleep this many times the one before: 50 us, 200 us, 0.8 ms, 3.2 ms, 5 ms (five
#: wake-ups after a message, not eight as doubling takes)
BACKOFF = 4
#: how long a transfer is polled with sched_yield (then with sleep(0), up to inbox.SPIN_S): a
#: 2 MiB frame between two polling ranks takes 1-3 ms without CMA
YIELD_S = 0.005
#: at shutdown, how long a cancelled receive is waited for (MPI may not cancel a receive its
#: sender has begun to fill)
CANCEL_WAIT_S = 0.2
#: a turn of the MPI thread taking longer than this is said, with where the thread is held (a
#: turn takes milliseconds; the control rank lists a rank silent after its window, seconds)
HELD_S = 0.5
#: after a frame's header, how long its pixels are probed for before the thread goes on: on
#: two busy ranks they were not there yet at the first probe for 95% of the frames, which cost
#: a sleep and a wake-up each (0.05-0.1 ms of CPU per frame, bench/cluster.py)
PIXELS_BEHIND_S = 200e-6


class Link:
    def __init__(self, comm: Any,
                 on_message: Callable[[int, dict[str, Any], np.ndarray | None], None],
                 buffer_for: Callable[[dict[str, Any]], np.ndarray],
                 on_idle: Callable[[], None] | None = None) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            raise RuntimeError("the MPI library gives no MPI_THREAD_SERIALIZED; ndflow's MPI "
                               "thread needs it")
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.on_message = on_message
        self.buffer_for = buffer_for
        self.on_idle = on_idle
        self._out: deque[tuple[int, dict[str, Any], np.ndarray | None]] = deque()
        self._pending: list[tuple[list[Any], Any]] = []  # requests, buffers kept alive
        #: without single-copy (CMA) transfers, MPICH moves a large message between ranks of
        #: one host only while the sender calls MPI too: a frame's send is then polled without
        #: sleeping for a while (SPIN_S), as the receiver polls its receive (`inbox`)
        self._spin_sends = not single_copy.is_on()
        self._frame_sends: deque[tuple[Any, float]] = deque()  # (request, posted) in order
        self._stop = threading.Event()
        #: held by the MPI thread while it sleeps; `send` releases it to wake the thread (a
        #: plain lock: an Event's wait and set are Python code, a lock's are a few C calls)
        self._wake = threading.Lock()
        self._wake.acquire()
        self._thread: threading.Thread | None = None
        self.sent_frames = 0
        self.sent_bytes = 0
        self._inbox = Inbox(self.rank)  # messages not in full yet, one per sender at most
        self._sources = range(self.size)
        #: buffers of receives that could not be cancelled at shutdown: MPI may still write
        #: into them, so they are never freed (nor given back to the pool)
        self._abandoned: list[Any] = []
        self._status = MPI.Status()
        self.last_frame = time.monotonic()  # a frame last sent or received
        self._turn = time.monotonic()  # when the MPI thread's current turn began
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mpi-rank{self.rank}",
                                        daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch, name=f"mpi-watch{self.rank}",
                                         daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Say a turn of the MPI thread held longer than HELD_S, where it is held, and when it
        goes on (see the module docstring)."""
        thread = self._thread
        assert thread is not None  # started before the watch
        said = None  # the turn said held
        while not self._stop.wait(HELD_S / 2):
            turn = self._turn
            held = time.monotonic() - turn
            if said is not None and turn != said:
                log.warning("rank %d: its MPI thread went on after %.1f s", self.rank,
                            turn - said)
                said = None
            if said is None and held > HELD_S:
                said = turn
                log.warning("rank %d: its MPI thread has made no progress for %.1f s, at %s "
                            "(the process was stopped, or the call waits on a stopped rank)",
                            self.rank, held, _where(thread))

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (up to `timeout`), then end the thread."""
        deadline = time.monotonic() + timeout
        while (self._out or self._pending) and time.monotonic() < deadline and \
                self._thread is not None and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._wake_up()
        for thread in (self._thread, self._watcher):  # the watch wakes on the stop at once
            if thread is not None:
                thread.join(timeout=2)

    def send(self, dest: int, header: dict[str, Any], data: np.ndarray | None = None) -> None:
        """Queue a message (any thread); `data` is kept alive until MPI is done with it."""
        self._out.append((dest, header, data))
        self._wake_up()

    def _wake_up(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    @property
    def queued(self) -> int:
        return len(self._out) + len(self._pending)

    @property
    def receiving(self) -> int:
        """Messages not in full yet, mostly frames' pixels (their senders may be stopped)."""
        return len(self._inbox)

    def _take(self, message: Any, source: int) -> None:
        """Take `source`'s next message (matched by its probe): its header, then for a frame
        its pixels; handed on once whole, else kept pending (its source blocked)."""
        now = time.monotonic()
        incoming = Incoming(source, None, None, request=message.irecv(), since=now,
                            posted=now)
        if self._inbox.check(incoming, self._complete):  # mostly at once
            self._hand_on(incoming)
        else:
            self._inbox.add(incoming)

    def _complete(self, incoming: Incoming) -> bool:
        """Move a message on as far as what has come allows (never waits); True once whole.
        A frame's pixels are received once their probe shows them come (a receive posted
        before would look the same whether they move or their sender has not sent them)."""
        fresh = incoming.header is None  # the header may come now, its pixels just behind
        if incoming.header is None:
            done, header = incoming.request.test()
            if not done:
                return False
            incoming.header, incoming.request = header, None
            if header.get("kind") != FRAME or "dtype" not in header:
                return True  # a header alone
            self.last_frame = time.monotonic()
            try:
                incoming.data = self.buffer_for(header)
            except Exception as exc:
                # no buffer can be had (memory refused, a bad header): the pixels are still
                # taken off the link, into a throwaway buffer of their size (else the next
                # header read would be these bytes), and the frame becomes missing
                incoming.fail("NO_MEMORY", f"rank {self.rank}: no buffer for the frame: "
                              f"{type(exc).__name__}: {exc}")
        if incoming.request is None:
            status = self._status
            # the pixels are sent right after the header, mostly a few microseconds behind:
            # looked for again a little while, cheaper than a sleep and a wake-up per frame
            deadline = time.perf_counter() + PIXELS_BEHIND_S if fresh else 0.0
            while not self.comm.Iprobe(incoming.source, TAG, status):
                if time.perf_counter() >= deadline:
                    return False  # not sent yet
            if incoming.data is None:  # the throwaway buffer
                incoming.data = bytearray(status.Get_count(self.MPI.BYTE))
            incoming.request = self.comm.Irecv(incoming.data, source=incoming.source, tag=TAG)
            incoming.posted = time.monotonic()
        return bool(incoming.request.Test())

    def _hand_on(self, incoming: Incoming) -> None:
        if incoming.header is not None:  # None: a message lost to an MPI error (said)
            self.on_message(incoming.source, incoming.header, incoming.pixels)

    def _cancel(self, incoming: Incoming) -> bool:
        """Shutdown: cancel a pending receive; True if the frame's pixels came in after all (a
        header that comes after all is not read: the message is said lost)."""
        request = incoming.request
        if request is None:
            return False
        request.Cancel()
        status = self.MPI.Status()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not request.Test(status):
            if time.monotonic() > deadline:  # being filled: MPI may still write into it
                self._abandoned.append((request, incoming.data))
                return False
            time.sleep(0.001)
        return incoming.header is not None and not status.Is_cancelled()

    def _receive(self) -> bool:
        """Take every message come from a sender not blocked by a pending one; True if any
        was taken or handed on."""
        comm, status, inbox = self.comm, self._status, self._inbox
        got = False
        if inbox:
            for incoming in inbox.poll(self._complete, time.monotonic()):
                self._hand_on(incoming)
                got = True
        while not inbox:  # the common case: one probe for every sender
            message = comm.improbe(self.MPI.ANY_SOURCE, TAG, status)
            if message is None:
                break
            self._take(message, status.Get_source())
            got = True
        if inbox:  # a sender is blocked: probe the others one by one (ANY_SOURCE would
            # take its next message, which must wait for the pending one)
            for source in inbox.open(self._sources):
                while not inbox.blocked(source):
                    message = comm.improbe(source, TAG, status)
                    if message is None:
                        break
                    self._take(message, source)
                    got = True
        return got

    def _run(self) -> None:
        MPI, comm = self.MPI, self.comm
        sleep = FIRST_SLEEP_S
        self.last_frame = time.monotonic()
        while not self._stop.is_set():
            self._turn = time.monotonic()
            busy = received = False
            try:
                while self._out:
                    dest, header, data = self._out.popleft()
                    requests = [comm.isend(header, dest, TAG)]
                    if data is not None:
                        buffer = np.ascontiguousarray(data)
                        requests.append(comm.Isend(buffer, dest, TAG))
                        self.sent_frames += 1
                        self.last_frame = time.monotonic()
                        self.sent_bytes += buffer.nbytes
                        data = (data, buffer)
                        if self._spin_sends:
                            self._frame_sends.append((requests[-1], time.monotonic()))
                    self._pending.append((requests, data))
                    busy = True
                if self._pending:
                    self._pending = [p for p in self._pending if not MPI.Request.Testall(p[0])]
                received = self._receive()
                if self.on_idle is not None:
                    self.on_idle()
            except Exception as exc:  # a bug in a handler: said, and the link keeps going
                log.error("rank %d: MPI thread: %s: %s", self.rank, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)
            if received:  # more may follow: look again soon
                sleep = FIRST_SLEEP_S
            elif self._transferring(time.monotonic(), SPIN_S):
                # MPI moves it only when called: again at once, the GIL let go. For the first
                # YIELD_S of a transfer with sched_yield: a sleep, even of 0, waits out the timer
                # slack (50 us), and a 2 MiB frame without CMA takes a hundred turns of both
                # ranks (43 frames/s against 2,500); after that (a peer slow or stopped) with
                # sleep(0), which leaves the cores to the rest of the host
                if self._transferring(time.monotonic(), YIELD_S):
                    os.sched_yield()
                else:
                    time.sleep(0)
            elif not busy and not self._out:
                # a message pending longer counts as idle: its sender is likely stopped
                self._wake.acquire(True, sleep)  # returns early when `send` releases it
                longest = QUIET_SLEEP_S if time.monotonic() - self.last_frame >= QUIET_S \
                    else LONGEST_SLEEP_S
                sleep = min(BACKOFF * sleep, longest)
        self._shut_receives()

    def _transferring(self, now: float, within_s: float) -> bool:
        """Whether a transfer posted less than `within_s` ago is under way: a receive for a
        message come (`inbox`), or without CMA a frame's send."""
        return self._inbox.moving(now, within_s) or self._sending(now, within_s)

    def _sending(self, now: float, within_s: float = SPIN_S) -> bool:
        """Whether a frame's pixels are on their way, to be polled without sleeping: single-copy
        transfers are off and a frame's send not done yet was posted less than `within_s` ago
        (at most SPIN_S: a receiver that takes longer is likely stopped, and the thread goes
        back to its sleeps)."""
        sends = self._frame_sends
        while sends and (sends[0][0].Test() or now - sends[0][1] >= SPIN_S):
            sends.popleft()
        return any(now - posted < within_s for _, posted in sends)

    def _shut_receives(self) -> None:
        """The thread ends: a frame whose pixels are pending becomes a missing one (dropped,
        the cause says why), handed on as every frame is, so none goes unaccounted."""
        for incoming in self._inbox.cancel_all(self._cancel):
            try:
                self._hand_on(incoming)
            except Exception as exc:
                log.error("rank %d: MPI thread: %s: %s", self.rank, type(exc).__name__, exc)


def _where(thread: threading.Thread) -> str:
    """The innermost line `thread` runs, as "file:line `code` in function" (an MPI call shows as
    the line calling it), and if that is in Python's own library (a lock's wait), the innermost
    line outside it that led there."""
    def line(frame: Any) -> str:
        code = frame.f_code
        text = linecache.getline(code.co_filename, frame.f_lineno).strip()
        return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} `{text}` in {code.co_name}"

    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "an unknown place"
    where = line(frame)
    caller = frame
    while caller is not None and _in_stdlib(caller.f_code.co_filename):
        caller = caller.f_back
    if caller is not None and caller is not frame:
        where += f", called from {line(caller)}"
    return where


_PATHS = sysconfig.get_paths()


def _in_stdlib(filename: str) -> bool:
    """Whether `filename` is Python's own library (a lock's or a queue's wait), not a package
    installed beside it (site-packages may lie inside the standard library's folder)."""
    return filename.startswith(_PATHS["stdlib"]) and not filename.startswith(
        (_PATHS["purelib"], _PATHS["platlib"]))
