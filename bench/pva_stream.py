"""NTNDArray streaming into PvaPy's HPC framework: ndflow's `Pva1:` against `pvapy-ad-sim-server`.

What is measured
----------------
The maximum zero-loss frames/s one `pvapy-hpc-consumer` (PvaPy's streaming framework, one
consumer, its pass-through `AdImageProcessor`, input mode pva = a monitor) takes from each
producer, at 512x512, 1024x1024, 2048x2048 and 4096x4096 UInt8, one after another on loopback:

``ndflow``
    The real IOC (``python -m ndflow.cli run config.yml``, pvAccess transport only, its own
    EPICS_PVAS_SERVER_PORT / BROADCAST_PORT): a sim driver (LinearRamp, AcquireTime 0) feeding
    NDPluginPva ``Pva1:`` with BlockingCallbacks=Yes. A trial is one acquisition in Multiple
    mode, NumImages = rate x window, AcquirePeriod = 1/rate.
``pvapy``
    ``pvapy-ad-sim-server`` (pre-generated random frames, ``-nf 10``, recycled) publishing at
    ``-fps rate`` for ``-rt window`` seconds, started fresh for each trial.
``p4p``
    The ceiling of any p4p server, run as the sim server is: a bare p4p SharedPV in a child
    process posting ten pre-made NTNDArray Values (no copy of the pixels before PVXS's own,
    nothing computed per frame; `p4p_server`), with ndflow's PVXS send corrections. ndflow
    serves pvAccess through p4p and does more per frame, so it reaches this one's rate at
    best, within the noise (its frames, just written, are in cache; these ten are not); the
    summary's ``p4p_ceiling`` gives p4p/pvapy and ndflow/p4p per size.

All into the same consumer command line (a fresh consumer per trial), with the same server
queue (``--server-queue-size``, the framework's own loss protection, per size below) and the
same rate search (`search`): geometric, from a guess per size, x2 after a pass and /2 after a
failure until both are known, then the geometric mean of the highest pass and the lowest
failure; at most ``--trials`` trials per producer and size. A pass that delivered under 90% of
the requested rate is saturated (the chain carried all it could without loss); the search still
goes up (a driver sleeping between frames gets more with a shorter period) and stops after two
saturated passes within 10% of each other.

Why blocking for Pva1
---------------------
With BlockingCallbacks=Yes the driver thread itself converts and posts each frame: nothing is
queued or dropped inside the IOC, so every missing frame the consumer reports was lost on the
pvAccess path, and there is no thread hand-off. On this 2-core machine that is also the faster
setting (a probe: 512x512 with AcquirePeriod 0 and no client, 1820 frames/s blocking against
556/s from the driver and 392/s through a non-blocking Pva1 that dropped the rest).

Zero loss
---------
From the consumer's own statistics (its status PV ``...:status``, refreshed by a ``get_stats``
command on its control PV; both PVs of the framework), a trial passes when
  * processorStats.nMissed == 0 (the framework's count of uniqueId gaps),
    receiverStats.nOverruns == 0 (monitor queue overruns) and processorStats.nErrors == 0,
  * and every frame of the trial arrived: for ndflow exactly the frames of the acquisition
    (firstObjectId..lastObjectId = the driver's ArrayCounter range, nProcessed = that count; a
    driver that cannot make the rate is stopped after twice the window and the frames it made
    are the trial); for the sim server its last published frame (the count it prints) arrived,
    nothing in between is missing, and at least 90% of what it published (the consumer may
    connect a moment late).
The measurement of a trial is the rate the consumer really received the frames at,
(nProcessed-1)/receivingTime (first to last frame, so a backlog drained from the server queue
after the window counts against it); of a producer and size, the highest of a passing trial.

CPU: of the producer process (the IOC / the sim server) and of the consumer process over each
trial, in % of one core over the consumer's receiving time and in ms per frame received. On a
shared 2-core machine the frame rates move with whatever else runs (each trial line has the load
average); CPU ms per frame moves much less and is the better figure to compare implementations.

What limits ndflow here (Dec 2026, p4p 4.3.0 / pvxslibs 1.5.3)
---------------------------------------------------------------
PVXS as the wheels ship it sent a frame in 1 KiB evbuffer chains and 16 KiB writes, from a
thread whose every wake-up preempted the one making frames; ndflow.pva.pvxs_send corrects both
at run time (its docstring has the mechanism). One run on 2 cores, IOC CPU ms per frame at its
best zero-loss rate, before -> after: 512x512 0.43 -> 0.28, 1024x1024 1.15 -> 0.78, 2048x2048
4.2 -> 2.8, 4096x4096 23 -> 13. What is left is the data path itself: the sim computes every
frame (the pvapy sim server replays ten pre-made ones), p4p copies the pixels into the Value
(its assignment always allocates and copies: p4p src/pvxs_value.cpp), and PVXS copies them
again into its send buffers, where pvAccessCPP sends from the array. On 2 cores the IOC's
threads and the consumer share the CPU, so every one of those copies lowers the rate.

The p4p producer measures the ceiling. Two runs (Dec 2026), p4p / pvapy at 512, 1024, 2048 and
4096: 1.20 / 1.00 / 0.79 / 0.89 and 1.17 / 0.85 / 0.77 / 0.84; ndflow / p4p: 0.75 / 0.56 /
0.91 / 0.86 and 0.77 / 0.60 / 0.92 / 1.01. So at 2048 and 4096 no p4p server reaches the sim
server, whatever it does per frame (PVXS's copy into its buffers costs more than pvAccessCPP's
send from the array), and at 1024 only one that does nothing per frame. Per thread at 1024,
about 1250 frames/s (/proc): ndflow's PVXS thread 0.34 ms per frame and its driver thread 0.375
(the sim's frame 0.075, the Value with p4p's copy 0.095, the post 0.03, the framework the rest);
the bare server's PVXS thread 0.45 (its ten pre-made frames are not in cache, ndflow's are) and
its Python thread 0.07. The whole difference is the driver thread's making and handing over
of each frame.

Output: one JSON object per line per trial (``"trial": true``), one per producer and size with
its result, and a last line ``{"summary": true, "ratios": {...}}`` with ndflow/pvapy per size.
Progress goes to stderr.

Usage::

    .venv/bin/python bench/pva_stream.py                       # ~8 minutes
    .venv/bin/python bench/pva_stream.py --sizes 512 --trials 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from p4p.client.thread import Context

from ndflow.ports import free_port_pair

VENV_BIN = Path(sys.executable).parent
CONSUMER = str(VENV_BIN / "pvapy-hpc-consumer")
SIM_SERVER = str(VENV_BIN / "pvapy-ad-sim-server")
PROCESSOR = "pvapy.hpc.adImageProcessor.AdImageProcessor"

SIZES = (512, 1024, 2048, 4096)
#: first rate tried (frames/s), the same for both producers: about what either carries on 2 cores
#: (so the trials go to narrowing the bracket: from guesses 8x lower, five trials only doubled
#: and both producers' results were the same power of two)
GUESS = {512: 3200.0, 1024: 1280.0, 2048: 320.0, 4096: 80.0}
#: the consumer's --server-queue-size (pvRequest record[queueSize=N]), the same for both:
#: a fraction of a second of frames at the rates reached, as in PvaPy's own throughput tests
SERVER_QUEUE = {512: 200, 1024: 100, 2048: 30, 4096: 10}
MIN_FRAMES = 20  # a trial carries at least this many frames


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def server_env(port: int) -> dict[str, str]:
    """A pvAccess server on `port` (TCP) answering searches on port+1, loopback only."""
    return {"EPICS_PVAS_SERVER_PORT": str(port), "EPICS_PVAS_BROADCAST_PORT": str(port + 1),
            "EPICS_PVA_SERVER_PORT": str(port), "EPICS_PVA_BROADCAST_PORT": str(port + 1),
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1"}


def client_conf(*ports: int) -> dict[str, str]:
    """A client that searches exactly the servers on these ports (never by broadcast)."""
    return {"EPICS_PVA_ADDR_LIST": " ".join(f"127.0.0.1:{p + 1}" for p in ports),
            "EPICS_PVA_AUTO_ADDR_LIST": "NO"}


class CpuMeter:
    """CPU time of a process over a window. A process that has exited cannot be read: its last
    reading stands (`sample` it while it runs), else NaN (reported as null)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.last = math.nan
        self.start = self._cpu()
        self.t0 = time.monotonic()

    def _cpu(self) -> float:
        try:
            t = self.proc.cpu_times()
        except psutil.Error:
            return self.last
        self.last = t.user + t.system
        return self.last

    def sample(self) -> None:
        self._cpu()

    def seconds(self) -> float:
        return self._cpu() - self.start


# --- the consumer -------------------------------------------------------------------------------
class Consumer:
    """One `pvapy-hpc-consumer` process, as a user runs it, with its status and control PVs on
    its own pvAccess server."""

    def __init__(self, channel: str, producer_port: int, queue: int, folder: Path,
                 ports: set[int]) -> None:
        self.port = free_port_pair(ports)
        self.name = f"ndflowbench{os.getpid()}:consumer"
        self.status = f"{self.name}:1:status"
        self.control = f"{self.name}:1:control"
        env = {**os.environ, **server_env(self.port), **client_conf(producer_port),
               "PYTHONUNBUFFERED": "1"}
        self.out_path = folder / "consumer.out"
        self._out = open(self.out_path, "w")
        self.proc = subprocess.Popen(
            [CONSUMER, "--input-channel", channel, "--processor-class", PROCESSOR,
             "--status-channel", f"{self.name}:*:status",
             "--control-channel", f"{self.name}:*:control",
             "--server-queue-size", str(queue), "--runtime", "600", "--disable-curses"],
            stdout=self._out, stderr=subprocess.STDOUT, env=env)
        self.ctxt = Context("pva", conf=client_conf(self.port), nt=False)
        self.cpu = CpuMeter(self.proc.pid)

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Fresh statistics: a `get_stats` command, then the status PV it updates (the consumer
        runs the command 0.1 s later, in a timer thread; each update has a new objectId)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consumer exited: {self.out_path.read_text()[-2000:]}")
            try:
                before = self.ctxt.get(self.status, timeout=2)["objectId"]
                self.ctxt.put(self.control, {"command": "get_stats"}, timeout=2)
                for _ in range(40):
                    time.sleep(0.05)
                    value = self.ctxt.get(self.status, timeout=2)
                    if value["objectId"] != before:
                        return {"received": value["receiverStats.nReceived"],
                                "overruns": value["receiverStats.nOverruns"],
                                "processed": value["processorStats.nProcessed"],
                                "missed": value["processorStats.nMissed"],
                                "errors": value["processorStats.nErrors"],
                                "first_id": value["processorStats.firstObjectId"],
                                "last_id": value["processorStats.lastObjectId"],
                                "receiving_s": value["processorStats.receivingTime"]}
                if time.monotonic() > deadline:
                    raise RuntimeError("the consumer does not answer get_stats")
            except RuntimeError:
                raise
            except Exception as exc:  # not up yet: retry until the deadline
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no status from the consumer: {exc}") from exc
                time.sleep(0.1)

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Until the monitor has its first update (the PV's value on connection, which the
        framework skips: --skip-initial-updates 1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats(timeout=deadline - time.monotonic())["received"] >= 1:
                return
            time.sleep(0.1)
        raise RuntimeError("the consumer did not connect to its input channel")

    def settle(self, last_id: int | None, timeout: float = 5.0) -> dict[str, Any]:
        """Statistics once the consumer has the frame `last_id` (or has stopped moving)."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while time.monotonic() < deadline:
            if last_id is not None and stats["last_id"] >= last_id:
                break
            time.sleep(0.3)
            newer = self.stats()
            if last_id is None and newer["processed"] == stats["processed"]:
                stats = newer
                break
            stats = newer
        return stats

    def close(self) -> None:
        self.ctxt.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


# --- the producers ------------------------------------------------------------------------------
IOC_YAML = """\
prefix: "{prefix}"
transports: [pva]
memory_budget_mb: 0
drivers:
  - type: sim
    port: SIM1
    prefix: "cam1:"
    options:
      max_size_x: {size}
      max_size_y: {size}
      data_type: UInt8
      values: {{AcquireTime: 0.0, Gain: 1.0}}
plugins:
  - {{type: pva, port: PVA1, prefix: "Pva1:", input: SIM1, blocking: true, enabled: true}}
"""


class NdflowProducer:
    name = "ndflow"

    def __init__(self, size: int, folder: Path, ports: set[int]) -> None:
        self.size = size
        self.prefix = f"NDB{os.getpid()}S{size}:"
        self.port = free_port_pair(ports)
        cfg = folder / f"ioc{size}.yml"
        cfg.write_text(IOC_YAML.format(prefix=self.prefix, size=size))
        self.log_path = folder / f"ioc{size}.log"
        self._log = open(self.log_path, "w")
        env = {**os.environ, **server_env(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ndflow.cli", "run", str(cfg), "--log-level", "WARNING"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=folder)
        self.ctxt = Context("pva", conf=client_conf(self.port), nt=False)
        self.channel = self.prefix + "Pva1:Image"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOC exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.ctxt.get(self.prefix + "cam1:Acquire_RBV", timeout=1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"IOC not ready: {self.log_path.read_text()[-3000:]}")

    def get(self, suffix: str) -> Any:
        return self.ctxt.get(self.prefix + suffix, timeout=5)["value"]

    def acquiring(self) -> bool:
        return bool(self.ctxt.get(self.prefix + "cam1:Acquire_RBV", timeout=5)["value.index"])

    def put(self, suffix: str, value: Any, wait: bool | None = None) -> None:
        self.ctxt.put(self.prefix + suffix, value, timeout=5, wait=wait)

    def trial(self, rate: float, window: float, queue: int, folder: Path,
              ports: set[int]) -> dict[str, Any]:
        n = max(MIN_FRAMES, round(rate * window))
        self.put("cam1:ImageMode", {"value.index": 1})  # Multiple
        self.put("cam1:NumImages", n)
        self.put("cam1:AcquirePeriod", 1.0 / rate)
        consumer = Consumer(self.channel, self.port, queue, folder, ports)
        try:
            consumer.wait_connected()
            first = int(self.get("cam1:ArrayCounter_RBV")) + 1
            server_cpu = CpuMeter(self.proc.pid)
            consumer.cpu = CpuMeter(consumer.proc.pid)
            self.put("cam1:Acquire", 1, wait=False)
            # a driver that cannot make the rate is stopped after twice the window: the trial
            # then judges the frames it did make
            deadline = time.monotonic() + 2 * window + 1
            time.sleep(min(0.5, n / rate))
            while self.acquiring() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.acquiring():
                self.put("cam1:Acquire", 0)
                while self.acquiring():
                    time.sleep(0.05)
            last = int(self.get("cam1:ArrayCounter_RBV"))
            stats = consumer.settle(last)
            cpu = {"server": server_cpu.seconds(), "consumer": consumer.cpu.seconds()}
        finally:
            consumer.close()
        produced = last - first + 1
        complete = (stats["first_id"] == first and stats["last_id"] == last
                    and stats["processed"] == produced)
        return {**judge(rate, stats, complete, cpu), "frames_published": produced,
                "dropped_in_ioc": int(self.get("Pva1:DroppedArrays_RBV"))}

    def close(self) -> None:
        self.ctxt.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        text = self.log_path.read_text()
        if "Traceback" in text:
            log(f"IOC log ({self.size}):\n{text[-3000:]}")


class PvapyProducer:
    name = "pvapy"
    START_DELAY = 2.0  # the consumer connects meanwhile
    SHUTDOWN_DELAY = 1.5  # the consumer drains meanwhile

    def __init__(self, size: int, folder: Path, ports: set[int]) -> None:
        self.size = size
        self.channel = f"ndflowbench{os.getpid()}:{self.name}{size}:image"

    def command(self, rate: float, window: float) -> list[str]:
        return [SIM_SERVER, "-cn", self.channel, "-nx", str(self.size), "-ny", str(self.size),
                "-dt", "uint8", "-nf", "10", "-fps", f"{rate:.3f}", "-rt", f"{window:.3f}",
                "-std", str(self.START_DELAY), "-shd", str(self.SHUTDOWN_DELAY), "-rp", "0",
                "-dc"]

    def trial(self, rate: float, window: float, queue: int, folder: Path,
              ports: set[int]) -> dict[str, Any]:
        port = free_port_pair(ports)
        out_path = folder / "sim.out"
        with open(out_path, "w") as out:
            server = subprocess.Popen(
                self.command(rate, window),
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **server_env(port), "PYTHONUNBUFFERED": "1"})
            consumer = Consumer(self.channel, port, queue, folder, ports)
            try:
                try:
                    consumer.wait_connected(timeout=20 + self.START_DELAY)
                except RuntimeError:
                    if server.poll() is not None:
                        raise RuntimeError(f"sim server exited: {out_path.read_text()}")
                    raise
                consumer.cpu = CpuMeter(consumer.proc.pid)
                server_cpu = CpuMeter(server.pid)  # frames generated: publishing is to come
                # publishing ends after `window` s; the server serves on for SHUTDOWN_DELAY s
                deadline = time.monotonic() + self.START_DELAY + window + 60
                while server.poll() is None and time.monotonic() < deadline:
                    text = out_path.read_text()
                    if "Server exiting" in text or "Server runtime" in text:
                        break
                    server_cpu.sample()  # the server may exit before the reading below
                    time.sleep(0.1)
                server_s = server_cpu.seconds()
                text = out_path.read_text()
                published = int(m.group(1)) if (m := re.search(
                    r"Published frames:\s*(\d+)", text)) else None
                stats = consumer.settle(None, timeout=self.SHUTDOWN_DELAY)
                if published is None:  # the count is printed after the shutdown delay
                    server.wait(30)
                    text = out_path.read_text()
                    published = int(re.search(r"Published frames:\s*(\d+)", text).group(1))
                cpu = {"server": server_s, "consumer": consumer.cpu.seconds()}
            finally:
                consumer.close()
                if server.poll() is None:
                    server.terminate()
                    try:
                        server.wait(10)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
        # the sim server numbers frames 1..published
        complete = (stats["last_id"] == published
                    and stats["processed"] == stats["last_id"] - stats["first_id"] + 1
                    and stats["processed"] >= 0.9 * published)
        return {**judge(rate, stats, complete, cpu), "frames_published": published}

    def close(self) -> None:
        pass


class P4pProducer(PvapyProducer):
    """The ceiling of any p4p server: `p4p_server` below in a child process, as the sim server
    is run (same start and shutdown delays, same "Published frames" line)."""

    name = "p4p"

    def command(self, rate: float, window: float) -> list[str]:
        return [sys.executable, __file__, "--p4p-server", self.channel, str(self.size),
                f"{rate:.3f}", f"{window:.3f}", str(self.START_DELAY), str(self.SHUTDOWN_DELAY)]


def p4p_server(channel: str, size: int, rate: float, window: float, start_delay: float,
               shutdown_delay: float) -> None:
    """pvapy-ad-sim-server's part played by a bare p4p server: ten random frames made before,
    each a complete NTNDArray Value built once (ndflow's converter, ColorMode the one
    attribute); per frame only uniqueId and the time stamps change, and the update marks them
    and the pixels, as Pva1's stream does. PVXS shares a posted Value's array (SharedPV::post
    clones the structure, not the array), so nothing copies the pixels before PVXS writes them
    into its send buffers: the least CPU per frame a p4p server can spend. PVXS gets the same
    send-path corrections as the IOC (ndflow.pva.pvxs_send). Publishes at `rate` for `window`
    s on an absolute schedule, numbering frames 1..N, then prints N as the sim server does."""
    import numpy as np
    from p4p.server import Server, StaticProvider
    from p4p.server.raw import SharedPV

    from ndflow.ndarray import NDArray
    from ndflow.pva.ntndarray_stream import to_value
    from ndflow.pva.pvxs_send import apply, batch_sender

    rng = np.random.default_rng(1)
    made = [to_value(NDArray.from_numpy(rng.integers(0, 255, (size, size), dtype=np.uint8)))
            for _ in range(10)]
    pv = SharedPV(initial=made[0])
    provider = StaticProvider("bench")
    provider.add(channel, pv)
    apply()
    server = Server(providers=[provider])
    batch_sender()
    time.sleep(start_delay)
    count = max(1, round(rate * window))
    t0 = time.monotonic()
    for i in range(1, count + 1):
        value = made[i % len(made)]
        value.unmark()
        now = time.time()
        sec = int(now)
        stamp = {"secondsPastEpoch": sec, "nanoseconds": int((now - sec) * 1e9)}
        value["uniqueId"] = i
        value["timeStamp"] = stamp
        value["dataTimeStamp"] = stamp
        value.mark("value")
        pv.post(value)
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f"Published frames: {count}", flush=True)
    time.sleep(shutdown_delay)
    print("Server exiting", flush=True)
    server.stop()


def judge(rate: float, stats: dict[str, Any], complete: bool,
          cpu: dict[str, float]) -> dict[str, Any]:
    """Zero loss (nothing missed, nothing overrun, every frame of the trial there) and the rate
    the consumer really received them at, first to last frame."""
    receiving = stats["receiving_s"]
    delivered = (stats["processed"] - 1) / receiving if receiving > 0 else 0.0
    ok = stats["missed"] == 0 and stats["overruns"] == 0 and stats["errors"] == 0 and complete
    frames = max(1, stats["processed"])
    out = {"pass": ok, "delivered_fps": round(delivered, 1), "received": stats["processed"],
           "missed": stats["missed"], "overruns": stats["overruns"], "complete": complete,
           "first_id": stats["first_id"], "last_id": stats["last_id"]}
    for who, seconds in cpu.items():  # CPU seconds of each process over the trial
        known = math.isfinite(seconds)  # NaN is not JSON: null
        out[f"{who}_cpu_pct"] = round(100 * seconds / receiving, 1) \
            if known and receiving > 0 else None
        out[f"{who}_cpu_ms_per_frame"] = round(1000 * seconds / frames, 3) if known else None
    return out


# --- the search -----------------------------------------------------------------------------------
def search(producer: Any, size: int, trials: int, window: float, folder: Path,
           ports: set[int]) -> dict[str, Any]:
    """The same search for both producers. A trial passes with zero loss; its measurement is the
    rate the consumer received (`delivered`). After a pass the requested rate doubles, after a
    failure it halves, until both are known; then the geometric mean of the highest pass and the
    lowest failure. A pass whose delivered rate is under 90% of the request is saturated (the
    chain carried all it could, losslessly): the search still goes up (a driver that sleeps
    between frames gets more with a shorter period), and stops when two saturated passes in a
    row deliver within 10% of each other."""
    rate, passed, failed = GUESS[size], None, None
    best, plateau, best_line = 0.0, None, {}
    for _ in range(trials):
        t0 = time.monotonic()
        try:
            result = producer.trial(rate, window, SERVER_QUEUE[size], folder, ports)
        except RuntimeError as exc:
            result = {"pass": False, "error": str(exc)[-500:]}
        line = {"trial": True, "producer": producer.name, "size": size, "dtype": "UInt8",
                "rate_requested": round(rate, 2), "window_s": window,
                "server_queue": SERVER_QUEUE[size], **result,
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "trial_s": round(time.monotonic() - t0, 1)}
        print(json.dumps(line), flush=True)
        if result["pass"]:
            delivered = result["delivered_fps"]
            if delivered > best:
                best, best_line = delivered, line
            passed = rate if passed is None else max(passed, rate)
            if delivered < 0.9 * rate:
                if plateau is not None and delivered < 1.1 * plateau:
                    break
                plateau = delivered
            else:
                plateau = None
        else:
            failed = rate if failed is None else min(failed, rate)
        if passed is not None and failed is not None:
            if failed / passed < 1.1:
                break
            rate = math.sqrt(passed * failed)
        else:
            rate = rate * 2 if failed is None else rate / 2
    return {"producer": producer.name, "size": size, "dtype": "UInt8",
            "max_zero_loss_fps": round(best, 1),
            "MB_per_s": round(best * size * size / 1e6, 1),
            "highest_pass_requested": passed, "lowest_fail_requested": failed,
            **{k: best_line.get(k) for k in ("server_cpu_pct", "server_cpu_ms_per_frame",
                                             "consumer_cpu_pct", "consumer_cpu_ms_per_frame")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--trials", type=int, default=7, help="trials per producer and size")
    parser.add_argument("--window", type=float, default=2.5, help="seconds of frames per trial")
    parser.add_argument("--producers", nargs="+", default=list(PRODUCERS),
                        choices=list(PRODUCERS))
    parser.add_argument("--p4p-server", nargs=6, metavar=("CHANNEL", "SIZE", "RATE", "WINDOW",
                                                           "START_DELAY", "SHUTDOWN_DELAY"),
                        help=argparse.SUPPRESS)  # the p4p producer's child process
    args = parser.parse_args()
    if args.p4p_server:
        channel, size, *times = args.p4p_server
        p4p_server(channel, int(size), *map(float, times))
        return
    ports: set[int] = set()
    results: dict[int, dict[str, float]] = {}
    cpu: dict[str, dict[str, Any]] = {}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pva_stream") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            for name in args.producers:
                log(f"{name} {size}x{size} ...")
                producer = PRODUCERS[name](size, folder, ports)
                try:
                    result = search(producer, size, args.trials, args.window, folder, ports)
                finally:
                    producer.close()
                print(json.dumps(result), flush=True)
                results.setdefault(size, {})[name] = result["max_zero_loss_fps"]
                cpu.setdefault(f"{size}x{size}", {})[name] = {
                    "server": result["server_cpu_ms_per_frame"],
                    "consumer": result["consumer_cpu_ms_per_frame"]}
    ratios = {f"{s}x{s}": (round(r["ndflow"] / r["pvapy"], 2) if r.get("pvapy") else None)
              for s, r in results.items() if "ndflow" in r}
    # how far a p4p server can go at all (against pvapy), and how much of it ndflow reaches
    ceiling = {f"{s}x{s}": {key: round(r[a] / r[b], 2) for key, a, b in (
        ("p4p_vs_pvapy", "p4p", "pvapy"), ("ndflow_vs_p4p", "ndflow", "p4p")) if r.get(a)
        and r.get(b)} for s, r in results.items() if r.get("p4p")}
    print(json.dumps({"summary": True, "ratios": ratios, "p4p_ceiling": ceiling,
                      "max_zero_loss_fps": {f"{s}x{s}": r for s, r in results.items()},
                      "cpu_ms_per_frame_at_best": cpu,
                      "consumer": "pvapy-hpc-consumer, 1 consumer, " + PROCESSOR,
                      "cores": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
                      "bench_s": round(time.monotonic() - t_start, 1)}), flush=True)


PRODUCERS = {"ndflow": NdflowProducer, "pvapy": PvapyProducer, "p4p": P4pProducer}

if __name__ == "__main__":
    main()
