"""The pva driver's connection logic in one process: a p4p server here, the driver's monitors on
its own client Context, the acquisition thread's steps (prepare, produce_frame) run by a thread
of the test. What is checked is what a user relies on:

- PvConnection_RBV Up after a PvName change while acquiring means the frame monitor is
  subscribed: a frame posted once Up shows is received, even when the acquisition thread was
  busy (a slow plugin, AcquirePeriod) when the name changed;
- a source server that restarts just after the client hurried its searches (another server
  appeared) is found again within seconds, not after PVXS's 6-30 s search-ring turn.
"""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from p4p import Value
from p4p.nt import NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from ndflow.driver import CONTINUOUS, FrameContext
from ndflow.drivers.pva import PVADriver, PVAOptions
from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray
from ndflow.pva.ntndarray import TYPE
from ndflow.pva.ntndarray_stream import to_value

A, B = "LINKTEST:a", "LINKTEST:b"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(uid: int) -> Value:
    array = NDArray.from_numpy(np.full((4, 6), uid, np.uint16))
    array.stamp(uid, 1_750_000_000.0 + uid)
    return to_value(array)


class Source:
    """A p4p server on a private search port, restartable on the same TCP port."""

    def __init__(self, search_port: int) -> None:
        self.search_port = search_port
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.pvs = {A: SharedPV(initial=frame(1)), B: SharedPV(initial=frame(3))}
        self.server: Server | None = None
        self.start()

    def conf(self, tcp_port: int) -> dict[str, str]:
        return {"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
                "EPICS_PVAS_SERVER_PORT": str(tcp_port),
                "EPICS_PVAS_BROADCAST_PORT": str(self.search_port),
                "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
                "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1"}

    def start(self) -> None:
        self.server = Server(providers=[self.pvs], conf=self.conf(self.tcp_port), useenv=False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def another_server(self) -> Server:
        """A server that has just started: its first beacon makes clients hurry their
        searches (one fast turn of PVXS's search ring)."""
        return Server(providers=[{"LINKTEST:other": SharedPV(nt=NTScalar("d"), initial=0.0)}],
                      conf=self.conf(0), useenv=False)


class Acquiring:
    """The acquisition thread's part, run by a thread of the test: prepare(), then
    produce_frame() in a loop (Continuous), each frame kept; `busy` holds the loop between two
    frames, as a slow plugin or AcquirePeriod does."""

    def __init__(self, driver: PVADriver) -> None:
        self.driver = driver
        self.frames: list[NDArray] = []
        self.busy = threading.Event()
        self.stop = threading.Event()
        self.acquisition = SimpleNamespace(settings={"ImageMode": CONTINUOUS, "NumImages": 1},
                                           first_id=None)
        driver.prepare(self.acquisition.settings)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        index = 0
        while not self.stop.is_set():
            while self.busy.is_set() and not self.stop.is_set():
                time.sleep(0.01)
            got = self.driver.produce_frame(FrameContext(self.acquisition, index, self.stop))
            if got is not None:
                self.frames.append(got)
                index += 1

    def end(self) -> None:
        self.stop.set()
        self.driver.stop_hardware()
        self.thread.join(timeout=5)


@pytest.fixture
def source(monkeypatch) -> Iterator[Source]:
    port = free_port(socket.SOCK_DGRAM)
    # the driver's Context reads these (useenv=True), as in an IOC
    monkeypatch.setenv("EPICS_PVA_ADDR_LIST", f"127.0.0.1:{port}")
    monkeypatch.setenv("EPICS_PVA_AUTO_ADDR_LIST", "NO")
    monkeypatch.setenv("EPICS_PVA_BROADCAST_PORT", str(port))
    src = Source(port)
    yield src
    src.stop()


@pytest.fixture
def driver(source) -> Iterator[PVADriver]:
    drv = PVADriver("PVA1", "cam1:", PortGraph(), options=PVAOptions(pv_name=A))
    drv.start()
    assert wait_for(lambda: up(drv))
    yield drv
    drv.shutdown()


def up(driver: PVADriver) -> bool:
    return driver.values["PvConnection_RBV"] == 1


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


def test_up_after_a_pv_name_change_while_acquiring_means_the_next_frame_arrives(driver,
                                                                                 source):
    acq = Acquiring(driver)
    try:
        acq.busy.set()  # after its next frame, the loop is held (a slow plugin)
        source.pvs[A].post(frame(2))
        assert wait_for(lambda: [f.unique_id for f in acq.frames] == [2])
        driver.put_PvName(B)
        time.sleep(0.3)  # the link's probe has long connected to B
        assert not up(driver), "Up before the frame monitor of B was even opened"
        acq.busy.clear()
        assert wait_for(lambda: up(driver))
        source.pvs[B].post(frame(7))  # a source started once Up shows
        assert wait_for(lambda: [f.unique_id for f in acq.frames] == [2, 7]), \
            [f.unique_id for f in acq.frames]
    finally:
        acq.end()
    assert up(driver)


def test_a_source_restarted_while_the_client_hurries_its_searches_is_found_in_seconds(
        driver, source):
    acq = Acquiring(driver)
    other = source.another_server()  # its beacon: the client's search ring turns fast
    try:
        time.sleep(0.5)
        source.stop()
        assert wait_for(lambda: not up(driver))
        time.sleep(0.3)  # searched once in the fast turn, and not found
        source.start()
        began = time.monotonic()
        assert wait_for(lambda: up(driver), timeout=5.0), "not found again within 5 s"
        found = time.monotonic() - began
        source.pvs[A].post(frame(9))
        assert wait_for(lambda: [f.unique_id for f in acq.frames] == [9]), \
            ([f.unique_id for f in acq.frames], found)
    finally:
        acq.end()
        other.stop()


def test_the_new_pvs_frame_from_before_a_name_change_is_not_taken_when_the_link_is_slow(
        driver, source, monkeypatch):
    """After PvName changes while acquiring, the new PV's value (posted before the change) is
    not a frame of this acquisition, whichever of the two monitors sees it first: here the
    link thread is late (a loaded machine) and the frame monitor opens before the probe."""
    from ndflow.drivers import pva_link
    drain = pva_link.Link._drain

    def late(self, name):
        if name == B:
            time.sleep(0.3)
        return drain(self, name)

    monkeypatch.setattr(pva_link.Link, "_drain", late)
    acq = Acquiring(driver)
    try:
        driver.put_PvName(B)  # B holds frame 3, posted before
        assert wait_for(lambda: up(driver))
        source.pvs[B].post(frame(7))
        assert wait_for(lambda: 7 in [f.unique_id for f in acq.frames])
        time.sleep(0.1)
        assert [f.unique_id for f in acq.frames] == [7]
    finally:
        acq.end()


def test_pv_connection_is_down_as_soon_as_pv_name_changes(driver, source):
    """A client that waits for Up after writing PvName must not see the previous PV's Up (it
    would acquire before the new PV's value is known, and take that value as a frame)."""
    driver.put_PvName(B)
    assert not up(driver)
    assert wait_for(lambda: up(driver))
