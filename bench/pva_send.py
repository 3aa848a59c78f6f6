"""Pva1's send path alone: what posting one NTNDArray frame costs, complete Values against
NTNDArrayStream's updates (only what changed since the previous frame marked).

Why: in bench/pva_stream.py the IOC's CPU per frame is the sim driver, the plugin and the send
path together; this isolates the send path, to judge a change to it.

``build``
    In this process, no network: microseconds of CPU per frame to build the Value
    (`to_value` / `NTNDArrayStream.update`) and to build and post it to a SharedPV with no
    subscriber (PVXS merging it into the PV's current value), for a 512x512 UInt8 frame with 1
    and with 20 attributes (unchanged from frame to frame, as a driver's settings).
``wire``
    A p4p server in a child process posting pre-made frames (ColorMode the only attribute, as
    the sim driver's) at a fixed rate to one pvapy monitor in another child process, as the
    bench's pvapy-hpc-consumer reads; CPU ms per frame of each process. Full and delta runs
    alternate, `--rounds` each: on a shared machine compare the medians, and the load average
    printed with each line.

Usage::

    .venv/bin/python bench/pva_send.py                     # ~1 minute
    .venv/bin/python bench/pva_send.py --parts wire --sizes 1024 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from ndflow.ports import free_port_pair

RATES = {512: 1000.0, 1024: 400.0, 2048: 100.0, 4096: 25.0}  # frames/s, well under saturation
CHANNEL = "ndflowsend:image"


def env_for(port: int) -> dict[str, str]:
    return {"EPICS_PVAS_SERVER_PORT": str(port), "EPICS_PVAS_BROADCAST_PORT": str(port + 1),
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{port + 1}", "EPICS_PVA_AUTO_ADDR_LIST": "NO"}


def frames(size: int, attributes: int, count: int = 10) -> list[Any]:
    from ndflow.ndarray import AttrSource, NDArray, NDAttribute
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        array = NDArray.from_numpy(rng.integers(0, 255, (size, size), dtype=np.uint8))
        array.attributes["ColorMode"] = NDAttribute("ColorMode", 0, "Color mode",
                                                    AttrSource.DRIVER)
        for k in range(attributes - 1):
            array.attributes[f"A{k}"] = NDAttribute(f"A{k}", float(k), "a setting",
                                                    AttrSource.PARAM, f"PV{k}")
        out.append(array)
    return out


def poster(mode: str) -> Any:
    """post(pv, array): a complete Value each time, or the stream's updates."""
    from ndflow.pva.ntndarray_stream import NTNDArrayStream, to_value
    stream = NTNDArrayStream()
    if mode == "full":
        return lambda pv, array: pv.post(to_value(array))
    return lambda pv, array: pv.post(stream.update(array))


def build(rounds: int) -> None:
    from p4p import Value
    from p4p.server.raw import SharedPV
    from ndflow.pva.ntndarray import TYPE
    from ndflow.pva.ntndarray_stream import NTNDArrayStream, to_value
    n = 3000
    for attributes in (1, 20):
        array = frames(512, attributes, 1)[0]
        result: dict[str, dict[str, list[float]]] = {}
        for _ in range(rounds):
            for mode in ("full", "delta"):
                stream = NTNDArrayStream()
                make = to_value if mode == "full" else stream.update
                t = time.process_time()
                for i in range(n):
                    array.unique_id = i
                    make(array)
                built = (time.process_time() - t) / n * 1e6
                pv, post = SharedPV(initial=Value(TYPE, {})), poster(mode)
                t = time.process_time()
                for i in range(n):
                    array.unique_id = i
                    post(pv, array)
                posted = (time.process_time() - t) / n * 1e6
                row = result.setdefault(mode, {"build_us": [], "build_post_us": []})
                row["build_us"].append(built)
                row["build_post_us"].append(posted)
        print(json.dumps({"part": "build", "size": 512, "attributes": attributes,
                          **{mode: {k: round(statistics.median(v), 1) for k, v in row.items()}
                             for mode, row in result.items()},
                          "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)


def serve(mode: str, size: int, rate: float, count: int, port: int) -> None:
    """The server child: post `count` frames at `rate` once the client has the first, then
    print its CPU seconds over them."""
    os.environ.update(env_for(port))
    from p4p import Value
    from p4p.server import Server, StaticProvider
    from p4p.server.raw import SharedPV
    from ndflow.pva.ntndarray import TYPE
    pv = SharedPV(initial=Value(TYPE, {}))
    provider = StaticProvider("bench")
    provider.add(CHANNEL, pv)
    from ndflow.pva.pvxs_send import apply, batch_sender
    apply()  # as the IOC's transport does
    server = Server(providers=[provider])
    batch_sender()
    made, post = frames(size, 1), poster(mode)
    post(pv, made[0])
    sys.stdin.readline()  # the client has the first frame
    cpu, t0 = time.process_time(), time.monotonic()
    for i in range(1, count + 1):
        array = made[i % len(made)]
        array.stamp(i + 1, time.time())
        post(pv, array)
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"cpu_s": time.process_time() - cpu}), flush=True)
    sys.stdin.readline()
    server.stop()


def watch(port: int) -> None:
    """The client child: a pvapy monitor; says when it has the first frame, and at the end how
    many it received and its CPU seconds since then."""
    os.environ.update(env_for(port))
    import pvaccess
    got = [0]
    channel = pvaccess.Channel(CHANNEL)
    channel.subscribe("bench", lambda _obj: got.__setitem__(0, got[0] + 1))
    channel.startMonitor("record[queueSize=100]")
    while got[0] < 1:
        time.sleep(0.01)
    time.sleep(0.2)
    start, cpu = got[0], time.process_time()
    print("ready", flush=True)
    sys.stdin.readline()  # the server is done
    time.sleep(0.5)
    print(json.dumps({"received": got[0] - start, "cpu_s": time.process_time() - cpu}),
          flush=True)
    channel.stopMonitor()


def wire(sizes: list[int], rounds: int, seconds: float) -> None:
    for size in sizes:
        rate = RATES[size]
        count = int(rate * seconds)
        runs: dict[str, list[dict[str, float]]] = {"full": [], "delta": []}
        for _ in range(rounds):
            for mode in ("full", "delta"):
                port = free_port_pair()
                opts = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                server = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(size),
                                           str(rate), str(count), str(port)], **opts)
                client = subprocess.Popen([sys.executable, __file__, "--watch", str(port)],
                                          **opts)
                try:
                    assert client.stdout.readline().strip() == "ready"
                    server.stdin.write("go\n")
                    server.stdin.flush()
                    served = json.loads(server.stdout.readline())
                    client.stdin.write("done\n")
                    client.stdin.flush()
                    seen = json.loads(client.stdout.readline())
                    server.stdin.write("stop\n")
                    server.stdin.flush()
                finally:
                    for proc in (client, server):
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                line = {"part": "wire", "mode": mode, "size": size, "rate": rate,
                        "frames": count, "received": seen["received"],
                        "server_ms_per_frame": round(1000 * served["cpu_s"] / count, 3),
                        "client_ms_per_frame": round(1000 * seen["cpu_s"] / count, 3),
                        "load_avg_1min": round(os.getloadavg()[0], 2)}
                runs[mode].append(line)
                print(json.dumps(line), flush=True)
        print(json.dumps({"part": "wire", "size": size, "summary": True, **{
            mode: {k: statistics.median(r[k] for r in rows)
                   for k in ("server_ms_per_frame", "client_ms_per_frame")}
            for mode, rows in runs.items()}}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        mode, size, rate, count, port = sys.argv[2:7]
        return serve(mode, int(size), float(rate), int(count), int(port))
    if sys.argv[1:2] == ["--watch"]:
        return watch(int(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["build", "wire"],
                        choices=["build", "wire"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024],
                        choices=sorted(RATES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="of frames per wire run")
    args = parser.parse_args()
    if "build" in args.parts:
        build(args.rounds)
    if "wire" in args.parts:
        wire(args.sizes, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
