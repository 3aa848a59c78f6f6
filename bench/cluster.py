"""Scale-out on MPI: what N processing ranks buy, and what the framework's transport costs.

    python bench/cluster.py [--frames 60] [--ms 10] [--only CASE[,CASE]]

In one run, on loopback:
  algorithm_1rank / algorithm_2ranks  `mpiexec -n 2|3 ndflow run`: the sim (1024x1024 UInt16)
      on the control rank, a CPU-bound Python algorithm (about --ms per frame, calibrated here)
      in a supervised child on each processing rank; frames/s of Acquire (WaitForPlugins=Yes)
  algorithm_bare_1proc / algorithm_bare_2procs  the same algorithm run by bare mpi4py
      (cluster_bare.py): one rank making the frames and sending them, 1 or 2 ranks receiving
      them and running it in-process, no framework: the speedup this host allows, the ceiling
      for the ndflow one
  transport_ndflow  `mpiexec -n 2 ndflow run` with no plugin enabled: frames/s from the driver
      to the processing rank (acknowledged), i.e. the framework's per-rank transport
  transport_ndflow_no_cma  the same with MPICH's single-copy transfers (CMA) off, as on a host
      that refuses ptrace between processes (Ubuntu's default): MPICH then moves a large
      frame only while both ranks call MPI
  driver_alone      the same sim in a one-process IOC without plugins: what the driver makes,
      the most the transport after it can be asked to carry
  transport_bare    mpi4py Send/Recv of the same frames (2 MiB), nothing else, one buffer
      each side (cluster_bare.py): the ceiling on this host
  transport_bare_rotating  the same with 16 buffers each side, as a pipeline's frames in
      flight are (told apart: the ratio to it shows what caches, not ndflow, account for)
  transport_bare_made  rotating buffers, and the sender writes each frame (one numpy pass,
      as the sim) before sending it: like for like with transport_ndflow, whose figure
      includes its sim making every frame
One JSON object per line; the last is the summary with the ratios (speedup 2 vs 1 rank, target
>= 1.8 on a quiet 2-core host; transport ndflow/bare, target >= 0.8; `speedup_vs_bare_ceiling`:
ndflow's speedup over the bare one, what the framework keeps of what the host allows) and the
1-minute load average at its end. `--only` runs some of the cases (the summary then has the
ratios it can compute).

frames/s depend on what else the host runs; CPU time per frame much less. Each ndflow case
also reports `cpu_ms_per_frame`: the CPU each process of the cluster spent during the measured
acquisition divided by its frames (control rank, each processing rank, the algorithm children,
this client), and the load average when it ran. The algorithm's work is fixed (`repeats`
passes over the frame, calibrated once on this thread's CPU clock, so a busy host does not
make it lighter; or given with --repeats); `children` is what it really cost per frame.
The client waits on put callbacks and monitors (pyepics' put(wait=True) polls, and the
harness's CPU is taken from the same two cores as the cluster's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cluster_bare import run_bare, run_bare_algorithm  # this folder (run as a script)
from ndflow.cluster import single_copy
from ndflow.ports import free_port_pair

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


#: one CA port for the whole run: libca reads its address list once per process
PORT = free_port_pair()
PREFIX = "BENCH:"
_COUNT = itertools.count(1)


class Cluster:
    def __init__(self, text: str, ranks: int, folder: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        port = PORT
        self.env = {**os.environ, **(extra_env or {}), "EPICS_CA_AUTO_ADDR_LIST": "NO",
                    "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}", "EPICS_CA_SERVER_PORT": str(port),
                    "EPICS_CAS_SERVER_PORT": str(port), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("EPICS_")})
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
    """Put and wait for its completion on a callback (pyepics' wait=True polls every ms)."""
    from epics import ca
    chid = ca.create_channel(PREFIX + name, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=20), name
    done = threading.Event()
    ca.put(chid, value, wait=False, callback=lambda *a, **k: done.set())
    assert done.wait(timeout), f"{name}: put not completed within {timeout} s"


def wait_until(name: str, at_least: float, timeout: float = 300) -> None:
    """Wait (on a monitor, not polling) until `name` reaches `at_least`."""
    from epics import ca
    reached = threading.Event()

    def changed(value: object = None, **kw: object) -> None:
        if value is not None and value >= at_least:
            reached.set()
    chid = ca.create_channel(PREFIX + name, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=20), name
    _cb, _uarg, event_id = ca.create_subscription(chid, callback=changed)
    try:
        assert reached.wait(timeout), f"{name} did not reach {at_least} within {timeout} s"
    finally:
        ca.clear_subscription(event_id)


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


def acquire(frames: int, meter: CpuMeter) -> tuple[float, dict[str, object]]:
    """Seconds of one Acquire (WaitForPlugins=Yes: until every rank has processed its frames),
    after a warm-up acquisition (children started, pools filled), and its CPU per frame."""
    setup(frames, True)
    put("cam1:Acquire", 1)
    meter.start()
    began = time.perf_counter()
    put("cam1:Acquire", 1)
    seconds = time.perf_counter() - began
    return seconds, meter.stop(frames)


def run_algorithm(ranks: int, frames: int, repeats: int, folder: Path) -> dict:
    with Cluster(config(ranks, True, repeats, folder), ranks, folder) as cluster:
        seconds, cpu = acquire(frames, CpuMeter(cluster.proc.pid))
        done = get("Py1:ArrayCounter_RBV")
    return {"case": f"algorithm_{ranks - 1}rank{'s' * (ranks > 2)}", "frames": frames,
            "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
            "processed_incl_warmup": done, **cpu}


def run_transport(frames: int, folder: Path, cma: bool = True) -> dict:
    """`cma` False: MPICH's single-copy transfers off, as where ptrace between processes is
    refused (Ubuntu's default kernel.yama.ptrace_scope=1)."""
    # credits: frames in flight to the rank; 32 so the acknowledgement round trip is not the limit
    extra = None if cma else {single_copy.VARIABLE: "0"}
    with Cluster(config(2, False, 1, folder, credits=32), 2, folder, extra) as cluster:
        setup(frames, False)
        put("cam1:Acquire", 1)  # warm-up
        wait_until("Cluster:FramesAcknowledged_RBV", frames)
        meter = CpuMeter(cluster.proc.pid)
        meter.start()
        began = time.perf_counter()
        put("cam1:Acquire", 1)
        wait_until("Cluster:FramesAcknowledged_RBV", 2 * frames)
        seconds = time.perf_counter() - began
        cpu = meter.stop(frames)
    mb = frames * np.prod(SHAPE) * 2 / 1e6
    return {"case": "transport_ndflow" + ("" if cma else "_no_cma"), "frames": frames,
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 1), "MB_per_s": round(mb / seconds, 1),
            "note": "includes the sim making each frame on the control rank", **cpu}


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


def calibrate(ms: float) -> int:
    """Passes over a frame that take about `ms` of CPU here: timed on this thread's CPU clock
    (a loaded host stretches wall time, not CPU time, so the work stays the same), the
    quickest of five trials."""
    image = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    trials = []
    for _ in range(5):
        began = time.thread_time()
        for _ in range(10):
            image.sum(dtype=np.int64)
        trials.append((time.thread_time() - began) / 10)
    return max(1, round(ms / 1e3 / min(trials)))


class CpuMeter:
    """CPU seconds of every process under the launcher, and of this client, between `start`
    and `stop`: ms per frame by role (rank N, the algorithm children, the launcher)."""

    def __init__(self, launcher_pid: int) -> None:
        import psutil
        self.psutil = psutil
        self.root = psutil.Process(launcher_pid)

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        me = self.psutil.Process()
        times = me.cpu_times()
        out["client"] = times.user + times.system
        for proc in [self.root] + self.root.children(recursive=True):
            try:
                times = proc.cpu_times()
                cmd = " ".join(proc.cmdline())
                role = "launcher"  # mpiexec and its proxy
                if "ndflow.cli" in cmd and proc.pid != self.root.pid:
                    role = f"rank{proc.environ().get('PMI_RANK', '?')}"
                elif "ndflow.cli" in " ".join(proc.parent().cmdline()):
                    role = "children"  # an algorithm's child (run from its memfd image)
            except self.psutil.Error:
                continue
            out[role] = out.get(role, 0.0) + times.user + times.system
        return out

    def start(self) -> None:
        self._began = self._sample()

    def stop(self, frames: int) -> dict[str, object]:
        ended = self._sample()
        per_frame = {role: round((ended[role] - self._began.get(role, 0.0)) / frames * 1e3, 2)
                     for role in sorted(ended) if role in self._began}
        return {"cpu_ms_per_frame": per_frame, "load_avg_1min": round(os.getloadavg()[0], 2)}


CASES = ("algorithm_1rank", "algorithm_2ranks", "algorithm_bare_1proc", "algorithm_bare_2procs",
         "transport_ndflow", "transport_ndflow_no_cma", "driver_alone", "transport_bare")


def ratio(results: dict, a: str, b: str) -> float | None:
    """fps of case `a` over case `b`, or None if either did not run."""
    if a not in results or b not in results:
        return None
    return round(results[a]["fps"] / results[b]["fps"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--ms", type=float, default=10.0, help="algorithm CPU time per frame")
    parser.add_argument("--repeats", type=int, default=0,
                        help="the algorithm's passes over each frame (default: calibrated "
                             "to --ms)")
    parser.add_argument("--only", default="", help="comma-separated cases to run, of "
                        f"{', '.join(CASES)} (transport_bare: the three bare transport cases)")
    args = parser.parse_args()
    only = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    import epicscorelibs.path.pyepics  # noqa: F401  (libca before pyepics loads)
    repeats = args.repeats or calibrate(args.ms)
    print(json.dumps({"case": "calibration", "repeats": repeats, "target_ms": args.ms}),
          flush=True)
    results: dict[str, dict] = {}

    def done(r: dict) -> None:
        results[r["case"]] = r
        print(json.dumps(r), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "busy.py").write_text(ALGORITHM)
        for ranks in (2, 3):
            if f"algorithm_{ranks - 1}rank{'s' * (ranks > 2)}" in only:
                done(run_algorithm(ranks, args.frames, repeats, folder))
        for procs in (1, 2):
            if f"algorithm_bare_{procs}proc{'s' * (procs > 1)}" in only:
                done(run_bare_algorithm(procs, args.frames, repeats))
        if "transport_ndflow" in only:
            done(run_transport(args.frames * 3, folder))
        if "transport_ndflow_no_cma" in only:
            done(run_transport(args.frames * 3, folder, cma=False))
        if "driver_alone" in only:
            done(run_driver_alone(args.frames * 3, folder))
    if "transport_bare" in only:
        for r in run_bare(args.frames * 3):
            done(r)
    speedup = ratio(results, "algorithm_2ranks", "algorithm_1rank")
    bare_speedup = ratio(results, "algorithm_bare_2procs", "algorithm_bare_1proc")
    print(json.dumps({
        "case": "summary", "cores": os.cpu_count(), "algorithm_ms": args.ms,
        "algorithm_repeats": repeats,
        "algorithm_cpu_ms_measured": results.get("algorithm_1rank", {}).get(
            "cpu_ms_per_frame", {}).get("children"),
        "speedup_2_vs_1_rank": speedup,
        "algorithm_bare_speedup": bare_speedup,
        "speedup_vs_bare_ceiling": round(speedup / bare_speedup, 2)
        if speedup and bare_speedup else None,
        "transport_vs_bare_mpi4py": ratio(results, "transport_ndflow", "transport_bare"),
        "transport_vs_bare_rotating": ratio(results, "transport_ndflow",
                                            "transport_bare_rotating"),
        "transport_vs_bare_made": ratio(results, "transport_ndflow", "transport_bare_made"),
        "transport_vs_driver_alone": ratio(results, "transport_ndflow", "driver_alone"),
        "transport_no_cma_vs_cma": ratio(results, "transport_ndflow_no_cma",
                                         "transport_ndflow"),
        "single_copy": single_copy.enable(dict(os.environ)),  # MPICH's CMA, both sides
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "targets": {"speedup_2_vs_1_rank": 1.8, "transport_vs_bare_mpi4py": 0.8}}), flush=True)

if __name__ == "__main__":
    main()
