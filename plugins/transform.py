"""NDPluginTransform (`Trans1:`): rotate and mirror images in steps of 90 degrees.

Follows NDPluginTransform.cpp (ADCore 3.14). The only control is `Type`, an mbbo without a
readback. With the image shown as rows y = 0, 1, ... from the top and x to the right, and
`img` the numpy (y, x) array, the eight types give:

    None          img
    Rot90         np.rot90(img, -1)     clockwise
    Rot180        img[::-1, ::-1]
    Rot270        np.rot90(img, 1)      anticlockwise
    Mirror        img[:, ::-1]          x flipped
    Rot90Mirror   img.T                 Rot90, then x flipped
    Rot180Mirror  img[::-1, :]          y flipped
    Rot270Mirror  img.T[::-1, ::-1]     Rot270, then x flipped

so out(x, y) = in(y, Ny-1-x) for Rot90, and "Mirror" always means: rotate, then flip x.
RGB1/RGB2/RGB3 arrays turn their spatial axes and keep the colour axis where the colour mode
puts it; a 3-D array of another colour mode is laid out like RGB3 (NDArray::getInfo) and
every plane turns (ADCore turns only the first plane of those).
Every element type works (elements are only moved). ArraySizeX/Y/Z_RBV show the output.

ndflow additions: the output dims are swapped for the 90/270 types and their `reverse` flags
toggled where an axis is flipped (ADCore only swaps the sizes), and `transform` is composed with
the integer affine from output pixel to input pixel, so `to_detector()` still lands on the
detector pixel. Arrays of 1 or more than 3 dimensions are passed on unchanged, as in ADCore,
and StatusMessage_RBV says so.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from ndflow.ndarray import SWAP_XY, NDArray, NDDimension, xyz_dims
from ndflow.params import W, enum_param
from ndflow.plugin import Outputs, Plugin

TYPES = ("None", "Rot90", "Rot180", "Rot270", "Mirror", "Rot90Mirror", "Rot180Mirror",
         "Rot270Mirror")


class Orientation(NamedTuple):
    """A Type as: swap x and y, then flip the output's x, then flip its y."""

    transpose: bool
    flip_x: bool
    flip_y: bool


ORIENTATIONS = (
    Orientation(False, False, False),  # None
    Orientation(True, True, False),  # Rot90
    Orientation(False, True, True),  # Rot180
    Orientation(True, False, True),  # Rot270
    Orientation(False, True, False),  # Mirror
    Orientation(True, False, False),  # Rot90Mirror
    Orientation(False, False, True),  # Rot180Mirror
    Orientation(True, True, True),  # Rot270Mirror
)


def pixel_map(o: Orientation, width: int, height: int) -> np.ndarray:
    """3x3 affine from output pixel (x, y) to input pixel, for an output of width x height."""
    flip = np.array([[-1.0 if o.flip_x else 1.0, 0.0, width - 1.0 if o.flip_x else 0.0],
                     [0.0, -1.0 if o.flip_y else 1.0, height - 1.0 if o.flip_y else 0.0],
                     [0.0, 0.0, 1.0]])
    return SWAP_XY @ flip if o.transpose else flip


def orient(data: np.ndarray, o: Orientation, x_axis: int, y_axis: int) -> np.ndarray:
    """A view of `data` turned as `o` says; x_axis/y_axis are numpy axes."""
    if o.transpose:
        data = np.swapaxes(data, x_axis, y_axis)
    flips = tuple(axis for axis, flip in ((x_axis, o.flip_x), (y_axis, o.flip_y)) if flip)
    return np.flip(data, flips) if flips else data


class Transform(Plugin):
    screen = "NDTransform"
    kind = "transform"
    plugin_type = "NDPluginTransform"
    PARAMS = Plugin.PARAMS + ((
        enum_param("Type", TYPES, 0, W, group="Transform",
                   doc="Rot90 turns clockwise as displayed (row 0 on top); Mirror flips x "
                       "after the rotation"),
    ),)

    def process(self, array: NDArray) -> Outputs:
        data = array.data
        nd = data.ndim
        if nd not in (2, 3) or len(array.dims) != nd:
            self.message(f"array {array.unique_id}: {nd}-D arrays are passed on unchanged "
                         f"(Transform turns 2-D and 3-D images)", logging.WARNING)
            return array
        o = ORIENTATIONS[int(self.frame_settings["Type"])]
        if o == ORIENTATIONS[0]:
            out = array.derive(data)  # nothing moves; the data is shared, never written
        else:
            out = self._turn(array, o)
        sx, sy, sz = out.xyz_sizes()
        self.output_sizes = {"ArraySizeX_RBV": sx, "ArraySizeY_RBV": sy, "ArraySizeZ_RBV": sz}
        return out

    def _turn(self, array: NDArray, o: Orientation) -> NDArray:
        """The turned copy with swapped/reversed dims and composed transform (in a pool buffer:
        NoMemory when refused)."""
        nd = array.ndims
        x_dim, y_dim = xyz_dims(3 if nd == 3 else 2, array.color_mode)[:2]
        turned = orient(array.data, o, nd - 1 - x_dim, nd - 1 - y_dim)
        buffer = self.output_buffer(turned.shape, turned.dtype)
        np.copyto(buffer, turned)
        dims = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in array.dims]
        if o.transpose:
            dims[x_dim], dims[y_dim] = dims[y_dim], dims[x_dim]
        dims[x_dim].reverse ^= o.flip_x
        dims[y_dim].reverse ^= o.flip_y
        affine = pixel_map(o, dims[x_dim].size, dims[y_dim].size)
        return array.derive(buffer, dims=dims, transform=array.transform @ affine)
