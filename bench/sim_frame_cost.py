"""What one simulated frame costs: the sim's LinearRamp per DataType against a bare numpy pass.

What is measured
----------------
In-process, no IOC: a SimDetector of SIZE x SIZE (default 1024x1024) in LinearRamp, Mono, whole
sensor, Gain such that the increment is 1 (so every frame changes every pixel), makes frames
through `produce_frame` as the acquisition thread does (the exposure wait is skipped: we time
making the frame, not exposing it). Each frame is dropped at once, so its pool buffer is reused
as when a client keeps up. For each of the ten DataTypes we report the CPU time (thread time;
other processes' load barely moves it) and the wall time per frame, against the floor: one
bare numpy write pass over the same number of pixels (np.add of a scalar into a preallocated
buffer). Why: a free-running sim shares a small host with the CA server and its clients; every
microsecond it spends per frame is taken from them.

Output: one JSON line per DataType, then a summary line ``{"summary": true, ...}``.

    .venv/bin/python bench/sim_frame_cost.py [--size 1024] [--frames 400]

Run it with another checkout's interpreter (its ndflow) to compare two versions of the sim.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any, Callable

import numpy as np

from ndflow.adcore import DATA_TYPES, NUMPY_DTYPES
from ndflow.driver import FrameContext
from ndflow.drivers.sim import SimDetector, SimOptions
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition

ROUNDS = 5
ACQUIRE_TIME = 0.001  # with Gain 1: increment (type)(1 * 0.001 * 1000) = 1


class NoExposure(FrameContext):
    """The acquisition thread's context without the exposure's sleep."""

    def wait(self, seconds: float) -> bool:
        return True


def timed(step: Callable[[], Any], frames: int) -> tuple[list[float], list[float]]:
    """CPU and wall microseconds per call, one mean per round of frames // ROUNDS calls."""
    cpu, wall = [], []
    per_round = max(1, frames // ROUNDS)
    for _ in range(ROUNDS):
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(per_round):
            step()
        cpu.append((time.thread_time() - c0) / per_round * 1e6)
        wall.append((time.perf_counter() - w0) / per_round * 1e6)
    return cpu, wall


def sim_step(data_type: str, size: int) -> Callable[[], Any]:
    sim = SimDetector("SIM1", "cam1:", PortGraph(),
                      options=SimOptions(max_size_x=size, max_size_y=size, data_type=data_type))
    sim.values.update(AcquireTime=ACQUIRE_TIME, Gain=1.0, SimMode=0, Reset=1)
    params = dict(sim.values)
    sim.prepare(params)
    acquisition = Acquisition.start(params)
    ctx = NoExposure(acquisition, 0, threading.Event())

    def step() -> None:
        sim.produce_frame(ctx)  # dropped at once: its buffer goes back to the pool

    return step


def floor_step(dtype: np.dtype, size: int) -> Callable[[], Any]:
    source = np.zeros((size, size), dtype)
    out = np.empty_like(source)
    one = dtype.type(1)
    return lambda: np.add(source, one, out=out)


def row(data_type: str, size: int, frames: int) -> dict[str, Any]:
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    step, floor = sim_step(data_type, size), floor_step(dtype, size)
    for _ in range(20):  # warm up: the pool's buffers, the pages, the reset frame
        step()
        floor()
    cpu, wall = timed(step, frames)
    floor_cpu, floor_wall = timed(floor, frames)
    sim_us, floor_us = statistics.median(cpu), statistics.median(floor_cpu)
    return {"data_type": data_type, "size": f"{size}x{size}",
            "sim_cpu_us": round(sim_us, 1), "sim_cpu_us_min": round(min(cpu), 1),
            "sim_wall_us": round(statistics.median(wall), 1),
            "floor_cpu_us": round(floor_us, 1), "floor_wall_us": round(statistics.median(floor_wall), 1),
            "sim_over_floor": round(sim_us / floor_us, 2) if floor_us else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="sensor side, pixels")
    parser.add_argument("--frames", type=int, default=400, help="frames per DataType")
    parser.add_argument("--types", nargs="+", choices=DATA_TYPES, default=list(DATA_TYPES))
    args = parser.parse_args(argv)
    rows = []
    for data_type in args.types:
        rows.append(row(data_type, args.size, args.frames))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": True, "size": f"{args.size}x{args.size}",
                      "sim_cpu_us": {r["data_type"]: r["sim_cpu_us"] for r in rows},
                      "floor_cpu_us": {r["data_type"]: r["floor_cpu_us"] for r in rows},
                      "sim_over_floor": {r["data_type"]: r["sim_over_floor"] for r in rows},
                      "loadavg": open("/proc/loadavg").read().split()[:3]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
