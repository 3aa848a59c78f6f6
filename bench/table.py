"""Table writer speed: rows/s of Table1 saving Stats-like results (25 scalars and two 1-D
profiles of 1024 per frame) to HDF5, against two baselines measured in the same run on the
same rows:
  per_row  h5py as a straightforward writer uses it: every column resized and written at
           every frame (what the table would cost without its 64-row blocks)
  at_end   every column collected in numpy and written once at the end (the ceiling: no
           growing datasets at all)
No IOC: the plugin object is built directly (values go to its dict only), files go to a temp
folder and are closed before the clock stops.

    .venv/bin/python bench/table.py [--frames 5000]
One JSON object per measurement; the last line is the summary with the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray, NDAttribute, NDDimension
from ndflow.plugins.table import Table

SCALARS = [f"Value{i}" for i in range(25)]
PROFILE = 1024


def frames(count: int) -> list[NDArray]:
    rng = np.random.default_rng(3)
    out = []
    for n in range(count):
        attrs = {name: NDAttribute(name, float(v)) for name, v in
                 zip(SCALARS, rng.random(len(SCALARS)))}
        for name in ("ProfileAverageX", "ProfileAverageY"):
            attrs[name] = NDAttribute(name, rng.random(PROFILE))
        out.append(NDArray(None, unique_id=n + 1, timestamp=float(n),
                           dims=[NDDimension(PROFILE), NDDimension(PROFILE)], attributes=attrs))
    return out


def table(rows: list[NDArray], folder: Path) -> float:
    plugin = Table("TABLE1", "Table1:", PortGraph())
    plugin.site = Site(folder, data_roots=(folder,))
    plugin.frame_settings = dict(plugin.values)
    start = time.perf_counter()
    plugin.open_file(folder / "table.h5", rows[0])
    for array in rows:
        plugin.write_array(array)
    plugin.close_file()
    return time.perf_counter() - start


def per_row(rows: list[NDArray], folder: Path) -> float:
    start = time.perf_counter()
    with h5py.File(folder / "per_row.h5", "w") as f:
        g = f.create_group("entry/table")
        cols = {name: g.create_dataset(name, (0,), maxshape=(None,), chunks=(64,), dtype="f8")
                for name in ["uniqueId", *SCALARS]}
        profs = {name: g.create_dataset(name, (0, PROFILE), maxshape=(None, None),
                                        chunks=(64, 256), dtype="f8")
                 for name in ("ProfileAverageX", "ProfileAverageY")}
        for n, array in enumerate(rows):
            for name, ds in cols.items():
                ds.resize((n + 1,))
                ds[n] = array.unique_id if name == "uniqueId" else array.attributes[name].value
            for name, ds in profs.items():
                ds.resize((n + 1, PROFILE))
                ds[n] = array.attributes[name].value
    return time.perf_counter() - start


def at_end(rows: list[NDArray], folder: Path) -> float:
    start = time.perf_counter()
    with h5py.File(folder / "at_end.h5", "w") as f:
        g = f.create_group("entry/table")
        g["uniqueId"] = np.array([a.unique_id for a in rows])
        for name in SCALARS:
            g[name] = np.array([a.attributes[name].value for a in rows])
        for name in ("ProfileAverageX", "ProfileAverageY"):
            g[name] = np.stack([a.attributes[name].value for a in rows])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=5000)
    args = parser.parse_args()
    rows = frames(args.frames)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp).resolve()
        for name, fn in (("table", table), ("per_row", per_row), ("at_end", at_end)):
            seconds = fn(rows, folder)
            rates[name] = args.frames / seconds
            print(json.dumps({"bench": "table", "case": name, "frames": args.frames,
                              "seconds": round(seconds, 4), "rows_per_s": round(rates[name])}))
        with h5py.File(folder / "table.h5", "r") as f:  # the table holds what was written
            assert f["entry/table/uniqueId"].shape == (args.frames,)
    print(json.dumps({"bench": "table", "summary": True,
                      "table_rows_per_s": round(rates["table"]),
                      "table_vs_per_row": round(rates["table"] / rates["per_row"], 2),
                      "table_vs_at_end": round(rates["table"] / rates["at_end"], 3)}))


if __name__ == "__main__":
    main()
