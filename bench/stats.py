"""Stats plugin speed: frames/s of Stats.process (statistics + centroid) on 4096x4096 UInt16
frames, against bare numpy computing the same quantities on the same frames in the same run.

The numpy baseline is what a careful user would write: min/max/mean/std/sum/argmin/argmax as
array methods, the thresholded image once in float64, its row/column sums for the moments and
one matrix-vector product for the xy moment. No IOC: the plugin object is built directly, so
Channel Access costs nothing here (values go to its dict only).

Prints one JSON object per measurement and a summary line last:
    .venv/bin/python bench/stats.py [--frames N] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray
from ndflow.plugins.stats import Stats

THRESHOLD = 100.0


def make_frames(size: int, count: int) -> list[np.ndarray]:
    """Gaussian spots on a noisy background, different in every frame."""
    rng = np.random.default_rng(7)
    y, x = np.ogrid[:size, :size]
    frames = []
    for _ in range(count):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        spot = 30000.0 * np.exp(-((x - cx) ** 2 / (2 * (size / 20) ** 2)
                                  + (y - cy) ** 2 / (2 * (size / 12) ** 2)))
        noise = rng.integers(0, 200, (size, size))
        frames.append((spot + noise).astype(np.uint16))
    return frames


def bare_numpy(frame: np.ndarray) -> dict[str, float]:
    results = {"min": frame.min(), "max": frame.max(), "mean": frame.mean(),
               "sigma": frame.std(), "total": frame.sum(dtype=np.float64),
               "imin": frame.argmin(), "imax": frame.argmax()}
    thresholded = np.where(frame >= THRESHOLD, frame, 0).astype(np.float64)
    px, py = thresholded.sum(axis=0), thresholded.sum(axis=1)
    x = np.arange(px.size, dtype=np.float64)
    y = np.arange(py.size, dtype=np.float64)
    m00 = px.sum()
    cx, cy = px @ x / m00, py @ y / m00
    var_x, var_y = px @ (x - cx) ** 2 / m00, py @ (y - cy) ** 2 / m00
    var_xy = y @ (thresholded @ x) / m00 - cx * cy
    results.update(cx=cx, cy=cy, sigma_x=np.sqrt(var_x), sigma_y=np.sqrt(var_y),
                   sigma_xy=var_xy / np.sqrt(var_x * var_y),
                   skew_x=px @ (x - cx) ** 3 / m00 / var_x ** 1.5,
                   skew_y=py @ (y - cy) ** 3 / m00 / var_y ** 1.5,
                   kurt_x=px @ (x - cx) ** 4 / m00 / var_x ** 2 - 3,
                   kurt_y=py @ (y - cy) ** 4 / m00 / var_y ** 2 - 3)
    return results


def make_plugin() -> Stats:
    plugin = Stats("STATS1", "Stats1:", PortGraph())
    plugin.values.update(ComputeStatistics=1, ComputeCentroid=1, CentroidThreshold=THRESHOLD)
    plugin.freeze()  # process() reads the frozen parameters, as the plugin's owner takes them
    return plugin


def frames_per_second(work, arrays: list, rounds: int) -> float:
    work(arrays[0])  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        for a in arrays:
            work(a)
    return rounds * len(arrays) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="distinct frames")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the frames")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    frames = make_frames(args.size, args.frames)
    arrays = [NDArray.from_numpy(f) for f in frames]
    plugin = make_plugin()

    # Same answers first: the comparison is only meaningful if both compute the same thing.
    ours = plugin.process(arrays[0]).attributes
    ref = bare_numpy(frames[0])
    for key, ref_key in (("Total", "total"), ("SigmaValue", "sigma"), ("CentroidX", "cx"),
                         ("SigmaXY", "sigma_xy"), ("KurtosisY", "kurt_y")):
        assert np.isclose(ours[key].value, ref[ref_key], rtol=1e-9), (key, ours[key].value,
                                                                       ref[ref_key])

    rates = {}
    for name, work in (("ndflow_stats", plugin.process), ("bare_numpy",
                                                          lambda a: bare_numpy(a.data))):
        rates[name] = frames_per_second(work, arrays, args.rounds)
        print(json.dumps({"bench": "stats", "impl": name, "size": args.size, "dtype": "uint16",
                          "centroid": True, "frames_per_s": round(rates[name], 2),
                          "ms_per_frame": round(1e3 / rates[name], 2)}), flush=True)
    print(json.dumps({"bench": "stats", "summary": True, "size": args.size,
                      "ours_frames_per_s": round(rates["ndflow_stats"], 2),
                      "bare_numpy_frames_per_s": round(rates["bare_numpy"], 2),
                      "ratio_ours_over_bare": round(rates["ndflow_stats"] / rates["bare_numpy"],
                                                    2)}))


if __name__ == "__main__":
    main()
