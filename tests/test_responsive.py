"""Channel Access stays responsive while a port is busy ("one owner per port", DESIGN.md 3).

CA put handlers run on the IOC's one event loop. A put that waited for a lock a data-path thread
holds across processing, file I/O or downstream delivery froze every PV of the IOC for as long
as the slowest plugin took. Here, with real slow work in progress, a client must see:
  (a) reads of any PV, the busy plugin's own included, answered in < 100 ms (median of ~20
      samples taken across the ~3 s of slow work, from a second thread);
  (b) puts to the busy plugin and its neighbours completed (or, for a busy record's start,
      shown on the readback) in < 200 ms each.

Slow work used (all real, nothing mocked):
- SLOW1, a Python algorithm plugin (tests/algorithms/slow_process.py: 3 s per process() call,
  one frame in flight, BlockingCallbacks=Yes) downstream of CB1: CB1 delivers in its worker
  thread, so every delivery from CB1 waits ~3 s for SLOW1.
- HDF1, an HDF5 writer in Capture mode with AutoSave whose NumCapture 2048x2048 frames go out
  zlib level 9 in one go after the last one arrives: a write of several seconds.
- FITS1, a FITS driver watching a folder, whose Folder is changed meanwhile.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import epics
import h5py
import pytest

from conftest import REPO, running_ioc
from test_acquisition import get, put, wait_for

TEST_ALGORITHMS = REPO / "tests" / "algorithms"
GET_LIMIT = 0.100  # s, median of the reads
PUT_LIMIT = 0.200  # s, each put
SLOW_S = 3.0  # SLOW1's process() time
BIG = 2048  # HDF1's frames are BIG x BIG UInt16
NUM_CAPTURE = 10  # frames in HDF1's one slow write


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("responsive")
    for sub in ("fits_a", "fits_b", "h5"):
        (folder / sub).mkdir()
    return folder


@pytest.fixture(scope="module")
def ioc(folder):
    config = (
        f"data_roots: ['{folder}']\n"
        f"algorithm_folders: ['{TEST_ALGORITHMS}']\n"
        f"screens_dir: '{folder / 'screens'}'\n"
        "drivers:\n"
        "  - {type: sim, port: SIM1, prefix: 'cam1:', options: {max_size_x: 64, "
        "max_size_y: 48}}\n"
        f"  - {{type: sim, port: SIM2, prefix: 'cam2:', options: {{max_size_x: {BIG}, "
        f"max_size_y: {BIG}, data_type: UInt16}}}}\n"
        "  - {type: fits, port: FITS1, prefix: 'fits1:', options: {folder: fits_a, "
        "poll_s: 0.05, settle_s: 0.1}}\n"
        "plugins:\n"
        "  - {type: circularbuff, port: CB1, prefix: 'CB1:', input: SIM1, "
        "options: {pre_count: 2, post_count: 1000000}}\n"
        "  - {type: python, port: SLOW1, prefix: 'Slow1:', input: CB1, enabled: true, "
        "blocking: true, options: {file: slow_process.py, pipeline_depth: 1, timeout_s: 30}}\n"
        "  - {type: hdf5, port: HDF1, prefix: 'HDF1:', input: SIM2, enabled: true}\n"
    )
    with running_ioc(config, folder, timeout=60) as proc:
        yield proc


class Reader(threading.Thread):
    """Reads PVs in turn (real CA reads, not monitor values), one every `seconds / samples`.
    A read's time runs from when it was due, so a read that hangs also counts against the
    reads that should have been asked while it hung (one thread cannot ask them meanwhile)."""

    def __init__(self, pvs: list[str], seconds: float = SLOW_S, samples: int = 20) -> None:
        super().__init__(daemon=True)
        self.pvs, self.seconds, self.samples = pvs, seconds, samples
        self.times: list[tuple[str, float]] = []
        self.failed: list[str] = []

    def run(self) -> None:
        epics.ca.use_initial_context()
        start = time.monotonic()
        for i in range(self.samples):
            due = start + i * self.seconds / self.samples
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pv = self.pvs[i % len(self.pvs)]
            value = epics.caget(pv, timeout=10, use_monitor=False)
            self.times.append((pv, time.monotonic() - due))
            if value is None:
                self.failed.append(pv)

    def check(self) -> str | None:
        """A complaint, or None when the reads were fast."""
        self.join(timeout=60)
        median = statistics.median(t for _, t in self.times)
        slowest = max(self.times, key=lambda x: x[1])
        if self.failed or len(self.times) < self.samples or median >= GET_LIMIT:
            return (f"reads: median {median * 1e3:.0f} ms (limit {GET_LIMIT * 1e3:.0f}), "
                    f"slowest {slowest[0]} {slowest[1] * 1e3:.0f} ms, "
                    f"{len(self.times)}/{self.samples} done, failed {self.failed}")
        return None


class Puts:
    """Times puts as a client sees them; collects every slow one before the test fails."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def wait(self, label: str, pv: str, value) -> None:
        """A put with completion (caput wait=True)."""
        t = time.perf_counter()
        ok = epics.caput(pv, value, wait=True, timeout=30)
        self.times[label] = time.perf_counter() - t
        assert ok == 1, f"put {pv}={value!r} failed"

    def start(self, label: str, pv: str, value, readback: str, expected) -> None:
        """A busy record's start: no completion to wait for (it completes when the work is
        done), so the time until its readback shows the new state."""
        t = time.perf_counter()
        assert epics.caput(pv, value, wait=False) == 1
        seen = wait_for(lambda: epics.caget(readback, use_monitor=False) == expected,
                        timeout=30, interval=0.005)
        self.times[label] = time.perf_counter() - t
        assert seen, f"{readback} never became {expected!r}"

    def slow(self) -> dict[str, str]:
        return {k: f"{t * 1e3:.0f} ms" for k, t in self.times.items() if t >= PUT_LIMIT}

    def report(self) -> str:
        return ", ".join(f"{k}: {t * 1e3:.0f} ms" for k, t in self.times.items())


def connect(pvs: list[str]) -> None:
    for pv in pvs:
        get(pv, use_monitor=False)


def test_slow_plugin_does_not_freeze_channel_access(ioc, folder):
    p = ioc.prefix
    put(p + "Slow1:Seconds", SLOW_S)
    for name, value in [("PreCount", 2), ("PostCount", 1000000), ("PresetTriggerCount", 1),
                        ("TriggerCalc", "1")]:  # every frame triggers: all go to SLOW1
        put(p + "CB1:" + name, value)
    for name, value in [("ImageMode", "Continuous"), ("AcquireTime", 0.001),
                        ("AcquirePeriod", 0.1)]:
        put(p + "cam1:" + name, value)
    reads = [p + "Slow1:ArrayCounter_RBV", p + "Slow1:EnableCallbacks_RBV",
             p + "Slow1:Seconds_RBV", p + "CB1:Capture_RBV", p + "CB1:CurrentQty_RBV",
             p + "cam1:ArrayCounter_RBV", p + "fits1:Folder_RBV", p + "HDF1:NumCaptured_RBV"]
    connect(reads + [p + "CB1:Capture", p + "Slow1:EnableCallbacks", p + "Slow1:ProcessPlugin",
                     p + "fits1:Folder"])
    put(p + "CB1:Capture", 1, wait=False)
    put(p + "cam1:Acquire", 1, wait=False)
    try:
        # The second frame SLOW1 gets waits in its process() for the first one's 3 s: from
        # then on CB1's worker is inside a delivery that lasts seconds, again and again.
        assert wait_for(lambda: get(p + "Slow1:ArrayCounter_RBV", use_monitor=False) >= 2,
                        timeout=30), "SLOW1 never got a second frame"
        reader = Reader(reads)
        reader.start()
        puts = Puts()
        puts.wait("Slow1:EnableCallbacks", p + "Slow1:EnableCallbacks", 1)
        puts.wait("CB1:Capture=0", p + "CB1:Capture", 0)
        assert get(p + "CB1:Capture_RBV", use_monitor=False) == 0
        puts.start("CB1:Capture=1", p + "CB1:Capture", 1, p + "CB1:Capture_RBV", 1)
        puts.wait("fits1:Folder", p + "fits1:Folder", str(folder / "fits_b"))
        assert get(p + "fits1:Folder_RBV", use_monitor=False, as_string=True) == str(folder / "fits_b")
        puts.wait("fits1:Pattern", p + "fits1:Pattern", "*.fits")
        # The Plugin base's part: ProcessPlugin of a plugin inside process() only queues.
        puts.wait("Slow1:ProcessPlugin", p + "Slow1:ProcessPlugin", 1)
        puts.wait("CB1:Capture=0 again", p + "CB1:Capture", 0)
        problems = [reader.check(), f"slow puts {puts.slow()}" if puts.slow() else None]
        problems = [x for x in problems if x]
        assert not problems, "; ".join(problems) + f" (all puts: {puts.report()})"
        print(f"\nslow plugin window: {puts.report()}; read median "
              f"{statistics.median(t for _, t in reader.times) * 1e3:.1f} ms")
    finally:
        put(p + "cam1:Acquire", 0, wait=False)
        epics.caput(p + "CB1:Capture", 0, wait=False)
        put(p + "fits1:Folder", str(folder / "fits_a"), wait=False)


def test_slow_file_write_does_not_freeze_channel_access(ioc, folder):
    p = ioc.prefix
    for name, value in [("FilePath", str(folder / "h5")), ("FileName", "slow"),
                        ("FileNumber", 1), ("AutoIncrement", "Yes"),
                        ("FileTemplate", "%s%s_%3.3d.h5"), ("FileWriteMode", "Capture"),
                        ("NumCapture", NUM_CAPTURE), ("AutoSave", "Yes"),
                        ("Compression", "zlib"), ("ZLevel", 9)]:
        put(p + "HDF1:" + name, value)
    for name, value in [("SimMode", "Offset&Noise"), ("Noise", 4000), ("ImageMode", "Multiple"),
                        ("NumImages", NUM_CAPTURE), ("AcquireTime", 0.001),
                        ("AcquirePeriod", 0.0)]:
        put(p + "cam2:" + name, value)
    reads = [p + "HDF1:NumCaptured_RBV", p + "HDF1:Capture_RBV", p + "HDF1:FileName_RBV",
             p + "HDF1:ArrayCounter_RBV", p + "cam2:ArrayCounter_RBV",
             p + "cam1:ArrayCounter_RBV", p + "CB1:Capture_RBV", p + "fits1:Folder_RBV"]
    connect(reads + [p + "HDF1:FreeCapture", p + "HDF1:Capture", p + "HDF1:FileName"])
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV", use_monitor=False) == 1)
    put(p + "cam2:Acquire", 1, wait=False)
    # NumCaptured reaching NumCapture with Capture still on: the one slow write has begun.
    assert wait_for(lambda: get(p + "HDF1:NumCaptured_RBV", use_monitor=False) == NUM_CAPTURE,
                    timeout=30, interval=0.01), "HDF1 never held NumCapture frames"
    reader = Reader(reads)
    reader.start()
    puts = Puts()
    puts.wait("HDF1:FreeCapture", p + "HDF1:FreeCapture", 1)
    writing = get(p + "HDF1:Capture_RBV", use_monitor=False) == 1
    puts.wait("HDF1:FileName", p + "HDF1:FileName", "next")
    puts.wait("HDF1:FilePath", p + "HDF1:FilePath", str(folder / "h5"))
    puts.wait("HDF1:NumCapture", p + "HDF1:NumCapture", NUM_CAPTURE)
    problems = [reader.check(), f"slow puts {puts.slow()}" if puts.slow() else None]
    problems = [x for x in problems if x]
    assert not problems, "; ".join(problems) + f" (all puts: {puts.report()})"
    assert writing, "the write was over before the puts: the test did not test anything"
    print(f"\nslow write window: {puts.report()}; read median "
          f"{statistics.median(t for _, t in reader.times) * 1e3:.1f} ms")
    # The write itself is unharmed: one file with every frame, written after the puts.
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV", use_monitor=False) == 0, timeout=60)
    with h5py.File(folder / "h5" / "slow_001.h5", "r") as f:
        assert f["entry/data/data"].shape == (NUM_CAPTURE, BIG, BIG)
    assert get(p + "HDF1:WriteStatus", use_monitor=False) == 0
