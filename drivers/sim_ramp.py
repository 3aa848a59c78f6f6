"""The sim's LinearRamp for integer Mono frames, written into the frame buffer in one pass.

Why: ADSimDetector adds `inc` to its raw image every frame and then copies the region into the
frame, two read-and-write passes over the image per frame. On a 2-core host that shares the CPU
with the CA server and its clients, a free-running sim spends them on frames nobody receives.

For integer types, addition wraps modulo 2**bits, so it is associative: the raw image after k
frames is `base + k*inc` wrapped, whatever order the additions took. So the raw image keeps the
base (the reset frame) and `PendingIncrements` keeps the wrapped sum of the increments since;
each frame is `base + sum`, written straight into the pool buffer (np.add with out=).

For 8- and 16-bit pixels, the base of a ramp without Noise is usually `col[y] + row[x]`
(wrapped): then a frame is `(col + sum)[:, None] + row[None, :]`, which reads two short
vectors instead of the image. numpy's broadcasting loop makes that ~10% cheaper than the
contiguous add at 1024x1024 16-bit, but ~35% dearer at 32 and 64 bits (bench/sim_frame_cost.py),
so wider types always add to the stored base. Whether the base is separable is checked on the
base itself at the reset (one pass, once), so the pixels are bit-identical to adding every
frame in either case (tests/unit/test_sim_ramp.py). Floats round, so they keep the per-frame
addition.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Index = Sequence[slice]
#: the widest pixels written from a column and a row (wider: the broadcast is slower)
MAX_SEPARABLE_ITEMSIZE = 2


def one_pass(dtype: np.dtype, color: int) -> bool:
    """Whether frames of this type and sim ColorMode index use the one-pass ramp."""
    return color == 0 and dtype.kind in "iu"


def wrap_int(value: int, dtype: np.dtype) -> Any:
    """`value` as a numpy scalar of integer `dtype`, wrapped like a C cast."""
    bits = dtype.itemsize * 8
    wrapped = value % (1 << bits)
    if dtype.kind == "i" and wrapped >= 1 << (bits - 1):
        wrapped -= 1 << bits
    return dtype.type(wrapped)


def separate(base: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(col, row) with base[y, x] == col[y] + row[x] (wrapped) for every pixel, or None."""
    row = base[0, :].copy()
    col = base[:, 0] - base[0, 0]  # array arithmetic in the pixel type: wraps
    if not np.array_equal(np.add(col[:, None], row[None, :]), base):
        return None
    return col, row


class PendingIncrements:
    """The ramp increments made since the raw image was last written, wrapped: the frame is
    the raw image plus `total` (mod 2**bits of the raw image's type)."""

    def __init__(self) -> None:
        self.total = 0  # a Python int in [0, 2**64): never overflows, wrapped when used
        self._parts: tuple[np.ndarray, np.ndarray] | None = None  # the raw image as col + row

    def add(self, inc: Any) -> None:
        self.total = (self.total + int(inc)) % (1 << 64)

    def clear(self) -> None:
        self.total = 0
        self._parts = None

    def rebase(self, raw: np.ndarray) -> None:
        """The raw image was just written (a reset, its background added): note whether it is
        separable (2-D images of 8- or 16-bit integers only). What is pending stays: the
        frames a cluster's other ranks made since the reset (ndflow.cluster) moved it on."""
        self._parts = separate(raw) if raw.ndim == 2 and raw.dtype.kind in "iu" and \
            raw.dtype.itemsize <= MAX_SEPARABLE_ITEMSIZE else None

    @property
    def separable(self) -> bool:
        return self._parts is not None

    def fold(self, raw: np.ndarray) -> None:
        """Add the pending sum into the raw image, before anything else reads or changes it
        (its separation no longer applies)."""
        if self.total:
            np.add(raw, wrap_int(self.total, raw.dtype), out=raw)
        self.clear()

    def shifted(self, region: np.ndarray) -> np.ndarray:
        """`region` plus the pending sum, as a new array (binning sums the shifted pixels)."""
        if not self.total:
            return region
        return np.add(region, wrap_int(self.total, region.dtype))

    def write(self, region: np.ndarray, out: np.ndarray,
              steps: Sequence[Index | None] = ()) -> None:
        """out = region + the pending sum, in one pass. `region` is the raw image indexed by
        `steps` in turn (each a (y, x) slice pair or None): with a separable raw image the
        steps are applied to its column and row and `region` itself is not read."""
        if self._parts is not None and out.ndim == 2 and region.dtype == out.dtype:
            col, row = self._parts
            col = col + wrap_int(self.total, col.dtype) if self.total else col
            for step in steps:
                if step is not None:
                    col, row = col[step[0]], row[step[1]]
            np.add(col[:, None], row[None, :], out=out)
        elif self.total and region.dtype == out.dtype:
            np.add(region, wrap_int(self.total, region.dtype), out=out)
        else:
            np.copyto(out, self.shifted(region), casting="unsafe")
