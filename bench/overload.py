"""Overload accounting (issue "every frame accounted for", acceptance 1), on the default IOC.

Stats1, Proc1 and HDF1 (Stream) read the sim driver at 1024x1024 UInt16, Continuous with
AcquirePeriod 0, for `--seconds` (default 10): the driver outruns the file writer. Once with
HDF1's LossPolicy Drop, once with Block. For each run: frames the driver acquired, rows in the
HDF5 file, rows that hold data, rows without data and whether each has its cause in
/entry/ndflow/missing, the driver's FramesLost_RBV, and the frames/s. With Drop every frame has
a row (data or fill with a cause); with Block every row is data. The driver's FramesLost_RBV
counts the frames of the acquisition lost anywhere (Stats1 and Proc1 stay on Drop).

Output: one JSON object per run, then a summary line. Needs a free CA/PVA port set (uses 15064+).
Usage: python bench/overload.py [--seconds 10] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CA_PORT = 15164
ENV = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": f"127.0.0.1:{CA_PORT}",
    "EPICS_CA_SERVER_PORT": str(CA_PORT), "EPICS_CAS_SERVER_PORT": str(CA_PORT),
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CA_MAX_ARRAY_BYTES": "20000000",
    "EPICS_PVAS_SERVER_PORT": str(CA_PORT + 10), "EPICS_PVAS_BROADCAST_PORT": str(CA_PORT + 11),
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
}
os.environ.update(ENV)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--seconds", type=float, default=10.0)
    args.add_argument("--size", type=int, default=1024)
    opts = args.parse_args()
    import epics
    import h5py

    results = []
    with tempfile.TemporaryDirectory(prefix="ndflow-overload-") as tmp:
        ioc = subprocess.Popen([sys.executable, "-m", "ndflow.cli", "run", "--screens", "",
                                "--prefix", "OVL:"], env={**os.environ, **ENV},
                               stdout=open(Path(tmp) / "ioc.log", "w"), stderr=subprocess.STDOUT)
        try:
            p = "OVL:"
            assert epics.PV(p + "cam1:Acquire_RBV").wait_for_connection(timeout=30), \
                "IOC did not start"

            def put(name: str, value) -> None:
                assert epics.caput(p + name, value, wait=True, timeout=30) == 1, name

            for name, value in [("SizeX", opts.size), ("SizeY", opts.size),
                                ("DataType", "UInt16"), ("ImageMode", "Continuous"),
                                ("AcquireTime", 0.0), ("AcquirePeriod", 0.0),
                                ("SimMode", "Offset&Noise"), ("Noise", 1000)]:
                put("cam1:" + name, value)
            for plugin in ("Stats1:", "Proc1:", "HDF1:"):
                put(plugin + "EnableCallbacks", "Enable")
            put("Stats1:ComputeStatistics", "Yes")
            put("Proc1:EnableFilter", "Enable")
            for policy in ("Drop", "Block"):
                put("HDF1:LossPolicy", policy)
                for name, value in [("FilePath", tmp), ("FileName", f"overload_{policy}"),
                                    ("FileTemplate", "%s%s_%d.h5"), ("FileWriteMode", "Stream"),
                                    ("NumCapture", 0), ("AutoIncrement", "Yes")]:
                    put("HDF1:" + name, value)
                epics.caput(p + "HDF1:Capture", 1)  # busy: completes when the capture ends
                time.sleep(0.5)
                first = epics.caget(p + "cam1:ArrayCounter_RBV") + 1
                started = time.monotonic()
                epics.caput(p + "cam1:Acquire", 1)
                time.sleep(opts.seconds)
                put("cam1:Acquire", 0)
                elapsed = time.monotonic() - started
                last = epics.caget(p + "cam1:ArrayCounter_RBV")
                put("HDF1:Capture", 0)  # DrainOnStop: completes once the queue is written
                lost = epics.caget(p + "cam1:FramesLost_RBV")  # of this acquisition
                path = epics.caget(p + "HDF1:FullFileName_RBV", as_string=True)
                with h5py.File(path) as f:
                    nd = f["entry/instrument/NDAttributes"]
                    ids, status = nd["NDArrayUniqueId"][:], nd["NDArrayStatus"][:]
                    missing = f["entry/ndflow/missing"][:]
                acquired = int(last - first + 1)
                lost_rows = {int(i) for i in ids[status != 0]}
                row = {"policy": policy, "size": opts.size, "seconds": round(elapsed, 2),
                       "frames_acquired": acquired, "rows": int(len(ids)),
                       "data_rows": int((status == 0).sum()), "fill_rows": len(lost_rows),
                       "fill_rows_with_cause": len(lost_rows & {int(i) for i in
                                                                missing["unique_id"]}),
                       "rows_in_order": bool((ids == range(int(ids[0]), int(ids[0]) + len(ids)))
                                             .all()),
                       "driver_frames_lost": int(lost),
                       "frames_per_s": round(acquired / elapsed, 1),
                       "file_gb": round(Path(path).stat().st_size / 1e9, 2)}
                Path(path).unlink()
                print(json.dumps(row), flush=True)
                results.append(row)
        finally:
            ioc.terminate()
            ioc.wait(10)
    drop, block = results
    print(json.dumps({"summary": True,
                      "drop_every_frame_has_a_row": drop["rows"] >= drop["frames_acquired"]
                      and drop["fill_rows"] == drop["fill_rows_with_cause"],
                      "block_every_row_is_data": block["fill_rows"] == 0,
                      "ratios": {"drop_rows_per_frame": round(drop["rows"] /
                                                              max(drop["frames_acquired"], 1), 3),
                                 "block_data_rows_per_frame": round(
                                     block["data_rows"] / max(block["frames_acquired"], 1), 3)}}))


if __name__ == "__main__":
    main()
