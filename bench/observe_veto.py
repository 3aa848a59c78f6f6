"""Per-frame cost of an observation point (Obs1) and a veto (Veto1) in the framework, against
a plugin that does nothing (the base's own per-frame work), measured in the same run.

No IOC and no transport: the plugin objects are built directly and frames handed to `_handle`,
the path a worker thread takes, so this is the framework's cost of a frame (pixels are never
touched by either plugin: they hold or pass references). Observe is measured keeping every
frame (history 100: a dict insert, an eviction, the History_RBV array) and keeping one in ten;
Veto with a two-attribute calc that passes the frame and one that vetoes it.

Cases are measured in interleaved rounds and the best of each kept (the machine is shared).
Prints one JSON object per case and a summary line last:
    .venv/bin/python bench/observe_veto.py [--frames N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np

from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray, NDAttribute
from ndflow.plugin import Plugin
from ndflow.plugins.observe import Observe
from ndflow.plugins.veto import Veto


class Nothing(Plugin):
    """The baseline: the plugin base's per-frame work around a process() that returns None."""

    def process(self, array: NDArray) -> None:
        return None


def frames(count: int) -> list[NDArray]:
    pixels = np.zeros((1024, 1024), dtype=np.uint16)
    out = []
    for uid in range(1, count + 1):
        array = NDArray.from_numpy(pixels, unique_id=uid)
        array.attributes["MinValue"] = NDAttribute("MinValue", float(uid))
        array.attributes["Total"] = NDAttribute("Total", 1e6 + uid)
        out.append(array)
    return out


def per_frame_us(handle: Callable[[NDArray], None], arrays: list[NDArray]) -> float:
    for a in arrays[:50]:  # warm-up
        handle(a)
    start = time.perf_counter()
    for a in arrays:
        handle(a)
    return (time.perf_counter() - start) / len(arrays) * 1e6


def made(cls: type[Plugin], **values) -> Plugin:
    plugin = cls(cls.__name__.upper(), cls.__name__ + ":", PortGraph(), enabled=True)
    plugin.values.update(values)
    plugin.freeze()
    return plugin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per case and round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    arrays = frames(args.frames)
    passing = made(Veto, VetoA="MinValue", VetoB="Total")
    passing.put_VetoCalc("A<0 && B>0")
    vetoing = made(Veto, VetoA="MinValue", VetoB="Total")
    vetoing.put_VetoCalc("A>0 && B>0")
    cases: dict[str, Plugin] = {
        "baseline_nothing_plugin": made(Nothing),
        "observe_every_frame_history100": made(Observe, HistorySize=100, SampleEvery=1),
        "observe_every_10th_history100": made(Observe, HistorySize=100, SampleEvery=10),
        "veto_calc_passes": passing,
        "veto_calc_vetoes": vetoing,
    }
    # Interleaved rounds, best of each: on a shared machine the load changes within seconds,
    # and a case measured after the baseline would otherwise be compared with another load.
    best = {name: float("inf") for name in cases}
    for _ in range(args.rounds):
        for name, plugin in cases.items():
            best[name] = min(best[name], per_frame_us(plugin._handle, arrays))
    for name, us in best.items():
        print(json.dumps({"case": name, "frames": args.frames, "rounds": args.rounds,
                          "us_per_frame_best": round(us, 2)}))
    base = best.pop("baseline_nothing_plugin")
    print(json.dumps({"summary": True, "baseline_us": round(base, 2),
                      **{f"{k}_over_baseline": round(v / base, 2) for k, v in best.items()},
                      **{f"{k}_extra_us": round(v - base, 2) for k, v in best.items()}}))


if __name__ == "__main__":
    main()
