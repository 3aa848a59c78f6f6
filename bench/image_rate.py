"""Image-rate benchmark: ndflow's image1:ArrayData against pythonSoftIOC and bare caproto.

What is measured
----------------
For each frame size (default 1024x1024 and 4096x4096 UInt16), one after another on loopback:

``softioc``
    The reference, measured first: pythonSoftIOC (EPICS base's RSRV C server) with one
    ``WaveformIn`` record of NX*NY Int16 (CA DBR_SHORT, as ``image1:ArrayData``), posted as fast
    as the server can with ``.set()`` from an asyncio dispatcher coroutine (two alternating
    preallocated arrays, element 0 changed on every post, ``await asyncio.sleep(0)`` between
    posts); a ``longIn`` PostCount counts the posts.

``ndflow``
    The real IOC (``python -m ndflow.cli run``) with a sim driver (``cam1:``) feeding a
    StdArrays plugin (``image1:``, Int16 waveform of NX*NY elements), acquiring Continuous with
    AcquireTime = AcquirePeriod = 0 in LinearRamp mode, serving its default transports. Over the
    window we record the driver's frame rate (ArrayCounter_RBV of cam1), the plugin's
    (ArrayCounter_RBV of image1), the monitor updates/s a pyepics client actually receives on
    ``image1:ArrayData``, the payload MB/s that represents, the updates/s a second pyepics monitor
    receives on ``cam1:ArrayCounter_RBV`` at the same time (scalars must keep flowing while
    images stream; at most 1/interval = 50/s), and the CPU used by the server process and by
    this (client) process, 100% meaning one core.

``ndflow_paced``
    The same IOC with the driver's AcquirePeriod set so that it makes frames at 2x
    (``--paced-factor``) the updates/s softioc delivered in this run: the CA path is still
    offered more frames than softioc sent, but the simulated detector no longer spends most of
    a core making frames nobody receives (on a 2-core machine the free-running sim driver, the
    server's CA path and the pyepics client compete for the same CPU; softioc's producer only
    copies a ready array). At most ``paced_factor`` x softioc by construction.

``ndflow_nice``
    The free-running IOC with the sim's ``nice`` option (``--sim-nice``, default 10): the thread
    making frames runs at that nice value, so the scheduler prefers the server's CA path and
    the client; the sim fills the CPU they leave. Not paced: no knowledge of softioc's rate.

``caproto_bare_paced`` / ``caproto_bare_tight``
    A caproto server with nothing but one NX*NY int16 waveform, whose startup hook posts two
    alternating preallocated arrays. *Paced* posts at the update rate ndflow delivered (at least
    1/s); *tight* posts as fast as the event loop allows (``await asyncio.sleep(0)`` between
    posts).

Why
---
EPICS users compare against an EPICS base IOC, so the headline is ndflow / softioc. RSRV sends
from C threads without the GIL; caproto sends from its asyncio event loop and has an overload
collapse: when a server posts large arrays faster than its circuits can send them, the
subscription queues fill, the event loop spends itself on queue management and clients receive
(next to) nothing -- 0 updates/s at 100% CPU (the tight bare loop shows it). ndflow avoids it:
drivers and plugins never call caproto; they hand values to the publisher, which coalesces
(latest value wins) and posts the next array of a PV only once the previous update has left for
the clients, so the rate follows what the clients drain. The paced bare caproto shows what
caproto achieves when someone else does the pacing.

Rounds: every case is measured ``--rounds`` times (default 2), softioc first in each round, and
each ratio is taken against the softioc of its own round: on this shared 2-core machine softioc
alone moved between 458 and 587 updates/s from one run to the next.

Output: one JSON object per line per measurement on stdout (with its ``round``), then a summary
line ``{"summary": true, "ratios": {...}, "ratios_per_round": [...], ...}`` with ndflow monitor
updates/s divided by each baseline's, the median over the rounds (``ndflow_vs_softioc`` is the
headline). Progress goes to stderr.

Usage::

    .venv/bin/python bench/image_rate.py                 # both sizes, 5 s windows
    .venv/bin/python bench/image_rate.py --quick --sizes 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil

from ndflow.ports import free_port_pair


# --- Channel Access environment (must be in place before pyepics loads libca) ---------------------

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

SOFTIOC_SERVER = '''\
"""pythonSoftIOC (RSRV) waveform server: PREFIX ArrayData (N int16) and PostCount; posts forever."""
import asyncio
import sys

import numpy as np
from softioc import asyncio_dispatcher, builder, softioc

prefix, n = sys.argv[1], int(sys.argv[2])
arrays = [np.zeros(n, dtype=np.int16), np.ones(n, dtype=np.int16)]
dispatcher = asyncio_dispatcher.AsyncioDispatcher()
builder.SetDeviceName(prefix.rstrip(":"))
data = builder.WaveformIn("ArrayData", initial_value=arrays[0])
count = builder.longIn("PostCount", initial_value=0)
builder.LoadDatabase()
softioc.iocInit(dispatcher, enable_pva=False)


async def post_forever():
    i = 0
    while True:
        array = arrays[i & 1]
        array[0] = i & 0x7FFF
        data.set(array)
        i += 1
        count.set(i)
        await asyncio.sleep(0)


dispatcher(post_forever)
softioc.non_interactive_ioc()
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


def ndflow_config(nx: int, ny: int, nice: int = 0) -> str:
    return (
        "drivers:\n"
        f'  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {nx}, '
        f"max_size_y: {ny}, data_type: UInt16, nice: {nice}}}}}\n"
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
    scalar_updates: int
    server_cpu: float
    client_cpu: float
    counters: dict[str, float | None]


def snapshot(monitor: MonitorCounter, server: psutil.Process, client: psutil.Process,
             counters: dict[str, str], scalar: MonitorCounter | None = None) -> Snapshot:
    values = {key: _number(epics.caget(name, timeout=2.0)) for key, name in counters.items()}
    return Snapshot(time.monotonic(), monitor.updates, scalar.updates if scalar else 0,
                    cpu_seconds(server), cpu_seconds(client), values)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def measure(monitor: MonitorCounter, server: Server, window: float,
            counters: dict[str, str], scalar: MonitorCounter | None = None) -> dict[str, Any]:
    """Rates over one window: monitor updates, MB/s, CPU, and the delta/s of each counter PV
    (and of the scalar monitor's updates, if there is one)."""
    server_ps, client_ps = psutil.Process(server.proc.pid), psutil.Process()
    start = snapshot(monitor, server_ps, client_ps, counters, scalar)
    time.sleep(window)
    end = snapshot(monitor, server_ps, client_ps, counters, scalar)
    elapsed = end.t - start.t
    updates_per_s = (end.updates - start.updates) / elapsed
    result: dict[str, Any] = {
        "window_s": round(elapsed, 3),
        "monitor_updates_per_s": round(updates_per_s, 2),
    }
    if scalar is not None:
        result["scalar_monitor_updates_per_s"] = round(
            (end.scalar_updates - start.scalar_updates) / elapsed, 2)
    for key in counters:
        a, b = start.counters[key], end.counters[key]
        result[key] = None if a is None or b is None else round((b - a) / elapsed, 2)
    result["server_cpu_pct"] = round(100 * (end.server_cpu - start.server_cpu) / elapsed, 1)
    result["client_cpu_pct"] = round(100 * (end.client_cpu - start.client_cpu) / elapsed, 1)
    return result


FIELD_ORDER = ("driver_fps", "image1_fps", "server_posts_per_s", "monitor_updates_per_s",
               "mb_per_s", "scalar_monitor_updates_per_s", "server_cpu_pct", "client_cpu_pct",
               "window_s")


def with_payload(result: dict[str, Any], elements: int) -> dict[str, Any]:
    """Add MB/s received and put the fields in a readable order."""
    mb = result["monitor_updates_per_s"] * elements * BYTES_PER_ELEMENT / 1e6
    result = {**result, "mb_per_s": round(mb, 1)}
    return {key: result[key] for key in FIELD_ORDER if key in result}


# --- the cases -------------------------------------------------------------------------------------

def run_ndflow(nx: int, ny: int, workdir: Path, warmup: float, window: float,
               period: float = 0.0, nice: int = 0) -> dict[str, Any]:
    """The real IOC; the sim driver's AcquirePeriod is `period` (0: as fast as it can), its
    frame-making thread at nice value `nice`."""
    prefix = next_prefix("BENCH")
    config = workdir / f"ndflow_{nx}x{ny}.yml"
    config.write_text(ndflow_config(nx, ny, nice))
    args = [sys.executable, "-m", "ndflow.cli", "run", str(config), "--prefix", prefix,
            "--log-level", "WARNING"]
    server = start_server(args, workdir / f"ndflow_{prefix[:-1]}.log", prefix + "cam1:Acquire_RBV")
    monitor = scalar = None
    try:
        cam = prefix + "cam1:"
        for suffix, value in (("ImageMode", "Continuous"), ("AcquireTime", 0),
                              ("AcquirePeriod", period), ("SimMode", "LinearRamp")):
            if epics.caput(cam + suffix, value, wait=True, timeout=5) is None:
                raise RuntimeError(f"caput {cam + suffix} = {value!r} failed")
        monitor = MonitorCounter(prefix + "image1:ArrayData")
        scalar = MonitorCounter(cam + "ArrayCounter_RBV")
        epics.caput(cam + "Acquire", 1, wait=False)
        time.sleep(warmup)
        result = measure(monitor, server, window, {
            "driver_fps": cam + "ArrayCounter_RBV",
            "image1_fps": prefix + "image1:ArrayCounter_RBV",
        }, scalar)
        epics.caput(cam + "Acquire", 0, wait=True, timeout=5)
    finally:
        for counter in (monitor, scalar):
            if counter is not None:
                counter.close()
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


def run_softioc(nx: int, ny: int, workdir: Path, warmup: float, window: float) -> dict[str, Any]:
    """pythonSoftIOC posting as fast as it can."""
    prefix = next_prefix("SOFT")
    script = workdir / "softioc_server.py"
    script.write_text(SOFTIOC_SERVER)
    args = [sys.executable, str(script), prefix, str(nx * ny)]
    server = start_server(args, workdir / f"softioc_{prefix[:-1]}.log", prefix + "PostCount")
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


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


CASES = ("softioc", "ndflow", "ndflow_paced", "ndflow_nice", "caproto_bare_paced",
         "caproto_bare_tight")


def bench_size(size: int, workdir: Path, warmup: float, window: float,
               cases: tuple[str, ...] = CASES, paced_factor: float = 2.0, sim_nice: int = 10,
               round_no: int = 1) -> dict[str, dict[str, Any]]:
    nx = ny = size
    frame = f"{nx}x{ny} UInt16"
    results: dict[str, dict[str, Any]] = {}

    def emit_measured(record: dict[str, Any]) -> None:
        emit({**record, "round": round_no})

    if "softioc" in cases:
        progress(f"{frame}: pythonSoftIOC (RSRV) posting as fast as it can")
        results["softioc"] = {"case": "softioc", "frame": frame,
                              **run_softioc(nx, ny, workdir, warmup, window)}
        emit_measured(results["softioc"])

    if "ndflow" in cases:
        progress(f"{frame}: ndflow, driver free-running")
        results["ndflow"] = {"case": "ndflow", "frame": frame, "acquire_period_s": 0.0,
                             **run_ndflow(nx, ny, workdir, warmup, window)}
        emit_measured(results["ndflow"])

    soft = results.get("softioc", {}).get("monitor_updates_per_s")
    if "ndflow_paced" in cases and soft:
        period = round(1.0 / (paced_factor * soft), 6)
        progress(f"{frame}: ndflow, driver at {1 / period:.0f} frames/s "
                 f"({paced_factor} x softioc's updates/s)")
        results["ndflow_paced"] = {"case": "ndflow_paced", "frame": frame,
                                   "acquire_period_s": period,
                                   **run_ndflow(nx, ny, workdir, warmup, window, period)}
        emit_measured(results["ndflow_paced"])

    if "ndflow_nice" in cases:
        progress(f"{frame}: ndflow, driver free-running at nice {sim_nice}")
        results["ndflow_nice"] = {"case": "ndflow_nice", "frame": frame, "acquire_period_s": 0.0,
                                  "sim_nice": sim_nice,
                                  **run_ndflow(nx, ny, workdir, warmup, window, nice=sim_nice)}
        emit_measured(results["ndflow_nice"])

    if "caproto_bare_paced" in cases:
        rate = max(1.0, results.get("ndflow", {}).get("monitor_updates_per_s", 1.0))
        progress(f"{frame}: bare caproto paced at {rate:.2f} posts/s")
        results["caproto_bare_paced"] = {"case": "caproto_bare_paced", "frame": frame,
                                         "post_rate_target": rate,
                                         **run_bare(nx, ny, rate, workdir, warmup, window)}
        emit_measured(results["caproto_bare_paced"])

    if "caproto_bare_tight" in cases:
        progress(f"{frame}: bare caproto tight loop")
        results["caproto_bare_tight"] = {"case": "caproto_bare_tight", "frame": frame,
                                         **run_bare(nx, ny, 0.0, workdir, warmup, window)}
        emit_measured(results["caproto_bare_tight"])
    return results


def round_summary(all_results: dict[str, dict[str, dict[str, Any]]]
                  ) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, Any]]]:
    """The ratios and headline numbers of one round (every ratio against the softioc measured in
    that round)."""
    ratios: dict[str, dict[str, float | None]] = {}
    headline: dict[str, dict[str, Any]] = {}
    for key, res in all_results.items():
        def get(case: str, field: str) -> Any:
            return res.get(case, {}).get(field)

        nd = get("ndflow", "monitor_updates_per_s")
        nd_paced = get("ndflow_paced", "monitor_updates_per_s")
        nd_nice = get("ndflow_nice", "monitor_updates_per_s")
        soft = get("softioc", "monitor_updates_per_s")
        paced = get("caproto_bare_paced", "monitor_updates_per_s")
        tight = get("caproto_bare_tight", "monitor_updates_per_s")
        bare = [v for v in (paced, tight) if v is not None]
        ratios[key] = {"ndflow_vs_softioc": ratio(nd, soft),
                       "ndflow_paced_vs_softioc": ratio(nd_paced, soft),
                       "ndflow_nice_vs_softioc": ratio(nd_nice, soft),
                       "ndflow_vs_bare_paced": ratio(nd, paced),
                       "ndflow_vs_bare_best": ratio(nd, max(bare) if bare else None)}
        headline[key] = {
            "ndflow_driver_fps": get("ndflow", "driver_fps"),
            "ndflow_image1_fps": get("ndflow", "image1_fps"),
            "ndflow_updates_per_s": nd,
            "ndflow_mb_per_s": get("ndflow", "mb_per_s"),
            "ndflow_scalar_monitor_updates_per_s": get("ndflow", "scalar_monitor_updates_per_s"),
            "ndflow_server_cpu_pct": get("ndflow", "server_cpu_pct"),
            "ndflow_client_cpu_pct": get("ndflow", "client_cpu_pct"),
            "ndflow_paced_driver_fps": get("ndflow_paced", "driver_fps"),
            "ndflow_paced_updates_per_s": nd_paced,
            "ndflow_paced_server_cpu_pct": get("ndflow_paced", "server_cpu_pct"),
            "ndflow_paced_client_cpu_pct": get("ndflow_paced", "client_cpu_pct"),
            "ndflow_nice_driver_fps": get("ndflow_nice", "driver_fps"),
            "ndflow_nice_updates_per_s": nd_nice,
            "ndflow_nice_server_cpu_pct": get("ndflow_nice", "server_cpu_pct"),
            "ndflow_nice_client_cpu_pct": get("ndflow_nice", "client_cpu_pct"),
            "softioc_updates_per_s": soft,
            "softioc_mb_per_s": get("softioc", "mb_per_s"),
            "softioc_server_posts_per_s": get("softioc", "server_posts_per_s"),
            "softioc_server_cpu_pct": get("softioc", "server_cpu_pct"),
            "softioc_client_cpu_pct": get("softioc", "client_cpu_pct"),
            "bare_paced_updates_per_s": paced,
            "bare_tight_updates_per_s": tight,
            "bare_tight_server_posts_per_s": get("caproto_bare_tight", "server_posts_per_s"),
        }
    return ratios, headline


def summarize(rounds: list[dict[str, dict[str, dict[str, Any]]]], warmup: float,
              window: float) -> dict[str, Any]:
    """The median over rounds of each ratio and number (each round's ratios against its own
    softioc: the machine's speed drifts between rounds, by 20% on this one), and every round's
    ratios."""
    per_round = [round_summary(results) for results in rounds]
    return {"summary": True, "ratios": _medians([r for r, _ in per_round]),
            "headline": _medians([h for _, h in per_round]),
            "ratios_per_round": [r for r, _ in per_round], "rounds": len(rounds),
            "warmup_s": warmup, "window_s": window, "cpu_count": os.cpu_count(),
            "ca_server_port": int(CA_ENV["EPICS_CA_SERVER_PORT"])}


def _medians(tables: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{size: {field: median over the tables}} (None where no table has a number)."""
    out: dict[str, dict[str, Any]] = {}
    for size in tables[0] if tables else ():
        out[size] = {}
        for field in tables[0][size]:
            values = [t[size][field] for t in tables if t.get(size, {}).get(field) is not None]
            out[size][field] = round(statistics.median(values), 3) if values else None
    return out


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
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="which servers to measure (default all; ndflow_paced needs softioc)")
    parser.add_argument("--paced-factor", type=float, default=2.0,
                        help="ndflow_paced: the driver's frame rate as a multiple of softioc's "
                             "updates/s (default 2)")
    parser.add_argument("--rounds", type=int, default=2, choices=range(1, 11), metavar="N",
                        help="measure every case N times, softioc first in each round; the "
                             "summary gives medians (default 2)")
    parser.add_argument("--sim-nice", type=int, default=10, choices=range(20), metavar="N",
                        help="ndflow_nice: the nice value of the sim's frame-making thread, "
                             "0-19 (default 10)")
    args = parser.parse_args(argv)
    warmup, window = (1.0, 2.0) if args.quick else (args.warmup, args.window)

    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="ndflow-bench-") as tmp:
        for round_no in range(1, args.rounds + 1):
            rounds.append({f"{size}x{size}": bench_size(
                size, Path(tmp), warmup, window, tuple(args.cases), args.paced_factor,
                args.sim_nice, round_no) for size in args.sizes})
    emit(summarize(rounds, warmup, window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
