"""The pva driver's link to its PV: connection state (PvConnection_RBV) and the thread that
watches the PV whether or not the driver acquires.

Two monitors read the PV, both on the driver's one pvAccess client Context (so one Channel):
- the probe (this module's thread, `<port>-pva`): the PV's `uniqueId` alone, open while a name is
  set; it tells whether a server answers for the name and whether it is an NTNDArray;
- the frame monitor (the acquisition thread's, ndflow.drivers.pva): open while acquiring.

`Connection` combines them: Up means the probe is connected and, while acquiring, the frame
monitor has had its first update since it was (re)opened or reconnected, i.e. it is subscribed
and the server will send it the next frame (pvaDriver's PvConnection follows its monitor). A
client that waits for Up after changing PvName, or after the source restarted, and then starts
its source therefore loses no frame.

Finding a restarted server. PVXS searches for a disconnected channel at growing intervals
(1, 2, 3 ... 30 s) and hurries all searches when a beacon shows a new server, at most once per
30 s, by one fast turn (0.2 s a tick) of its 30-bucket search ring. A channel searched during
that fast turn is put back in the bucket it was searched from, so its next search is a whole turn
later: 6 to 30 s. When the source restarts just after anything else made the client hurry (a
server started, the client's own start), its new beacon is ignored (hurried less than 30 s ago)
and the channel waits that long. So the link renews a channel that stays disconnected for
RENEW_S: it drops it from the Context's cache (p4p `Context.disconnect(name)`) and reopens the
probe, whose new Channel is searched at once (and on the next tick); the frame monitor is reopened
on it too (`on_renew`). A source that returns is thus found within about RENEW_S, at the cost of
one search of one name every RENEW_S while it is away.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

DOWN, UP = 0, 1
#: the probe's request: the uniqueId alone (a few bytes per frame), enough to tell connection
PROBE_REQUEST = "field(uniqueId)"
#: a name nobody answers for this long is reported as not found (searching goes on)
NOT_FOUND_AFTER_S = 2.0
#: after the server ended or refused a monitor, wait this long before asking again
RETRY_S = 1.0
#: a channel disconnected (or not found) this long is renewed: searched again at once
RENEW_S = 2.0


class Connection:
    """PvConnection_RBV from the probe's and the frame monitor's states (any thread)."""

    def __init__(self, show: Callable[[int], None]) -> None:
        self._show = show
        self._lock = threading.Lock()  # a state change and its shown value, as one step
        self.probe_up = False
        #: None: not acquiring (no frame monitor); False: the frame monitor is not live (opened,
        #: reconnecting, to be reopened on a new name); True: live, or trusted to be (opened
        #: on a connected PV at the start of an acquisition, which waits for its first update)
        self.frames: bool | None = None

    def probe(self, up: bool) -> None:
        with self._lock:
            self.probe_up = up
            self._update()

    def frame_monitor(self, live: bool | None) -> None:
        with self._lock:
            self.frames = live
            self._update()

    def frame_monitor_replaced(self) -> None:
        """PvName changed or the channel was renewed: while acquiring, Down until the new
        frame monitor is live."""
        with self._lock:
            if self.frames is not None:
                self.frames = False
                self._update()

    def _update(self) -> None:
        self._show(UP if self.probe_up and self.frames is not False else DOWN)


class Link:
    """The link thread: opens the probe on the current name, reports what it sees, and renews a
    channel left disconnected (see the module docstring)."""

    def __init__(self, port: str, context: Any, connection: Connection,
                 message: Callable[[str, int], None], on_renew: Callable[[], None],
                 log: logging.Logger) -> None:
        self._context = context
        self._connection = connection
        self._message = message
        self._on_renew = on_renew
        self._log = log
        self._names: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._probe: Any = None
        self._said = ""  # the last warning (each said once, not at every retry)
        #: (name, uniqueId) of the probe's latest update: a server answered for that name
        self._seen: tuple[str, int | None] | None = None
        self._wanted: str | None = None  # the name asked for last (the thread may lag)
        self._lock = threading.Lock()  # the name asked for, and what is said of it
        self.thread = threading.Thread(target=self._loop, name=f"{port}-pva", daemon=True)

    def start(self, name: str) -> None:
        self.thread.start()
        self.rename(name)

    def rename(self, name: str) -> None:
        """Read `name` from now on (any thread): Down at once, so that a client waiting for Up
        after changing PvName never sees the previous PV's."""
        with self._lock:
            self._wanted, self._seen = name, None
            self._connection.probe(False)
        self._names.put(name)
        self._wake.set()

    def answered(self, name: str) -> bool:
        """Whether the probe has had an update (or a refusal) from a server for `name`."""
        seen = self._seen
        return seen is not None and seen[0] == name

    def seen_id(self, name: str) -> int | None:
        """The uniqueId of the probe's latest update for `name`: the frame the PV holds."""
        seen = self._seen
        return seen[1] if seen is not None and seen[0] == name else None

    def stop(self) -> None:
        self._quit.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    # --- the thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        name, opened, found, retry = "", 0.0, False, 0.0
        down_since = 0.0  # when the probe's channel was last known not connected
        while not self._quit.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._quit.is_set():
                break
            renamed = False
            while True:
                try:
                    name = self._names.get_nowait()
                    renamed = True
                except queue.Empty:
                    break
            now = time.monotonic()
            if renamed:
                self._said = ""
            if renamed or (self._probe is None and name and now >= retry):
                self._close_probe()
                found, opened, down_since = False, now, now
                if not name:
                    self._message("no PvName: not reading any PV", logging.INFO)
                    continue
                if not self._open_probe(name):
                    retry = now + RETRY_S
                    continue
                if renamed:
                    self._message(f"searching for {short(name)}", logging.INFO)
            try:
                ended = self._drain(name)
            except Exception as exc:  # never let the link thread die
                self._log.error("PV link: %s: %s", type(exc).__name__, exc)
                ended = True
            if ended:
                self._close_probe()
                retry = time.monotonic() + RETRY_S
            now = time.monotonic()
            if self._connection.probe_up or self._probe is None:
                down_since = now
            elif now - down_since >= RENEW_S:
                self._renew(name)
                down_since = now
            if self._connection.probe_up:
                found = True
            elif name and not found and now - opened >= NOT_FOUND_AFTER_S:
                found = True  # said once per name
                self._message(f"PV {short(name)} not found (no server answers; still searching)",
                              logging.WARNING)
        self._close_probe()

    def _renew(self, name: str) -> None:
        """A new Channel for `name`, searched at once; the frame monitor follows it."""
        self._log.debug("PV %s: disconnected for %.0f s, searching again", name, RENEW_S)
        self._context.disconnect(name)  # out of the cache: the next monitor gets a new one
        self._close_probe()
        self._open_probe(name)
        self._on_renew()

    def _open_probe(self, name: str) -> bool:
        try:
            self._probe = self._context.monitor(name, self._wake.set, request=PROBE_REQUEST)
            return True
        except Exception as exc:  # a name p4p cannot even ask for
            self._say(f"PvName {short(name)}: cannot monitor: {exc}")
            return False

    def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()

    def _drain(self, name: str) -> bool:
        """Pop everything the probe holds; True if the monitor ended (to be reopened)."""
        from p4p.client.raw import Disconnected, Finished, RemoteError
        probe = self._probe
        while probe is not None:
            item = probe.pop()
            if item is None:
                return False
            if isinstance(item, Finished):
                self._tell(name, False)
                self._say(f"PV {short(name)}: the server closed it")
                return True
            if isinstance(item, Disconnected):
                if self._tell(name, False):
                    self._message(f"PV {short(name)} disconnected; waiting for it to return",
                                  logging.WARNING)
                continue
            if isinstance(item, RemoteError):
                # the channel exists (a server answered) but has no uniqueId: not a frame PV
                self._tell(name, True, None)
                self._say(f"PV {short(name)} is not an NTNDArray (no uniqueId field: {item})")
                return True
            if isinstance(item, Exception):
                self._say(f"PV {short(name)}: {type(item).__name__}: {item}")
                return True
            uid = item.get("uniqueId")
            if self._tell(name, True, uid if isinstance(uid, int) else None) is False:
                self._said = ""
                self._message(f"PV {short(name)} connected", logging.INFO)
        return False

    def _tell(self, name: str, up: bool, uid: int | None = None) -> bool | None:
        """The probe's news of `name`, unless PvName has changed since (it is about the
        previous PV: None). `uid`: the frame the PV holds (when up). Whether it was up."""
        with self._lock:
            if name != self._wanted:
                return None
            was = self._connection.probe_up
            if up:
                self._seen = (name, uid)
            self._connection.probe(up)
            return was

    def _say(self, text: str) -> None:
        """A warning about the PV, said once until something changes (the link retries every
        second; the log and the status should not)."""
        if text != self._said:
            self._said = text
            self._message(text, logging.WARNING)


def short(name: str, limit: int = 60) -> str:
    """A PV name as status messages show it: a long one is cut, so the message's reason still
    fits StatusMessage_RBV."""
    return name if len(name) <= limit else f"{name[:limit - 3]}..."
