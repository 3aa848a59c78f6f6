"""The IOC's shared-memory segments: which segment an array lives in, and who hears of a closure.

`Segment` (memfd-backed, passed as a file descriptor) is `ndflow.algorithm.segment.Segment`, the
class the algorithm child uses too; this module adds what only the IOC needs: an address index
of the segments it created, so `find(array)` tells whether a frame can be sent with zero copies,
and closure listeners, so whoever gave a segment's fd to another process (an algorithm lane)
can tell it to drop its mapping.
"""

from __future__ import annotations

import bisect
import logging
import threading
import weakref
from typing import Callable

import numpy as np

from .algorithm import segment

log = logging.getLogger("ndflow.shm")

_lock = threading.Lock()
_starts: list[int] = []  # sorted start addresses of live segments
_by_start: dict[int, "weakref.ref[Segment]"] = {}
_closed_listeners: list[Callable[[int], None]] = []


class Segment(segment.Segment):
    """A segment this process created is indexed by address (`find`) and, when closed,
    announced to the closure listeners; an attached one is only mapped."""

    def _register(self, created: bool) -> None:
        if not created:
            super()._register(created)
            return
        with _lock:
            bisect.insort(_starts, self.address)
            _by_start[self.address] = weakref.ref(self)
        weakref.finalize(self, _forget, self.address, self.id, self.fd)


def on_closed(listener: Callable[[int], None]) -> Callable[[], None]:
    """Call `listener(segment id)` whenever a segment this process created is closed (from the
    thread that dropped it: keep it short). Returns the function that unsubscribes."""
    with _lock:
        _closed_listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _closed_listeners:
                _closed_listeners.remove(listener)
    return unsubscribe


def _forget(address: int, seg_id: int, fd: int) -> None:
    with _lock:
        _by_start.pop(address, None)
        i = bisect.bisect_left(_starts, address)
        if i < len(_starts) and _starts[i] == address:
            del _starts[i]
        listeners = list(_closed_listeners)
    try:
        for listener in listeners:
            try:
                listener(seg_id)
            except Exception:  # one listener's bug must not keep the segment's fd open
                log.exception("segment %d closed: a listener failed", seg_id)
    finally:
        segment._close(fd)


def mapped_bytes() -> int:
    """Bytes in the live segments this process created (frame pools, algorithm outputs)."""
    with _lock:
        refs = list(_by_start.values())
    return sum(len(seg) for seg in (ref() for ref in refs) if seg is not None)


def find(array: np.ndarray) -> tuple[Segment, int] | None:
    """(segment, byte offset) if `array`'s memory lies inside a live segment of this process."""
    address = array.__array_interface__["data"][0]
    with _lock:
        i = bisect.bisect_right(_starts, address) - 1
        if i < 0:
            return None
        ref = _by_start.get(_starts[i])
    seg = ref() if ref is not None else None
    if seg is None:
        return None
    offset = address - seg.address
    span = _span(array)
    if offset + span > len(seg):
        return None
    return seg, offset


def _span(array: np.ndarray) -> int:
    """Bytes from the array's first element to one past its last (positive strides)."""
    if array.size == 0:
        return 0
    return sum((n - 1) * s for n, s in zip(array.shape, array.strides)) + array.itemsize


def block(nbytes: int) -> Segment:
    """An ArrayPool block in shared memory (ArrayPool(new_block=shm.block))."""
    return Segment.create(nbytes, "ndflow-pool")
