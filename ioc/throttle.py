"""MaxByteRate as NDPluginDriver applies it: a budget of bytes per second for what a plugin
passes on, so a plugin feeding a slow link (a file share, pvAccess across a site) can be held to
what that link takes. A frame over the budget is not passed on; the caller counts it on
DroppedOutputArrays."""

from __future__ import annotations

import threading
import time


class ByteRate:
    """A token bucket one second deep: `rate` bytes may go out per second, in bursts of at most
    one second's worth. Any thread (a plugin's workers deliver concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._level = 0.0  # bytes sent and not yet drained at `rate`

    def over(self, rate: float, nbytes: int) -> bool:
        """Whether `nbytes` more would exceed `rate` bytes/s (0 or less: no limit); if not,
        they are counted as sent."""
        if not rate > 0:
            return False
        with self._lock:
            now = time.monotonic()
            self._level = max(0.0, self._level - (now - self._since) * rate)
            self._since = now
            if self._level + nbytes > rate:
                return True
            self._level += nbytes
            return False
