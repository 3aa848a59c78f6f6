"""What the gateway is configured with and what it reports: the upstream archive, its state,
and the counters (with the lock that keeps them consistent)."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Upstream:
    """The archive FTP server that every upload is forwarded to."""

    host: str
    port: int = 21
    user: str = "anonymous"
    password: str = field(default="", repr=False)
    directory: str = "/"  # remote folder files go into; camera subfolders are recreated below
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("upstream host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"upstream port {self.port} is not in 1..65535")
        if self.timeout_s <= 0:
            raise ValueError(f"upstream timeout_s must be > 0, got {self.timeout_s}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class UpstreamState(enum.Enum):
    """Values are the strings an operator sees on a PV."""

    UNKNOWN = "Unknown"
    CONNECTED = "Connected"
    DOWN = "Down"


@dataclass(frozen=True)
class GatewayCounters:
    """A consistent snapshot; `queued` is the number of entries on disk waiting to go upstream,
    `last_file` the relative path of the last completed upload."""

    uploads: int
    forwarded: int
    queued: int
    failures: int
    upstream: UpstreamState
    last_error: str
    last_file: str


class Tally:
    """The live counters behind one lock, shared by the camera sessions, the forwarder and the
    delivery thread. Whoever changes them calls `notify` (after releasing `lock`), which wakes
    the gateway's notifier; a change that must be seen together with a spool change (an entry
    leaving the queue and `forwarded` going up) is made under `lock` by the caller."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.notify = notify
        self.uploads = self.forwarded = self.failures = 0
        self.state = UpstreamState.UNKNOWN
        self.last_error = ""
        self.last_file = ""

    def count(self, *, uploads: int = 0, forwarded: int = 0, failures: int = 0,
              error: str | None = None, last_file: str | None = None) -> None:
        with self.lock:
            self.uploads += uploads
            self.forwarded += forwarded
            self.failures += failures
            if error is not None:
                self.last_error = error
            if last_file is not None:
                self.last_file = last_file
        self.notify()

    def snapshot(self, queued: Callable[[], int]) -> GatewayCounters:
        """`queued` is called under the lock, so it agrees with `forwarded`."""
        with self.lock:
            return GatewayCounters(self.uploads, self.forwarded, queued(), self.failures,
                                   self.state, self.last_error, self.last_file)
