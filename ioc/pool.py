"""ArrayPool: hands out frame buffers, takes them back when nobody references them, and refuses
allocations past a byte limit instead of letting the process run out of memory.

A buffer comes back to the free list when the last numpy view of it dies. That is Python's own
reference counting doing what ADCore's reserve()/release() do by hand: a frame held by a plugin
queue, by a caproto channel being served, or by user code stays valid, and no plugin can forget
a release. Each lease is a ctypes array laid over a pooled block; every numpy view made from the
lease keeps it alive, and the lease's __del__ returns the block.

Reuse matters: a fresh page costs ~2.6 us to fault in, 20-30x the copy itself (perf-anchors §1).
"""

from __future__ import annotations

import ctypes
import math
import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

Block = object  # anything exposing a writable buffer: a numpy array, an mmap


class NoMemory(Exception):
    """The pool (or the IOC's memory budget) refused a buffer; the message says which."""


def heap_block(nbytes: int) -> Block:
    return np.empty(max(nbytes, 1), dtype=np.uint8)


@dataclass
class PoolStats:
    max_bytes: int
    used_bytes: int
    alloc_buffers: int
    free_buffers: int
    refused: int


class MemoryBudget:
    """The memory every pool of the process may hold together: the IOC's budget. A new block
    that would take the total over it is refused like one over a pool's own limit, so frames
    held anywhere (a file writer's Capture buffer, a slow plugin's queue, deferred processing)
    turn into counted missing frames, or pause a driver whose policy says so, instead of
    growing the process without bound. 0 = no limit."""

    def __init__(self) -> None:
        self.max_bytes = 0
        self._pools: "weakref.WeakSet[ArrayPool]" = weakref.WeakSet()

    def add(self, pool: "ArrayPool") -> None:
        self._pools.add(pool)

    def used(self) -> int:
        """Bytes in every pool's blocks, free or leased."""
        return sum(pool.allocated_bytes for pool in list(self._pools))

    def admits(self, nbytes: int) -> bool:
        return not self.max_bytes or self.used() + nbytes <= self.max_bytes

    def over(self, fraction: float = 1.0) -> bool:
        return bool(self.max_bytes) and self.used() > fraction * self.max_bytes


#: the budget of this process's IOC (set from the config's memory_budget_mb)
BUDGET = MemoryBudget()


class ArrayPool:
    def __init__(self, max_bytes: int = 0, new_block: Callable[[int], Block] = heap_block,
                 name: str = "") -> None:
        self.max_bytes = max_bytes  # 0 = unlimited
        self.name = name
        self._new_block = new_block
        self._free: dict[int, list[Block]] = defaultdict(list)
        self._lock = threading.Lock()
        self._allocated_bytes = 0  # every block this pool owns, free or leased
        self._allocated = 0
        self._free_count = 0
        self.refused = 0
        self._lease_types: dict[int, type] = {}
        self.last_refusal = ""  # why the latest refused allocation was refused
        BUDGET.add(self)

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray | None:
        """A C-ordered array from the pool, or None (counted in `refused`) when the limit is hit."""
        dtype = np.dtype(dtype)
        count = int(math.prod(shape))
        nbytes = count * dtype.itemsize
        block = self._take_block(nbytes)
        if block is None:
            return None
        lease_type = self._lease_types.get(nbytes) or self._new_lease_type(nbytes)
        lease = lease_type.from_buffer(block)
        lease.block = block
        return np.ndarray(shape, dtype, buffer=lease)

    def take(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """`alloc` for an output array: raises NoMemory, with why, instead of returning None
        (the driver and plugin bases turn it into a NO_MEMORY placeholder, see
        ArrayPort.no_memory)."""
        out = self.alloc(shape, dtype)
        if out is None:
            raise NoMemory(self.last_refusal or "pool limit reached")
        return out

    def _new_lease_type(self, nbytes: int) -> type:
        """A ctypes array type over `nbytes` whose instances give their block back when they
        die (a __del__ costs a third of a weakref.finalize, and this runs for every frame)."""
        give_back = self._give_back

        class Lease(ctypes.c_char * max(nbytes, 1)):  # type: ignore[misc]
            def __del__(self) -> None:
                give_back(nbytes, self.block)

        return self._lease_types.setdefault(nbytes, Lease)

    def _take_block(self, nbytes: int) -> Block | None:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._free_count -= 1
                return free.pop()
            if self.max_bytes and self._allocated_bytes + nbytes > self.max_bytes:
                # Make room by dropping free blocks of other sizes before refusing.
                for size, blocks in list(self._free.items()):
                    while blocks and self._allocated_bytes + nbytes > self.max_bytes:
                        blocks.pop()
                        self._free_count -= 1
                        self._allocated -= 1
                        self._allocated_bytes -= size
                if self._allocated_bytes + nbytes > self.max_bytes:
                    self.refused += 1
                    self.last_refusal = f"pool limit {self.max_bytes / 2**20:.0f} MB reached"
                    return None
            if not BUDGET.admits(nbytes):  # the IOC's budget: drop our free blocks, or refuse
                for size, blocks in list(self._free.items()):
                    while blocks and not BUDGET.admits(nbytes):
                        blocks.pop()
                        self._free_count -= 1
                        self._allocated -= 1
                        self._allocated_bytes -= size
                if not BUDGET.admits(nbytes):
                    self.refused += 1
                    self.last_refusal = (f"IOC memory budget {BUDGET.max_bytes / 2**20:.0f} MB "
                                         "reached")
                    return None
            self._allocated_bytes += nbytes
            self._allocated += 1
        return self._new_block(nbytes)

    @property
    def allocated_bytes(self) -> int:
        return self._allocated_bytes

    def _give_back(self, nbytes: int, block: Block) -> None:
        with self._lock:
            self._free[nbytes].append(block)
            self._free_count += 1

    def empty_free_list(self) -> None:
        with self._lock:
            for size, blocks in self._free.items():
                self._allocated -= len(blocks)
                self._allocated_bytes -= size * len(blocks)
                self._free_count -= len(blocks)
            self._free.clear()

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self.max_bytes, self._allocated_bytes, self._allocated,
                             self._free_count, self.refused)
