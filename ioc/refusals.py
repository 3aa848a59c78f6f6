"""One log line per PV per few seconds, whatever a client sends.

Every transport's put refusals and clamps, and the warnings a put hook says, go through the one
limiter `REFUSALS`, so a fuzzing client cannot flood the log whichever protocol it uses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

log = logging.getLogger("ndflow.puts")


class RefusalLog:
    """Rate-limits what a put costs the log: the first refusal or clamp of a PV is one line
    naming the PV and the value; further ones within `interval` seconds are counted, and the
    count is one line when the interval ends (`loop` scheduling) or in front of the next line.
    So a client hammering a PV with bad values writes at most one line per PV per interval."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # PV -> when its current interval began
        self._held: dict[str, int] = {}  # PV -> lines not written in this interval
        self._loggers: dict[str, logging.Logger] = {}

    def refuse(self, logger: logging.Logger, pv: str, value: str, reason: str) -> bool:
        return self.line(logger, pv, f"{pv}: put refused, value {value}: {reason}")

    def line(self, logger: logging.Logger, pv: str, text: str,
             level: int = logging.WARNING) -> bool:
        """Log `text` unless `pv` had a line less than `interval` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            since = self._since.get(pv)
            held_back = since is not None and now - since < self.interval
            if held_back:
                held = self._held.get(pv, 0) + 1
                self._held[pv] = held
                self._loggers[pv] = logger
            else:
                held = self._held.pop(pv, 0)
                self._loggers.pop(pv, None)
                self._since[pv] = now
        if held_back:
            if held == 1:  # the first line held back in this interval: count it out at its end
                self._schedule(pv, since + self.interval - now)
            return False
        if held:
            text += f" ({held} more refused or clamped puts of this PV were not logged)"
        logger.log(level, "%s", text)
        return True

    def _schedule(self, pv: str, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script calling handle_put): told with the next line
            return
        loop.call_later(max(0.0, delay), self.flush, pv)

    def flush(self, pv: str) -> None:
        """The interval of `pv` is over: say how many lines it held back, and start a new one
        (so a steady flood is one line per interval)."""
        with self._lock:
            held = self._held.pop(pv, 0)
            logger = self._loggers.pop(pv, log)
            if held:
                self._since[pv] = time.monotonic()
        if held:
            logger.warning("%s: %d more refused or clamped puts in the last %.0f s were not "
                           "logged one by one", pv, held, self.interval)


#: every component's put refusals and clamps go through this one limiter
REFUSALS = RefusalLog()
