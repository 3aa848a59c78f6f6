"""What NDPluginOverlay draws, as pure functions: the pixels of a cross, rectangle, ellipse or
text in a ny x nx plane (flat indices), a shape's geometry, ADCore's Position/Center update,
the EPICS time stamp text, and drawing into an image's colour planes (Set or XOR). The rules
they follow (ADCore 3.14's NDPluginOverlay.cpp) are in overlay.py's docstring; the plugin
(overlay.py) owns the PVs, the input links and the data path.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import numpy as np

from ndflow.adcore import COLOR_MODES
from ndflow.dtypes import c_cast
from ndflow.ndarray import EPICS_EPOCH_OFFSET
from ndflow.params import INT32_MAX, INT32_MIN

from . import overlay_font

#: Shape's choices in the mbbo's order (ADCore's raw values are 0, 1, 3, 2)
SHAPES = ("Cross", "Rectangle", "Ellipse", "Text")
CROSS, RECTANGLE, ELLIPSE, TEXT = range(4)
DRAW_MODES = ("Set", "XOR")
SET, XOR = range(2)
TEXT_MAX = 511  # ADCore's textOutStr holds 511 characters
TIME_MAX = 63  # and its time string 63
#: samples an ellipse may take (rings x angles), about a second of work: a 1024 x 1024 ellipse of
#: any width needs 2 million; more is refused rather than stalling the plugin's thread
MAX_ELLIPSE_POINTS = 8_000_000
_CHUNK_POINTS = 1 << 20  # ellipse samples computed at once (memory per step)


# --- geometry (pure functions: flat pixel indices into a ny x nx plane) ----------------------


def _boxes(boxes: list[tuple[int, int, int, int]], nx: int, ny: int) -> np.ndarray:
    """Sorted unique flat indices of the union of inclusive boxes (x0, x1, y0, y1), clipped to
    the plane. Cost is bounded by the plane whatever the boxes' sizes."""
    parts = []
    for x0, x1, y0, y1 in boxes:
        x0, x1 = max(x0, 0), min(x1, nx - 1)
        y0, y1 = max(y0, 0), min(y1, ny - 1)
        if x0 > x1 or y0 > y1:
            continue
        rows = np.arange(y0, y1 + 1, dtype=np.int64)[:, None] * nx
        parts.append((rows + np.arange(x0, x1 + 1, dtype=np.int64)[None, :]).ravel())
    return _union(parts, nx * ny)


def _union(parts: list[np.ndarray], plane: int) -> np.ndarray:
    """Sorted unique flat indices of all `parts` (each within 0..plane-1), by marking a plane:
    linear in the plane and the points, where sorting millions of points is not."""
    if not parts:
        return np.empty(0, dtype=np.int64)
    if len(parts) == 1 and parts[0].size < plane // 64:
        return np.unique(parts[0])
    marks = np.zeros(plane, dtype=bool)
    for part in parts:
        marks[part] = True
    return np.flatnonzero(marks)


def cross_pixels(x: int, y: int, size_x: int, size_y: int, width_x: int, width_y: int,
                 nx: int, ny: int) -> np.ndarray:
    """The pixels of a Cross (see the module docstring) on an nx x ny plane."""
    cx, cy = x + size_x // 2, y + size_y // 2
    x0, x1, y0, y1 = cx - size_x // 2, cx + size_x // 2, cy - size_y // 2, cy + size_y // 2
    hx, hy = width_x // 2, width_y // 2
    band0, band1 = max(y0, cy - hy), min(y1, cy + hy)
    return _boxes([(x0, x1, band0, band1), (cx - hx, cx + hx, y0, band0 - 1),
                   (cx - hx, cx + hx, band1 + 1, y1)], nx, ny)


def rectangle_pixels(x: int, y: int, size_x: int, size_y: int, width_x: int, width_y: int,
                     nx: int, ny: int) -> np.ndarray:
    """The pixels of a Rectangle: its outline, min(width, size - 1) pixels thick inwards."""
    x0, x1, y0, y1 = x, x + size_x, y, y + size_y
    wx, wy = max(0, min(width_x, size_x - 1)), max(0, min(width_y, size_y - 1))
    return _boxes([(x0, x1, y0, min(y0 + wy - 1, y1)), (x0, x1, max(y1 - wy + 1, y0), y1),
                   (x0, x0 + wx - 1, y0 + wy, y1 - wy), (x1 - wx + 1, x1, y0 + wy, y1 - wy)],
                  nx, ny)


def ellipse_samples(size_x: int, size_y: int, width_x: int) -> int:
    """How many samples ADCore's parametric ellipse takes (rings x angles)."""
    rings = max(0, min(width_x, size_x - 1))
    return rings * (2 * (size_x // 2 + size_y // 2) + 1)


def ellipse_pixels(x: int, y: int, size_x: int, size_y: int, width_x: int, nx: int, ny: int,
                   limit: int = MAX_ELLIPSE_POINTS) -> np.ndarray:
    """The pixels of an Ellipse (ADCore's parametric rings); ValueError when it would take more
    than `limit` samples."""
    rings = max(0, min(width_x, size_x - 1))
    a0, b0 = size_x // 2, size_y // 2
    cx, cy = x + a0, y + b0
    steps = 2 * (a0 + b0)
    # rings whose bounding box misses the plane draw nothing: not sampled (counted first, so
    # that a huge width costs nothing before it is refused)
    ranges = _visible_rings(rings, a0, b0, max(-cx, cx - nx + 1) - 1, max(-cy, cy - ny + 1) - 1)
    count = sum(stop - start for start, stop in ranges)
    if count * (steps + 1) > limit:
        raise ValueError(f"an ellipse of {size_x}x{size_y} with WidthX {width_x} needs "
                         f"{count * (steps + 1):,} samples (at most {limit:,} are drawn)")
    if count == 0:
        return np.empty(0, dtype=np.int64)
    visible = np.concatenate([np.arange(start, stop, dtype=np.int64) for start, stop in ranges])
    theta = np.zeros(steps + 1)
    if steps:
        theta[1:] = np.cumsum(np.full(steps, math.pi / 2.0 / steps))  # the C loop's sum
    cos, sin = np.cos(theta), np.sin(theta)
    parts = []
    per_chunk = max(1, _CHUNK_POINTS // (steps + 1))
    for start in range(0, visible.size, per_chunk):
        ring = visible[start:start + per_chunk, None].astype(np.float64)
        ix = np.trunc((a0 - ring) * cos + 0.5).astype(np.int64).ravel()
        iy = np.trunc((b0 - ring) * sin + 0.5).astype(np.int64).ravel()
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            px, py = cx + sx * ix, cy + sy * iy
            keep = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            parts.append(py[keep] * nx + px[keep])
    return _union(parts, nx * ny)


def _visible_rings(rings: int, a0: int, b0: int, kx: int, ky: int) -> list[tuple[int, int]]:
    """The ranges [start, stop) of rings j in 0..rings-1 whose bounding box can reach the plane:
    |a0 - j| >= kx and |b0 - j| >= ky (ring j has radii a0 - j, b0 - j, plus a pixel of
    rounding; kx, ky are how far the plane lies beyond the centre)."""
    cuts = sorted((centre - k + 1, centre + k) for centre, k in ((a0, kx), (b0, ky)) if k > 0)
    ranges, start = [], 0
    for low, high in cuts:  # [low, high) excluded
        if low > start:
            ranges.append((start, min(low, rings)))
        start = max(start, high)
    if start < rings:
        ranges.append((start, rings))
    return [(a, b) for a, b in ranges if b > a]


def text_pixels(x: int, y: int, size_x: int, size_y: int, text: str, font: int, nx: int,
                ny: int) -> np.ndarray:
    """The pixels of `text` in font choice `font`, its first cell's top left at (x, y), clipped
    to x + size_x and to min(size_y, cell height) rows, then to the plane."""
    bitmaps = overlay_font.glyphs(font)
    width, height = overlay_font.cell_size(font)
    text = text[:TEXT_MAX]
    x_end = x + size_x
    cells = 0 if x >= x_end else min(len(text), -(-(x_end - x) // width))
    rows = max(0, min(size_y, height))
    if cells == 0 or rows == 0:
        return np.empty(0, dtype=np.int64)
    codes = np.frombuffer(text[:cells].encode("latin-1", "replace"), dtype=np.uint8)
    printable = (codes >= overlay_font.FIRST) & (codes <= overlay_font.LAST)
    strip = np.zeros((cells, rows, width), dtype=bool)
    strip[printable] = bitmaps[codes[printable] - overlay_font.FIRST, :rows]
    # (rows, cells * width): cell after cell, as the characters are placed
    strip = strip.transpose(1, 0, 2).reshape(rows, cells * width)
    strip = strip[:, :x_end - x]
    ys, xs = np.nonzero(strip)
    px, py = xs.astype(np.int64) + x, ys.astype(np.int64) + y
    keep = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    return _union([py[keep] * nx + px[keep]], nx * ny)


_FRACTION = re.compile(r"%%|%0?(\d)f|%f")


def epics_strftime(fmt: str, epics_ts: tuple[int, int]) -> str:
    """An EPICS time stamp (seconds past 1990, nanoseconds) formatted as epicsTimeToStrftime
    does: strftime in local time, and `%0<n>f` (or `%<n>f`) for n digits of the fraction of a
    second, truncated; `%f` gives 6. ValueError for a format strftime refuses."""
    seconds, nsec = epics_ts
    nsec = min(max(int(nsec), 0), 999_999_999)

    def fraction(match: re.Match) -> str:
        if match.group(0) == "%%":
            return "%%"
        digits = int(match.group(1)) if match.group(1) else 6
        digits = min(max(digits, 1), 9)
        return f"{nsec // 10 ** (9 - digits):0{digits}d}"

    local = time.localtime(seconds + EPICS_EPOCH_OFFSET)
    return time.strftime(_FRACTION.sub(fraction, fmt), local)[:TIME_MAX]


def image_view(data: np.ndarray, color_mode: int) -> tuple[np.ndarray, bool]:
    """A (y, x, colour) view of a 2-D or 3-D array and whether it is an RGB image (RGB1, RGB2
    or RGB3 with 3 colours); other 3-D arrays are laid out as RGB3 is (NDArray::getInfo)."""
    if data.ndim == 2:
        return data[:, :, None], False
    mode = COLOR_MODES[color_mode] if 0 <= color_mode < len(COLOR_MODES) else "Mono"
    if mode == "RGB1":
        view = data
    elif mode == "RGB2":
        view = data.transpose(0, 2, 1)
    else:
        view = data.transpose(1, 2, 0)
    return view, mode in ("RGB1", "RGB2", "RGB3") and view.shape[2] == 3


def draw(view: np.ndarray, pixels: np.ndarray, colours: tuple[int, ...], mode: int) -> None:
    """Write `colours` (one per plane of the (y, x, colour) `view`) at the flat (y * nx + x)
    `pixels`: Set writes each C-cast to the element type, XOR XORs it in."""
    if pixels.size == 0:
        return
    ys, xs = np.divmod(pixels, view.shape[1])
    dtype = view.dtype
    for plane, colour in enumerate(colours):
        target = view[:, :, plane]
        if mode == SET:
            target[ys, xs] = c_cast(np.array([colour], dtype=np.int64), dtype)[0]
        elif dtype.kind in "iu":
            target[ys, xs] ^= np.array([colour], dtype=np.int64).astype(dtype)[0]
        else:  # floats: XOR through an integer, as ADCore's (int) cast does
            values = np.nan_to_num(target[ys, xs].astype(np.float64), nan=0.0)
            whole = np.trunc(np.clip(values, -2.0 ** 63, 2.0 ** 63 - 1024)).astype(np.int64)
            target[ys, xs] = (whole ^ np.int64(colour)).astype(dtype)


@dataclass(frozen=True)
class Shape:
    """What one overlay draws, as read from its parameters for one frame."""

    shape: int
    x: int
    y: int
    size_x: int
    size_y: int
    width_x: int
    width_y: int
    font: int = 0
    text: str = ""

    def pixels(self, nx: int, ny: int) -> np.ndarray:
        """Sorted unique flat indices (y * nx + x) this overlay covers on an nx x ny plane."""
        if self.shape == CROSS:
            return cross_pixels(self.x, self.y, self.size_x, self.size_y, self.width_x,
                                self.width_y, nx, ny)
        if self.shape == RECTANGLE:
            return rectangle_pixels(self.x, self.y, self.size_x, self.size_y, self.width_x,
                                    self.width_y, nx, ny)
        if self.shape == ELLIPSE:
            return ellipse_pixels(self.x, self.y, self.size_x, self.size_y, self.width_x, nx,
                                  ny)
        return text_pixels(self.x, self.y, self.size_x, self.size_y, self.text, self.font, nx,
                           ny)


def position_update(target: str, value: int, position: int, center: int, size: int,
                    frozen: bool) -> tuple[dict[str, int], bool]:
    """ADCore's writeInt32 for one axis (target without its X/Y letter: Position, Center or
    Size): the partner values it sets and whether the position is now the fixed one."""
    if target == "Center":
        return {"Position": value - size // 2}, False
    if target == "Position":
        return {"Center": value + size // 2}, True
    if target == "Size":
        return ({"Center": position + value // 2} if frozen
                else {"Position": center - value // 2}), frozen
    return {}, frozen


def _int32(value: int) -> int:
    return min(max(int(value), INT32_MIN), INT32_MAX)
