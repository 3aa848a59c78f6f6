"""PvaPy's streaming framework on `Pva1:Image` (issue 13, acceptance 2): a `pvapy-hpc-consumer`,
run as a user runs it, with PvaPy's AdImageProcessor, consumes 512x512 UInt8 frames of a real
ndflow IOC with 0 missed frames; and the same consumer counts the frames the IOC does not post.

The verdict is the framework's own: its statistics (received, processed, missed, overruns, first
and last uniqueId), read from the consumer's status PV after a `get_stats` command on its control
PV, both served by the consumer's pvAccess server on ports of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from p4p.client.thread import Context

from conftest import free_port_pair, running_ioc
from test_acquisition import get, put, wait_for

CONSUMER = Path(sys.executable).with_name("pvapy-hpc-consumer")
PROCESSOR = "pvapy.hpc.adImageProcessor.AdImageProcessor"

pytestmark = pytest.mark.skipif(not CONSUMER.exists(), reason="pvapy-hpc-consumer not installed")

CONFIG = """
transports: [ca, pva]
drivers:
  - type: sim
    port: SIM1
    prefix: "cam1:"
    options: {max_size_x: 512, max_size_y: 512, data_type: UInt8}
plugins:
  - {type: pva, port: PVA1, prefix: "Pva1:", input: SIM1, blocking: true, enabled: true}
"""
FRAMES = 200
PERIOD = 0.01  # 100 frames/s: a small fraction of what the consumer takes (bench/pva_stream.py)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("pvapy")) as ioc:
        p = ioc.prefix
        for name, value in [("ImageMode", "Multiple"), ("NumImages", FRAMES),
                            ("AcquireTime", 0.0), ("AcquirePeriod", PERIOD),
                            ("DataType", "UInt8"), ("ColorMode", "Mono"),
                            ("SimMode", "LinearRamp")]:
            put(p + "cam1:" + name, value)
        yield ioc


class Consumer:
    """`pvapy-hpc-consumer` in a child process, its status and control PVs on its own ports."""

    def __init__(self, channel: str, folder: Path) -> None:
        port = free_port_pair()
        name = f"ndflowtest{os.getpid()}:consumer"
        self.status, self.control = f"{name}:1:status", f"{name}:1:control"
        env = {**os.environ,  # conftest's EPICS_PVA_ADDR_LIST: it finds the IOC's Pva1:Image
               "EPICS_PVAS_SERVER_PORT": str(port), "EPICS_PVAS_BROADCAST_PORT": str(port + 1),
               "EPICS_PVA_BROADCAST_PORT": str(port + 1), "PYTHONUNBUFFERED": "1"}
        self.log_path = folder / "consumer.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(CONSUMER), "--input-channel", channel, "--processor-class", PROCESSOR,
             "--status-channel", f"{name}:*:status", "--control-channel", f"{name}:*:control",
             "--server-queue-size", str(FRAMES), "--report-period", "5", "--runtime", "120",
             "--disable-curses"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.ctxt = Context("pva", nt=False, conf={
            "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{port + 1}", "EPICS_PVA_AUTO_ADDR_LIST": "NO"})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def tail(self) -> str:
        """The consumer's last statistics report, for an assertion message."""
        return self.log()[-2500:]

    def stats(self, timeout: float = 15.0) -> dict[str, Any]:
        """The consumer's statistics as of now: `get_stats` (run 0.1 s later by the consumer),
        then its status PV once that has a new objectId."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"consumer exited:\n{self.log()}"
            try:
                before = self.ctxt.get(self.status, timeout=2)["objectId"]
                self.ctxt.put(self.control, {"command": "get_stats"}, timeout=2)
                for _ in range(40):
                    time.sleep(0.05)
                    value = self.ctxt.get(self.status, timeout=2)
                    if value["objectId"] != before:
                        return {"received": value["receiverStats.nReceived"],
                                "overruns": value["receiverStats.nOverruns"],
                                "processed": value["processorStats.nProcessed"],
                                "missed": value["processorStats.nMissed"],
                                "errors": value["processorStats.nErrors"],
                                "first_id": value["processorStats.firstObjectId"],
                                "last_id": value["processorStats.lastObjectId"]}
            except TimeoutError:  # its pvAccess server is not up yet
                time.sleep(0.2)
        raise AssertionError(f"no statistics from the consumer:\n{self.log()}")

    def close(self) -> None:
        self.ctxt.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def consumer(ioc, tmp_path):
    c = Consumer(ioc.prefix + "Pva1:Image", tmp_path)
    try:
        # connected: its monitor has had the PV's value on connection (the one update the
        # framework skips, --skip-initial-updates 1)
        assert wait_for(lambda: c.stats()["received"] >= 1, timeout=30), c.log()
        yield c
    finally:
        c.close()


def acquire(p: str) -> tuple[int, int]:
    """FRAMES frames (Multiple); the first and last uniqueId the driver gave."""
    first = get(p + "cam1:ArrayCounter_RBV") + 1
    put(p + "cam1:Acquire", 1, wait=True, timeout=60)  # completes when the acquisition does
    last = get(p + "cam1:ArrayCounter_RBV")
    assert last - first + 1 == FRAMES
    return first, last


def settled(c: Consumer, last: int) -> dict[str, Any]:
    """The consumer's statistics once it has the last frame (or stopped getting any)."""
    stats = c.stats()
    deadline = time.monotonic() + 10
    while stats["last_id"] < last and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = c.stats()
    return stats


def test_pvapy_hpc_consumer_takes_every_512x512_frame_with_none_missed(ioc, consumer):
    p = ioc.prefix
    put(p + "Pva1:MinCallbackTime", 0.0)
    first, last = acquire(p)
    stats = settled(consumer, last)
    assert stats == {"received": FRAMES + 1, "overruns": 0, "processed": FRAMES, "missed": 0,
                     "errors": 0, "first_id": first, "last_id": last}, consumer.tail()
    assert get(p + "Pva1:ArrayCounter_RBV") >= FRAMES
    assert get(p + "Pva1:ArraySize0_RBV") == 512 and get(p + "Pva1:ArraySize1_RBV") == 512


def test_the_consumer_counts_the_frames_the_ioc_does_not_post(ioc, consumer):
    """The check above can fail: Pva1 skipping frames (MinCallbackTime, as a slow plugin drops
    them) shows up in the framework's statistics as missed frames, exactly those."""
    p = ioc.prefix
    put(p + "Pva1:MinCallbackTime", 0.035)  # about one frame in four is posted
    posted_before = get(p + "Pva1:ArrayCounter_RBV")
    try:
        first, last = acquire(p)
    finally:
        put(p + "Pva1:MinCallbackTime", 0.0)
    posted = get(p + "Pva1:ArrayCounter_RBV") - posted_before
    last_posted = get(p + "Pva1:UniqueId_RBV")
    assert 20 < posted < FRAMES / 2 and last - 4 < last_posted <= last
    stats = settled(consumer, last_posted)
    assert stats["processed"] == posted, consumer.tail()
    assert (stats["first_id"], stats["last_id"]) == (first, last_posted)
    span = stats["last_id"] - stats["first_id"] + 1
    assert stats["missed"] == span - stats["processed"] > FRAMES / 3
    assert stats["overruns"] == 0 and stats["errors"] == 0
