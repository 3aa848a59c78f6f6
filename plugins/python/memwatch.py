"""The memory limit of an algorithm child, enforced from the IOC's side on resident memory.

Why not RLIMIT_AS (what the child used to set on itself): it caps *address space*. GPU libraries
(CUDA under CuPy, PyTorch, JAX) reserve tens of gigabytes of address space when they start,
without touching a page of it, so under any useful cap they cannot even initialise; numpy's
`np.zeros` of a large array is address space too until it is written. What exhausts a machine is
memory in use, so that is what is limited.

What counts: the private anonymous memory each process holds, resident or swapped (RssAnon +
VmSwap in /proc/<pid>/status, about 30 us to read), summed over the child and every process it
started (a multiprocessing pool). Not counted: the shared-memory frames the child maps (they are
the IOC's, already in its pools), mapped files (libraries) and reservations never touched.

Workers forked from the child share its pages copy-on-write, and a plain sum counts those pages
once per worker. So when the sum passes the limit and there is more than one process, the
proportional shares decide (Pss_Anon + SwapPss in /proc/<pid>/smaps_rollup: each shared page
split between its sharers); that read walks the page tables (about 10 ms for a 500 MB process),
so it is only done then, and within `confirm_s` of the last walk only if the shares found then
plus all growth of the plain sum since pass the limit.

The limit is the footprint when the algorithm has loaded (its imports done: the first
declaration) plus the configured allowance (`memory_mb`). The lane samples every `interval_s`
and kills the child's process group once over it; an allocation faster than the machine fills
pages in one interval may overshoot by that much before the kill.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MB = 1024 * 1024


def private_bytes(pid: int) -> int:
    """Anonymous memory of `pid`, resident plus swapped (0 if it is gone)."""
    fields = _fields(Path(f"/proc/{pid}/status"), ("RssAnon:", "VmSwap:"))
    return fields.get("RssAnon:", 0) + fields.get("VmSwap:", 0)


def proportional_bytes(pid: int) -> int:
    """The share of anonymous memory `pid` holds, each page shared copy-on-write divided by the
    processes sharing it; the private count where smaps_rollup is missing (kernels before 5.8
    lack Pss_Anon)."""
    fields = _fields(Path(f"/proc/{pid}/smaps_rollup"), ("Pss_Anon:", "SwapPss:"))
    if "Pss_Anon:" not in fields:
        return private_bytes(pid)
    return fields["Pss_Anon:"] + fields.get("SwapPss:", 0)


def _fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """The `kB` fields `names` of a /proc file, in bytes; {} if the process is gone. Read as
    bytes and searched, not parsed line by line: this runs 10 times a second per child."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:  # gone (or never there): it holds nothing
        return {}
    found: dict[str, int] = {}
    for name in names:
        at = text.find(b"\n" + name.encode())
        if at >= 0:
            found[name] = int(text[at + len(name) + 1:text.index(b"\n", at + 1)].split()[0]) \
                * 1024
    return found


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it. From each thread's /proc children list (a few small
    reads, where psutil would read the status of every process on the machine); psutil where
    the kernel lacks those lists (CONFIG_PROC_CHILDREN)."""
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:  # gone
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except FileNotFoundError:
                if Path(f"/proc/{parent}/task/{tid}").exists():  # no such lists here
                    return _descendants_psutil(pid)
                continue  # the thread ended
            except OSError:
                continue
            for word in text.split():
                child = int(word)
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def _descendants_psutil(pid: int) -> list[int]:
    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:  # gone: the lane sees the exit
        return [pid]


@dataclass(frozen=True)
class Usage:
    """One sample of a process tree."""

    total: int  # bytes, as counted for the limit
    processes: int
    proportional: bool  # shared pages split (True) or a plain sum (False)


class MemoryWatch:
    """Whether the process tree of `pid` is over its allowance: `check()` from the lane's
    thread, which kills the tree when it returns a reason. Not thread-safe (one caller)."""

    def __init__(self, pid: int, allowance_mb: float, interval_s: float = 0.1,
                 rescan_s: float = 1.0, confirm_s: float = 0.5) -> None:
        self.pid = pid
        self.allowance = int(allowance_mb * MB)
        self.interval_s = interval_s
        self.rescan_s = rescan_s  # how often descendants are looked for (a /proc scan)
        self.confirm_s = confirm_s
        self.baseline: int | None = None  # bytes at load; None: not limited yet
        self._pids: list[int] = [pid]
        self._next_check = 0.0
        self._next_scan = 0.0
        self._next_confirm = 0.0
        self._confirmed: tuple[int, int] | None = None  # (plain sum, shares) when last walked
        self.last: Usage | None = None

    @property
    def limit(self) -> int | None:
        return None if self.baseline is None else self.baseline + self.allowance

    def set_baseline(self) -> None:
        """The footprint now (the algorithm has loaded) is what the allowance comes on top of.
        Only the first call counts: a reload that grows the footprint does not raise it."""
        if self.baseline is None:
            self._rescan(time.monotonic())
            self.baseline = self._plain().total

    def usage(self, now: float | None = None) -> Usage:
        """The tree's memory now: the plain sum, or the proportional one when the plain sum is
        over the limit and pages may be shared between several processes."""
        now = time.monotonic() if now is None else now
        if now >= self._next_scan:
            self._rescan(now)
        plain = self._plain()
        limit = self.limit
        if limit is None or plain.total <= limit or plain.processes < 2:
            return plain
        if self._confirmed is not None and now < self._next_confirm:
            # confirmed recently: the share then plus all growth since (new pages are private,
            # so that is an upper bound); only when that passes the limit is it walked again
            plain_then, share_then = self._confirmed
            estimate = share_then + max(plain.total - plain_then, 0)
            if estimate <= limit:
                return Usage(estimate, plain.processes, True)
        total = sum(proportional_bytes(pid) for pid in self._pids)
        self._confirmed = (plain.total, total)
        self._next_confirm = now + self.confirm_s
        return Usage(total, plain.processes, True)

    def check(self, now: float | None = None) -> str | None:
        """None while under the limit (or before the baseline, or between samples); else why
        the tree must be killed, for the user (one line, starting "MemoryError")."""
        now = time.monotonic() if now is None else now
        limit = self.limit
        if limit is None or now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        usage = self.last = self.usage(now)
        if usage.total <= limit:
            return None
        assert self.baseline is not None
        where = f" in {usage.processes} processes" if usage.processes > 1 else ""
        return (f"MemoryError: resident memory {usage.total / MB:.0f} MB{where}, over the "
                f"limit of {limit / MB:.0f} MB (memory_mb {self.allowance / MB:g} beyond the "
                f"{self.baseline / MB:.0f} MB after loading)")

    def _rescan(self, now: float) -> None:
        self._next_scan = now + self.rescan_s
        self._pids = descendants(self.pid)

    def _plain(self) -> Usage:
        sizes = [private_bytes(pid) for pid in self._pids]
        return Usage(sum(sizes), sum(1 for s in sizes if s), False)
