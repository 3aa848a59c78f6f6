"""ndflow.plugins.python.memwatch: the resident-memory limit of an algorithm child, measured on
REAL processes (a small Python script that allocates, reserves and forks on command).

What a user relies on: memory in use counts, address space that is only reserved (as a GPU
library does at start-up) does not; pages forked workers share with their parent count once;
the limit is the footprint after loading plus the allowance."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ndflow.plugins.python.memwatch import MB, MemoryWatch, private_bytes, proportional_bytes

pytestmark = pytest.mark.timeout(60)

# Reads commands on stdin, answers "ok" when done, so the test knows the memory is in place.
HOG = r'''
import mmap, os, sys, time
held, kids = [], []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "touch":          # arg MB written: resident
        held.append(b"\x01" * (int(arg) * 2**20))
    elif cmd == "reserve":      # arg GB of address space, never touched (what CUDA does)
        held.append(mmap.mmap(-1, int(arg) * 2**30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                              | getattr(mmap, "MAP_NORESERVE", 0x4000), prot=mmap.PROT_READ))
    elif cmd == "calloc":       # arg MB allocated but never written (a large np.zeros)
        held.append(mmap.mmap(-1, int(arg) * 2**20,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    elif cmd == "fork":         # a worker sharing every page so far; `arg` MB of its own
        pid = os.fork()
        if pid == 0:
            own = b"\x02" * (int(arg) * 2**20)
            os.write(1, b"ok\n")
            time.sleep(3600)
            os._exit(0)
        kids.append(pid)
        time.sleep(0.2)
        continue               # the worker says ok
    print("ok", flush=True)
'''


class Hog:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)

    def do(self, command: str) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        import os
        import signal
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


@pytest.fixture
def hog():
    h = Hog()
    yield h
    h.close()


def over(watch: MemoryWatch) -> str | None:
    """A check now, whatever the sampling interval says."""
    watch._next_check = 0.0
    watch._next_scan = 0.0
    return watch.check()


def test_memory_written_counts_and_passes_the_limit(hog):
    watch = MemoryWatch(hog.proc.pid, allowance_mb=100)
    assert over(watch) is None  # no baseline yet: not limited while loading
    watch.set_baseline()
    base = watch.baseline
    assert base is not None and base < 50 * MB  # a bare interpreter
    hog.do("touch 60")
    assert over(watch) is None
    assert watch.last is not None and watch.last.total - base == pytest.approx(60 * MB, rel=0.1)
    hog.do("touch 60")
    reason = over(watch)
    assert reason is not None and reason.startswith("MemoryError: resident memory 1")
    assert f"over the limit of {(base + 100 * MB) / MB:.0f} MB (memory_mb 100 beyond" in reason


def test_reserved_and_untouched_memory_does_not_count(hog):
    """The reason RLIMIT_AS had to go: 64 GB of address space and 2 GB allocated but never
    written, under an allowance of 50 MB."""
    watch = MemoryWatch(hog.proc.pid, allowance_mb=50)
    watch.set_baseline()
    hog.do("reserve 64")
    hog.do("calloc 2048")
    assert over(watch) is None
    assert watch.last is not None and watch.last.total - watch.baseline < 10 * MB


def test_pages_shared_with_forked_workers_count_once(hog):
    """Three workers forked after the parent wrote 150 MB: a plain sum says 4 x 150 MB, but
    the pages are shared copy-on-write, so the tree holds 150 MB (under a 250 MB allowance)."""
    # confirm_s 60: the second check must not reuse the first walk's shares as they were
    watch = MemoryWatch(hog.proc.pid, allowance_mb=250, confirm_s=60)
    watch.set_baseline()
    hog.do("touch 150")
    for _ in range(3):
        hog.do("fork 0")
    reason = over(watch)
    assert reason is None, reason
    assert watch.last is not None and watch.last.processes == 4 and watch.last.proportional
    plain = sum(private_bytes(pid) for pid in watch._pids)
    assert plain > 500 * MB  # what a plain sum would have said
    # ... while memory a worker writes itself counts in full, naming the processes
    hog.do("fork 200")
    time.sleep(0.1)
    reason = over(watch)
    assert reason is not None and " in 5 processes, over the limit" in reason


def test_a_process_that_is_gone_holds_nothing(hog):
    pid = hog.proc.pid
    hog.close()
    assert private_bytes(pid) == 0 and proportional_bytes(pid) == 0
    watch = MemoryWatch(pid, allowance_mb=1)
    watch.set_baseline()
    assert watch.baseline == 0 and over(watch) is None


def test_samples_are_spaced_by_the_interval(hog):
    watch = MemoryWatch(hog.proc.pid, allowance_mb=10, interval_s=60)
    watch.set_baseline()
    assert watch.check() is None  # the first sample: under
    hog.do("touch 40")
    assert watch.check() is None  # the next one is a minute away
    assert over(watch) is not None


def test_the_baseline_is_the_first_load_only(hog):
    """A reload that grows the footprint does not raise the limit."""
    watch = MemoryWatch(hog.proc.pid, allowance_mb=100)
    watch.set_baseline()
    base = watch.baseline
    hog.do("touch 50")
    watch.set_baseline()
    assert watch.baseline == base


def test_descendants_are_found_from_the_proc_children_lists(hog):
    import psutil

    from ndflow.plugins.python.memwatch import _descendants_psutil, descendants
    hog.do("fork 0")
    hog.do("fork 0")
    tree = descendants(hog.proc.pid)
    assert tree[0] == hog.proc.pid and len(tree) == 3
    assert sorted(tree) == sorted(_descendants_psutil(hog.proc.pid))
    assert sorted(tree[1:]) == sorted(c.pid for c in psutil.Process(hog.proc.pid).children())
