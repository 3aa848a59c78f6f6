"""Frame-path cost: the sim driver at 64x64 UInt8 through 1 and 4 chained ROI plugins.

What is measured
----------------
An IOC built from a config in this process (`IOC.run(serve=False)`: the publisher and every
thread run, only the CA server is left out, so nothing on the network competes), with the sim
driver acquiring Continuous, AcquireTime = AcquirePeriod = 0, 64x64 UInt8, and a chain of ROI
plugins (full-frame regions, so each hop is one copy) in blocking or non-blocking mode. Over a
window we read the driver's ArrayCounter and the last ROI's, and the DroppedArrays of every ROI.
Each line also gives the framework's cost per hop: (1/rate - 1/bare rate) / hops.

The baseline (`bare_numpy`) does the same copies in a loop: the sim's frame from its raw image
into a fresh buffer, then one copy into a fresh buffer per hop.

Prints one JSON object per measurement, then a summary line with the ratios to the baseline::

    .venv/bin/python bench/pipeline.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time

import numpy as np

from ndflow.config import parse_config
from ndflow.server import IOC

SIZE = 64


def config_text(hops: int, blocking: bool) -> str:
    plugins = []
    source = "SIM1"
    for i in range(1, hops + 1):
        plugins.append(f"  - {{type: roi, port: ROI{i}, prefix: 'ROI{i}:', input: {source}, "
                       f"enabled: true, blocking: {str(blocking).lower()}}}")
        source = f"ROI{i}"
    return "\n".join([
        "prefix: 'BENCH:'",
        "drivers:",
        "  - {type: sim, port: SIM1, prefix: 'cam1:', "
        f"options: {{max_size_x: {SIZE}, max_size_y: {SIZE}, data_type: UInt8}}}}",
        "plugins:" if plugins else "plugins: []",
        *plugins, ""])


async def _put(component, name, value) -> None:
    await component.handle_put(component.params[name], value)


async def measure(hops: int, blocking: bool, seconds: float) -> dict:
    config, lines = parse_config(config_text(hops, blocking))
    ioc = IOC(config, lines)
    started = asyncio.Event()
    serving = asyncio.create_task(ioc.run(started, serve=False))
    await started.wait()
    driver = ioc.drivers[0]
    rois = ioc.plugins
    try:
        for name, value in (("ImageMode", 2), ("AcquireTime", 0.0), ("AcquirePeriod", 0.0)):
            await _put(driver, name, value)
        acquire = asyncio.create_task(_put(driver, "Acquire", 1))
        await asyncio.sleep(0.5)  # warm-up
        last = rois[-1] if rois else driver
        t0 = time.perf_counter()
        d0, l0 = driver.values["ArrayCounter"], last.values["ArrayCounter"]
        await asyncio.sleep(seconds)
        d1, l1 = driver.values["ArrayCounter"], last.values["ArrayCounter"]
        elapsed = time.perf_counter() - t0
        await _put(driver, "Acquire", 0)
        await asyncio.wait_for(acquire, 10)
        dropped = sum(p.values["DroppedArrays"] for p in rois)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    return {"driver_fps": (d1 - d0) / elapsed, "last_fps": (l1 - l0) / elapsed,
            "dropped": dropped}


def bare_numpy(hops: int, seconds: float) -> float:
    raw = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    count = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(200):
            frame = np.empty_like(raw)
            np.copyto(frame, raw)
            for _ in range(hops):
                out = np.empty_like(frame)
                np.copyto(out, frame)
                frame = out
        count += 200
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="window per measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bare = {hops: bare_numpy(hops, min(args.seconds, 1.0)) for hops in (0, 1, 4)}
    for hops, rate in bare.items():
        print(json.dumps({"bench": "pipeline", "impl": "bare_numpy", "hops": hops,
                          "frames_per_s": round(rate)}), flush=True)
    ratios = {}
    for hops, blocking in ((0, True), (1, True), (4, True), (1, False), (4, False)):
        r = asyncio.run(measure(hops, blocking, args.seconds))
        label = f"{hops}hop_{'blocking' if blocking else 'nonblocking'}" if hops else "driver"
        per_hop = ((1 / r["last_fps"] - 1 / bare[hops]) / hops * 1e6
                   if hops and r["last_fps"] else None)
        print(json.dumps({"bench": "pipeline", "impl": "ndflow", "case": label, "hops": hops,
                          "blocking": blocking, "driver_frames_per_s": round(r["driver_fps"]),
                          "last_frames_per_s": round(r["last_fps"]),
                          "dropped": r["dropped"],
                          "framework_us_per_hop": round(per_hop, 1) if per_hop else None}),
              flush=True)
        ratios[label] = round(r["last_fps"] / bare[hops], 4)
        ratios[label + "_fps"] = round(r["last_fps"])
    print(json.dumps({"bench": "pipeline", "summary": True, "size": f"{SIZE}x{SIZE} UInt8",
                      "ratios_ours_over_bare": ratios}))


if __name__ == "__main__":
    main()
