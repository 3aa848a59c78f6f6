"""Whole frames rebuilt from detector modules on a processing rank (`cluster.assemble`), for a
plugin graph that needs the whole detector image.

Each module frame carries its module's NDAttributes (ModuleIndex, ModuleOffsetX,
ModuleOffsetY: drivers/sim.py); once every module of a frame has come, the tiles are copied to
their offsets in one array of the whole frame's shape, whose dims and transform are the whole
frame's (worked back from module 0's, which sits at offset 0, 0), so it is the single-process
frame. A frame with a module that came missing is missing, with that module's cause; modules
still waiting when the acquisition ends (their frame never came whole) become a missing frame
too, never a silent gap. Mono frames, (H, W) or (C, H, W), uncompressed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ndarray import FrameStatus, MissingCause, NDArray, NDDimension

MODULE_ATTRS = ("ModuleIndex", "ModuleOffsetX", "ModuleOffsetY")


class Assembler:
    def __init__(self, modules: int, pool: Any, rank: int) -> None:
        self.modules = modules
        self.pool = pool
        self.rank = rank
        self._parts: dict[tuple[int, int], dict[int, NDArray]] = {}  # (acq, uid) -> modules
        self._size: tuple[int, int] | None = None  # the whole frame's (width, height)

    def add(self, frame: NDArray) -> NDArray | None:
        """A module frame came: the whole frame once it is complete, else None. A frame
        without a module index goes on as it is."""
        index = frame.attributes.get("ModuleIndex")
        if index is None:
            return frame
        aid = frame.acquisition.id if frame.acquisition is not None else 0
        key = (aid, frame.unique_id)
        parts = self._parts.setdefault(key, {})
        parts[int(index.value)] = frame
        if len(parts) < self.modules:
            return None
        del self._parts[key]
        return self._assemble(parts)

    def flush(self, acquisition_id: int) -> list[NDArray]:
        """The acquisition ended: its incomplete frames, as missing frames, in unique-id order."""
        keys = sorted(k for k in self._parts if k[0] == acquisition_id)
        out = []
        for key in keys:
            parts = self._parts.pop(key)
            absent = [m for m in range(self.modules) if m not in parts]
            some = next(iter(parts.values()))
            out.append(self._whole_missing(some, MissingCause.TIMEOUT, "module" + "s" * (
                len(absent) > 1) + " " + ", ".join(map(str, absent)) +
                f" never reached rank {self.rank}"))
        return out

    def _assemble(self, parts: dict[int, NDArray]) -> NDArray:
        for m in sorted(parts):
            if not parts[m].valid:
                status = parts[m].status
                return self._whole_missing(parts.get(0, parts[m]),
                                           status.missing or MissingCause.DROPPED,
                                           f"module {m}: {status.message}")
        base = parts[0]
        for m, part in parts.items():
            if part.codec.compressed or part.color_mode != 0 or part.data.ndim < 2:
                return self._whole_missing(base, MissingCause.PROCESSING_ERROR,
                                           f"module {m}: only uncompressed Mono modules can "
                                           "be assembled")
        h, w = base.data.shape[-2:]
        height = max(int(p.attributes["ModuleOffsetY"].value) for p in parts.values()) + h
        width = max(int(p.attributes["ModuleOffsetX"].value) for p in parts.values()) + w
        self._size = (width, height)
        out = self.pool.alloc((*base.data.shape[:-2], height, width), base.data.dtype)
        if out is None:
            return self._whole_missing(base, MissingCause.NO_MEMORY,
                                       f"rank {self.rank}: no room to assemble the frame")
        for part in parts.values():
            x0 = int(part.attributes["ModuleOffsetX"].value)
            y0 = int(part.attributes["ModuleOffsetY"].value)
            out[..., y0:y0 + h, x0:x0 + w] = part.data
        return self._whole(base, out)

    def _whole(self, base: NDArray, data: np.ndarray | None) -> NDArray:
        """Module 0's identity, attributes and transform (it sits at offset 0, 0) with the
        whole frame's dims: a reversed axis starts its source region the rest of the frame
        earlier."""
        width, height = self._size or (base.dims[0].size, base.dims[1].size)
        dims = list(base.dims)
        for axis, size in ((0, width), (1, height)):
            d = dims[axis]
            offset = d.offset - (size - d.size) * d.binning if d.reverse else d.offset
            dims[axis] = NDDimension(size, offset, d.binning, d.reverse)
        whole = base.derive(data, dims=dims)
        for name in MODULE_ATTRS:
            whole.attributes.pop(name, None)
        return whole

    def _whole_missing(self, base: NDArray, cause: MissingCause, message: str) -> NDArray:
        whole = self._whole(base, None)
        whole.status = FrameStatus(cause, message)
        return whole
