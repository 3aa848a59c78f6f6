"""A START for a new acquisition that reaches an acquisition rank still running an older one
(the control rank gave up on this rank while it was stopped, or its stop is still on its way)
stops the older one first, waits for it to end, then starts: it used to be refused, and the new
acquisition ended at once on that rank (ndflow.cluster.acquisition.AcquisitionRole.start).

In-process, the role's own bookkeeping only: a driver stand-in whose acquisition ends a while
after it is told to stop, from another thread, as the driver's thread does."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from types import SimpleNamespace

from ndflow.cluster import acquisition as module
from ndflow.cluster.acquisition import AcquisitionRole


class DriverStandIn:
    def __init__(self, running_id: int, ends_after: float | None) -> None:
        self.acquiring = True
        self.acquisition = SimpleNamespace(id=running_id, acquired=Future())
        self.ends_after = ends_after
        self.stops = 0

    async def put_Acquire(self, value: int) -> int:  # noqa: N802 (the PV's name)
        assert value == 0
        self.stops += 1
        if self.ends_after is not None:
            def end() -> None:
                self.acquiring = False
                self.acquisition.acquired.set_result(None)
            threading.Timer(self.ends_after, end).start()
        return 0


def role_with(driver: DriverStandIn) -> tuple[AcquisitionRole, list[tuple[int, bool]]]:
    role = AcquisitionRole.__new__(AcquisitionRole)
    role.driver, role.rank = driver, 1
    started: list[tuple[int, bool]] = []
    role._start_now = lambda aid, *_: started.append((aid, driver.acquiring))  # type: ignore
    return role, started


def test_an_older_acquisition_is_stopped_and_waited_for_before_the_new_one_starts():
    driver = DriverStandIn(running_id=3, ends_after=0.2)
    role, started = role_with(driver)
    asyncio.run(role.start(4))
    assert driver.stops == 1
    assert started == [(4, False)]  # started once the older one had ended


def test_an_older_acquisition_that_does_not_end_leaves_the_start_to_refuse(monkeypatch):
    monkeypatch.setattr(module, "STOP_WAIT_S", 0.2)
    driver = DriverStandIn(running_id=3, ends_after=None)
    role, started = role_with(driver)
    asyncio.run(role.start(4))
    assert driver.stops == 1
    assert started == [(4, True)]  # _start_now then refuses it, as before, and says so


def test_the_same_or_a_newer_acquisition_running_is_not_stopped():
    driver = DriverStandIn(running_id=4, ends_after=0.0)
    role, started = role_with(driver)
    asyncio.run(role.start(4))
    assert driver.stops == 0 and started == [(4, True)]
