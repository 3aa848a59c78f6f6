"""NDPluginROI (`ROI1:`): a region of interest, binned, reversed, scaled and type-converted.

Follows NDPluginROI.cpp and NDArrayPool::convert (ADCore 3.14):
- X, Y, Z are the image's x, y and colour axes, mapped onto array dimensions by colour mode as
  NDArray::getInfo does: RGB1 dims are [Z, X, Y], RGB2 [X, Z, Y], RGB3 (and other 3-D) [X, Y, Z].
- Each frame the requested Min/Size/Bin are clipped to the input (Min to 0..n-1, Size to
  1..n-Min, or n-Min with AutoSize, Bin to 1..Size) and the clipped values are shown on the
  _RBV records while the requests are kept, so a larger input later gets the full region back.
  A disabled dimension is taken whole with binning 1; its Reverse still applies, as in the C++.
- The output has Size // Bin pixels per dimension. Binning sums like convert(): each input element
  is C-cast to the output type and summed in that type, so integers wrap (a 2x2 bin of UInt8
  with DataTypeOut Automatic is the sum modulo 256; with UInt16 it is the exact sum) and a float
  input converted to an integer type is truncated element by element before summing.
- EnableScale with Scale not 0 or 1: sum in Float64, divide by Scale, then C-cast.
- CollapseDims drops dimensions of size 1; selecting a single colour of an RGB array collapses
  it too, and the output becomes Mono.
- ArraySizeX/Y/Z_RBV show the output; MaxSizeX/Y/Z_RBV (and the MaxX/MaxY copies) the input.

Deliberate differences:
- The output dims' offset, binning and reverse are in detector pixels: offset = input offset +
  Min x input binning (counted from the far end when the input is reversed); ADCore adds Min
  unscaled. The output's `transform` is the input's composed with the region's, so
  `to_detector()` of an output pixel gives a detector pixel of its bin (the one where the bin
  starts unless a binned input was reversed upstream).
- The Bin request is kept like Min and Size (ADCore overwrites it with the clipped value).
- A clipped request is explained on StatusMessage_RBV. Arrays that cannot give a region (no
  dimensions, more than 3, a dimension of size 0) give no output and say why; ADCore fails
  inside convert(). A 2-D array tagged RGB1/RGB2 is treated as mono, where ADCore would permute
  dimensions that do not exist.
- SetXHOPR/SetYHOPR (dfanouts that copy MaxX/MaxY into display limits) are not served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ndflow.adcore import COLOR_MODES
from ndflow.dtypes import AUTOMATIC, DATA_TYPES_OUT, c_cast, output_dtype
from ndflow.ndarray import (SWAP_XY, AttrSource, NDArray, NDAttribute, NDDimension,
                            region_transform, xyz_dims)
from ndflow.notes import Notes
from ndflow.params import R, Param, bool_param, enum_param, float_param, int_param, string_param
from ndflow.plugin import Outputs, Plugin
from ndflow.plugins.requested import KeepsRequests

AXES = "XYZ"

ROI_PARAMS: tuple[Param, ...] = (
    string_param("Name", "", group="ROI", doc="a label for this ROI"),
    *(p for axis in AXES for p in (
        int_param(f"Min{axis}", 0, group="ROI", doc="first input pixel (clipped per frame)"),
        int_param(f"Size{axis}", 1_000_000, group="ROI",
                  doc="input pixels covered before binning (clipped to the input)"),
        int_param(f"Bin{axis}", 1, group="ROI", doc="pixels summed into one"),
        bool_param(f"Reverse{axis}", group="ROI"),
        bool_param(f"Enable{axis}", "Disable", "Enable", 1, group="ROI",
                   doc="Disable: the whole dimension, binning 1"),
        bool_param(f"AutoSize{axis}", group="ROI", doc="Yes: Size is the input size"),
        int_param(f"MaxSize{axis}_RBV", 0, R, group="ROI", doc="the input's size",
                  aliases=(f"Max{axis}",) if axis != "Z" else ()),
    )),
    bool_param("EnableScale", "Disable", "Enable", 0, group="Output"),
    float_param("Scale", 1.0, group="Output", doc="the output is divided by this when enabled"),
    bool_param("CollapseDims", "Disable", "Enable", 0, group="Output",
               doc="drop output dimensions of size 1"),
    enum_param("DataTypeOut", DATA_TYPES_OUT, AUTOMATIC, group="Output",
               doc="Automatic: the input's type"),
)

#: requests the data path clips; kept apart from `values`, whose _RBV shows the clipped value
REQUESTS = tuple(f"{kind}{axis}" for axis in AXES for kind in ("Min", "Size", "Bin"))


@dataclass(frozen=True)
class Region:
    """The ROI along one array dimension, in input pixels, after clipping."""

    offset: int
    size: int  # input pixels covered before binning: what Size_RBV shows
    binning: int
    reverse: bool

    @property
    def out_size(self) -> int:
        return self.size // self.binning


def clip_region(axis: str, n: int, req: dict[str, int], reverse: bool, enabled: bool,
                auto: bool) -> tuple[Region, list[str]]:
    """Clip one dimension's request to an input of `n` pixels as processCallbacks does;
    also return a note for each request that had to change."""
    if not enabled:
        return Region(0, n, 1, reverse), []
    notes = []
    minimum, size, binning = req[f"Min{axis}"], req[f"Size{axis}"], req[f"Bin{axis}"]
    offset = min(max(minimum, 0), n - 1)
    if offset != minimum:
        notes.append(f"Min{axis} {minimum} outside 0..{n - 1}: using {offset}")
    clipped = min(max(n if auto else size, 1), n - offset)
    if not auto and clipped != size:
        notes.append(f"Size{axis} {size} clipped to {clipped}")
    bins = min(max(binning, 1), clipped)
    if bins != binning:
        notes.append(f"Bin{axis} {binning} clamped to {bins}")
    return Region(offset, clipped, bins, reverse), notes


def extract(data: np.ndarray, regions: Sequence[Region], dtype: np.dtype,
            scale: float | None = None) -> np.ndarray:
    """The binned, reversed, converted region of `data`; `regions` in array-dimension order
    (dims[0] first = the last numpy axis). With `scale`, sums are taken in Float64 and divided
    before the conversion; without it each element is converted first and summed in `dtype`."""
    by_axis = list(reversed(regions))
    block = data[tuple(slice(r.offset, r.offset + r.out_size * r.binning) for r in by_axis)]
    acc = np.dtype(np.float64) if scale else np.dtype(dtype)
    work = c_cast(block, acc)
    if any(r.binning > 1 for r in by_axis):
        shape = [n for r in by_axis for n in (r.out_size, r.binning)]
        work = work.reshape(shape).sum(axis=tuple(range(1, 2 * len(by_axis), 2)), dtype=acc)
    flips = tuple(axis for axis, r in enumerate(by_axis) if r.reverse)
    if flips:
        work = np.flip(work, flips)
    if scale:
        work = c_cast(work / scale, dtype)
    return work


def compose_dim(src: NDDimension, region: Region) -> NDDimension:
    """The output dimension in detector pixels, for `region` of input dimension `src`."""
    used = region.out_size * region.binning
    start = src.size - region.offset - used if src.reverse else region.offset
    return NDDimension(region.out_size, src.offset + start * src.binning,
                       src.binning * region.binning, src.reverse != region.reverse)




IDENTITY = np.eye(3)


@dataclass
class _Plan:
    """How to cut one input layout with one parameter snapshot."""

    regions: list[Region]
    dtype: np.dtype
    scale: float | None
    shape: tuple[int, ...]
    dims: list[NDDimension]
    color_mode: int
    transform: np.ndarray | None  # None: the identity
    simple: bool  # a plain slice copy
    block: tuple[slice, ...]


class ROI(KeepsRequests, Plugin):
    screen = "NDROI"
    kind = "roi"
    plugin_type = "NDPluginROI"
    PARAMS = Plugin.PARAMS + (ROI_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.keep_requests(REQUESTS)
        # clipping explained once when it starts or changes, not at every frame
        self._notes = Notes(self, logging.INFO, cleared="ROI within the input")
        self._plan_key: tuple | None = None
        self._plan: _Plan | None = None

    def process(self, array: NDArray) -> Outputs:
        data = array.data
        # The region depends only on the input's layout and the frozen parameters: worked out
        # once per change, so a frame costs the copy and little else.
        key = (data.shape, data.dtype, array.color_mode, self._frozen_version,
               tuple([(d.size, d.offset, d.binning, d.reverse) for d in array.dims]))
        if key != self._plan_key:
            self._plan = self._make_plan(array)
            self._plan_key = key
        plan = self._plan
        if plan is None:
            return None
        buffer = self.output_buffer(plan.shape, plan.dtype)
        if plan.simple:  # no binning, reversal, scaling or conversion: one copy
            np.copyto(buffer, data[plan.block].reshape(plan.shape))
        else:
            result = extract(data, plan.regions, plan.dtype, plan.scale)
            np.copyto(buffer, result.reshape(plan.shape))
        out = array.derive(buffer, dims=list(plan.dims),  # dims are never changed in place
                           transform=array.transform @ plan.transform
                           if plan.transform is not None else array.transform,
                           color_mode=plan.color_mode)
        if plan.color_mode != array.color_mode:
            out.attributes["ColorMode"] = NDAttribute("ColorMode", plan.color_mode, "Color mode",
                                                      AttrSource.DRIVER)
        return out

    def _make_plan(self, array: NDArray) -> "_Plan | None":
        data = array.data
        v = self.frame_settings
        dims = array.dims if len(array.dims) == data.ndim else \
            [NDDimension(n) for n in reversed(data.shape)]
        nd = data.ndim
        ud = xyz_dims(nd, array.color_mode) if 1 <= nd <= 3 else ()
        for u, axis in enumerate(AXES):
            self.set_if_changed({f"MaxSize{axis}_RBV": dims[ud[u]].size if u < len(ud) else 0})
        if not ud or 0 in data.shape:
            self._note(f"no ROI: a {nd}-D array of shape {list(reversed(data.shape))} "
                       f"(ROI needs 1 to 3 dimensions, none empty)")
            return None

        regions: list[Region | None] = [None] * nd
        notes: list[str] = []
        for u, a in enumerate(ud):
            axis = AXES[u]
            regions[a], axis_notes = clip_region(
                axis, dims[a].size, v, bool(v[f"Reverse{axis}"]), bool(v[f"Enable{axis}"]),
                bool(v[f"AutoSize{axis}"]))
            notes += axis_notes
            if v[f"Enable{axis}"]:
                self.set_if_changed({f"Min{axis}": regions[a].offset,
                                      f"Size{axis}": regions[a].size,
                                      f"Bin{axis}": regions[a].binning})
        self._note("; ".join(notes))

        dtype = output_dtype(int(v["DataTypeOut"]), data.dtype)
        scale = float(v["Scale"]) if v["EnableScale"] and v["Scale"] not in (0.0, 1.0) else None
        out_dims = [compose_dim(d, r) for d, r in zip(dims, regions)]
        keep, color = self._collapse(out_dims, ud, array.color_mode, bool(v["CollapseDims"]))

        x = regions[ud[0]]
        y = regions[ud[1]] if nd > 1 else Region(0, 1, 1, False)
        transform = region_transform(
            x.offset, y.offset, x.binning, y.binning, x.out_size, y.out_size, x.reverse, y.reverse)
        if nd > 1 and ud[0] not in keep and ud[1] in keep:
            transform = transform @ SWAP_XY  # Y is the output's first dimension now
        if np.array_equal(transform, IDENTITY):
            transform = None
        plan = _Plan(regions=regions, dtype=dtype, scale=scale,
                     shape=tuple(out_dims[a].size for a in reversed(keep)),
                     dims=[out_dims[a] for a in keep], color_mode=color, transform=transform,
                     simple=(scale is None and dtype == data.dtype
                             and all(r.binning == 1 and not r.reverse for r in regions)),
                     block=tuple(slice(r.offset, r.offset + r.out_size * r.binning)
                                 for r in reversed(regions)))
        sx, sy, sz = NDArray(None, dims=plan.dims, color_mode=color).xyz_sizes()
        self.output_sizes = {"ArraySizeX_RBV": sx, "ArraySizeY_RBV": sy, "ArraySizeZ_RBV": sz}
        return plan

    @staticmethod
    def _collapse(out_dims: list[NDDimension], ud: tuple[int, ...], color: int,
                  collapse: bool) -> tuple[list[int], int]:
        """(array dimensions kept, output colour mode). A single colour picked from an RGB
        array collapses like CollapseDims; an RGB output that is not 3 colours is Mono."""
        nd = len(out_dims)
        color_dim = ud[2] if nd == 3 else None
        rgb = 0 <= color < len(COLOR_MODES) and COLOR_MODES[color] in ("RGB1", "RGB2", "RGB3")
        keep = list(range(nd))
        if collapse or (rgb and color_dim is not None and out_dims[color_dim].size == 1):
            keep = [a for a in keep if out_dims[a].size != 1] or [nd - 1]
        if rgb and (len(keep) != 3 or out_dims[color_dim].size != 3):
            color = 0
        return keep, color

    def _note(self, text: str) -> None:
        self._notes.say(text)
