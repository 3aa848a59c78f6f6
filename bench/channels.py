"""Cost of multi-channel frames in the plugin base: what NDArrayAddress J adds per hop.

What is measured
----------------
In-process, no IOC: an upstream port emits frames to one blocking plugin whose process() does
nothing, N times, and we time the emits. Cases:
- `mono_address_0`: a 2-D frame at address 0 (the baseline: today's single-channel path);
- `two_channel_address_0`: a (2, H, W) frame to a channels-aware plugin at address 0;
- `two_channel_address_2`: the same frame at address 2 (the base cuts channel 2 out: a view);
- `stats_all_channels` / `stats_channel_1_alone`: Stats on the (2, H, W) frame at address 0
  (per-channel statistics) against Stats on channel 1 alone, at 512x512 UInt16.
The summary gives the extra microseconds per hop of addressing a channel, and the ratio of
Stats on both channels to Stats on one.

    .venv/bin/python bench/channels.py [--frames 20000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ndflow.channels import multi_channel
from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray
from ndflow.plugin import Plugin
from ndflow.plugins.stats import Stats


class Null(Plugin):
    plugin_type = "Null"
    channels_aware = True

    def process(self, array):
        return None


def hop_cost(frame: NDArray, address: int, frames: int) -> float:
    """Microseconds per emit to one blocking Null plugin at `address`."""
    graph = PortGraph()
    upstream = Null("UP", "UP:", graph)
    sink = Null("P", "P:", graph, input_port="UP", input_address=address, enabled=True,
                blocking=True)
    graph.add(upstream)
    graph.add(sink)
    sink.start()
    for _ in range(200):  # warm up
        upstream.emit(frame)
    start = time.perf_counter()
    for _ in range(frames):
        upstream.emit(frame)
    return (time.perf_counter() - start) / frames * 1e6


def stats_cost(frame: NDArray, frames: int) -> float:
    stats = Stats("STATS1", "Stats1:", PortGraph())
    stats.values.update(ComputeStatistics=1)
    stats.freeze()
    stats.process(frame)
    start = time.perf_counter()
    for _ in range(frames):
        stats.process(frame)
    return (time.perf_counter() - start) / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000, help="emits per case")
    args = parser.parse_args()
    small = np.zeros((2, 64, 64), np.uint8)
    mono = NDArray.from_numpy(small[0].copy())
    two = multi_channel(small, ("threshold_1", "threshold_2"))
    results = {}
    for name, frame, address in (("mono_address_0", mono, 0),
                                 ("two_channel_address_0", two, 0),
                                 ("two_channel_address_2", two, 2)):
        results[name] = hop_cost(frame, address, args.frames)
        print(json.dumps({"case": name, "us_per_hop": round(results[name], 2),
                          "frames": args.frames}))
    big = np.random.default_rng(0).integers(0, 4000, (2, 512, 512)).astype(np.uint16)
    n = max(10, args.frames // 500)
    results["stats_all_channels"] = stats_cost(multi_channel(big, ("t1", "t2")), n)
    results["stats_channel_1_alone"] = stats_cost(NDArray.from_numpy(big[0]), n)
    for name in ("stats_all_channels", "stats_channel_1_alone"):
        print(json.dumps({"case": name, "us_per_frame": round(results[name], 1),
                          "frames": n, "shape": "2x512x512 u2"}))
    print(json.dumps({
        "summary": True,
        "address_2_extra_us_per_hop": round(results["two_channel_address_2"]
                                            - results["mono_address_0"], 2),
        "address_0_ratio_to_mono": round(results["two_channel_address_0"]
                                         / results["mono_address_0"], 2),
        "stats_two_channels_ratio_to_one": round(results["stats_all_channels"]
                                                 / results["stats_channel_1_alone"], 2),
    }))


if __name__ == "__main__":
    main()
