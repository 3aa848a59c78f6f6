"""Single-copy frames between ranks on one host: MPICH's CMA, asked for where the kernel allows.

Why: without CMA (Linux cross-memory attach, `process_vm_readv`) MPICH moves a large message
between two processes of one host through small shared-memory cells, the sender copying in and
the receiver copying out, slice by slice, and a slice moves only while both processes are in
MPI. ndflow's MPI threads sleep between polls (a 2-core host cannot spare a spinning core), so
a 2 MiB frame waits for the sender's wake-ups: `bench/cluster.py`'s transport case makes 4 to
12 frames/s with `MPIR_CVAR_CH4_CMA_ENABLE=0`, against ~1,500-2,000 with CMA. With CMA the
receiver copies the frame straight out of the sender's memory in one call: one copy instead of
two, and a sender asleep or stopped once its pixels are posted no longer holds the receiver.

The MPICH wheel ndflow installs already uses CMA on this kind of host when nothing is set
(strace shows its `process_vm_readv`); MPICH's own documentation says CMA is off by default,
as other builds may have it. So it is asked for explicitly, but only if Yama does not restrict
ptrace between the ranks (`kernel.yama.ptrace_scope` >= 1 refuses it, and every large transfer
would fail) and a `process_vm_readv` of this process's own memory works (a seccomp profile may
forbid it), and never over a value the user set (`MPIR_CVAR_CH4_CMA_ENABLE`; 0 turns it off).
Where CMA cannot be had, frames between ranks of one host are slow (see above): run such ranks
on separate hosts, or allow ptrace between them. Must run before mpi4py initialises MPI.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Mapping

VARIABLE = "MPIR_CVAR_CH4_CMA_ENABLE"
YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def cma_allowed() -> bool:
    """Whether ranks of one user may read each other's memory (Yama, then a probe of the
    system call itself on this process)."""
    try:
        if YAMA.exists() and int(YAMA.read_text().strip() or "0") > 0:
            return False
    except (OSError, ValueError):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.process_vm_readv
    except (OSError, AttributeError):
        return False
    source, target = ctypes.create_string_buffer(b"ndflow", 8), ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(target, ctypes.c_void_p), 8)
    remote = _IoVec(ctypes.cast(source, ctypes.c_void_p), 8)
    call.restype = ctypes.c_ssize_t
    read = call(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return read == 8 and target.raw[:6] == b"ndflow"


def is_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `environ` (os.environ) has MPICH's CMA switched on: what `enable` left there, read
    again by the MPI thread (ndflow.cluster.link) once MPI runs."""
    env = os.environ if environ is None else environ
    return env.get(VARIABLE, "0").strip() not in ("", "0")


def enable(environ: dict[str, str] | None = None) -> bool:
    """Switch MPICH's CMA on in `environ` (os.environ) unless set already or not allowed;
    whether it is on."""
    env = os.environ if environ is None else environ
    if VARIABLE in env:
        return is_on(env)
    if not cma_allowed():
        return False
    env[VARIABLE] = "1"
    return True
