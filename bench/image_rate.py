"""Image-rate benchmark: ndflow's image1:ArrayData against a bare caproto waveform server.

What is measured
----------------
For each frame size (default 1024x1024 and 4096x4096 UInt16), one after another on loopback:

``ndflow``
    The real IOC (``python -m ndflow.cli run``) with a sim driver (``cam1:``) feeding a
    StdArrays plugin (``image1:``, Int16 waveform of NX*NY elements), acquiring Continuous with
    AcquireTime = AcquirePeriod = 0 in LinearRamp mode. Over the window we record the driver's
    frame rate (ArrayCounter_RBV of cam1), the plugin's (ArrayCounter_RBV of image1), the
    monitor updates/s a pyepics client actually receives on ``image1:ArrayData``, the payload
    MB/s that represents, and the CPU used by the server process and by this (client) process,
    100% meaning one core.

``caproto_bare_paced`` / ``caproto_bare_tight``
    The baseline: a caproto server with nothing but one NX*NY int16 waveform, whose startup hook
    posts two alternating preallocated arrays (element 0 changed on every post). *Paced* posts at
    the update rate ndflow delivered (at least 1/s), so both servers are asked for the same work;
    *tight* posts as fast as the event loop allows (``await asyncio.sleep(0)`` between posts).
    The client side is the same pyepics monitor and the same counting window.

Why
---
caproto has an overload collapse: when a server posts large arrays faster than its circuits can
serialise and send them, the subscription queues fill, the event loop spends itself on queue
management and clients receive (next to) nothing -- 0 updates/s at 100% CPU. The tight bare
loop is there to show that collapse. ndflow's design avoids it: drivers and plugins never call
caproto; they hand values to the publisher, which coalesces (latest value wins) and paces array
posts by a byte budget, so a detector producing frames far faster than CA can carry them should
still deliver a steady stream of monitor updates. The paced baseline is the fair comparison (what
bare caproto achieves when someone else does the pacing); the ratio against the best baseline
shows the cost of everything ndflow adds.

Output: one JSON object per line per measurement on stdout, then a summary line
``{"summary": true, "ratios": {...}, ...}`` with ndflow monitor updates/s divided by the
baseline's. Progress goes to stderr.

Usage::

    .venv/bin/python bench/image_rate.py                 # both sizes, 5 s windows
    .venv/bin/python bench/image_rate.py --quick --sizes 1024
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil


# --- Channel Access environment (must be in place before pyepics loads libca) ---------------------

def free_port_pair() -> int:
    """A port free for TCP and UDP on 127.0.0.1, with port+1 free too (repeater / beacons)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 65000:
            continue
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1")


def ca_environment(port: int) -> dict[str, str]:
    return {
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CA_REPEATER_PORT": str(port + 1),
        "EPICS_CAS_BEACON_PORT": str(port + 1),
        "EPICS_CA_MAX_ARRAY_BYTES": "200000000",
    }


CA_ENV = ca_environment(free_port_pair())
os.environ.update(CA_ENV)

import epics  # noqa: E402  (needs CA_ENV)

BYTES_PER_ELEMENT = 2  # UInt16 frames, Int16 waveforms
SERVER_START_TIMEOUT_S = 30.0


# --- the baseline server ------------------------------------------------------------------------

BARE_SERVER = '''\
"""Bare caproto waveform server: PREFIX ArrayData (N int16) and PostCount; posts forever."""
import asyncio
import sys

import numpy as np
from caproto import ChannelInteger, ChannelShort
from caproto.asyncio.server import run

prefix, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])  # rate 0 = tight loop
arrays = [np.zeros(n, dtype=np.int16), np.ones(n, dtype=np.int16)]
data = ChannelShort(value=arrays[0], max_length=n)
count = ChannelInteger(value=0)


async def post_forever(async_lib):
    loop = asyncio.get_running_loop()
    period = 1.0 / rate if rate > 0 else 0.0
    due = loop.time()
    i = 0
    while True:
        array = arrays[i & 1]
        array[0] = i & 0x7FFF
        await data.write(array, verify_value=False)
        i += 1
        await count.write(i, verify_value=False)
        if period:
            due += period
            delay = due - loop.time()
            if delay < 0:  # behind: do not try to catch up with a burst
                due = loop.time()
            await asyncio.sleep(max(delay, 0.0))
        else:
            await asyncio.sleep(0)


run({prefix + "ArrayData": data, prefix + "PostCount": count}, startup_hook=post_forever)
'''


# --- server processes ----------------------------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(args: list[str], log_path: Path, ready_pv: str) -> Server:
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **CA_ENV})
    log.close()  # the child holds its own descriptor
    server = Server(proc, log_path)
    try:
        wait_ready(server, ready_pv)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, pv_name: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n"
                               f"{server.log_tail()}")
        with warnings.catch_warnings():  # pyepics warns on every timed-out get
            warnings.simplefilter("ignore")
            if epics.caget(pv_name, timeout=0.5) is not None:
                return
    raise RuntimeError(f"{pv_name} not reachable after {SERVER_START_TIMEOUT_S} s:\n"
                       f"{server.log_tail()}")


def ndflow_config(nx: int, ny: int) -> str:
    return (
        "drivers:\n"
        f'  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {nx}, '
        f"max_size_y: {ny}, data_type: UInt16}}}}\n"
        "plugins:\n"
        f'  - {{type: stdarrays, port: Image1, prefix: "image1:", input: SIM1, '
        f"options: {{data_type: Int16, nelm: {nx * ny}}}}}\n"
    )


_prefixes: Iterator[int] = iter(range(1, 1_000_000))


def next_prefix(stem: str) -> str:
    """A PV prefix never used before in this run, so channels pyepics keeps cached from an
    earlier server cannot alias the new one."""
    return f"{stem}{next(_prefixes)}:"


# --- measuring -------------------------------------------------------------------------------------

class MonitorCounter:
    """A pyepics monitor on a (large) array PV that only counts updates."""

    def __init__(self, name: str) -> None:
        self.updates = 0
        # auto_monitor must be explicit: pyepics does not monitor arrays > 65536 elements.
        self.pv = epics.PV(name, auto_monitor=True, form="native", callback=self._count)
        if not self.pv.wait_for_connection(timeout=10):
            raise RuntimeError(f"cannot connect to {name}")

    def _count(self, **_: Any) -> None:
        self.updates += 1

    def close(self) -> None:
        self.pv.clear_callbacks()
        self.pv.disconnect()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Snapshot:
    t: float
    updates: int
    server_cpu: float
    client_cpu: float
    counters: dict[str, float | None]


def snapshot(monitor: MonitorCounter, server: psutil.Process, client: psutil.Process,
             counters: dict[str, str]) -> Snapshot:
    values = {key: _number(epics.caget(name, timeout=2.0)) for key, name in counters.items()}
    return Snapshot(time.monotonic(), monitor.updates, cpu_seconds(server), cpu_seconds(client),
                    values)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def measure(monitor: MonitorCounter, server: Server, window: float,
            counters: dict[str, str]) -> dict[str, Any]:
    """Rates over one window: monitor updates, MB/s, CPU, and the delta/s of each counter PV."""
    server_ps, client_ps = psutil.Process(server.proc.pid), psutil.Process()
    start = snapshot(monitor, server_ps, client_ps, counters)
    time.sleep(window)
    end = snapshot(monitor, server_ps, client_ps, counters)
    elapsed = end.t - start.t
    updates_per_s = (end.updates - start.updates) / elapsed
    result: dict[str, Any] = {
        "window_s": round(elapsed, 3),
        "monitor_updates_per_s": round(updates_per_s, 2),
    }
    for key in counters:
        a, b = start.counters[key], end.counters[key]
        result[key] = None if a is None or b is None else round((b - a) / elapsed, 2)
    result["server_cpu_pct"] = round(100 * (end.server_cpu - start.server_cpu) / elapsed, 1)
    result["client_cpu_pct"] = round(100 * (end.client_cpu - start.client_cpu) / elapsed, 1)
    return result


FIELD_ORDER = ("driver_fps", "image1_fps", "server_posts_per_s", "monitor_updates_per_s",
               "mb_per_s", "server_cpu_pct", "client_cpu_pct", "window_s")


def with_payload(result: dict[str, Any], elements: int) -> dict[str, Any]:
    """Add MB/s received and put the fields in a readable order."""
    mb = result["monitor_updates_per_s"] * elements * BYTES_PER_ELEMENT / 1e6
    result = {**result, "mb_per_s": round(mb, 1)}
    return {key: result[key] for key in FIELD_ORDER if key in result}


# --- the cases -------------------------------------------------------------------------------------

def run_ndflow(nx: int, ny: int, workdir: Path, warmup: float, window: float) -> dict[str, Any]:
    prefix = next_prefix("BENCH")
    config = workdir / f"ndflow_{nx}x{ny}.yml"
    config.write_text(ndflow_config(nx, ny))
    args = [sys.executable, "-m", "ndflow.cli", "run", str(config), "--prefix", prefix,
            "--log-level", "WARNING"]
    server = start_server(args, workdir / f"ndflow_{prefix[:-1]}.log", prefix + "cam1:Acquire_RBV")
    monitor = None
    try:
        cam = prefix + "cam1:"
        for suffix, value in (("ImageMode", "Continuous"), ("AcquireTime", 0),
                              ("AcquirePeriod", 0), ("SimMode", "LinearRamp")):
            if epics.caput(cam + suffix, value, wait=True, timeout=5) is None:
                raise RuntimeError(f"caput {cam + suffix} = {value!r} failed")
        monitor = MonitorCounter(prefix + "image1:ArrayData")
        epics.caput(cam + "Acquire", 1, wait=False)
        time.sleep(warmup)
        result = measure(monitor, server, window, {
            "driver_fps": cam + "ArrayCounter_RBV",
            "image1_fps": prefix + "image1:ArrayCounter_RBV",
        })
        epics.caput(cam + "Acquire", 0, wait=True, timeout=5)
    finally:
        if monitor is not None:
            monitor.close()
        server.stop()
    return with_payload(result, nx * ny)


def run_bare(nx: int, ny: int, rate: float, workdir: Path, warmup: float,
             window: float) -> dict[str, Any]:
    """rate > 0: paced at `rate` posts/s; rate == 0: tight loop."""
    prefix = next_prefix("BASE")
    script = workdir / "bare_server.py"
    script.write_text(BARE_SERVER)
    args = [sys.executable, str(script), prefix, str(nx * ny), str(rate)]
    server = start_server(args, workdir / f"bare_{prefix[:-1]}.log", prefix + "PostCount")
    monitor = None
    try:
        monitor = MonitorCounter(prefix + "ArrayData")
        time.sleep(warmup)
        result = measure(monitor, server, window, {"server_posts_per_s": prefix + "PostCount"})
    finally:
        if monitor is not None:
            monitor.close()
        server.stop()
    return with_payload(result, nx * ny)


# --- driver --------------------------------------------------------------------------------------

def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def progress(message: str) -> None:
    print(f"[image_rate] {message}", file=sys.stderr, flush=True)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def bench_size(size: int, workdir: Path, warmup: float, window: float) -> dict[str, dict[str, Any]]:
    nx = ny = size
    frame = f"{nx}x{ny} UInt16"
    results: dict[str, dict[str, Any]] = {}

    progress(f"{frame}: ndflow")
    results["ndflow"] = {"case": "ndflow", "frame": frame,
                         **run_ndflow(nx, ny, workdir, warmup, window)}
    emit(results["ndflow"])

    rate = max(1.0, results["ndflow"]["monitor_updates_per_s"])
    progress(f"{frame}: bare caproto paced at {rate:.2f} posts/s")
    results["caproto_bare_paced"] = {"case": "caproto_bare_paced", "frame": frame,
                                     "post_rate_target": rate,
                                     **run_bare(nx, ny, rate, workdir, warmup, window)}
    emit(results["caproto_bare_paced"])

    progress(f"{frame}: bare caproto tight loop")
    results["caproto_bare_tight"] = {"case": "caproto_bare_tight", "frame": frame,
                                     **run_bare(nx, ny, 0.0, workdir, warmup, window)}
    emit(results["caproto_bare_tight"])
    return results


def summarize(all_results: dict[str, dict[str, dict[str, Any]]], warmup: float,
              window: float) -> dict[str, Any]:
    ratios: dict[str, dict[str, float | None]] = {}
    headline: dict[str, dict[str, Any]] = {}
    for key, res in all_results.items():
        nd = res["ndflow"]["monitor_updates_per_s"]
        paced = res["caproto_bare_paced"]["monitor_updates_per_s"]
        tight = res["caproto_bare_tight"]["monitor_updates_per_s"]
        ratios[key] = {"ndflow_vs_bare_paced": ratio(nd, paced),
                       "ndflow_vs_bare_best": ratio(nd, max(paced, tight))}
        headline[key] = {
            "ndflow_driver_fps": res["ndflow"]["driver_fps"],
            "ndflow_image1_fps": res["ndflow"]["image1_fps"],
            "ndflow_updates_per_s": nd,
            "ndflow_mb_per_s": res["ndflow"]["mb_per_s"],
            "ndflow_server_cpu_pct": res["ndflow"]["server_cpu_pct"],
            "bare_paced_updates_per_s": paced,
            "bare_tight_updates_per_s": tight,
            "bare_tight_server_posts_per_s": res["caproto_bare_tight"]["server_posts_per_s"],
        }
    return {"summary": True, "ratios": ratios, "headline": headline,
            "warmup_s": warmup, "window_s": window, "cpu_count": os.cpu_count(),
            "ca_server_port": int(CA_ENV["EPICS_CA_SERVER_PORT"])}


def parse_size(text: str) -> int:
    """'1024' or '1024x1024' (square frames only)."""
    parts = text.lower().split("x")
    if len(parts) == 2 and parts[0] != parts[1]:
        raise argparse.ArgumentTypeError("only square frames (NxN) are supported")
    try:
        size = int(parts[0])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a frame size: {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"not a frame size: {text!r}")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[1024, 4096],
                        metavar="N", help="square frame sizes, e.g. 1024 4096 (default both)")
    parser.add_argument("--window", type=float, default=5.0, help="measuring window, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before the window, s")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 2 s window, 1 s warm-up")
    args = parser.parse_args(argv)
    warmup, window = (1.0, 2.0) if args.quick else (args.warmup, args.window)

    all_results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ndflow-bench-") as tmp:
        for size in args.sizes:
            all_results[f"{size}x{size}"] = bench_size(size, Path(tmp), warmup, window)
    emit(summarize(all_results, warmup, window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
