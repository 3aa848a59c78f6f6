"""The sim's sensor layout: where a frame's pixels come from in the raw image.

The numpy axes of a colour layout (from ndarray.xyz_dims), the region an acquisition reads
(MinX/SizeX/BinX/ReverseX and Y, frozen with its parameters), binning as the C code sums, and a
detector module's tile of the frame (partial-frame dispatch: each acquisition rank makes one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ndflow.ndarray import NDDimension, region_transform, xyz_dims

SIM_TO_ND_COLOR = (0, 2, 3, 4)  # index of the sim's ColorMode choice -> ADCore NDColorMode


def module_tile(grid: tuple[int, int], module: int, width: int,
                height: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of `module` in a `width` x `height` frame cut into a gap-free grid:
    column module % X, row module // X."""
    gx, gy = grid
    w, h = width // gx, height // gy
    return (module % gx) * w, (module // gx) * h, w, h


@dataclass(frozen=True)
class Region:
    """Where an acquisition's frames come from in the raw image (its parameters are frozen)."""

    color: int
    x0: int
    y0: int
    nx: int
    ny: int
    bx: int
    by: int
    rx: bool
    ry: bool
    x_axis: int
    y_axis: int
    shape: tuple[int, ...]
    index: tuple[slice, ...]
    flips: tuple[slice, ...] | None
    dims: tuple[NDDimension, ...]  # the frames' dims (never changed in place)
    transform: np.ndarray
    #: a module's tile of the region (binned, flipped) frame: its slice, index and offset
    crop: tuple[slice, ...] | None = None
    module: int | None = None
    tile_x0: int = 0
    tile_y0: int = 0

    def tile(self, module: int, tile: tuple[int, int, int, int]) -> "Region":
        """This region cut to one module's tile (x0, y0, w, h) of its frame: the same pixels
        as the whole frame's, placed on the detector by dims and transform."""
        x0, y0, w, h = tile
        crop = [slice(None)] * len(self.shape)
        crop[self.x_axis] = slice(x0, x0 + w)
        crop[self.y_axis] = slice(y0, y0 + h)
        shape = list(self.shape)
        shape[self.x_axis], shape[self.y_axis] = w, h
        ndim = len(shape)
        dims = list(self.dims)
        first_x = self.x0 + ((self.nx - x0 - w) if self.rx else x0) * self.bx
        first_y = self.y0 + ((self.ny - y0 - h) if self.ry else y0) * self.by
        dims[ndim - 1 - self.x_axis] = NDDimension(w, first_x, self.bx, self.rx)
        dims[ndim - 1 - self.y_axis] = NDDimension(h, first_y, self.by, self.ry)
        shift = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
        return replace(self, shape=tuple(shape), dims=tuple(dims), crop=tuple(crop),
                       transform=self.transform @ shift, tile_x0=x0, tile_y0=y0,
                       module=module)

    @classmethod
    def of(cls, p: Mapping[str, Any], raw_ndim: int) -> "Region":
        color = int(p["ColorMode"])
        bx, by = int(p["BinX"]), int(p["BinY"])
        x0, y0 = int(p["MinX"]), int(p["MinY"])
        nx, ny = int(p["SizeX"]) // bx, int(p["SizeY"]) // by
        rx, ry = bool(p["ReverseX"]), bool(p["ReverseY"])
        x_axis, y_axis, shape = axes(color, nx, ny)
        index = [slice(None)] * raw_ndim
        index[x_axis] = slice(x0, x0 + nx * bx)
        index[y_axis] = slice(y0, y0 + ny * by)
        flips = [slice(None)] * raw_ndim
        if rx:
            flips[x_axis] = slice(None, None, -1)
        if ry:
            flips[y_axis] = slice(None, None, -1)
        ndim = len(shape)
        dims = [NDDimension(n) for n in reversed(shape)]
        dims[ndim - 1 - x_axis] = NDDimension(nx, x0, bx, rx)
        dims[ndim - 1 - y_axis] = NDDimension(ny, y0, by, ry)
        return cls(color, x0, y0, nx, ny, bx, by, rx, ry, x_axis, y_axis, shape, tuple(index),
                   tuple(flips) if (rx or ry) else None, tuple(dims),
                   region_transform(x0, y0, bx, by, nx, ny, rx, ry))


def raw_shape(max_x: int, max_y: int, color: int) -> tuple[int, ...]:
    return axes(color, max_x, max_y)[2]


def axes(color: int, nx: int, ny: int) -> tuple[int, int, tuple[int, ...]]:
    """(numpy x axis, numpy y axis, numpy shape) for a sim colour-mode index: the dims layout
    of its NDColorMode (ndflow.ndarray.xyz_dims), numpy's axes being the dims reversed."""
    ndims = 2 if color == 0 else 3
    x, y, *z = xyz_dims(ndims, SIM_TO_ND_COLOR[color])
    sizes = [0] * ndims
    sizes[x], sizes[y] = nx, ny
    if z:
        sizes[z[0]] = 3
    return ndims - 1 - x, ndims - 1 - y, tuple(reversed(sizes))


def color_planes(raw: np.ndarray, color: int) -> list[np.ndarray]:
    """Views of the three colour planes of a raw colour frame."""
    x_axis, y_axis, _ = axes(color, 1, 1)
    z_axis = 3 - x_axis - y_axis
    planes = []
    for c in range(3):
        index: list[Any] = [slice(None)] * 3
        index[z_axis] = c
        planes.append(raw[tuple(index)])
    return planes


def bin_sum(region: np.ndarray, x_axis: int, y_axis: int, bx: int, by: int,
         dtype: np.dtype) -> np.ndarray:
    """Sum bx x by blocks, accumulating in 64 bits and wrapping into `dtype` like the C code."""
    shape = list(region.shape)
    new_shape: list[int] = []
    sum_axes = []
    for axis, n in enumerate(shape):
        factor = bx if axis == x_axis else by if axis == y_axis else 1
        new_shape += [n // factor, factor]
        sum_axes.append(2 * axis + 1)
    acc = np.float64 if dtype.kind == "f" else np.int64
    summed = region.astype(acc).reshape(new_shape).sum(axis=tuple(sum_axes))
    return summed.astype(dtype)
