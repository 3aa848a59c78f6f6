"""LogPVs: the values of other PVs while a file is open, each with its time (Table1's `logs/`).

A `PVLog` listens to the PVs named (Channel Access, or `pva://` for pvAccess) through the
process's shared watcher (`ndflow.pvwatch`): every change, or with a period one sample per PV
every `period` seconds. Samples are only queued by the clients' threads; the writer drains them
when it writes a block. The value a PV had when the log started is its first sample, even if it
never changes.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Any, Callable

from ndflow import pvwatch

MAX_LOG_PVS = 16
#: samples kept while the writer has not drained them (a PV changing faster than files are
#: written drops its oldest)
MAX_PENDING_SAMPLES = 100_000


def log_pv_names(text: str) -> list[str]:
    """The PV names of a LogPVs value (spaces or commas between them), each checked;
    ValueError saying what is wrong."""
    names = [n for n in re.split(r"[\s,]+", text.strip()) if n]
    if len(names) > MAX_LOG_PVS:
        raise ValueError(f"{len(names)} PVs: at most {MAX_LOG_PVS}")
    out: list[str] = []
    for name in names:
        try:
            pvwatch.check_name(name)
        except pvwatch.PVNameError as exc:
            raise ValueError(str(exc)) from None
        if name not in out:
            out.append(name)
    return out


class PVLog:
    """The samples of the PVs of one LogPVs value, between `start` and `stop`."""

    def __init__(self, name: str, warn: Callable[[str, int], None]) -> None:
        self.name = name  # of the sampling thread
        self._warn = warn  # (text, level): a bad name said, not fatal
        self._samples: collections.deque = collections.deque(maxlen=MAX_PENDING_SAMPLES)
        self._logged: list[str] = []
        self._sampler: threading.Thread | None = None
        self._sampling = threading.Event()

    def start(self, text: str, period: float) -> None:
        try:
            names = log_pv_names(text)
        except ValueError as exc:  # stored before a check existed: said, not fatal
            self._warn(f"LogPVs: {exc}", logging.WARNING)
            names = []
        watch = pvwatch.shared()
        self._logged = []
        for name in names:
            try:  # listening first: no update falls between the value read below and it
                if not period:
                    watch.listen(name, self._on_sample)
                latest = watch.latest(name)
            except pvwatch.PVNameError as exc:
                self._warn(f"LogPVs: {exc}", logging.WARNING)
                continue
            self._logged.append(name)
            if latest is not None and not any(n == name and t == latest[1]
                                              for n, _, t in list(self._samples)):
                # the value when the log started, even if it never changes
                self._samples.appendleft((name, *latest))
        if self._logged and period:
            self._sampling = threading.Event()
            self._sampler = threading.Thread(target=self._sample_every, name=self.name,
                                             args=(list(self._logged), period, self._sampling),
                                             daemon=True)
            self._sampler.start()

    def stop(self) -> None:
        watch = pvwatch.shared()
        for name in self._logged:
            watch.unlisten(name, self._on_sample)
        self._sampling.set()
        self._sampler = None
        self._logged = []

    def drain(self) -> dict[str, list[tuple[float, Any]]]:
        """The samples queued since the last drain, by PV: [(POSIX time, value)]."""
        taken: dict[str, list[tuple[float, Any]]] = {}
        while self._samples:
            name, value, timestamp = self._samples.popleft()
            taken.setdefault(name, []).append((timestamp, value))
        return taken

    def clear(self) -> None:
        self._samples.clear()

    def _on_sample(self, name: str, value: Any, timestamp: float) -> None:
        """A monitor update (the client's thread): only queued."""
        self._samples.append((name, value, timestamp))

    def _sample_every(self, names: list[str], period: float, stop: threading.Event) -> None:
        watch = pvwatch.shared()
        while not stop.wait(period):
            now = time.time()
            for name in names:
                latest = watch.latest(name)
                if latest is not None:
                    self._samples.append((name, latest[0], now))
