"""HDF5 Stream-mode write rate: ndflow's HDF1 writer against bare h5py writing the same frames.

What is measured
----------------
For each compression (None, Blosc LZ4 with byte shuffle, LZ4), one after another:

``ndflow``
    The HDF5 plugin object, in process, in Stream mode, handed each frame through the same
    path the IOC uses (`Plugin._handle`, from the worker side: file open, one row per frame,
    NDAttribute rows, close). Channel Access is not involved.
``bare``
    h5py alone: a dataset with the same shape, chunks (one frame) and filter, resized and written
    one row per frame, then closed.

Both write the same frames: 2048x2048 UInt16 by default, a Poisson-noised Gaussian spot on a
background, four distinct frames cycled, so compressors see realistic data. MB/s is
uncompressed frame bytes over wall time from open to close. Files go to a temporary folder on
the same disk and are deleted afterwards.

Output: one JSON object per line per measurement, then a summary line with ndflow/bare for each
compression.

Usage::

    .venv/bin/python bench/hdf5_stream.py            # 2048x2048, 40 frames each
    .venv/bin/python bench/hdf5_stream.py --frames 20 --size 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from ndflow.busy import Busy
from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray
from ndflow.plugins.hdf5 import HDF5

COMPRESSIONS = {
    "None": ({}, {}),
    "Blosc": ({"Compression": 4, "BloscCompressor": 1, "BloscShuffle": 1, "BloscLevel": 5},
              dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=1))),
    "LZ4": ({"Compression": 6}, dict(hdf5plugin.LZ4())),
}


def make_frames(size: int, count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:size, :size]
    frames = []
    for k in range(count):
        cx, cy = size * (0.4 + 0.05 * k), size * 0.5
        spot = 3000 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (size / 20) ** 2))
        frames.append(rng.poisson(100 + spot).astype(np.uint16))
    return frames


def run_ndflow(folder: Path, frames: list[np.ndarray], n: int, settings: dict) -> float:
    plugin = HDF5("HDF1", "HDF1:", PortGraph())
    plugin.site = Site(folder, data_roots=(folder,))
    plugin.values.update({"FilePath": f"{folder}/", "FileName": "ndflow", "FileWriteMode": 2,
                          "NumCapture": n, "LazyOpen": 1, "EnableCallbacks": 1, **settings})
    plugin.freeze()  # the frames are written with the frozen parameters, as the owner takes them
    assert plugin._start_capture(Busy()), plugin.values["WriteMessage"]
    start = time.perf_counter()
    for i in range(n):
        array = NDArray.from_numpy(frames[i % len(frames)])
        array.stamp(i + 1)
        plugin._handle(array)
    elapsed = time.perf_counter() - start
    assert plugin.values["NumCaptured_RBV"] == n and not plugin.values["WriteStatus"], \
        plugin.values["WriteMessage"]
    return elapsed


def run_bare(folder: Path, frames: list[np.ndarray], n: int, filters: dict) -> float:
    shape = frames[0].shape
    start = time.perf_counter()
    with h5py.File(folder / "bare.h5", "w") as f:
        data = f.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape),
                                dtype=frames[0].dtype, chunks=(1, *shape), **filters)
        for i in range(n):
            data.resize((i + 1, *shape))
            data[i] = frames[i % len(frames)]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each")
    args = parser.parse_args()
    frames = make_frames(args.size)
    mb = args.frames * frames[0].nbytes / 1e6
    ratios = {}
    for name, (settings, filters) in COMPRESSIONS.items():
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for who in ("bare", "ndflow"):
                with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
                    folder = Path(tmp).resolve()
                    seconds = run_bare(folder, frames, args.frames, filters) if who == "bare" \
                        else run_ndflow(folder, frames, args.frames, settings)
                    size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
                rate = mb / seconds
                best[who] = max(best.get(who, 0.0), rate)
                print(json.dumps({"compression": name, "writer": who, "frame": args.size,
                                  "frames": args.frames, "MB_per_s": round(rate, 1),
                                  "file_MB": round(size, 1)}), flush=True)
        ratios[name] = round(best["ndflow"] / best["bare"], 3)
        print(f"{name}: ndflow {best['ndflow']:.0f} MB/s, bare {best['bare']:.0f} MB/s",
              file=sys.stderr)
    print(json.dumps({"summary": True, "frame": f"{args.size}x{args.size} UInt16",
                      "ratios_ndflow_over_bare_h5py": ratios}))


if __name__ == "__main__":
    main()
