"""AcquirePeriod is the rate a user gets: frames start on a grid of AcquirePeriod, so a Multiple
acquisition of N frames lasts (N-1) periods and a little, however much each wait overshoots
(Event.wait wakes late by tens to hundreds of microseconds). Pacing each frame from its own
start, as before, made 1000 frames at 1 ms take over 10% longer than asked here.

An in-process IOC (no transport): the sim driver, 1000 frames, AcquirePeriod 1 ms."""

from __future__ import annotations

import asyncio
import time

from ndflow.config import parse_config
from ndflow.server import IOC

CONFIG = """
transports: []
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 32, max_size_y: 16,
     data_type: UInt8}}
plugins: []
"""
FRAMES, PERIOD = 1000, 0.001


def acquisition_seconds() -> tuple[float, int]:
    async def main() -> tuple[float, int]:
        config, lines = parse_config(CONFIG, "inline.yml")
        ioc = IOC(config, lines, transports=[])
        started = asyncio.Event()
        server = asyncio.create_task(ioc.run(started, serve=False))
        await started.wait()
        cam = ioc.component("SIM1")
        try:
            for name, value in [("ImageMode", "Multiple"), ("NumImages", FRAMES),
                                ("AcquireTime", 0.0), ("AcquirePeriod", PERIOD)]:
                await cam.handle_put(cam.params[name], value)
            t0 = time.monotonic()
            await asyncio.wait_for(cam.handle_put(cam.params["Acquire"], 1), 30)
            return time.monotonic() - t0, int(cam.values["NumImagesCounter_RBV"])
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
    return asyncio.run(main())


def test_frames_start_on_a_grid_of_acquire_period():
    seconds, made = acquisition_seconds()
    assert made == FRAMES
    nominal = (FRAMES - 1) * PERIOD
    assert seconds >= nominal, "frames came faster than AcquirePeriod"
    assert seconds < nominal * 1.04 + 0.01, f"{seconds:.3f} s for {nominal:.3f} s of periods"
