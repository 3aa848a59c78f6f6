"""Overlay and ColorConvert maths (issue 16), each checked against an independent computation:
ADCore's drawing and demosaicing loops transcribed pixel by pixel in plain Python, numpy
slicing and look-ups, and values of ADCore's own colour tables."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import numpy as np
import pytest

from ndflow.component import PutRefused
from ndflow.graph import PortGraph
from ndflow.ndarray import EPICS_EPOCH_OFFSET, NDArray, NDAttribute, NDDimension
from ndflow.plugins import overlay_font
from ndflow.plugins.colorconvert import (BAYER, MONO, RGB1, RGB2, RGB3, ColorConvert,
                                         bayer_convert, bayer_planes, color_map, convert,
                                         mono_to_rgb, rgb_layout, rgb_to_mono)
from ndflow.plugins.overlay import Overlay
from ndflow.plugins.overlay_draw import (CROSS, ELLIPSE, RECTANGLE, SET, TEXT, XOR, Shape,
                                         cross_pixels, draw, ellipse_pixels, epics_strftime,
                                         image_view, position_update, rectangle_pixels,
                                         text_pixels)
from ndflow.plugins.roi import ROI

RNG = np.random.default_rng(16)


# --- ADCore's loops, transcribed (the reference) ----------------------------------------------


def cdiv(a: int, b: int) -> int:
    """C integer division (toward zero)."""
    return int(a / b) if a * b >= 0 else -(-a // b)


def ref_pixels(points: list[tuple[int, int]], nx: int, ny: int) -> set[tuple[int, int]]:
    return {(x, y) for x, y in points if 0 <= x < nx and 0 <= y < ny}


def ref_cross(px, py, sx, sy, wx, wy, nx, ny):
    xc, yc = px + cdiv(sx, 2), py + cdiv(sy, 2)
    xmin, xmax, ymin, ymax = xc - cdiv(sx, 2), xc + cdiv(sx, 2), yc - cdiv(sy, 2), yc + cdiv(sy, 2)
    xw, yw = cdiv(wx, 2), cdiv(wy, 2)
    points = []
    for iy in range(ymin, ymax + 1):
        if yc - yw <= iy <= yc + yw:
            points += [(ix, iy) for ix in range(xmin, xmax + 1)]
        else:
            points += [(ix, iy) for ix in range(xc - xw, xc + xw + 1)]
    return ref_pixels(points, nx, ny)


def ref_rectangle(px, py, sx, sy, wx, wy, nx, ny):
    xmin, xmax, ymin, ymax = px, px + sx, py, py + sy
    xw, yw = min(wx, sx - 1), min(wy, sy - 1)
    points = []
    for iy in range(ymin, ymax + 1):
        if iy < ymin + yw or iy > ymax - yw:
            points += [(ix, iy) for ix in range(xmin, xmax + 1)]
        else:
            points += [(ix, iy) for ix in range(xmin, xmin + xw)]
            points += [(ix, iy) for ix in range(xmax - xw + 1, xmax + 1)]
    return ref_pixels(points, nx, ny)


def ref_ellipse(px, py, sx, sy, wx, nx, ny):
    xw = min(wx, sx - 1)
    xc, yc, xs, ys = px + cdiv(sx, 2), py + cdiv(sy, 2), cdiv(sx, 2), cdiv(sy, 2)
    steps = 2 * (xs + ys)
    step = math.pi / 2.0 / steps if steps else 0.0
    points, theta = [], 0.0
    for _ in range(steps + 1):
        for j in range(xw):
            ix = math.trunc((xs - j) * math.cos(theta) + 0.5)
            iy = math.trunc((ys - j) * math.sin(theta) + 0.5)
            points += [(xc + ix, yc + iy), (xc + ix, yc - iy), (xc - ix, yc + iy),
                       (xc - ix, yc - iy)]
        theta += step
    return ref_pixels(points, nx, ny)


def as_set(flat: np.ndarray, nx: int) -> set[tuple[int, int]]:
    return {(int(i % nx), int(i // nx)) for i in flat}


GEOMETRIES = [  # position x, y, size x, y, width x, y
    (10, 8, 20, 12, 1, 1), (10, 8, 21, 13, 0, 0), (3, 4, 9, 7, 3, 2), (5, 5, 10, 10, 4, 5),
    (-6, -4, 30, 20, 2, 3), (30, 20, 40, 40, 6, 1), (0, 0, 0, 0, 1, 1), (7, 7, 1, 1, 2, 2),
    (2, 3, 4, 12, 3, 7), (-50, 10, 200, 3, 2, 1), (12, 9, 2, 30, 9, 9),
]


@pytest.mark.parametrize("g", GEOMETRIES)
def test_cross_and_rectangle_match_adcores_loops(g):
    nx, ny = 40, 30
    assert as_set(cross_pixels(*g, nx, ny), nx) == ref_cross(*g, nx, ny)
    assert as_set(rectangle_pixels(*g, nx, ny), nx) == ref_rectangle(*g, nx, ny)


@pytest.mark.parametrize("g", GEOMETRIES + [(0, 0, 39, 29, 40, 0), (20, 15, 60, 50, 3, 0)])
def test_ellipse_matches_adcores_parametric_rings(g):
    nx, ny = 40, 30
    px, py, sx, sy, wx, _ = g
    assert as_set(ellipse_pixels(px, py, sx, sy, wx, nx, ny), nx) == \
        ref_ellipse(px, py, sx, sy, wx, nx, ny)


def test_rectangle_outline_is_what_numpy_slicing_gives():
    """Position 5,4 size 10x6 width 2: rows 4..10 and columns 5..15, 2 pixels thick inwards."""
    expected = np.zeros((20, 30), bool)
    expected[4:11, 5:16] = True
    expected[6:9, 7:14] = False
    got = np.zeros((20, 30), bool)
    got.reshape(-1)[rectangle_pixels(5, 4, 10, 6, 2, 2, 30, 20)] = True
    np.testing.assert_array_equal(got, expected)


def test_huge_and_off_frame_geometry_is_clipped_cheaply():
    big = 2 ** 31 - 1
    started = time.perf_counter()
    everything = rectangle_pixels(-1000, -1000, big, big, big, big, 64, 48)
    assert everything.size == 64 * 48  # a rectangle thicker than the frame covers it
    assert cross_pixels(big, big, big, big, big, big, 64, 48).size == 0
    assert text_pixels(-big, 0, big, big, "x" * 5000, 3, 64, 48).size >= 0
    assert time.perf_counter() - started < 2
    with pytest.raises(ValueError, match="samples"):
        ellipse_pixels(0, 0, big, big, 10, 64, 48)
    # an ellipse far outside the frame is not sampled at all
    assert ellipse_pixels(10 ** 6, 10 ** 6, 1000, 1000, 999, 64, 48, limit=10).size == 0


def test_only_rings_that_can_reach_the_frame_are_sampled():
    """_visible_rings agrees with testing each ring's bounding box."""
    from ndflow.plugins.overlay_draw import _visible_rings
    for _ in range(300):
        rings, a0, b0 = (int(v) for v in RNG.integers(0, 40, 3))
        cx, cy = (int(v) for v in RNG.integers(-60, 80, 2))
        nx, ny = 20, 15
        kx, ky = max(-cx, cx - nx + 1) - 1, max(-cy, cy - ny + 1) - 1
        brute = [j for j in range(rings) if cx + abs(a0 - j) + 1 >= 0 and
                 cx - abs(a0 - j) - 1 < nx and cy + abs(b0 - j) + 1 >= 0 and
                 cy - abs(b0 - j) - 1 < ny]
        got = [j for start, stop in _visible_rings(rings, a0, b0, kx, ky)
               for j in range(start, stop)]
        assert got == brute


# --- text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("font, cell", [(0, (6, 13)), (1, (6, 13)), (2, (9, 15)), (3, (9, 15))])
def test_text_cells_extent_and_clipping(font, cell):
    width, height = cell
    assert overlay_font.cell_size(font) == cell
    nx, ny = 200, 40
    x, y = 7, 5
    flat = text_pixels(x, y, 1000, 100, "HELLO", font, nx, ny)
    xs, ys = flat % nx, flat // nx
    assert xs.min() >= x and xs.max() < x + 5 * width and ys.min() >= y and \
        ys.max() < y + height
    for k in range(5):  # every character's cell holds some ink
        assert ((xs >= x + k * width) & (xs < x + (k + 1) * width)).any()
    # the glyph of 'H' is the font's, placed at its cell
    h = np.zeros((height, width), bool)
    inside = xs < x + width
    h[ys[inside] - y, xs[inside] - x] = True
    np.testing.assert_array_equal(h, overlay_font.glyphs(font)[ord("H") - 32])
    # SizeX cuts columns, SizeY rows; a control character leaves its cell blank
    cut = text_pixels(x, y, width + 2, 4, "HELLO", font, nx, ny)
    assert (cut % nx).max() < x + width + 2 and (cut // nx).max() < y + 4
    blank = text_pixels(x, y, 1000, 100, "H\tH", font, nx, ny)
    bx = blank % nx
    assert not ((bx >= x + width) & (bx < x + 2 * width)).any()
    assert ((bx >= x + 2 * width) & (bx < x + 3 * width)).any()
    assert text_pixels(x, y, 0, 100, "H", font, nx, ny).size == 0  # SizeX 0: nothing
    assert text_pixels(x, y, 50, 0, "H", font, nx, ny).size == 0  # SizeY 0 (the default)


def test_time_stamp_format():
    seconds = 1_000_000_000  # past 1990
    local = time.localtime(seconds + EPICS_EPOCH_OFFSET)
    assert epics_strftime("%Y-%m-%d %H:%M:%S.%03f", (seconds, 987_654_321)) == \
        time.strftime("%Y-%m-%d %H:%M:%S", local) + ".987"
    assert epics_strftime("%06f|%1f|%f|%%f", (seconds, 5_000)) == "000005|0|000005|%f"


# --- drawing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "u4", "i8", "f4", "f8"])
def test_set_and_xor_on_mono_match_numpy(dtype):
    image = (RNG.integers(-300, 300, (12, 16)) if dtype[0] != "u"
             else RNG.integers(0, 300, (12, 16))).astype(dtype)
    if dtype[0] == "f":
        image = image + np.float32(0.75)
        image[0, 0] = np.nan
    pixels = np.array([0, 5, 17, 100, 191])
    mask = np.zeros(image.size, bool)
    mask[pixels] = True
    mask = mask.reshape(image.shape)
    for mode, colour in ((SET, 300), (XOR, 255), (XOR, -7)):
        out = image.copy()
        view, rgb = image_view(out, MONO)
        assert not rgb
        draw(view, pixels, (colour,), mode)
        expected = image.copy()
        if mode == SET:
            expected[mask] = np.array(colour).astype(np.int64).astype(dtype) if dtype[0] != "f" \
                else colour
        elif dtype[0] == "f":
            whole = np.trunc(np.nan_to_num(image[mask].astype(np.float64))).astype(np.int64)
            expected[mask] = (whole ^ colour).astype(dtype)
        else:
            expected[mask] = image[mask] ^ np.array(colour).astype(dtype)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode, shape", [(RGB1, (10, 14, 3)), (RGB2, (10, 3, 14)),
                                         (RGB3, (3, 10, 14))])
def test_colours_go_to_their_planes(mode, shape):
    image = RNG.integers(0, 256, shape).astype(np.uint8)
    planes = {RGB1: lambda a: [a[:, :, k] for k in range(3)],
              RGB2: lambda a: [a[:, k, :] for k in range(3)],
              RGB3: lambda a: [a[k] for k in range(3)]}[mode]
    pixels = rectangle_pixels(2, 2, 6, 5, 1, 1, 14, 10)
    mask = np.zeros(140, bool)
    mask[pixels] = True
    mask = mask.reshape(10, 14)
    out = image.copy()
    view, rgb = image_view(out, mode)
    assert rgb
    draw(view, pixels, (10, 20, 300), SET)
    for plane, before, value in zip(planes(out), planes(image), (10, 20, 300 % 256)):
        np.testing.assert_array_equal(plane[mask], value)
        np.testing.assert_array_equal(plane[~mask], before[~mask])
    out = image.copy()
    view, _ = image_view(out, mode)
    draw(view, pixels, (1, 2, 4), XOR)
    for plane, before, value in zip(planes(out), planes(image), (1, 2, 4)):
        np.testing.assert_array_equal(plane[mask], before[mask] ^ value)


def test_center_and_position_follow_each_other_as_adcore():
    # a position write fixes the position: a size write moves the centre
    partners, fixed = position_update("Position", 10, 0, 0, 6, False)
    assert partners == {"Center": 13} and fixed
    assert position_update("Size", 8, 10, 13, 6, fixed) == ({"Center": 14}, True)
    # a centre write fixes the centre: a size write moves the position
    partners, fixed = position_update("Center", 50, 10, 13, 8, True)
    assert partners == {"Position": 46} and not fixed
    assert position_update("Size", 20, 46, 50, 8, fixed) == ({"Position": 40}, False)


# --- the Overlay plugin, in process -------------------------------------------------------------


def overlay_plugin(graph: PortGraph | None = None, **values) -> Overlay:
    plugin = Overlay("OVER1", "Over1:", graph or PortGraph())
    plugin.log.setLevel(logging.ERROR)
    plugin.values.update(values)
    plugin.freeze()
    return plugin


def test_overlay_draws_in_order_on_a_copy_and_shares_when_idle():
    image = RNG.integers(0, 200, (30, 40)).astype(np.uint16)
    idle = overlay_plugin()
    passed = idle.process(NDArray.from_numpy(image))
    assert passed.data is image  # nothing in use: no copy
    plugin = overlay_plugin(**{
        "1:Use": 1, "1:Shape": RECTANGLE, "1:PositionX": 3, "1:PositionY": 2, "1:SizeX": 10,
        "1:SizeY": 8, "1:WidthX": 1, "1:WidthY": 1, "1:Green": 1000,
        "2:Use": 1, "2:Shape": RECTANGLE, "2:DrawMode": XOR, "2:PositionX": 3, "2:PositionY": 2,
        "2:SizeX": 10, "2:SizeY": 8, "2:WidthX": 1, "2:WidthY": 1, "2:Green": 0xFF})
    out = plugin.process(NDArray.from_numpy(image, unique_id=3))
    assert out.data is not image and out.unique_id == 3
    expected = image.copy()
    expected[2:11, 3:14] = 1000 ^ 0xFF
    expected[3:10, 4:13] = image[3:10, 4:13]
    np.testing.assert_array_equal(out.data, expected)
    assert plugin.values["MaxSizeX_RBV"] == 40 and plugin.values["3:SetYHOPR"] == 30


def test_bad_input_is_clamped_or_refused_and_the_plugin_keeps_drawing():
    plugin = overlay_plugin(**{"1:Use": 1, "1:Shape": ELLIPSE, "1:SizeX": 2 ** 31 - 1,
                               "1:SizeY": 2 ** 31 - 1, "1:WidthX": 2 ** 30,
                               "2:Use": 1, "2:Shape": CROSS, "2:SizeX": 4, "2:SizeY": 4,
                               "2:PositionX": 1, "2:PositionY": 1, "2:Green": 9})
    out = plugin.process(NDArray.from_numpy(np.zeros((8, 8), np.uint8)))
    assert "not drawn" in plugin.values["StatusMessage_RBV"]
    assert out.data[3, 1:6].tolist() == [9] * 5  # the cross is still drawn
    # negative sizes and widths are clamped on the put; NaN and out-of-range values refused
    asyncio.run(plugin.handle_put(plugin.params["1:WidthX"], -5))
    assert plugin.values["1:WidthX"] == 0
    for bad in (float("nan"), 2 ** 40, "wide"):
        with pytest.raises(PutRefused):
            asyncio.run(plugin.handle_put(plugin.params["1:PositionX"], bad))
    # a put of CenterX moves PositionX, as ADCore's writeInt32
    asyncio.run(plugin.handle_put(plugin.params["3:SizeX"], 10))
    asyncio.run(plugin.handle_put(plugin.params["3:CenterX"], 40))
    assert plugin.values["3:PositionX"] == 35
    # a 1-D array passes unchanged, with a note
    line = NDArray.from_numpy(np.arange(5, dtype=np.uint8))
    assert plugin.process(line) is line and "1-D" in plugin.values["StatusMessage_RBV"]


def test_text_overlay_appends_the_arrays_time_stamp():
    plugin = overlay_plugin(**{"1:Use": 1, "1:Shape": TEXT, "1:PositionX": 1, "1:PositionY": 2,
                               "1:SizeX": 200, "1:SizeY": 20, "1:DisplayText": "t=",
                               "1:TimeStampFormat": "%S.%02f", "1:Font": 2, "1:Green": 1})
    array = NDArray.from_numpy(np.zeros((20, 100), np.uint8))
    array.epics_ts = (1_000_000_007, 250_000_000)
    out = plugin.process(array)
    text = "t=" + time.strftime("%S", time.localtime(1_000_000_007 + EPICS_EPOCH_OFFSET)) + ".25"
    expected = Shape(TEXT, 1, 2, 200, 20, 0, 0, 2, text).pixels(100, 20)
    np.testing.assert_array_equal(np.flatnonzero(out.data), expected)
    assert (np.flatnonzero(out.data) % 100).max() < 1 + 7 * 9  # seven 9x15 cells


def test_links_follow_a_pv_of_the_ioc():
    graph = PortGraph()
    roi = ROI("ROI1", "ROI1:", graph)
    graph.add(roi)
    plugin = overlay_plugin(graph)
    graph.add(plugin)
    plugin._resolve(1, "PositionX", plugin.values["1:PositionXLink.DOL"], quiet=False)
    assert "follows ROI1:MinX_RBV" in plugin.values["StatusMessage_RBV"]
    roi.values.update(MinX=17)
    plugin.values["1:Use"] = 1
    plugin.freeze()
    plugin.process(NDArray.from_numpy(np.zeros((4, 4), np.uint8)))  # links are read per frame
    assert plugin.values["1:PositionX"] == 17 and plugin.values["1:PositionXLink"] == 17
    asyncio.run(plugin.handle_put(plugin.params["1:PositionXLink.DOL"], "NoSuch:PV CP MS"))
    assert "not a PV of this IOC" in plugin.values["StatusMessage_RBV"]
    roi.values.update(MinX=3)
    assert not plugin._follow_links() and plugin.values["1:PositionX"] == 17
    asyncio.run(plugin.handle_put(plugin.params["1:PositionXLink"], 21))  # by hand again
    assert plugin.values["1:PositionX"] == 21


# --- colour maps and conversions -----------------------------------------------------------------


def test_colour_maps_hold_adcores_values():
    """Values read from ADCore's colorMaps.h (R, G, B at a few indices)."""
    rainbow, iron = color_map(1), color_map(2)
    for index, rgb in {0: (0, 0, 0), 11: (0, 0, 45), 32: (0, 0, 130), 64: (0, 4, 255),
                       96: (0, 131, 255), 128: (4, 255, 251), 159: (128, 255, 128),
                       160: (131, 255, 124), 192: (255, 251, 0), 223: (255, 128, 0),
                       254: (255, 4, 0), 255: (255, 255, 255)}.items():
        assert tuple(rainbow[index]) == rgb, index
    for index, rgb in {1: (1, 0, 1), 10: (15, 5, 17), 71: (106, 35, 120), 72: (108, 36, 120),
                       100: (150, 50, 92), 128: (192, 64, 64), 130: (192, 67, 64),
                       200: (192, 172, 64), 254: (192, 253, 64), 255: (255, 255, 255)}.items():
        assert tuple(iron[index]) == rgb, index


@pytest.mark.parametrize("mode, stack", [(RGB1, lambda p: np.stack(p, axis=-1)),
                                         (RGB2, lambda p: np.stack(p, axis=1)),
                                         (RGB3, lambda p: np.stack(p, axis=0))])
def test_mono_to_rgb_and_back(mode, stack):
    image = RNG.integers(0, 256, (6, 9)).astype(np.uint8)
    np.testing.assert_array_equal(mono_to_rgb(image, mode), stack([image] * 3))
    table = color_map(2)
    np.testing.assert_array_equal(mono_to_rgb(image, mode, 2),
                                  stack([table[image, k] for k in range(3)]))
    signed = image.view(np.int8)
    np.testing.assert_array_equal(mono_to_rgb(signed, mode, 1),
                                  stack([color_map(1)[image, k].view(np.int8)
                                         for k in range(3)]))
    wide = image.astype(np.uint16) * 100  # false colour is for 8-bit data only
    np.testing.assert_array_equal(mono_to_rgb(wide, mode, 1), stack([wide] * 3))
    rgb = stack([RNG.integers(0, 60000, (6, 9)).astype(np.uint16) for _ in range(3)])
    planes = [rgb[..., k] if mode == RGB1 else rgb[:, k] if mode == RGB2 else rgb[k]
              for k in range(3)]
    total = planes[0].astype(np.int64) + planes[1] + planes[2]
    np.testing.assert_array_equal(rgb_to_mono(rgb, mode), (total // 3).astype(np.uint16))
    for other, other_stack in ((RGB1, -1), (RGB2, 1), (RGB3, 0)):
        np.testing.assert_array_equal(convert(rgb, mode, other) if other != mode else rgb,
                                      np.stack(planes, axis=other_stack))


def ref_bayer(image: np.ndarray, pattern: int, x0: int, y0: int) -> np.ndarray:
    """ADCore's demosaicing loop, pixel by pixel: (ny, nx, 3) of r, g, b."""
    ny, nx = image.shape
    out = np.zeros((ny, nx, 3), dtype=object)
    p = image.astype(object)
    for y in range(ny):
        for x in range(nx):
            bx = x + x0 + ((pattern >> 1) & 1)
            by = y + y0 + (pattern & 1)
            r = g = b = 0
            if bx % 2 == 0 and by % 2 == 0:
                r, colour = p[y, x], "red"
            elif bx % 2 == 1 and by % 2 == 1:
                b, colour = p[y, x], "blue"
            else:
                g, colour = p[y, x], "green"
            if 0 < x < nx - 1 and 0 < y < ny - 1:
                diag = p[y - 1, x - 1] + p[y - 1, x + 1] + p[y + 1, x - 1] + p[y + 1, x + 1]
                cross = p[y - 1, x] + p[y, x - 1] + p[y, x + 1] + p[y + 1, x]
                horiz, vert = p[y, x - 1] + p[y, x + 1], p[y - 1, x] + p[y + 1, x]
                if colour == "red":
                    b, g = diag // 4, cross // 4
                elif colour == "blue":
                    r, g = diag // 4, cross // 4
                elif bx % 2 == 1:
                    r, b = horiz // 2, vert // 2
                else:
                    b, r = horiz // 2, vert // 2
            out[y, x] = (r, g, b)
    return out


@pytest.mark.parametrize("pattern", range(4))
@pytest.mark.parametrize("offsets", [(0, 0), (1, 0), (3, 5)])
def test_bayer_demosaic_matches_adcores_loop(pattern, offsets):
    image = RNG.integers(0, 65536, (7, 9)).astype(np.uint16)
    expected = ref_bayer(image, pattern, *offsets)
    planes = bayer_planes(image, pattern, *offsets)
    for k in range(3):
        np.testing.assert_array_equal(planes[k], expected[:, :, k].astype(np.int64))
    np.testing.assert_array_equal(bayer_convert(image, RGB2, pattern, *offsets),
                                  np.stack([expected[:, :, k].astype(np.uint16)
                                            for k in range(3)], axis=1))
    mono = (expected.sum(axis=2) // 3).astype(np.uint16)
    np.testing.assert_array_equal(bayer_convert(image, MONO, pattern, *offsets), mono)


def test_colorconvert_plugin_dims_attributes_and_refusals():
    plugin = ColorConvert("CC1", "CC1:", PortGraph())
    plugin.log.setLevel(logging.ERROR)
    plugin.values.update(ColorModeOut=RGB2, FalseColor=1)
    plugin.freeze()
    image = RNG.integers(0, 256, (5, 7)).astype(np.uint8)
    array = NDArray.from_numpy(image, unique_id=9)
    array.dims[0] = NDDimension(7, offset=100, binning=2)
    out = plugin.process(array)
    assert out.color_mode == RGB2 and out.attributes["ColorMode"].value == RGB2
    assert [d.size for d in out.dims] == [7, 3, 5] and out.dims[0].offset == 100
    np.testing.assert_array_equal(out.data, np.stack([color_map(1)[image, k]
                                                      for k in range(3)], axis=1))
    # Bayer: the pattern comes from the attribute and is anchored at the dims' offset
    bayer = NDArray.from_numpy(image, color_mode=BAYER)
    bayer.attributes["BayerPattern"] = NDAttribute("BayerPattern", 3)
    bayer.dims[0] = NDDimension(7, offset=1)
    plugin.values.update(ColorModeOut=RGB3)
    plugin.freeze()
    out = plugin.process(bayer)
    expected = ref_bayer(image, 3, 1, 0)
    np.testing.assert_array_equal(out.data, np.stack([expected[:, :, k].astype(np.uint8)
                                                      for k in range(3)]))
    assert plugin.values["BayerPattern_RBV"] == 3
    # what cannot be converted passes unchanged and says why once
    plugin.values.update(ColorModeOut=MONO)
    plugin.freeze()
    odd = NDArray.from_numpy(np.zeros((4, 5, 2), np.uint8), color_mode=RGB3)
    assert plugin.process(odd).data is odd.data
    assert "3 colours" in plugin.values["StatusMessage_RBV"]
    same = NDArray.from_numpy(np.zeros((4, 5, 3), np.uint8), color_mode=RGB1)
    plugin.values.update(ColorModeOut=RGB1)
    plugin.freeze()
    assert plugin.process(same).data is same.data


def test_rgb_layout_casts_like_c():
    planes = [np.array([[300.7, -1.5]])] * 3
    np.testing.assert_array_equal(rgb_layout(*planes, RGB3, np.dtype(np.uint8)),
                                  np.array([[[44, 255]]] * 3, np.uint8))
