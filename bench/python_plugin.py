"""Frames/s and added latency of the Python algorithm plugin against running the same algorithm
in-process, for the paper's 4096x4096 UInt16 frame and a 512x512 UInt8 frame.

    python bench/python_plugin.py [--seconds 1.5]

Modes, each timed on the same frames in one run:
  in_process  the algorithm's process() called directly (the baseline)
  one_copy    through the plugin and a child process, frames on the heap (copied into shm)
  zero_copy   through the plugin, frames already in a shared-memory pool (no copy)
  in_process_on_shm  the baseline again, reading the shared-memory frames (page-size effect)
Latency: one frame at a time, median (result - hand-over) minus the median in-process time.
One JSON object per line; the last line is the summary with the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from ndflow import shm
from ndflow.algorithm import Params
from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, NDArray
from ndflow.plugins.python.plugin import PythonOptions, PythonPlugin
from ndflow.pool import ArrayPool, heap_block

HERE = Path(__file__).resolve().parent
SIZES = {"4096x4096 UInt16": ((4096, 4096), np.uint16), "512x512 UInt8": ((512, 512), np.uint8)}


def frames(shape: tuple[int, int], dtype: type, count: int, shared: bool) -> list[NDArray]:
    pool = ArrayPool(0, shm.block if shared else heap_block)
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        data = pool.alloc(shape, dtype)
        data[...] = rng.integers(0, 200, size=shape, dtype=dtype)
        array = NDArray.from_numpy(data)
        array.stamp(i + 1)
        out.append(array)
    return out


def in_process(arrays: list[NDArray], seconds: float) -> tuple[float, float]:
    spec = importlib.util.spec_from_file_location("bench_mean", HERE / "algorithms" / "mean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    algorithm = module.Mean()
    times = []
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        algorithm.process(arrays[n % len(arrays)].data, Params(), {}, None)
        times.append(time.perf_counter() - t)
        n += 1
    return n / (time.perf_counter() - start), statistics.median(times)


class Counting(PythonPlugin):
    """The plugin with a hook that counts completions (the bench's only addition)."""

    def complete(self, array, outputs, seconds=None):  # type: ignore[override]
        super().complete(array, outputs, seconds)
        self.done_at[array.unique_id] = time.perf_counter()
        self.done.release()


def make_plugin() -> Counting:
    site = Site(HERE, (HERE / "algorithms",))
    plugin = Counting("BENCH", "Bench:", PortGraph(), options=PythonOptions(
        file="mean.py", watch=False, memory_mb=0), site=site, blocking=True, enabled=True)
    plugin.done = threading.Semaphore(0)
    plugin.done_at = {}
    plugin.start()
    return plugin


def through_child(plugin: Counting, arrays: list[NDArray], seconds: float) -> float:
    acquisition = Acquisition.start({})
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        array = arrays[n % len(arrays)]
        array.acquisition = acquisition
        plugin.receive(array)
        n += 1
    for _ in range(n):
        plugin.done.acquire()
    return n / (time.perf_counter() - start)


def latency(plugin: Counting, arrays: list[NDArray], count: int) -> float:
    samples = []
    for i in range(count):
        array = arrays[i % len(arrays)]
        sent = time.perf_counter()
        plugin.receive(array)
        plugin.done.acquire()
        samples.append(plugin.done_at[array.unique_id] - sent)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per mode")
    args = parser.parse_args()
    summary: dict[str, float] = {}
    plugin = make_plugin()
    try:
        for label, (shape, dtype) in SIZES.items():
            heap = frames(shape, dtype, 4, shared=False)
            shared = frames(shape, dtype, 4, shared=True)
            base_fps, base_t = in_process(heap, args.seconds)
            # the same algorithm in-process on frames in shared memory: shows what 4 kB shmem
            # pages cost against the heap's huge pages, apart from any hand-over
            shm_fps, _ = in_process(shared, args.seconds)
            through_child(plugin, heap, 0.2)  # warm up: segments created and mapped
            through_child(plugin, shared, 0.2)
            one = through_child(plugin, heap, args.seconds)
            zero = through_child(plugin, shared, args.seconds)
            lat_one = latency(plugin, heap, 50) - base_t
            lat_zero = latency(plugin, shared, 50) - base_t
            row = {"frame": label, "MB": round(heap[0].nbytes / 1e6, 2),
                   "in_process_fps": round(base_fps, 1),
                   "in_process_on_shm_fps": round(shm_fps, 1), "one_copy_fps": round(one, 1),
                   "zero_copy_fps": round(zero, 1),
                   "one_copy_ratio": round(one / base_fps, 3),
                   "zero_copy_ratio": round(zero / base_fps, 3),
                   "added_latency_one_copy_ms": round(lat_one * 1e3, 3),
                   "added_latency_zero_copy_ms": round(lat_zero * 1e3, 3)}
            print(json.dumps(row), flush=True)
            key = "32MB" if shape[0] == 4096 else "512x512"
            summary[f"{key}_one_copy_ratio"] = row["one_copy_ratio"]
            summary[f"{key}_zero_copy_ratio"] = row["zero_copy_ratio"]
            summary[f"{key}_zero_copy_vs_in_process_on_shm"] = round(zero / shm_fps, 3)
            summary[f"{key}_zero_copy_fps"] = row["zero_copy_fps"]
            summary[f"{key}_one_copy_fps"] = row["one_copy_fps"]
    finally:
        plugin.shutdown()
    print(json.dumps({"summary": summary, "targets": {
        "32MB_one_copy_ratio": 0.7, "32MB_zero_copy_ratio": 0.9, "512x512_fps": 5000}}))


if __name__ == "__main__":
    main()
