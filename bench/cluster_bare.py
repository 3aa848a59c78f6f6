"""The bare-mpi4py cases of bench/cluster.py: what the host allows without ndflow.

    mpiexec -n 2 python bench/cluster_bare.py transport FRAMES
    mpiexec -n 2|3 python bench/cluster_bare.py algorithm FRAMES REPEATS

`transport`: mpi4py Send/Recv of UInt16 1024x1024 frames from rank 0 to rank 1, one buffer each
side (the ceiling: it stays in the caches), then ROTATING buffers each side (as a pipeline's
frames in flight are), then rotating buffers with rank 0 making each frame before it sends it
(the sim's own one pass for a LinearRamp, `(col + k)[:, None] + row[None, :]`: ndflow's
transport case includes its sim making the frames). `algorithm`: rank 0 makes frames (one numpy pass, as the sim) and sends
them round robin to the other ranks, which receive and run the bench's algorithm (`REPEATS`
sums of the frame) in-process: with 1 and 2 receiving ranks, the speedup this host allows,
the ceiling for ndflow's. Waits poll with short sleeps, as ndflow's MPI thread does (MPICH's
blocking wait spins a core, which the ranks computing need). One JSON line per case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MPIEXEC = Path(sys.executable).parent / "mpiexec"
SHAPE = (1024, 1024)


def _launch(procs: int, *args: object) -> list[dict]:
    """The bare ranks under the same MPI settings as ndflow's (its single-copy choice)."""
    from ndflow.cluster import single_copy

    env = dict(os.environ)
    single_copy.enable(env)
    out = subprocess.run([str(MPIEXEC), "-n", str(procs), sys.executable, __file__,
                          *map(str, args)], capture_output=True, text=True, timeout=300,
                         env=env)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(out.stdout + out.stderr)
    return lines


def run_bare(frames: int) -> list[dict]:
    """transport_bare and transport_bare_rotating."""
    return _launch(2, "transport", frames)


def run_bare_algorithm(procs: int, frames: int, repeats: int) -> dict:
    """algorithm_bare_1proc or algorithm_bare_2procs."""
    return _launch(procs + 1, "algorithm", frames, repeats)[0]


#: frames in flight in a pipeline: each a buffer of its own (the pools' blocks rotate)
ROTATING = 16
#: frames in flight per receiving rank in `algorithm` (the ndflow cases' credits)
CREDITS_BARE = 4


def bare(frames: int) -> None:
    """mpi4py Send/Recv of `frames` UInt16 1024x1024 frames, rank 0 -> rank 1: one buffer on
    each side (the ceiling: it stays in the caches), then ROTATING buffers on each side, as
    frames in flight in a pipeline have (each copy then goes to memory, not cache), then the
    same with rank 0 writing each frame first, as ndflow's transport case has its sim do."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    base = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    col, row = np.arange(SHAPE[0], dtype=np.uint16), np.arange(SHAPE[1], dtype=np.uint16)
    for case, count, make in (("transport_bare", 1, False),
                              ("transport_bare_rotating", ROTATING, False),
                              ("transport_bare_made", ROTATING, True)):
        sent = [base.copy() for _ in range(count)]
        received = [np.ones_like(sent[0]) for _ in range(count)]
        comm.Barrier()
        began = time.perf_counter()
        for i in range(frames):
            if comm.Get_rank() == 0:
                if make:  # a new frame, made as the sim makes a LinearRamp frame
                    np.add((col + np.uint16(i & 0xFFFF))[:, None], row[None, :],
                           out=sent[i % count])
                comm.Send(sent[i % count], 1, 5)
            else:
                comm.Recv(received[i % count], 0, 5)
        seconds = time.perf_counter() - began
        comm.Barrier()
        if comm.Get_rank() == 1:
            mb = frames * sent[0].nbytes / 1e6
            print(json.dumps({"case": case, "frames": frames, "buffers": count,
                              "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
                              "MB_per_s": round(mb / seconds, 1)}), flush=True)


def _poll(request: Any, nap: float = 50e-6) -> None:
    """Wait for an MPI request without MPICH's spinning wait (which would take a core from the
    ranks that compute, as ndflow's MPI thread avoids too)."""
    while not request.Test():
        time.sleep(nap)


def bare_algorithm(frames: int, repeats: int) -> None:
    """Rank 0 makes `frames` UInt16 1024x1024 frames (a numpy pass, as the sim's) and sends them
    round robin, at most CREDITS_BARE in flight per rank; ranks 1.. receive each into a buffer of
    a rotating set and run the bench's algorithm on it (`repeats` sums). Timed on rank 0 from
    the first frame to the last rank's "done"."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    workers = list(range(1, size))
    per_worker = [len(range(i, frames, len(workers))) for i in range(len(workers))]
    comm.Barrier()
    if rank == 0:
        base = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
        buffers = [np.empty_like(base) for _ in range(CREDITS_BARE * len(workers))]
        requests: list[Any] = [MPI.REQUEST_NULL] * len(buffers)
        began = time.perf_counter()
        for i in range(frames):
            slot = i % len(buffers)
            _poll(requests[slot])
            np.add(base, i, out=buffers[slot])  # a new frame, as a driver makes one
            requests[slot] = comm.Isend(buffers[slot], workers[i % len(workers)], 5)
        for request in requests:
            _poll(request)
        for _ in workers:
            _poll(comm.irecv(source=MPI.ANY_SOURCE, tag=6))
        seconds = time.perf_counter() - began
        print(json.dumps({"case": f"algorithm_bare_{len(workers)}proc{'s' * (len(workers) > 1)}",
                          "frames": frames, "seconds": round(seconds, 3),
                          "fps": round(frames / seconds, 1), "repeats": repeats,
                          "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)
    else:
        buffers = [np.empty(SHAPE, np.uint16) for _ in range(ROTATING)]
        for i in range(per_worker[rank - 1]):
            image = buffers[i % len(buffers)]
            _poll(comm.Irecv(image, 0, 5))
            total = 0
            for _ in range(repeats):
                total += int(image.sum(dtype=np.int64))
        comm.send(rank, 0, 6)
    comm.Barrier()


def main() -> None:
    mode, frames = sys.argv[1], int(sys.argv[2])
    if mode == "transport":
        bare(frames)
    else:
        bare_algorithm(frames, int(sys.argv[3]))


if __name__ == "__main__":
    main()
