"""NDPluginBadPixel (`BadPix1:`): known bad detector pixels replaced in every frame.

Why: a detector's dead or hot pixels spoil statistics and images; a site keeps their list in a
JSON file and this plugin fixes them before anything downstream sees the frame.

Follows NDPluginBadPixel.cpp (ADCore 3.14), its docs and NDBadPixel.template:
- The file (named by the `FileName` char waveform, read when it is written) is ADCore's JSON:
  `{"Bad pixels": [{"Pixel": [x, y], "Set": value} | {"Pixel": [x, y], "Replace": [dx, dy]}
  | {"Pixel": [x, y], "Median": [nx, ny]}, ...]}`. A pixel listed twice keeps its first entry
  (ADCore keeps them in a std::set ordered by y, then x). An entry with several modes uses
  Replace over Set over Median, the order ADCore's reader overwrites them in.
- Coordinates are raw detector pixels. Each frame's dimension offset and binning map them onto
  the array: array x = (x - offset) // binning. Pixels outside the frame are skipped.
- Set: the pixel becomes the value, C-cast to the array's type.
  Replace: it takes the value of the pixel at (x + dx*binX, y + dy*binY); skipped if that pixel
  is itself bad or outside the frame.
  Median: the median (mean of the two middle values for an even count) of the pixels within
  [x - nx*binX, x + nx*binX] x [y - ny*binY, y + ny*binY] in steps of the binning, leaving out
  the pixel itself, other bad pixels and pixels outside the frame; C-cast to the array's type;
  the pixel is left alone if no neighbour remains.
- 1-D arrays use y = 0. The output is always a new array (the input is shared with other
  plugins); ArrayCallbacks is forced to Enable as in ADCore (it always passes arrays on).

Reading the file: FileName is writable by any CA client, so the name is read only from the
IOC's configured folders (the config file's folder and the data roots; a relative name is
relative to the config file's folder, '..' refused), through `ndflow.safepath` (no symbolic
links, regular files of at most MAX_FILE_BYTES). The file is read and checked off the event
loop, completely, before the new list replaces the old one; a file that cannot be used leaves
the previous list in force and says why on StatusMessage_RBV (FileValid_RBV = No). Messages
about a file point at an entry by its number and never quote the file's contents.

ndflow additions (ADCore has only FileName; its errors go to the IOC console):
`FileValid_RBV` (No/Yes), `NumBadPixels_RBV` (entries in force), `PixelsOutside_RBV` (entries
that lie outside the latest frame, so do nothing there).

Deliberate differences:
- Writing an empty FileName removes the list (ADCore ignores an empty write and keeps it).
- Reversed readout is handled (the array index is mirrored); ADCore documents it as unsupported.
- RGB1/RGB2/RGB3 arrays are corrected in every colour plane at the same x, y; ADCore indexes
  them as if they were mono.
- A detector pixel left of (or above) the readout offset by less than one bin is outside the
  frame; ADCore's C division truncates toward zero and maps it onto the first pixel.
- A replacement source or median neighbour is left out when its *array* pixel holds a bad
  pixel; ADCore compares detector coordinates. Without binning the two are the same; with
  binning ADCore can take a value from a binned pixel that contains a bad detector pixel (and,
  working in place, one it has already corrected, so its result depends on the order); here
  such a pixel is never used, so every new value comes from the input frame.
- Median half-widths above MAX_MEDIAN_HALF_WIDTH are refused when the file is read (ADCore has
  no limit, but each bad pixel would read (2n+1)^2 values per frame).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ndflow.dtypes import c_cast
from ndflow.ndarray import NDArray, NDDimension, xyz_dims
from ndflow.params import R, W, Param, bool_param, int_param, text_param
from ndflow.plugin import Plugin
from ndflow.plugins.pv_files import FileRefused, read_pv_file, strict_json

#: a bad-pixel file larger than this is refused (a 4k x 4k detector with 1 % bad pixels is
#: 170k entries, about 7 MB)
MAX_FILE_BYTES = 32 << 20
MAX_MEDIAN_HALF_WIDTH = 50
_COORD_LIMIT = 2 ** 31  # coordinates and offsets must fit a 32-bit int
#: neighbour values gathered at once for medians (bounds the memory of one frame's work)
_MEDIAN_CHUNK = 1 << 22

SET, REPLACE, MEDIAN = "Set", "Replace", "Median"


# --- the file ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadPixel:
    """One entry: raw detector coordinates, its mode, and the mode's argument (Set: `value`;
    Replace: the relative pixel (dx, dy); Median: the half-widths (dx, dy))."""

    x: int
    y: int
    mode: str
    value: float = 0.0
    dx: int = 0
    dy: int = 0


def _integer(value: Any, where: str, low: int = -_COORD_LIMIT, high: int = _COORD_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FileRefused(f"{where} must be an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise FileRefused(f"{where} must be an integer")
    number = int(value)
    if not low <= number < high:
        raise FileRefused(f"{where} is outside {low}..{high - 1}")
    return number


def _pair(value: Any, where: str, low: int = -_COORD_LIMIT,
          high: int = _COORD_LIMIT) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise FileRefused(f"{where} must be a list of two integers [x, y]")
    return (_integer(value[0], f"{where}[0]", low, high),
            _integer(value[1], f"{where}[1]", low, high))


def parse_bad_pixels(text: str | bytes) -> list[BadPixel]:
    """The entries of an ADCore bad-pixel JSON document, in ADCore's order (by y, then x), a
    pixel listed twice keeping its first entry. FileRefused names the entry that is wrong."""
    doc = strict_json(text)
    if not isinstance(doc, dict) or "Bad pixels" not in doc:
        raise FileRefused('the top level must be an object with a "Bad pixels" list')
    entries = doc["Bad pixels"]
    if not isinstance(entries, list):
        raise FileRefused('"Bad pixels" must be a list')
    pixels: dict[tuple[int, int], BadPixel] = {}
    for i, entry in enumerate(entries, 1):
        where = f"bad pixel {i}"
        if not isinstance(entry, dict):
            raise FileRefused(f"{where} must be an object")
        if "Pixel" not in entry:
            raise FileRefused(f'{where} has no "Pixel"')
        x, y = _pair(entry["Pixel"], f'{where} "Pixel"')
        # ADCore's reader checks Median, then Set, then Replace: the last one found wins
        if "Replace" in entry:
            dx, dy = _pair(entry["Replace"], f'{where} "Replace"')
            pixel = BadPixel(x, y, REPLACE, dx=dx, dy=dy)
        elif "Set" in entry:
            value = entry["Set"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                raise FileRefused(f'{where} "Set" must be a finite number')
            pixel = BadPixel(x, y, SET, value=float(value))
        elif "Median" in entry:
            nx, ny = _pair(entry["Median"], f'{where} "Median"', 0, MAX_MEDIAN_HALF_WIDTH + 1)
            pixel = BadPixel(x, y, MEDIAN, dx=nx, dy=ny)
        else:
            raise FileRefused(f'{where} needs one of "Set", "Replace", "Median"')
        pixels.setdefault((x, y), pixel)
    return sorted(pixels.values(), key=lambda p: (p.y, p.x))


# --- mapping detector pixels onto a frame ------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    """How one array axis covers the detector: raw pixel c is array index
    (c - offset) // binning, mirrored when reversed."""

    size: int
    offset: int = 0
    binning: int = 1
    reverse: bool = False

    @classmethod
    def of(cls, dim: NDDimension) -> "Axis":
        return cls(dim.size, dim.offset, max(1, dim.binning), bool(dim.reverse))

    def index(self, coords: np.ndarray) -> np.ndarray:
        """Array indices of raw coordinates; -1 where outside."""
        idx = (coords - self.offset) // self.binning
        if self.reverse:
            idx = self.size - 1 - idx
        return np.where((idx >= 0) & (idx < self.size), idx, -1)


@dataclass
class Plan:
    """What one frame geometry needs: array (y, x) indices of targets and sources per mode."""

    set_yx: tuple[np.ndarray, np.ndarray]
    set_values: np.ndarray
    replace_yx: tuple[np.ndarray, np.ndarray]
    replace_from: tuple[np.ndarray, np.ndarray]
    #: per median group: target (y, x), neighbour (y, x) of shape (n, k), valid mask (n, k)
    medians: list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]]
    outside: int  # entries whose own pixel is not in the frame


def make_plan(pixels: Sequence[BadPixel], ax: Axis, ay: Axis) -> Plan:
    """Array indices for `pixels` on a frame whose x and y axes are `ax`, `ay` (ADCore's
    computePixelOffset, vectorised). Replacement sources and median neighbours outside the
    frame, or on an array pixel that holds a bad pixel, are left out; where several bad pixels
    fall on one (binned) array pixel, the last in ADCore's order (y, then x) that changes it
    is the one applied, as ADCore's in-place loop leaves it."""
    xs = np.array([p.x for p in pixels], dtype=np.int64)
    ys = np.array([p.y for p in pixels], dtype=np.int64)
    tx, ty = ax.index(xs), ay.index(ys)
    inside = (tx >= 0) & (ty >= 0)
    width = max(ax.size, 1)
    cells = ty * width + tx
    bad_cells = np.unique(cells[inside])

    def usable(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        """In the frame and not a bad pixel's array pixel."""
        return (ix >= 0) & (iy >= 0) & ~np.isin(iy * width + ix, bad_cells)

    modes = np.array([p.mode for p in pixels])
    dx = np.array([p.dx for p in pixels], dtype=np.int64)
    dy = np.array([p.dy for p in pixels], dtype=np.int64)
    writes = inside & (modes == SET)  # entries that change their pixel

    fx, fy = ax.index(xs + dx * ax.binning), ay.index(ys + dy * ay.binning)
    writes |= inside & (modes == REPLACE) & usable(fx, fy)

    groups = []  # per median half-width: (entries, neighbour (iy, ix), valid)
    is_median = inside & (modes == MEDIAN)
    for hx, hy in sorted(set(zip(dx[is_median].tolist(), dy[is_median].tolist()))):
        ox, oy = np.meshgrid(np.arange(-hx, hx + 1), np.arange(-hy, hy + 1))
        keep = (ox != 0) | (oy != 0)
        ox, oy = ox[keep], oy[keep]  # (k,) offsets, the pixel itself left out
        if ox.size == 0:
            continue  # [0, 0]: no neighbours, nothing to do
        members = np.nonzero(is_median & (dx == hx) & (dy == hy))[0]
        ix = ax.index(xs[members][:, None] + ox[None, :] * ax.binning)
        iy = ay.index(ys[members][:, None] + oy[None, :] * ay.binning)
        valid = usable(ix, iy)
        writes[members] = valid.any(axis=1)  # no neighbour left: the pixel stays as it is
        groups.append((members, (np.maximum(iy, 0), np.maximum(ix, 0)), valid))

    # several entries on one (binned) array pixel: the last that writes, in ADCore's order
    applied = np.zeros(len(xs), dtype=bool)
    where = np.nonzero(writes)[0]
    if where.size:
        _, last_from_end = np.unique(cells[where][::-1], return_index=True)
        applied[where[where.size - 1 - last_from_end]] = True

    sel = applied & (modes == SET)
    set_yx = (ty[sel], tx[sel])
    set_values = np.array([p.value for p in pixels], dtype=np.float64)[sel]
    sel = applied & (modes == REPLACE)
    replace_yx, replace_from = (ty[sel], tx[sel]), (fy[sel], fx[sel])
    medians = []
    for members, (ny, nx), valid in groups:
        rows = applied[members]
        target = members[rows]
        medians.append(((ty[target], tx[target]), (ny[rows], nx[rows]), valid[rows]))
    return Plan(set_yx, set_values, replace_yx, replace_from, medians, int((~inside).sum()))


def apply_plan(plan: Plan, data: np.ndarray, x_axis: int, y_axis: int | None) -> np.ndarray:
    """A corrected copy of `data`, whose numpy axes `x_axis`/`y_axis` (None: 1-D, y = 0) are
    the frame's x and y; any other axis (colour) is corrected plane by plane."""
    out = data.copy()
    if y_axis is None:
        src, dst = data[None, ...], out[None, ...]
        axes_from = (0, x_axis + 1)
    else:
        src, dst = data, out
        axes_from = (y_axis, x_axis)
    src = np.moveaxis(src, axes_from, (0, 1))  # views (y, x, [colour])
    dst = np.moveaxis(dst, axes_from, (0, 1))
    if plan.set_values.size:
        values = c_cast(plan.set_values, data.dtype)
        if dst.ndim == 3:
            values = values[:, None]
        dst[plan.set_yx] = values
    if plan.replace_yx[0].size:
        dst[plan.replace_yx] = src[plan.replace_from]
    for target, (ny, nx), valid in plan.medians:
        planes = int(np.prod(src.shape[2:], dtype=np.int64))  # colours (1 for mono)
        per_chunk = max(1, _MEDIAN_CHUNK // max(1, valid.shape[1] * planes))
        for start in range(0, len(target[0]), per_chunk):
            part = slice(start, start + per_chunk)
            values = src[ny[part], nx[part]].astype(np.float64)  # (n, k[, colour])
            mask = valid[part] if values.ndim == 2 else valid[part][:, :, None]
            values = np.where(mask, values, np.nan)
            medians = np.nanmedian(values, axis=1)  # every row has a valid neighbour
            dst[target[0][part], target[1][part]] = c_cast(medians, data.dtype)
    return out


def frame_axes(array: NDArray) -> tuple[Axis, Axis, int, int | None] | None:
    """(x axis, y axis, numpy axis of x, numpy axis of y or None) of `array`, or None when it
    has no x/y layout this plugin can correct (0 or more than 3 dimensions)."""
    ndims = array.ndims
    if ndims < 1 or ndims > 3 or array.data is None or array.data.ndim != ndims:
        return None
    if ndims == 1:
        return Axis.of(array.dims[0]), Axis(1), 0, None
    x_dim, y_dim = xyz_dims(ndims, array.color_mode)[:2]
    return (Axis.of(array.dims[x_dim]), Axis.of(array.dims[y_dim]),
            ndims - 1 - x_dim, ndims - 1 - y_dim)


# --- the plugin ----------------------------------------------------------------------------------

BADPIXEL_PARAMS: tuple[Param, ...] = (
    text_param("FileName", 256, "", W, group="Bad pixels",
               doc="the JSON bad-pixel file (ADCore's format); read when written, only from "
                   "the config file's folder and the data roots; empty: no bad pixels"),
    bool_param("FileValid_RBV", "No", "Yes", 0, R, group="Bad pixels",
               doc="ndflow: the last FileName written was read and is in force"),
    int_param("NumBadPixels_RBV", 0, R, group="Bad pixels",
              doc="ndflow: bad pixels in force"),
    int_param("PixelsOutside_RBV", 0, R, group="Bad pixels",
              doc="ndflow: bad pixels outside the latest frame (they change nothing there)"),
)


class BadPixelPlugin(Plugin):
    screen = "NDBadPixel"
    kind = "badpixel"
    plugin_type = "NDPluginBadPixel"
    PARAMS = Plugin.PARAMS + (BADPIXEL_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.values["ArrayCallbacks"] = 1  # as ADCore: it always passes arrays on
        #: (load number, entries): replaced whole, so a frame sees one list or the other
        self._list: tuple[int, tuple[BadPixel, ...]] = (0, ())
        self._plan_key: tuple | None = None
        self._plan: Plan | None = None
        self._outside_said: tuple | None = None

    # --- the file -------------------------------------------------------------------------------
    async def put_FileName(self, value: str) -> str:
        """Read and check the file off the event loop, then put its list in force."""
        if not value.strip():
            self._install((), "FileName empty: no bad pixels", valid=False)
            return value
        try:
            pixels = await asyncio.to_thread(self._read, value)
        except FileRefused as exc:
            self.set("FileValid_RBV", 0)
            kept = len(self._list[1])
            self.message(f"FileName: {exc}; " + (f"the previous {kept} bad pixels stay in force"
                                                 if kept else "no bad pixels in force"),
                         logging.WARNING)
            return value
        self._install(tuple(pixels), f"FileName: {len(pixels)} bad pixels in force", valid=True)
        return value

    def _read(self, name: str) -> list[BadPixel]:
        data = read_pv_file(name, self.site, "bad-pixel file", MAX_FILE_BYTES)
        try:
            return parse_bad_pixels(data)
        except FileRefused as exc:
            raise FileRefused(f"{name.strip()}: {exc}") from None

    def _install(self, pixels: tuple[BadPixel, ...], text: str, valid: bool) -> None:
        self._list = (self._list[0] + 1, pixels)  # one reference swap
        self.set_many({"FileValid_RBV": int(valid), "NumBadPixels_RBV": len(pixels)})
        if not pixels:
            self.set("PixelsOutside_RBV", 0)
        self.message(text)

    # --- frames ---------------------------------------------------------------------------------
    def process(self, array: NDArray) -> NDArray:
        generation, pixels = self._list
        if not pixels:
            return array.derive(array.data)
        layout = frame_axes(array)
        if layout is None:
            self.message(f"array {array.unique_id}: {array.ndims} dimensions: bad pixels are "
                         "corrected in 1-, 2- and 3-D (colour) arrays only; passed on unchanged",
                         logging.WARNING)
            return array.derive(array.data)
        ax, ay, x_axis, y_axis = layout
        key = (generation, ax, ay)
        if key != self._plan_key:
            self._plan = make_plan(pixels, ax, ay)
            self._plan_key = key
            self.set("PixelsOutside_RBV", self._plan.outside)
            if self._plan.outside and self._outside_said != key:
                self._outside_said = key
                self.message(f"{self._plan.outside} of {len(pixels)} bad pixels lie outside "
                             f"the {ax.size}x{ay.size} frame (offset {ax.offset},{ay.offset}, "
                             f"binning {ax.binning}x{ay.binning}): skipped")
        assert self._plan is not None
        return array.derive(apply_plan(self._plan, array.data, x_axis, y_axis))
