"""NDPluginOverlay and NDPluginColorConvert through a real IOC (issue 16): the pixels a client
reads from stdarrays plugins behind them against numpy computations on the same frame, the
position/centre and input-link behaviour, bad input, ADCore's screen PVs, and ophyd 1.x's
OverlayPlugin and ColorConvPlugin connecting, staging and triggering.

One IOC serves the module: sim 48x32 -> image0 (the frame itself), -> Over1 -> image2,
-> CC1 -> image3, -> BayerTag (tests/bayer_source.py marks frames Bayer) -> CC2 -> image4, and
ROI1 whose region overlay 1 follows (commonPlugins' links). The waveforms are Float64, so every
value arrives exactly.
"""

from __future__ import annotations

import math

import epics
import numpy as np
import pytest

from conftest import REPO, running_ioc, unique_prefix
from test_acquisition import get, put, wait_for

NX, NY = 48, 32
WAVE = "{data_type: Float64, nelm: 10000}"
CONFIG = f"""
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
plugins:
  - {{type: stdarrays, port: IMAGE0, prefix: "image0:", input: SIM1, options: {WAVE}}}
  - {{type: roi, port: ROI1, prefix: "ROI1:", input: SIM1}}
  - {{type: "ndflow.plugins.overlay:Overlay", port: OVER1, prefix: "Over1:", input: SIM1}}
  - {{type: stdarrays, port: IMAGE2, prefix: "image2:", input: OVER1, options: {WAVE}}}
  - {{type: "ndflow.plugins.colorconvert:ColorConvert", port: CC1, prefix: "CC1:", input: SIM1}}
  - {{type: stdarrays, port: IMAGE3, prefix: "image3:", input: CC1, options: {WAVE}}}
  - {{type: "bayer_source:BayerTag", port: BAYER1, prefix: "Bayer1:", input: SIM1}}
  - {{type: "ndflow.plugins.colorconvert:ColorConvert", port: CC2, prefix: "CC2:",
      input: BAYER1}}
  - {{type: stdarrays, port: IMAGE4, prefix: "image4:", input: CC2, options: {WAVE}}}
"""
#: ADCore's commonPlugins wiring of these plugins, and image2 showing the overlays
OPHYD_CONFIG = f"""
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
plugins:
  - {{type: "ndflow.plugins.overlay:Overlay", port: OVER1, prefix: "Over1:", input: SIM1,
      enabled: false}}
  - {{type: "ndflow.plugins.colorconvert:ColorConvert", port: CC1, prefix: "CC1:", input: SIM1,
      enabled: false}}
  - {{type: "ndflow.plugins.colorconvert:ColorConvert", port: CC2, prefix: "CC2:", input: SIM1,
      enabled: false}}
  - {{type: stdarrays, port: Image2, prefix: "image2:", input: OVER1, options: {WAVE}}}
"""

@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(REPO / "tests"))  # where bayer_source lives
    try:
        with running_ioc(CONFIG, tmp_path_factory.mktemp("overlay")) as ioc:
            # as commonPlugins links them, overlays 1-4 follow ROI1-4 (the fixture `p` unlinks
            # them so that tests set their geometry by hand)
            ioc.links = {t: read(ioc.prefix + f"Over1:1:{t}Link.DOL") for t in
                         ("PositionX", "PositionY", "SizeX", "SizeY", "CenterX")}
            yield ioc
    finally:
        mp.undo()


@pytest.fixture
def p(ioc):
    """The IOC's prefix with the camera, the overlays and the converters at known values."""
    p = ioc.prefix
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"),
                        ("DataType", "UInt16"), ("ColorMode", "Mono"), ("GainX", 1.0),
                        ("GainY", 64.0), ("Gain", 1.0), ("AcquireTime", 0.001),
                        ("AcquirePeriod", 0.0), ("SimMode", "LinearRamp")]:
        put(p + "cam1:" + name, value)
    for n in range(1, 9):
        for field, value in [("Use", 0), ("Shape", "Rectangle"), ("DrawMode", "Set"),
                             ("WidthX", 1), ("WidthY", 1), ("TimeStampFormat", "")]:
            put(p + f"Over1:{n}:{field}", value)
        for target in ("PositionX", "PositionY", "SizeX", "SizeY"):
            put(p + f"Over1:{n}:{target}Link.DOL", "")
    for cc in ("CC1:", "CC2:"):
        put(p + cc + "ColorModeOut", "Mono")
        put(p + cc + "FalseColor", "None")
    return p


def read(pv: str, **kw):
    return get(pv, use_monitor=False, **kw)


def acquire(p: str) -> None:
    """One frame (a LinearRamp from its start); completes when every plugin processed it."""
    put(p + "cam1:Reset", 1)
    put(p + "cam1:Acquire", 1)


def frame(p: str, plugin: str) -> np.ndarray:
    """imageN:ArrayData reshaped by its NDimensions and ArraySizeN, numpy order."""
    ndims = read(p + plugin + "NDimensions_RBV")
    dims = [read(p + plugin + f"ArraySize{i}_RBV") for i in range(ndims)]
    data = read(p + plugin + "ArrayData", count=int(np.prod(dims)))
    return np.asarray(data).reshape(tuple(reversed(dims)))


def frames(p: str, *plugins: str) -> list[np.ndarray]:
    """The frame itself (image0) and the given images, checked to hold one frame."""
    ids = {read(p + plugin + "UniqueId_RBV") for plugin in ("image0:",) + plugins}
    assert len(ids) == 1, f"the images hold different frames {ids}"
    return [frame(p, plugin) for plugin in ("image0:",) + plugins]


def overlay(p: str, n: int, **fields) -> None:
    for field, value in fields.items():
        put(p + f"Over1:{n}:{field}", value)


def ellipse_mask(px: int, py: int, sx: int, sy: int, wx: int) -> np.ndarray:
    """ADCore's parametric ellipse, computed point by point."""
    mask = np.zeros((NY, NX), bool)
    xc, yc, a, b = px + sx // 2, py + sy // 2, sx // 2, sy // 2
    steps = 2 * (a + b)
    theta = 0.0
    for _ in range(steps + 1):
        for j in range(min(wx, sx - 1)):
            ix = math.trunc((a - j) * math.cos(theta) + 0.5)
            iy = math.trunc((b - j) * math.sin(theta) + 0.5)
            for x, y in ((xc + ix, yc + iy), (xc + ix, yc - iy), (xc - ix, yc + iy),
                         (xc - ix, yc - iy)):
                if 0 <= x < NX and 0 <= y < NY:
                    mask[y, x] = True
        theta += math.pi / 2.0 / steps
    return mask


# --- Overlay ------------------------------------------------------------------------------------


def test_shapes_on_a_mono_frame_match_numpy(p):
    overlay(p, 1, Use=1, Shape="Rectangle", PositionX=5, PositionY=4, SizeX=10, SizeY=6,
            WidthX=2, WidthY=1, Green=4000)
    overlay(p, 2, Use=1, Shape="Cross", DrawMode="XOR", PositionX=20, PositionY=10, SizeX=8,
            SizeY=6, WidthX=3, WidthY=1, Green=0x5A5)
    overlay(p, 3, Use=1, Shape="Ellipse", PositionX=30, PositionY=15, SizeX=12, SizeY=10,
            WidthX=2, Green=7)
    overlay(p, 4, Use=1, Shape="Text", PositionX=2, PositionY=20, SizeX=40, SizeY=13,
            DisplayText="AB", Font="6x13", Green=9999)
    acquire(p)
    full, out = frames(p, "image2:")
    np.testing.assert_array_equal(full, np.arange(NX)[None, :] + 64 * np.arange(NY)[:, None])
    expected = full.copy()
    # rectangle: rows 4..10, columns 5..15, 2 columns and 1 row thick inwards
    expected[4:11, 5:16] = 4000
    expected[5:10, 7:14] = full[5:10, 7:14]
    # cross about (24, 13): row 13 from x 20 to 28, columns 23..25 from y 10 to 16, XORed
    cross = np.zeros((NY, NX), bool)
    cross[13, 20:29] = True
    cross[10:17, 23:26] = True
    expected[cross] = full[cross].astype(np.int64) ^ 0x5A5
    expected[ellipse_mask(30, 15, 12, 10, 2)] = 7
    # text: 'A' then 'B' in 6x13 cells from (2, 20), rows 20..31 inside the frame
    ink = np.zeros((NY, NX), bool)
    ink[20:32, 2:14] = out[20:32, 2:14] == 9999
    assert ink[20:32, 2:8].any() and ink[20:32, 8:14].any()
    expected[ink] = 9999
    np.testing.assert_array_equal(out, expected)
    assert read(p + "Over1:MaxSizeX_RBV") == NX and read(p + "Over1:3:MaxSizeY") == NY
    assert read(p + "Over1:PluginType_RBV") == "NDPluginOverlay"


@pytest.mark.parametrize("mode, planes", [
    ("RGB1", lambda a: [a[:, :, k] for k in range(3)]),
    ("RGB2", lambda a: [a[:, k, :] for k in range(3)]),
    ("RGB3", lambda a: [a[k] for k in range(3)])])
def test_colours_of_an_rgb_frame(p, mode, planes):
    put(p + "cam1:ColorMode", mode)
    put(p + "cam1:DataType", "UInt8")
    overlay(p, 5, Use=1, Shape="Rectangle", PositionX=3, PositionY=2, SizeX=20, SizeY=12,
            WidthX=1, WidthY=1, Red=200, Green=100, Blue=300)
    overlay(p, 6, Use=1, Shape="Cross", DrawMode="XOR", PositionX=30, PositionY=5, SizeX=6,
            SizeY=6, WidthX=1, WidthY=1, Red=1, Green=2, Blue=4)
    acquire(p)
    full, out = frames(p, "image2:")
    box = np.zeros((NY, NX), bool)
    box[2:15, 3:24] = True
    box[3:14, 4:23] = False
    cross = np.zeros((NY, NX), bool)
    cross[8, 30:37] = True
    cross[5:12, 33] = True
    for plane, before, (value, xor) in zip(planes(out), planes(full),
                                           ((200, 1), (100, 2), (300 % 256, 4))):
        expected = before.copy()
        expected[box] = value
        expected[cross] = before[cross].astype(np.int64) ^ xor
        np.testing.assert_array_equal(plane, expected)
    assert read(p + "image2:ColorMode_RBV", as_string=True) == mode


def test_center_position_and_links(ioc, p):
    overlay(p, 7, SizeX=10, PositionX=4)
    assert read(p + "Over1:7:CenterX_RBV") == 9
    put(p + "Over1:7:CenterX", 30)
    assert read(p + "Over1:7:PositionX_RBV") == 25 and read(p + "Over1:7:PositionX") == 25
    put(p + "Over1:7:SizeX", 20)  # the centre was written last: it stays
    assert read(p + "Over1:7:PositionX_RBV") == 20 and read(p + "Over1:7:CenterX_RBV") == 30
    put(p + "Over1:7:PositionXLink", 11)  # the link record writes PositionX
    assert read(p + "Over1:7:PositionX_RBV") == 11 and read(p + "Over1:7:CenterX_RBV") == 21
    # overlay 1 follows ROI1 as commonPlugins links it
    assert ioc.links == {"PositionX": p + "ROI1:MinX_RBV CP MS",
                         "PositionY": p + "ROI1:MinY_RBV CP MS",
                         "SizeX": p + "ROI1:SizeX_RBV CP MS",
                         "SizeY": p + "ROI1:SizeY_RBV CP MS", "CenterX": ""}
    put(p + "Over1:1:PositionXLink.DOL", "ROI1:MinX_RBV CP MS")  # shown in full
    assert read(p + "Over1:1:PositionXLink.DOL") == p + "ROI1:MinX_RBV CP MS"
    put(p + "Over1:1:SizeYLink.DOL", p + "ROI1:SizeY_RBV")
    put(p + "ROI1:MinX", 13)
    put(p + "ROI1:SizeY", 9)
    assert wait_for(lambda: read(p + "Over1:1:PositionX_RBV") == 13, timeout=5)
    assert wait_for(lambda: read(p + "Over1:1:SizeY_RBV") == 9, timeout=5)
    # a link to a PV this IOC does not serve leaves the value to the operator, and says so
    put(p + "Over1:2:SizeXLink.DOL", "OTHER:IOC:PV CP")
    assert "not a PV of this IOC" in read(p + "Over1:StatusMessage_RBV", as_string=True)
    put(p + "Over1:2:SizeX", 3)
    assert read(p + "Over1:2:SizeX_RBV") == 3
    # and a link to another PV of this IOC follows it
    put(p + "Over1:2:SizeXLink.DOL", p + "cam1:BinX_RBV")
    put(p + "cam1:BinX", 2)
    assert wait_for(lambda: read(p + "Over1:2:SizeX_RBV") == 2, timeout=5)
    put(p + "cam1:BinX", 1)
    assert wait_for(lambda: read(p + "Over1:2:SizeX_RBV") == 1, timeout=5)
    put(p + "Over1:2:SizeXLink.DOL", "")


def test_bad_input_is_clamped_or_refused_and_frames_keep_coming(p):
    put(p + "Over1:8:SizeX", -5)
    assert read(p + "Over1:8:SizeX_RBV") == 0
    put(p + "Over1:8:WidthY", -1)
    assert read(p + "Over1:8:WidthY_RBV") == 0
    with pytest.raises(Exception):  # a CA error: the value is not an integer
        epics.caput(p + "Over1:8:PositionX", "wide", wait=True, timeout=5)
        raise AssertionError("put accepted")
    overlay(p, 8, Use=1, Shape="Ellipse", PositionX=0, PositionY=0, SizeX=2 ** 31 - 1,
            SizeY=2 ** 31 - 1, WidthX=2 ** 31 - 1)
    overlay(p, 1, Use=1, Shape="Rectangle", PositionX=-100, PositionY=-100, SizeX=2 ** 31 - 1,
            SizeY=2 ** 31 - 1, WidthX=2, WidthY=2, Green=5)
    before = read(p + "image2:UniqueId_RBV")
    acquire(p)
    full, out = frames(p, "image2:")
    assert read(p + "image2:UniqueId_RBV") != before
    assert "not drawn" in read(p + "Over1:StatusMessage_RBV", as_string=True)
    np.testing.assert_array_equal(out, full)  # the rectangle's edges are all off the frame
    overlay(p, 1, PositionX=-1, PositionY=-1)  # now its 2-pixel band shows 1 pixel inside
    acquire(p)
    full, out = frames(p, "image2:")
    expected = full.copy()
    expected[0, :] = 5
    expected[:, 0] = 5
    np.testing.assert_array_equal(out, expected)


def test_adcore_screen_pvs_connect(p):
    """Every PV of ADCore's NDOverlay/NDOverlay8/NDOverlayN/NDColorConvert .bob screens."""
    per_overlay = ["Blue", "Blue_RBV", "CenterX", "CenterXLink.DOL", "CenterX_RBV", "CenterY",
                   "CenterYLink.DOL", "CenterY_RBV", "DisplayText", "DrawMode", "DrawMode_RBV",
                   "Font", "Green", "Green_RBV", "Name", "Name_RBV", "PositionX",
                   "PositionXLink.DOL", "PositionX_RBV", "PositionY", "PositionYLink.DOL",
                   "PositionY_RBV", "Red", "Red_RBV", "Shape", "Shape_RBV", "SizeX",
                   "SizeXLink.DOL", "SizeX_RBV", "SizeY", "SizeYLink.DOL", "SizeY_RBV",
                   "TimeStampFormat", "Use", "Use_RBV", "WidthX", "WidthXLink.DOL",
                   "WidthX_RBV", "WidthY", "WidthYLink.DOL", "WidthY_RBV"]
    names = [f"Over1:{n}:{s}" for n in range(1, 9) for s in per_overlay]
    names += [f"{cc}{s}" for cc in ("CC1:", "CC2:") for s in
              ("ColorModeOut", "ColorModeOut_RBV", "FalseColor", "FalseColor_RBV")]
    pvs = [epics.PV(p + name, auto_monitor=False) for name in names]
    missing = [pv.pvname for pv in pvs if not pv.wait_for_connection(5)]
    assert not missing
    assert read(p + "Over1:1:Name") == "ROI1" and read(p + "Over1:8:Name") == "Box2"
    assert epics.caget(p + "Over1:1:Shape_RBV", as_string=True) == "Rectangle"
    assert epics.PV(p + "Over1:1:Shape").get_ctrlvars()["enum_strs"] == \
        ("Cross", "Rectangle", "Ellipse", "Text")
    assert epics.PV(p + "CC1:ColorModeOut").get_ctrlvars()["enum_strs"] == \
        ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
    for pv in pvs:
        pv.disconnect()


# --- ColorConvert -------------------------------------------------------------------------------


def test_mono_to_false_colour_rgb1(p):
    from ndflow.plugins.colorconvert import color_map  # its values are ADCore's (unit tests)
    put(p + "cam1:DataType", "UInt8")
    put(p + "cam1:GainY", 5.0)
    put(p + "CC1:ColorModeOut", "RGB1")
    put(p + "CC1:FalseColor", "Iron")
    acquire(p)
    full, out = frames(p, "image3:")
    table = color_map(2)
    np.testing.assert_array_equal(out, table[full.astype(np.uint8)])
    assert read(p + "image3:ColorMode_RBV", as_string=True) == "RGB1"
    assert [read(p + f"image3:ArraySize{i}_RBV") for i in range(3)] == [3, NX, NY]


@pytest.mark.parametrize("mode_in, planes", [
    ("RGB1", lambda a: [a[:, :, k] for k in range(3)]),
    ("RGB2", lambda a: [a[:, k, :] for k in range(3)]),
    ("RGB3", lambda a: [a[k] for k in range(3)])])
def test_rgb_to_mono_and_rgb3(p, mode_in, planes):
    put(p + "cam1:ColorMode", mode_in)
    put(p + "cam1:GainRed", 3.0)
    put(p + "cam1:GainBlue", 0.5)
    try:
        acquire(p)
        full, out = frames(p, "image3:")
        r, g, b = (plane.astype(np.int64) for plane in planes(full))
        np.testing.assert_array_equal(out, (r + g + b) // 3)
        assert read(p + "image3:ColorMode_RBV", as_string=True) == "Mono"
        put(p + "CC1:ColorModeOut", "RGB3")
        acquire(p)
        full, out = frames(p, "image3:")
        np.testing.assert_array_equal(out, np.stack(planes(full)))
    finally:
        put(p + "cam1:GainRed", 1.0)
        put(p + "cam1:GainBlue", 1.0)


def ref_demosaic(image: np.ndarray, pattern: int, x0: int) -> np.ndarray:
    """ADCore's Bayer loop, pixel by pixel: (3, ny, nx) of red, green, blue."""
    ny, nx = image.shape
    p = image.astype(np.int64)
    out = np.zeros((3, ny, nx), np.int64)
    for y in range(ny):
        for x in range(nx):
            bx, by = x + x0 + ((pattern >> 1) & 1), y + (pattern & 1)
            own = 0 if bx % 2 == 0 and by % 2 == 0 else 2 if bx % 2 and by % 2 else 1
            out[own, y, x] = p[y, x]
            if 0 < x < nx - 1 and 0 < y < ny - 1:
                diag = (p[y - 1, x - 1] + p[y - 1, x + 1] + p[y + 1, x - 1] + p[y + 1, x + 1])
                cross = p[y - 1, x] + p[y, x - 1] + p[y, x + 1] + p[y + 1, x]
                horiz, vert = (p[y, x - 1] + p[y, x + 1]) // 2, (p[y - 1, x] + p[y + 1, x]) // 2
                if own != 1:
                    out[2 - own, y, x], out[1, y, x] = diag // 4, cross // 4
                elif bx % 2 == 1:
                    out[0, y, x], out[2, y, x] = horiz, vert
                else:
                    out[2, y, x], out[0, y, x] = horiz, vert
    return out


@pytest.mark.parametrize("pattern, offset", [("RGGB", 0), ("GRBG", 1), ("BGGR", 2)])
def test_bayer_to_rgb3_and_mono(p, pattern, offset):
    put(p + "cam1:SimMode", "Peaks")  # a frame with structure in both directions
    put(p + "Bayer1:Pattern", pattern)
    put(p + "Bayer1:OffsetX", offset)
    put(p + "CC2:ColorModeOut", "RGB3")
    acquire(p)
    full, out = frames(p, "image4:")
    expected = ref_demosaic(full, ("RGGB", "GBRG", "GRBG", "BGGR").index(pattern), offset)
    np.testing.assert_array_equal(out, expected)
    assert read(p + "CC2:BayerPattern_RBV", as_string=True) == pattern
    assert read(p + "image4:ColorMode_RBV", as_string=True) == "RGB3"
    put(p + "CC2:ColorModeOut", "Mono")
    acquire(p)
    full, out = frames(p, "image4:")
    expected = ref_demosaic(full, ("RGGB", "GBRG", "GRBG", "BGGR").index(pattern), offset)
    np.testing.assert_array_equal(out, expected.sum(axis=0) // 3)


# --- ophyd ------------------------------------------------------------------------------------


def test_ophyd_overlay_and_colorconv_plugins_connect_stage_and_trigger(start_ioc):
    """An IOC of its own, with a prefix no pyepics call of this process has touched: ophyd's
    pyepics shim would pick up the plain epics.PV objects pyepics caches per PV name."""
    from ophyd import Component as Cpt
    from ophyd import EpicsSignal
    from ophyd.areadetector import SimDetector, SingleTrigger
    from ophyd.areadetector.plugins import (ColorConvPlugin, ImagePlugin, Overlay,
                                            OverlayPlugin, PluginBase)

    class Detector(SingleTrigger, SimDetector):
        over1 = Cpt(OverlayPlugin, "Over1:")
        cc1 = Cpt(ColorConvPlugin, "CC1:")
        cc2 = Cpt(ColorConvPlugin, "CC2:")
        image2 = Cpt(ImagePlugin, "image2:")

    p = unique_prefix()
    start_ioc(OPHYD_CONFIG, prefix=p)
    det = Detector(p, name="det")
    det.wait_for_connection(timeout=10)
    # every signal the plugin classes themselves declare (PluginBase's are everyone's)
    base = set(PluginBase.component_names)
    signals = [getattr(det.over1, name) for name in OverlayPlugin.component_names
               if name not in base and not name.startswith("overlay_")]
    signals += [getattr(det.cc1, name) for name in ColorConvPlugin.component_names
                if name not in base]
    for n in range(1, 9):
        sub = getattr(det.over1, f"overlay_{n}")
        signals += [getattr(sub, name) for name in Overlay.component_names]
    # and those of the newer Overlay_V21/V26 (width, centre, text)
    signals += [EpicsSignal(p + f"Over1:1:{s}", name=s) for s in (
        "WidthX", "WidthXLink", "CenterX", "CenterYLink", "DisplayText", "Font",
        "TimeStampFormat", "PositionYLink", "SetXHOPR", "SetYHOPR", "MaxSizeX", "MaxSizeY")]
    for signal in signals:
        if hasattr(signal, "wait_for_connection") and not hasattr(signal, "component_names"):
            signal.wait_for_connection(timeout=5)
        else:
            for sig in signal.get_instantiated_signals():
                sig[1].wait_for_connection(timeout=5)
    assert det.over1.overlay_3.overlay_portname.get() == "ROI3"
    assert det.cc1.color_mode_out.get(as_string=True) == "Mono"
    det.cam.stage_sigs.update(image_mode="Single", num_images=1, acquire_time=0.2)
    det.over1.overlay_1.use.put(1, wait=True)
    det.over1.overlay_1.shape.put(0, wait=True)  # Cross
    det.cc1.stage_sigs["color_mode_out"] = "RGB1"
    det.validate_asyn_ports()
    graph, _ = det.get_asyn_digraph()
    assert {("SIM1", "OVER1"), ("SIM1", "CC1"), ("SIM1", "CC2"), ("OVER1", "Image2")} <= \
        set(graph.edges)
    det.stage()
    try:
        assert det.over1.enable.get() == "Enable" and det.cc1.enable.get() == "Enable"
        before = det.image2.unique_id.get()
        det.trigger().wait(timeout=10)
        assert wait_for(lambda: det.image2.unique_id.get() != before, timeout=5)
        assert det.cc1.color_mode_out.get(as_string=True) == "RGB1"
    finally:
        det.unstage()
    assert det.cc1.color_mode_out.get(as_string=True) == "Mono"
