"""NDPluginColorConvert (`CC1:`, `CC2:`): convert arrays between colour modes.

Follows NDPluginColorConvert.cpp and NDColorConvert.template (ADCore 3.14). The input's colour
mode is the array's (its ColorMode attribute), the output's is ColorModeOut:
- Mono (2-D) -> RGB1/RGB2/RGB3: the value copied to the three colours; with FalseColor Rainbow
  or Iron and an Int8/UInt8 array, colour k of a pixel is map[k][value as an unsigned byte],
  stored as a byte of the array's type (ADCore's colour maps, `color_map`).
- RGB1/RGB2/RGB3 -> Mono: (red + green + blue) / 3 computed in double, then C-cast (integers
  truncate toward zero).
- RGBn -> RGBm: the colour planes rearranged, the dimensions permuted with them.
- Bayer (2-D) -> Mono/RGB1/RGB2/RGB3: the pattern comes from the array's BayerPattern attribute
  (RGGB, GBRG, GRBG, BGGR; RGGB when absent) and is anchored at detector pixel
  (dims[0].offset, dims[1].offset), so a region cut from a Bayer image keeps its colours. A
  pixel's own colour is its value; the others are, away from the border, the integer means of
  its neighbours: for red and blue pixels the 4 diagonal ones (the other of red/blue) and the 4
  adjacent ones (green); for a green pixel on a red row, red from left+right and blue from
  above+below, on a blue row the reverse. Border pixels keep only their own colour (the others
  are 0). Mono is (r + g + b) // 3.
- Anything else (the same mode, YUV modes, a Mono array that is not 2-D, ...) passes unchanged;
  a conversion that was asked for and cannot be made says why on StatusMessage_RBV once.
A converted output carries the ColorMode attribute of its new mode. BayerPattern_RBV shows the
pattern of the latest Bayer input.

Deliberate differences: the output keeps the x/y dimensions' offset, binning and reverse (ADCore
allocates the dimensions of Mono<->RGB outputs afresh) and the transform; Bayer means are exact
integers (ADCore sums in 32-bit unsigned arithmetic, wrapping 32/64-bit data and negative values
of signed types, whose means here truncate toward zero), and Bayer floats keep their fractions
(ADCore truncates them to unsigned integers); an RGB array whose colour dimension is not 3 is
passed unchanged with a note (ADCore reads past it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ndflow.adcore import COLOR_MODES
from ndflow.dtypes import c_cast
from ndflow.ndarray import AttrSource, NDArray, NDAttribute, NDDimension, xyz_dims
from ndflow.notes import Notes
from ndflow.params import enum_param
from ndflow.plugin import Outputs, Plugin

MONO, BAYER, RGB1, RGB2, RGB3 = range(5)
RGB_MODES = (RGB1, RGB2, RGB3)
FALSE_COLORS = ("None", "Rainbow", "Iron")
BAYER_PATTERNS = ("RGGB", "GBRG", "GRBG", "BGGR")


# --- colour maps --------------------------------------------------------------------------------


def _round(values: np.ndarray) -> np.ndarray:
    """Round half up, as the tables' values were rounded."""
    return np.floor(values + 0.5)


def color_map(false_color: int) -> np.ndarray:
    """ADCore's false-colour table (256, 3) uint8 of red, green, blue for each byte value.

    Both are piecewise linear and end in white at 255 (i = the byte value, r() rounds half up):
    Rainbow: blue r(255 i / 63) up to 63, 255 to 127, r(255 (191 - i) / 64) down to 0 at 191;
    green from 0 at 63 as r(255 (i - 63) / 64) to 255 at 127, 255 to 191, then
    r(255 (255 - i) / 64) down; red from 0 at 127 as r(255 (i - 127) / 64) up to 255 at 191.
    Iron: red floor(1.5 i) up to 192; green i // 2 up to 64 at 128, then
    64 + floor(1.5 (i - 128)); blue floor(1.7 i) up to 120 at 71, 192 - i down to 64 at 128,
    then 64."""
    i = np.arange(256, dtype=np.float64)
    if false_color == 1:
        red = np.clip(_round(255 * (i - 127) / 64), 0, 255)
        green = np.where(i <= 127, np.clip(_round(255 * (i - 63) / 64), 0, 255),
                         np.where(i <= 191, 255, _round(255 * (255 - i) / 64)))
        blue = np.where(i <= 63, _round(255 * i / 63),
                        np.where(i <= 127, 255, np.clip(_round(255 * (191 - i) / 64), 0, 255)))
    elif false_color == 2:
        red = np.minimum(np.floor(1.5 * i), 192)
        green = np.where(i <= 128, np.floor(i / 2), 64 + np.floor(1.5 * (i - 128)))
        blue = np.where(i <= 71, (17 * i) // 10, np.where(i <= 128, 192 - i, 64))
    else:
        raise ValueError(f"false colour {false_color} is not Rainbow (1) or Iron (2)")
    table = np.stack([red, green, blue], axis=1).astype(np.uint8)
    table[255] = 255
    return table


# --- layouts ------------------------------------------------------------------------------------


def rgb_planes(data: np.ndarray, mode: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the red, green and blue (ny, nx) planes of an RGB1/RGB2/RGB3 array."""
    if mode == RGB1:  # numpy (y, x, colour)
        return data[:, :, 0], data[:, :, 1], data[:, :, 2]
    if mode == RGB2:  # numpy (y, colour, x)
        return data[:, 0, :], data[:, 1, :], data[:, 2, :]
    return data[0], data[1], data[2]  # RGB3: numpy (colour, y, x)


def rgb_layout(red: np.ndarray, green: np.ndarray, blue: np.ndarray, mode: int,
               dtype: np.dtype) -> np.ndarray:
    """One RGB1/RGB2/RGB3 array of `dtype` from three (ny, nx) planes (C-cast)."""
    axis = {RGB1: 2, RGB2: 1, RGB3: 0}[mode]
    return np.stack([c_cast(np.asarray(p), dtype) for p in (red, green, blue)], axis=axis)


def mono_to_rgb(image: np.ndarray, mode: int, false_color: int = 0) -> np.ndarray:
    """A 2-D image as RGB1/RGB2/RGB3; false colour applies to Int8/UInt8 images only."""
    if false_color and image.dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
        table = color_map(false_color)[image.view(np.uint8)]  # (ny, nx, 3) bytes
        planes = [table[:, :, k].view(image.dtype) for k in range(3)]
        return rgb_layout(*planes, mode, image.dtype)
    return rgb_layout(image, image, image, mode, image.dtype)


def rgb_to_mono(data: np.ndarray, mode: int) -> np.ndarray:
    """(red + green + blue) / 3 in double, C-cast back to the array's type."""
    red, green, blue = rgb_planes(data, mode)
    mean = (red.astype(np.float64) + green + blue) / 3.0
    return c_cast(mean, data.dtype)


def _mean(total: np.ndarray, count: int) -> np.ndarray:
    """total / count: exact for floats, truncated toward zero for integers."""
    if total.dtype.kind == "f":
        return total / count
    return np.where(total >= 0, total // count, -((-total) // count))


def bayer_planes(image: np.ndarray, pattern: int = 0, x_offset: int = 0, y_offset: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The red, green and blue planes (int64, float64 for float images) demosaiced from a 2-D
    Bayer image whose pixel (0, 0) is detector pixel (x_offset, y_offset)."""
    work = image.astype(np.float64 if image.dtype.kind == "f" else np.int64)
    ny, nx = work.shape
    bx = (np.arange(nx) + x_offset + ((pattern >> 1) & 1)) % 2
    by = (np.arange(ny) + y_offset + (pattern & 1)) % 2
    red = (by[:, None] == 0) & (bx[None, :] == 0)
    blue = (by[:, None] == 1) & (bx[None, :] == 1)
    green = ~(red | blue)
    planes = [np.where(mask, work, 0) for mask in (red, green, blue)]
    if nx >= 3 and ny >= 3:
        c = work[1:-1, 1:-1]
        up, down, left, right = work[:-2, 1:-1], work[2:, 1:-1], work[1:-1, :-2], work[1:-1, 2:]
        diagonal = _mean(work[:-2, :-2] + work[:-2, 2:] + work[2:, :-2] + work[2:, 2:], 4)
        adjacent = _mean(up + down + left + right, 4)
        across, along = _mean(left + right, 2), _mean(up + down, 2)
        r_in, g_in, b_in = red[1:-1, 1:-1], green[1:-1, 1:-1], blue[1:-1, 1:-1]
        red_row = g_in & (bx[None, 1:-1] == 1)  # a green pixel between red ones
        blue_row = g_in & (bx[None, 1:-1] == 0)
        inner = [p[1:-1, 1:-1] for p in planes]
        inner[0][:] = np.select([r_in, b_in, red_row, blue_row], [c, diagonal, across, along])
        inner[1][:] = np.where(g_in, c, adjacent)
        inner[2][:] = np.select([b_in, r_in, red_row, blue_row], [c, diagonal, along, across])
    return planes[0], planes[1], planes[2]


def bayer_convert(image: np.ndarray, mode: int, pattern: int = 0, x_offset: int = 0,
                  y_offset: int = 0) -> np.ndarray:
    """A 2-D Bayer image as Mono ((r + g + b) // 3) or RGB1/RGB2/RGB3, in its own type."""
    red, green, blue = bayer_planes(image, pattern, x_offset, y_offset)
    if mode == MONO:
        return c_cast(_mean(red + green + blue, 3), image.dtype)
    return rgb_layout(red, green, blue, mode, image.dtype)


def convert(data: np.ndarray, mode_in: int, mode_out: int, false_color: int = 0,
            pattern: int = 0, offsets: tuple[int, int] = (0, 0)) -> np.ndarray | str | None:
    """The converted array; None when there is nothing to convert (same mode), or a reason
    (str) when this conversion is not one the plugin makes."""
    if mode_in == mode_out:
        return None
    name_in, name_out = _name(mode_in), _name(mode_out)
    if mode_out not in (MONO, *RGB_MODES) or mode_in not in (MONO, BAYER, *RGB_MODES):
        return f"{name_in} -> {name_out} is not a conversion NDPluginColorConvert makes"
    if mode_in in (MONO, BAYER):
        if data.ndim != 2:
            return f"a {name_in} array must be 2-D to convert, not {data.ndim}-D"
        if mode_in == BAYER:
            return bayer_convert(data, mode_out, pattern, *offsets)
        return mono_to_rgb(data, mode_out, false_color)
    colours = {RGB1: -1, RGB2: -2, RGB3: -3}[mode_in]
    if data.ndim != 3 or data.shape[colours] != 3:
        return f"an {name_in} array must be 3-D with 3 colours, not of shape {data.shape}"
    if mode_out == MONO:
        return rgb_to_mono(data, mode_in)
    return rgb_layout(*rgb_planes(data, mode_in), mode_out, data.dtype)


def _name(mode: int) -> str:
    return COLOR_MODES[mode] if 0 <= mode < len(COLOR_MODES) else f"colour mode {mode}"


def output_dims(dims: list[NDDimension], mode_in: int, mode_out: int) -> list[NDDimension]:
    """The output's dimensions: the input's x and y (offset, binning, reverse kept), and a
    colour dimension of 3 placed as the output mode puts it."""
    x_dim, y_dim = xyz_dims(len(dims), mode_in)[:2]
    x, y = dims[x_dim], dims[y_dim]
    if mode_in in RGB_MODES:
        colour = dims[xyz_dims(3, mode_in)[2]]
    else:
        colour = NDDimension(3)
    copy = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in (x, y, colour)]
    x, y, colour = copy
    return {MONO: [x, y], RGB1: [colour, x, y], RGB2: [x, colour, y],
            RGB3: [x, y, colour]}[mode_out]


# --- the plugin ---------------------------------------------------------------------------------


class ColorConvert(Plugin):
    screen = "NDColorConvert"
    kind = "colorconvert"
    plugin_type = "NDPluginColorConvert"
    PARAMS = Plugin.PARAMS + ((
        enum_param("ColorModeOut", COLOR_MODES, MONO, group="ColorConvert",
                   doc="Mono, RGB1, RGB2 or RGB3 from Mono, Bayer or RGB input"),
        enum_param("FalseColor", FALSE_COLORS, 0, group="ColorConvert",
                   doc="colour map for Mono -> RGB of Int8/UInt8 arrays"),
    ),)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._notes = Notes(self)  # a conversion that cannot be made: said once, not per frame

    def process(self, array: NDArray) -> Outputs:
        v = self.frame_settings
        data = array.data
        mode_in, mode_out = array.color_mode, int(v["ColorModeOut"])
        pattern = self._pattern(array) if mode_in == BAYER else 0
        offsets = (array.dims[0].offset, array.dims[1].offset) if len(array.dims) >= 2 else (0, 0)
        result = convert(data, mode_in, mode_out, int(v["FalseColor"]), pattern, offsets)
        if not isinstance(result, np.ndarray):
            problem = f"{result}; passed unchanged" if result else ""
            self._notes.say(f"array {array.unique_id}: {problem}" if problem else "",
                            topic=problem)
            return array.derive(data)  # shared, never written
        self._notes.say("")
        buffer = self.output_buffer(result.shape, result.dtype)
        np.copyto(buffer, result)
        dims = array.dims if len(array.dims) == data.ndim else \
            [NDDimension(n) for n in reversed(data.shape)]
        out = array.derive(buffer, dims=output_dims(dims, mode_in, mode_out),
                           color_mode=mode_out)
        out.attributes["ColorMode"] = NDAttribute("ColorMode", mode_out, "Color Mode",
                                                  AttrSource.DRIVER)
        return out

    def _pattern(self, array: NDArray) -> int:
        """The BayerPattern attribute (RGGB when absent or not one of the four)."""
        attribute = array.attributes.get("BayerPattern")
        number = attribute.number() if attribute is not None else None
        pattern = int(number) if number is not None and number in (0, 1, 2, 3) else 0
        if self.values["BayerPattern_RBV"] != pattern:
            self.set("BayerPattern_RBV", pattern)
        return pattern

