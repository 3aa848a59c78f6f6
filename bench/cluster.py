"""Scale-out on MPI: what N processing ranks buy, and what the framework's transport costs.

    python bench/cluster.py [--frames 60] [--ms 10]

In one run, on loopback:
  algorithm_1rank / algorithm_2ranks  `mpiexec -n 2|3 ndflow run`: the sim (1024x1024 UInt16)
      on the control rank, a CPU-bound Python algorithm (about --ms per frame, calibrated here)
      in a supervised child on each processing rank; frames/s of Acquire (WaitForPlugins=Yes)
  transport_ndflow  `mpiexec -n 2 ndflow run` with no plugin enabled: frames/s from the driver
      to the processing rank (acknowledged), i.e. the framework's per-rank transport
  driver_alone      the same sim in a one-process IOC without plugins: what the driver makes,
      the most the transport after it can be asked to carry
  transport_bare    `mpiexec -n 2` of this file in --bare mode: mpi4py Send/Recv of the same
      frames (2 MiB), nothing else: the ceiling on this host
One JSON object per line; the last is the summary with the ratios (speedup 2 vs 1 rank, target
>= 1.8 on a quiet 2-core host; transport ndflow/bare, target >= 0.8).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
SHAPE = (1024, 1024)

ALGORITHM = '''
import numpy as np
from ndflow.algorithm import Algorithm, Input, Output

class Busy(Algorithm):
    """CPU-bound: `repeats` passes over the frame (the bench calibrates it to ~10 ms)."""
    repeats = Input(1, low=1, high=100000)
    total = Output(float)

    def process(self, image, params, attributes, metadata):
        total = 0
        for _ in range(params.repeats):
            total += int(image.sum(dtype=np.int64))
        return {"total": float(total)}
'''


def config(ranks: int, algorithm: bool, repeats: int, folder: Path, credits: int = 4) -> str:
    processing = list(range(1, ranks))
    plugins = ""
    if algorithm:
        plugins = (f"  - {{type: python, port: PY1, prefix: 'Py1:', input: SIM1, "
                   f"queue_size: 50, loss_policy: block, options: {{file: busy.py, "
                   f"values: {{Repeats: {repeats}}}}}}}\n")
    return f"""prefix: "BENCH:"
transports: [ca]
algorithm_folders: ["{folder}"]
cluster:
  control: 0
  processing: {processing}
  dispatch: credit
  credits: {credits}
drivers:
  - type: sim
    port: SIM1
    prefix: "cam1:"
    options: {{max_size_x: 1024, max_size_y: 1024, data_type: UInt16}}
plugins:
{plugins or '  []'}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: one CA port for the whole run: libca reads its address list once per process
PORT = free_port()
PREFIX = "BENCH:"
_COUNT = itertools.count(1)


class Cluster:
    def __init__(self, text: str, ranks: int, folder: Path) -> None:
        port = PORT
        self.env = {**os.environ, "EPICS_CA_AUTO_ADDR_LIST": "NO",
                    "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}", "EPICS_CA_SERVER_PORT": str(port),
                    "EPICS_CAS_SERVER_PORT": str(port), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"}
        os.environ.update(self.env)
        path = folder / f"cluster{ranks}.yml"
        path.write_text(text)
        if text.endswith("  []\n"):
            path.write_text(text.replace("plugins:\n  []\n", "plugins: []\n"))
        self.log = open(folder / f"cluster{ranks}.log", "w")
        global PREFIX
        self.count = next(_COUNT)
        PREFIX = f"BENCH{self.count}:"  # a new name each time: libca caches channels by name
        self.proc = subprocess.Popen([str(MPIEXEC), "-n", str(ranks), sys.executable, "-m",
                                      "ndflow.cli", "run", str(path), "--prefix", PREFIX],
                                     env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def __enter__(self) -> "Cluster":
        from epics import ca
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            chid = ca.create_channel(PREFIX + "Cluster:NumRanks_RBV", connect=False, auto_cb=False)
            ok = ca.connect_channel(chid, timeout=0.5)
            ca.clear_channel(chid)
            if ok:
                return self
            if self.proc.poll() is not None:
                break
        self.__exit__()
        raise RuntimeError("cluster IOC did not start:\n" + Path(self.log.name).read_text())

    def __exit__(self, *exc: object) -> None:  # noqa: D105
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.log.close()


def put(name: str, value: object, timeout: float = 300) -> None:
    from epics import ca
    chid = ca.create_channel(PREFIX + name, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=20), name
    assert ca.put(chid, value, wait=True, timeout=timeout) == 1, name


def get(name: str) -> object:
    from epics import ca
    chid = ca.create_channel(PREFIX + name, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=20), name
    return ca.get(chid, timeout=5)


def setup(frames: int, wait_plugins: bool) -> None:
    for name, value in [("ImageMode", 1), ("NumImages", frames), ("AcquireTime", 0.0),
                        ("AcquirePeriod", 0.0), ("DataType", 3),
                        ("WaitForPlugins", int(wait_plugins))]:
        put("cam1:" + name, value)


def acquire(frames: int) -> float:
    """Seconds of one Acquire (WaitForPlugins=Yes: until every rank has processed its frames),
    after a warm-up acquisition (children started, pools filled)."""
    setup(frames, True)
    put("cam1:Acquire", 1)
    began = time.perf_counter()
    put("cam1:Acquire", 1)
    return time.perf_counter() - began


def run_algorithm(ranks: int, frames: int, repeats: int, folder: Path) -> dict:
    with Cluster(config(ranks, True, repeats, folder), ranks, folder):
        seconds = acquire(frames)
        done = get("Py1:ArrayCounter_RBV")
    return {"case": f"algorithm_{ranks - 1}rank{'s' * (ranks > 2)}", "frames": frames,
            "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
            "processed_incl_warmup": done}


def run_transport(frames: int, folder: Path) -> dict:
    def acknowledged(count: int) -> None:
        while get("Cluster:FramesAcknowledged_RBV") < count:
            time.sleep(0.005)
    # credits: frames in flight to the rank; 32 so the acknowledgement round trip is not the limit
    with Cluster(config(2, False, 1, folder, credits=32), 2, folder):
        setup(frames, False)
        put("cam1:Acquire", 1)  # warm-up
        acknowledged(frames)
        began = time.perf_counter()
        put("cam1:Acquire", 1)
        acknowledged(2 * frames)
        seconds = time.perf_counter() - began
    mb = frames * np.prod(SHAPE) * 2 / 1e6
    return {"case": "transport_ndflow", "frames": frames, "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 1), "MB_per_s": round(mb / seconds, 1),
            "note": "includes the sim making each frame on the control rank"}


def run_driver_alone(frames: int, folder: Path) -> dict:
    """The same sim in a plain one-process IOC (no cluster section), no plugin: how fast the
    driver alone makes frames, the most any transport after it can carry."""
    text = config(2, False, 1, folder)
    text = text[:text.index("cluster:")] + text[text.index("drivers:"):]
    global PREFIX
    PREFIX = f"BENCH{next(_COUNT)}:"
    path = folder / "alone.yml"
    path.write_text(text.replace("plugins:\n  []\n", "plugins: []\n"))
    env = {**os.environ, "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST":
           f"127.0.0.1:{PORT}", "EPICS_CA_SERVER_PORT": str(PORT),
           "EPICS_CAS_SERVER_PORT": str(PORT), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"}
    with open(folder / "alone.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ndflow.cli", "run", str(path),
                                 "--prefix", PREFIX], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            from epics import ca
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                chid = ca.create_channel(PREFIX + "cam1:Acquire", connect=False, auto_cb=False)
                if ca.connect_channel(chid, timeout=0.5):
                    break
            setup(frames, False)
            put("cam1:Acquire", 1)  # warm-up
            began = time.perf_counter()
            put("cam1:Acquire", 1)
            seconds = time.perf_counter() - began
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    return {"case": "driver_alone", "frames": frames, "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 1)}


def run_bare(frames: int) -> dict:
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, __file__, "--bare",
                          str(frames)], capture_output=True, text=True, timeout=300)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not line:
        raise RuntimeError(out.stdout + out.stderr)
    return json.loads(line[-1])


def bare(frames: int) -> None:
    """mpi4py Send/Recv of `frames` UInt16 1024x1024 frames, rank 0 -> rank 1."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    frame = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    buffer = np.empty_like(frame)
    comm.Barrier()
    began = time.perf_counter()
    for _ in range(frames):
        if comm.Get_rank() == 0:
            comm.Send(frame, 1, 5)
        else:
            comm.Recv(buffer, 0, 5)
    seconds = time.perf_counter() - began
    comm.Barrier()
    if comm.Get_rank() == 1:
        mb = frames * frame.nbytes / 1e6
        print(json.dumps({"case": "transport_bare", "frames": frames,
                          "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
                          "MB_per_s": round(mb / seconds, 1)}), flush=True)


def calibrate(ms: float) -> int:
    """Passes over a frame that take about `ms` here."""
    image = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    began = time.perf_counter()
    for _ in range(20):
        image.sum(dtype=np.int64)
    per_pass = (time.perf_counter() - began) / 20
    return max(1, round(ms / 1e3 / per_pass))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--ms", type=float, default=10.0, help="algorithm time per frame")
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare(args.bare)
    import epicscorelibs.path.pyepics  # noqa: F401  (libca before pyepics loads)
    repeats = calibrate(args.ms)
    print(json.dumps({"case": "calibration", "repeats": repeats, "target_ms": args.ms}),
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "busy.py").write_text(ALGORITHM)
        for ranks in (2, 3):
            r = run_algorithm(ranks, args.frames, repeats, folder)
            results[r["case"]] = r
            print(json.dumps(r), flush=True)
        for r in (run_transport(args.frames * 3, folder),
                  run_driver_alone(args.frames * 3, folder)):
            results[r["case"]] = r
            print(json.dumps(r), flush=True)
    r = run_bare(args.frames * 3)
    results[r["case"]] = r
    print(json.dumps(r), flush=True)
    print(json.dumps({
        "case": "summary", "cores": os.cpu_count(), "algorithm_ms": args.ms,
        "speedup_2_vs_1_rank": round(results["algorithm_2ranks"]["fps"] /
                                     results["algorithm_1rank"]["fps"], 2),
        "transport_vs_bare_mpi4py": round(results["transport_ndflow"]["fps"] /
                                          results["transport_bare"]["fps"], 2),
        "transport_vs_driver_alone": round(results["transport_ndflow"]["fps"] /
                                           results["driver_alone"]["fps"], 2),
        "targets": {"speedup_2_vs_1_rank": 1.8, "transport_vs_bare_mpi4py": 0.8}}), flush=True)


if __name__ == "__main__":
    main()
