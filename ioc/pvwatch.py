"""PVWatch: the latest values of EPICS PVs outside the data path, kept by a protocol client.

Why: `EPICS_PV` NDAttributes (ADCore's NDAttributesFile type) and Table1's asynchronous logs
(a temperature sampled while a file is open) need values of PVs, of this IOC or of others. A
client read (caget) takes a network round trip and may hang for seconds on a PV that is gone;
the frame path and the event loop may not wait on that. So values are not read when they are
needed: a monitor per PV keeps the latest (value, timestamp) here, and a frame takes what is
there (a dict lookup). A PV not connected yet has no value (None).

How: the core imports no protocol library (DESIGN.md 3, "Transports"), so the client is found
by entry point, group `ndflow.pvclients`: `ca` (the default, a name without a scheme or with
`ca://`) and `pva` (`pva://NAME`). Each is a class with `subscribe(name, on_value) -> handle`,
`unsubscribe(handle)` and `close()`; `on_value(value, timestamp)` is called from the client's
own threads, never the event loop's. Subscribing is handed to this module's own thread, so
`watch()` never blocks its caller either.

Listeners: a writer that logs a PV while its file is open adds a listener (called with
(name, value, timestamp) for each update, in the client's thread: it must only queue). Names
nobody has asked for in `IDLE_S` seconds and nobody listens to are dropped, so the set of
monitors follows what clients currently ask for; at most `MAX_PVS` are watched at once (a
client putting ever new names cannot make the IOC open monitors without end).
"""

from __future__ import annotations

import atexit
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import registry

log = logging.getLogger(__name__)

#: at most this many PVs are monitored at once (their names are client input)
MAX_PVS = 256
#: a PV not read and not listened to for this long is no longer monitored
IDLE_S = 120.0
#: the longest PV name accepted (EPICS record names are at most 60 characters, plus field)
MAX_NAME = 128
_NAME = re.compile(r"^(?:(ca|pva)://)?([A-Za-z0-9_:.\-\[\]<>;{}$()]+)$")

Listener = Callable[[str, Any, float], None]


class PVNameError(ValueError):
    """A PV name that cannot be watched; the message says why."""


def check_name(name: str) -> tuple[str, str]:
    """(scheme, PV name) of `name` ("ca" unless it starts with pva://); PVNameError if it is
    not a PV name (empty, too long, spaces or control characters)."""
    text = name.strip()
    if not text:
        raise PVNameError("empty PV name")
    if len(text) > MAX_NAME + 6:
        raise PVNameError(f"PV name of {len(text)} characters (at most {MAX_NAME})")
    found = _NAME.match(text)
    if found is None:
        raise PVNameError(f"{text[:40]!r} is not a PV name")
    return found.group(1) or "ca", found.group(2)


@dataclass
class _Watched:
    scheme: str
    pv: str
    handle: Any = None
    value: Any = None
    timestamp: float = 0.0
    last_asked: float = field(default_factory=time.monotonic)
    listeners: list[Listener] = field(default_factory=list)


class PVWatch:
    """Monitors on PVs by name, their latest values, and listeners (see the module docstring)."""

    def __init__(self, clients: dict[str, Any] | None = None) -> None:
        self._clients: dict[str, Any] = dict(clients or {})  # scheme -> client, made lazily
        self._lock = threading.Lock()  # _watched and the clients table; never held over I/O
        self._watched: dict[str, _Watched] = {}
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- callers (any thread; none of these waits on the network) ---------------------------
    def watch(self, name: str) -> None:
        """Start monitoring `name` (if not already). PVNameError for a bad name, and once
        MAX_PVS are watched."""
        self._entry(name)

    def latest(self, name: str) -> tuple[Any, float] | None:
        """(value, POSIX timestamp) of the last update of `name`, or None before the first
        (not connected yet); starts monitoring it if it is not yet."""
        try:
            entry = self._entry(name)
        except PVNameError:
            return None
        if entry.timestamp == 0.0:
            return None
        return entry.value, entry.timestamp

    def listen(self, name: str, listener: Listener) -> None:
        entry = self._entry(name)
        with self._lock:
            entry.listeners.append(listener)

    def unlisten(self, name: str, listener: Listener) -> None:
        with self._lock:
            entry = self._watched.get(name.strip())
            if entry is not None and listener in entry.listeners:
                entry.listeners.remove(listener)

    def _entry(self, name: str) -> _Watched:
        key = name.strip()
        now = time.monotonic()
        with self._lock:
            entry = self._watched.get(key)
            if entry is not None:
                entry.last_asked = now
                return entry
        scheme, pv = check_name(key)
        with self._lock:
            entry = self._watched.get(key)
            if entry is None:
                self._drop_idle(now)
                if len(self._watched) >= MAX_PVS:
                    raise PVNameError(f"already {MAX_PVS} PVs watched: {key[:40]} not added")
                entry = self._watched[key] = _Watched(scheme, pv)
                self._submit(("subscribe", key, entry))
            entry.last_asked = now
            return entry

    def _drop_idle(self, now: float) -> None:
        """Forget PVs nobody asked for lately (lock held)."""
        for key, entry in list(self._watched.items()):
            if not entry.listeners and now - entry.last_asked > IDLE_S:
                del self._watched[key]
                self._submit(("unsubscribe", key, entry))

    def _submit(self, job: tuple) -> None:
        if self._closed:
            return
        self._jobs.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pvwatch", daemon=True)
            self._thread.start()

    # --- the watcher's thread: talks to the clients ---------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, key, entry = job
            try:
                client = self._client(entry.scheme)
                if kind == "subscribe":
                    entry.handle = client.subscribe(
                        entry.pv, lambda value, ts, k=key, e=entry: self._update(k, e, value, ts))
                elif entry.handle is not None:
                    client.unsubscribe(entry.handle)
            except Exception as exc:  # a client that cannot start: said once per PV
                log.warning("cannot monitor %s: %s", key[:MAX_NAME], exc)

    def _client(self, scheme: str) -> Any:
        client = self._clients.get(scheme)
        if client is None:
            client = self._clients[scheme] = registry.load("pvclients", scheme)()
        return client

    def _update(self, key: str, entry: _Watched, value: Any, timestamp: float) -> None:
        entry.value, entry.timestamp = value, timestamp or time.time()
        for listener in list(entry.listeners):
            try:
                listener(key, value, entry.timestamp)
            except Exception:  # a listener only queues; never let it stop the client thread
                log.exception("PV listener for %s failed", key)

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        for client in list(self._clients.values()):
            try:
                client.close()
            except Exception:
                pass


_shared: PVWatch | None = None
_shared_lock = threading.Lock()


def shared() -> PVWatch:
    """The process's watcher (made at first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PVWatch()
            atexit.register(_shared.close)  # the clients' threads end with the IOC
        return _shared
