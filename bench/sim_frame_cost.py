"""What one simulated frame costs: the sim's LinearRamp per DataType against a bare numpy pass.

What is measured
----------------
In-process, no IOC: a SimDetector of SIZE x SIZE (default 1024x1024) in LinearRamp, Mono, whole
sensor, Gain such that the increment is 1 (so every frame changes every pixel), makes frames
through `produce_frame` as the acquisition thread does (the exposure wait is skipped: we time
making the frame, not exposing it). Each frame is dropped at once, so its pool buffer is reused
as when a client keeps up. For each of the ten DataTypes we report the CPU time (thread time;
other processes' load barely moves it) and the wall time per frame, against two floors over
the same number of pixels: a bare numpy write pass (`out.fill(1)`, what a frame must cost at
least) and a bare copy pass (`np.copyto(out, image)`, what copying a stored image costs). The
rounds of the three alternate, so a change of load hits them alike. Why: a free-running sim
shares a small host with the CA server and its clients; every microsecond it spends per frame
is taken from them.

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

ROUNDS = 8
ACQUIRE_TIME = 0.001  # with Gain 1: increment (type)(1 * 0.001 * 1000) = 1


class NoExposure(FrameContext):
    """The acquisition thread's context without the exposure's sleep."""

    def wait(self, seconds: float) -> bool:
        return True


def timed(steps: dict[str, Callable[[], Any]], frames: int) -> dict[str, tuple[float, float,
                                                                               float]]:
    """{name: (median CPU us, min CPU us, median wall us) per call}, over ROUNDS rounds of
    frames // ROUNDS calls, the steps' rounds alternating."""
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    per_round = max(1, frames // ROUNDS)
    for _ in range(ROUNDS):
        for name, step in steps.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(per_round):
                step()
            cpu[name].append((time.thread_time() - c0) / per_round * 1e6)
            wall[name].append((time.perf_counter() - w0) / per_round * 1e6)
    return {name: (statistics.median(cpu[name]), min(cpu[name]), statistics.median(wall[name]))
            for name in steps}


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


def floor_steps(dtype: np.dtype, size: int) -> dict[str, Callable[[], Any]]:
    image = np.ones((size, size), dtype)  # written: real pages, not the shared zero page
    out = np.ones_like(image)
    return {"write": lambda: out.fill(1), "copy": lambda: np.copyto(out, image)}


def row(data_type: str, size: int, frames: int) -> dict[str, Any]:
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    steps = {"sim": sim_step(data_type, size), **floor_steps(dtype, size)}
    for _ in range(20):  # warm up: the pool's buffers, the pages, the reset frame
        for step in steps.values():
            step()
    times = timed(steps, frames)
    sim_us, write_us = times["sim"][0], times["write"][0]
    return {"data_type": data_type, "size": f"{size}x{size}",
            "sim_cpu_us": round(sim_us, 1), "sim_cpu_us_min": round(times["sim"][1], 1),
            "sim_wall_us": round(times["sim"][2], 1),
            "write_pass_cpu_us": round(write_us, 1),
            "copy_pass_cpu_us": round(times["copy"][0], 1),
            "sim_over_write_pass": round(sim_us / write_us, 2) if write_us else None}


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
                      "write_pass_cpu_us": {r["data_type"]: r["write_pass_cpu_us"] for r in rows},
                      "copy_pass_cpu_us": {r["data_type"]: r["copy_pass_cpu_us"] for r in rows},
                      "sim_over_write_pass": {r["data_type"]: r["sim_over_write_pass"]
                                              for r in rows},
                      "loadavg": open("/proc/loadavg").read().split()[:3]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
