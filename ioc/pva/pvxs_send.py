"""Makes PVXS send a large value as pvAccessCPP does: in large pieces, not 1 KiB ones, from a
thread that does not preempt the one making the frames.

Why
---
Two things in how the pvxslibs wheels (1.5.3 and the ones before it) send made a p4p server cost
two to three times pvAccessCPP's CPU per frame (bench/pva_stream.py, bench/pva_send.py):

1. **1 KiB buffers.** PVXS serializes a message into a libevent evbuffer through
   ``EvOutBuf::refill``, which asks ``evbuffer_reserve_space`` for as little as one more byte.
   libevent answers each such request with a new chain of its minimum size, 1 KiB. A 4096x4096
   UInt8 frame became ~17,000 malloc()s, memcpy()s and free()s of 1 KiB on PVXS's thread (perf:
   the arena lock alone took 15% of that thread), and 17,000 iovecs to write.
2. **16 KiB writes.** ``ConnBase::connect`` means to lift libevent's limit on one write and
   passes ``(size_t)-1`` to ``bufferevent_set_max_single_write``, which libevent refuses as over
   EV_SSIZE_MAX and replaces with its 16 KiB default. Every frame left in 16 KiB writev()s, one
   event-loop turn each (strace: 16 per 512x512 frame, 1024 per 4096x4096).

How
---
libpvxs calls both libevent functions through its PLT, lazily bound, so each has a writable
pointer in libpvxs's global offset table. `apply` points those two slots at two stubs of x86-64
machine code (below, a few instructions each, no Python, no lock, nothing allocated) that
adjust one argument and jump to libevent's own function:

* ``evbuffer_reserve_space(buf, size, vec, n)``: size at least `MIN_RESERVE` (chains of 32 KiB).
  PVXS already uses all the space a reservation returns and commits what it wrote, so a larger
  reservation only means fewer, larger chains.
* ``bufferevent_set_max_single_write(bev, size)``: size at most EV_SSIZE_MAX, the bound PVXS's
  source means, so a write takes whatever the socket accepts.

Nothing else changes: libevent and PVXS's code stay as loaded, and only libpvxs's two slots are
redirected. It is applied once per process, only when everything matches what was checked: Linux
on x86-64, libpvxs mapped in this process, a JUMP_SLOT relocation for each
symbol outside the read-only (RELRO) part, each slot holding the PLT's lazy stub or libevent's
function, and an executable page to be had. Otherwise nothing changes and `apply` returns the
reason (one log line); PVXS then works as before, only slower for large values. A pvxslibs that
passes a bound libevent accepts keeps its own max_single_write.

The sending thread
------------------
`batch_sender` puts the server's TCP thread (PVXS names it PVXTCP) under SCHED_BATCH. Its share
of CPU is unchanged (same nice value); only its wake-ups no longer preempt a running thread. On a
host with fewer cores than busy threads, every post woke it onto the core of the thread making
the frames, and each frame cost two context switches there (perf: 42% of that thread's switches
were such preemptions). Measured on 2 cores, 512x512 UInt8 into one pvapy-hpc-consumer: the
zero-loss rate went from 2334 to 3817 frames/s and the IOC's CPU per frame from 0.38 to 0.26 ms
(bench/pva_stream.py, one run each, the same search).

NDFLOW_PVXS_SEND=0 in the environment leaves PVXS and its threads alone.
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import os
import struct
import sys
import threading
from dataclasses import dataclass

SSIZE_MAX = (1 << 63) - 1
#: the least evbuffer_reserve_space gets: libevent then allocates chains of 32 KiB (its chain
#: header included), under glibc's mmap threshold, so they come from and return to the heap
MIN_RESERVE = 16 * 1024
RESERVE = "evbuffer_reserve_space"
MAX_WRITE = "bufferevent_set_max_single_write"
SENDER_THREAD = "PVXTCP"  # PVXS's name for a Server's TCP event-loop thread (src/server.cpp)

_lock = threading.Lock()
_kept: dict[str, object] = {}  # the result, and the stubs' page, for the process's life


def at_least(minimum: int, target: int) -> bytes:
    """x86-64: raise the second argument (rsi) to `minimum` (unsigned), then jump to `target`."""
    return _clamp(b"\x48\xc7\xc0" + struct.pack("<i", minimum),  # mov rax, minimum
                  b"\x48\x0f\x42\xf0", target)                   # cmovb rsi, rax


def at_most(maximum: int, target: int) -> bytes:
    """x86-64: lower the second argument (rsi) to `maximum` (unsigned), then jump to `target`."""
    return _clamp(b"\x48\xb8" + struct.pack("<Q", maximum),       # movabs rax, maximum
                  b"\x48\x0f\x47\xf0", target)                   # cmova rsi, rax


def _clamp(load_bound: bytes, move_if: bytes, target: int) -> bytes:
    """Bound in rax, compare rsi with it, the conditional move, then a jump to `target`."""
    return (load_bound
            + b"\x48\x39\xc6"                                # cmp rsi, rax
            + move_if
            + b"\x48\xb8" + struct.pack("<Q", target)         # movabs rax, target
            + b"\xff\xe0")                                    # jmp rax


class Stubs:
    """Machine code in a page of its own: written while writable, then made read+execute.

    The page comes from libc's mmap, not Python's mmap object, so that nothing ever unmaps it:
    PVXS's threads may still send while the interpreter shuts down."""

    def __init__(self, codes: list[bytes]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        base = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base is None or base == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap refused a page")
        self.base, self.offsets = int(base), []
        at = 0
        for code in codes:
            self.offsets.append(at)
            ctypes.memmove(self.base + at, code, len(code))
            at += (len(code) + 15) // 16 * 16
        if libc.mprotect(self.base, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect refused an executable page")

    def address(self, index: int) -> int:
        return self.base + self.offsets[index]


@dataclass(frozen=True)
class Slot:
    """One PLT slot of a mapped library: where it is and what may be in it before a patch."""
    address: int
    lazy: tuple[int, int]  # the PLT's range: an unbound slot points into it


def mapped(fragment: str) -> tuple[str, int] | None:
    """The path and load address of the mapped shared object whose file name contains
    `fragment`."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if (len(fields) >= 6 and fragment in os.path.basename(fields[5])
                        and int(fields[2], 16) == 0):
                    return fields[5], int(fields[0].split("-")[0], 16)
    except OSError:
        return None
    return None


def plt_slots(path: str, base: int, symbols: tuple[str, ...]) -> dict[str, Slot] | str:
    """Each symbol's writable PLT slot in the library at `path` loaded at `base`, or why not."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        relro = [(seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"])
                 for seg in elf.iter_segments() if seg["p_type"] == "PT_GNU_RELRO"]
        plt = [(s["sh_addr"], s["sh_addr"] + s["sh_size"]) for s in elf.iter_sections()
               if s.name in (".plt", ".plt.sec")]
        offsets: dict[str, int] = {}
        for section in elf.iter_sections():
            if not isinstance(section, RelocationSection) or section.name != ".rela.plt":
                continue
            table = elf.get_section(section["sh_link"])
            for relocation in section.iter_relocations():
                name = table.get_symbol(relocation["r_info_sym"]).name
                if name in symbols:
                    offsets[name] = relocation["r_offset"]
    if not plt:
        return "no PLT"
    lazy = (base + min(lo for lo, _ in plt), base + max(hi for _, hi in plt))
    slots = {}
    for name in symbols:
        if name not in offsets:
            return f"no PLT slot for {name}"
        if any(lo <= offsets[name] < hi for lo, hi in relro):
            return f"the slot of {name} is read-only (bound at load)"
        slots[name] = Slot(base + offsets[name], lazy)
    return slots


def passes_unsigned_max(path: str) -> bool:
    """Whether libpvxs's one call of MAX_WRITE passes (size_t)-1: ``mov $-1, %rsi`` (48 c7 c6
    ff ff ff ff) right before a call. Either answer is safe when wrong: the stub changes only
    a size over EV_SSIZE_MAX, and without it PVXS keeps libevent's 16 KiB."""
    with open(path, "rb") as stream:
        return b"\x48\xc7\xc6\xff\xff\xff\xff\xe8" in stream.read()


def batch_sender() -> str:
    """Puts this process's PVXS server TCP thread under SCHED_BATCH (Linux); returns what it
    did, for a log line. Call it once the Server runs (its thread exists from then on)."""
    if os.environ.get("NDFLOW_PVXS_SEND", "1") == "0":
        return "left alone (NDFLOW_PVXS_SEND=0)"
    if not hasattr(os, "SCHED_BATCH"):
        return "left alone (no SCHED_BATCH here)"
    done = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().strip() != SENDER_THREAD:
                    continue
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # the thread ended meanwhile, or the OS refused: it runs as before
            continue
        done.append(tid)
    return f"{SENDER_THREAD} thread {', '.join(done)} under SCHED_BATCH" if done \
        else f"left alone (no {SENDER_THREAD} thread)"


def apply() -> str:
    """Redirects libpvxs's two slots once in this process; returns what it did, for a log line."""
    with _lock:
        if "result" not in _kept:
            _kept["result"] = _apply()
        return str(_kept["result"])


def _apply() -> str:
    if os.environ.get("NDFLOW_PVXS_SEND", "1") == "0":
        return "left alone (NDFLOW_PVXS_SEND=0)"
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return "left alone (only on Linux x86-64)"
    importlib.import_module("p4p._p4p")  # maps libpvxs and libevent_core into the process

    pvxs = mapped("libpvxs.so")
    if pvxs is None:
        return "left alone (libpvxs not found in /proc/self/maps)"
    symbols = (RESERVE, MAX_WRITE) if passes_unsigned_max(pvxs[0]) else (RESERVE,)
    try:
        slots = plt_slots(pvxs[0], pvxs[1], symbols)
    except ImportError:
        return "left alone (pyelftools not installed)"
    except Exception as exc:  # a file pyelftools cannot read: nothing changes
        return f"left alone ({pvxs[0]}: {exc})"
    if isinstance(slots, str):
        return f"left alone ({pvxs[0]}: {slots})"
    # looked up from libpvxs's handle: its own dependencies first, so the libevent it binds to
    library = ctypes.CDLL(pvxs[0])
    try:
        real = {name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value
                for name in symbols}
    except AttributeError as exc:
        return f"left alone ({exc})"
    for name, slot in slots.items():
        current = ctypes.c_void_p.from_address(slot.address).value or 0
        if not (slot.lazy[0] <= current < slot.lazy[1] or current == real[name]):
            return f"left alone (the slot of {name} points somewhere unexpected)"
    stub = {RESERVE: lambda: at_least(MIN_RESERVE, real[RESERVE]),
            MAX_WRITE: lambda: at_most(SSIZE_MAX, real[MAX_WRITE])}
    try:
        stubs = Stubs([stub[name]() for name in symbols])
    except (OSError, ValueError) as exc:
        return f"left alone (no executable page: {exc})"
    _kept["stubs"] = stubs
    for index, name in enumerate(symbols):
        ctypes.c_void_p.from_address(slots[name].address).value = stubs.address(index)
    done = f"reservations of at least {MIN_RESERVE // 1024} KiB"
    if MAX_WRITE in symbols:
        done += ", writes as large as the socket takes"
    return f"applied ({done})"
