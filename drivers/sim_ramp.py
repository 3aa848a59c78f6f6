"""The sim's LinearRamp for integer Mono frames, written into the frame buffer in one pass.

Why: ADSimDetector adds `inc` to its raw image every frame and then copies the region into the
frame, two passes over the image per frame. On a 2-core host that shares the CPU with the CA
server and its clients, a free-running sim spends the second pass on frames nobody receives.

For integer types, addition wraps modulo 2**bits, so it is associative: the raw image after k
frames is `base + k*inc` wrapped, whatever order the additions took. So the raw image keeps the
base (the reset frame) and `PendingIncrements` keeps the wrapped sum of the increments since;
each frame is `base + sum`, written straight into the pool buffer (np.add with out=). Pixels are
bit-identical to adding every frame (tests/unit/test_sim_ramp.py). Floats round, so they keep
the per-frame addition.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


class PendingIncrements:
    """The ramp increments made since the raw image was last written, wrapped: the frame is
    the raw image plus `total` (mod 2**bits of the raw image's type)."""

    def __init__(self) -> None:
        self.total = 0  # a Python int in [0, 2**64): never overflows, wrapped when used

    def add(self, inc: Any) -> None:
        self.total = (self.total + int(inc)) % (1 << 64)

    def clear(self) -> None:
        self.total = 0

    def fold(self, raw: np.ndarray) -> None:
        """Add the pending sum into the raw image (before anything else reads or changes it)."""
        if self.total:
            np.add(raw, wrap_int(self.total, raw.dtype), out=raw)
            self.total = 0

    def shifted(self, region: np.ndarray) -> np.ndarray:
        """`region` plus the pending sum, as a new array (binning sums the shifted pixels)."""
        if not self.total:
            return region
        return np.add(region, wrap_int(self.total, region.dtype))

    def write(self, region: np.ndarray, out: np.ndarray) -> None:
        """out = region + the pending sum, in one pass (a copy when nothing is pending)."""
        if self.total and region.dtype == out.dtype:
            np.add(region, wrap_int(self.total, region.dtype), out=out)
        else:
            np.copyto(out, self.shifted(region), casting="unsafe")
