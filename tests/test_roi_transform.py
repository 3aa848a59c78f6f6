"""NDPluginROI and NDPluginTransform: outputs against numpy on the same frame, clipping, colour
layouts, and the coordinate transform back to detector pixels.

One IOC serves the module: sim 64x48 -> image0 (the full frame), ROI1 -> image1, and
ROI1 -> Trans1 -> image2. The waveforms are Float64 so every data type's values arrive exactly;
imageN:DataType_RBV tells the type its input had. The transform itself is internal, so it is
checked in-process on NDArrays (one made by the real sim with camera binning) by comparing
pixel values at the detector pixels `to_detector()` names.
"""

from __future__ import annotations

import logging
import threading
import time

import epics
import numpy as np
import pytest

from conftest import running_ioc
from test_acquisition import get, put

from ndflow.driver import FrameContext
from ndflow.drivers.sim import SimDetector, SimOptions
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, NDArray, NDDimension, region_transform
from ndflow.plugins.roi import ROI, Region, extract
from ndflow.plugins.transform import TYPES, Transform

NX, NY = 64, 48
WAVE = "{data_type: Float64, nelm: 10000}"
CONFIG = f"""
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
plugins:
  - {{type: stdarrays, port: IMAGE0, prefix: "image0:", input: SIM1, options: {WAVE}}}
  - {{type: roi, port: ROI1, prefix: "ROI1:", input: SIM1}}
  - {{type: stdarrays, port: IMAGE1, prefix: "image1:", input: ROI1, options: {WAVE}}}
  - {{type: transform, port: TRANS1, prefix: "Trans1:", input: ROI1}}
  - {{type: stdarrays, port: IMAGE2, prefix: "image2:", input: TRANS1, options: {WAVE}}}
"""

#: what each Type does to a (y, x) image, written from NDPluginTransform.cpp's index formulas
EXPECTED_TURN = {
    "None": lambda m, ax: m,
    "Rot90": lambda m, ax: np.rot90(m, -1, axes=ax),
    "Rot180": lambda m, ax: np.rot90(m, 2, axes=ax),
    "Rot270": lambda m, ax: np.rot90(m, 1, axes=ax),
    "Mirror": lambda m, ax: np.flip(m, ax[1]),
    "Rot90Mirror": lambda m, ax: np.flip(np.rot90(m, -1, axes=ax), ax[1]),
    "Rot180Mirror": lambda m, ax: np.flip(m, ax[0]),
    "Rot270Mirror": lambda m, ax: np.flip(np.rot90(m, 1, axes=ax), ax[1]),
}
#: numpy (y, x) axes of the sim's colour modes
SPATIAL_AXES = {"Mono": (0, 1), "RGB1": (0, 1), "RGB2": (0, 2), "RGB3": (1, 2)}


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("roi")) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    """Prefix of the IOC with camera, ROI1 and Trans1 back at their defaults."""
    p = ioc.prefix
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"),
                        ("DataType", "UInt16"), ("ColorMode", "Mono"), ("BinX", 1), ("BinY", 1),
                        ("MinX", 0), ("MinY", 0), ("SizeX", NX), ("SizeY", NY),
                        ("ReverseX", 0), ("ReverseY", 0), ("GainX", 1.0), ("GainY", 64.0),
                        ("Gain", 1.0), ("AcquireTime", 0.001), ("AcquirePeriod", 0.0),
                        ("SimMode", "LinearRamp"), ("Reset", 1)]:
        put(p + "cam1:" + name, value)
    for axis in "XYZ":
        for name, value in [("Min", 0), ("Size", 1_000_000), ("Bin", 1), ("Reverse", 0),
                            ("Enable", 1), ("AutoSize", 0)]:
            put(p + f"ROI1:{name}{axis}", value)
    for name, value in [("EnableScale", 0), ("Scale", 1.0), ("CollapseDims", 0),
                        ("DataTypeOut", "Automatic")]:
        put(p + "ROI1:" + name, value)
    put(p + "Trans1:Type", "None")
    return p


def read(pv: str, **kw):
    return get(pv, use_monitor=False, **kw)


def acquire(p: str) -> None:
    """One frame; completes when every plugin has processed it."""
    put(p + "cam1:Reset", 1)  # a LinearRamp restarts, so every frame is the first frame
    put(p + "cam1:Acquire", 1)


def frame(p: str, plugin: str) -> np.ndarray:
    """imageN:ArrayData reshaped by its NDimensions and ArraySizeN, numpy order."""
    ndims = read(p + plugin + "NDimensions_RBV")
    dims = [read(p + plugin + f"ArraySize{i}_RBV") for i in range(ndims)]
    data = read(p + plugin + "ArrayData", count=int(np.prod(dims)))
    return np.asarray(data).reshape(tuple(reversed(dims)))


def frames(p: str, *plugins: str) -> list[np.ndarray]:
    """The full frame (image0) and the given images, checked to come from one frame."""
    ids = {read(p + plugin + "UniqueId_RBV") for plugin in ("image0:",) + plugins}
    assert len(ids) == 1, f"the images hold different frames {ids}"
    return [frame(p, plugin) for plugin in ("image0:",) + plugins]


def bin_sum(block: np.ndarray, bx: int, by: int) -> np.ndarray:
    ny, nx = block.shape
    return block.reshape(ny // by, by, nx // bx, bx).sum(axis=(1, 3))


# --- ROI through the IOC -------------------------------------------------------------------------
def test_region_binning_and_reversal_match_numpy(p):
    for name, value in [("MinX", 5), ("SizeX", 31), ("BinX", 3), ("ReverseX", 1),
                        ("MinY", 4), ("SizeY", 20), ("BinY", 2), ("Name", "beam")]:
        put(p + "ROI1:" + name, value)
    acquire(p)
    full, out = frames(p, "image1:")
    np.testing.assert_array_equal(full, np.arange(NX)[None, :] + 64 * np.arange(NY)[:, None])
    # Size 31 with Bin 3: 10 output pixels from input pixels 5..34; ReverseX puts the last first
    expected = bin_sum(full[4:24, 5:35], 3, 2)[:, ::-1]
    np.testing.assert_array_equal(out, expected)
    assert read(p + "image1:DataType_RBV", as_string=True) == "UInt16"
    assert [read(p + f"ROI1:{n}_RBV") for n in ("MinX", "SizeX", "BinX", "MinY", "SizeY")] == \
        [5, 31, 3, 4, 20]
    assert [read(p + f"ROI1:ArraySize{a}_RBV") for a in "XYZ"] == [10, 10, 0]
    assert [read(p + f"ROI1:MaxSize{a}_RBV") for a in "XYZ"] == [NX, NY, 0]
    assert [read(p + f"ROI1:Max{a}") for a in "XY"] == [NX, NY]
    assert read(p + "ROI1:Name_RBV") == "beam"
    assert read(p + "ROI1:PluginType_RBV") == "NDPluginROI"


def test_uint8_bins_wrap_with_automatic_type_but_not_as_uint16(p):
    put(p + "cam1:DataType", "UInt8")
    put(p + "cam1:GainY", 1.0)
    put(p + "ROI1:BinX", 2)
    put(p + "ROI1:BinY", 2)
    acquire(p)
    full, out = frames(p, "image1:")
    sums = bin_sum(full.astype(np.int64), 2, 2)
    assert sums.max() > 255, "the frame must overflow a UInt8 sum for this test to mean anything"
    # NDArrayPool::convert sums in the output type: Automatic keeps UInt8, so sums wrap
    np.testing.assert_array_equal(out, sums % 256)
    assert read(p + "image1:DataType_RBV", as_string=True) == "UInt8"
    put(p + "ROI1:DataTypeOut", "UInt16")
    acquire(p)
    full, out = frames(p, "image1:")
    np.testing.assert_array_equal(out, bin_sum(full, 2, 2))
    assert read(p + "image1:DataType_RBV", as_string=True) == "UInt16"


def test_float_to_int_truncates_each_pixel_and_scale_divides_the_sum(p):
    put(p + "cam1:DataType", "Float32")
    put(p + "cam1:Gain", 1.5)  # inc 1.5: half-integer values
    put(p + "cam1:GainX", -1.0)  # and negative ones, which truncate toward zero
    put(p + "cam1:GainY", 1.0)
    put(p + "ROI1:BinX", 2)
    put(p + "ROI1:BinY", 2)
    put(p + "ROI1:DataTypeOut", "Int16")
    acquire(p)
    full, out = frames(p, "image1:")
    per_pixel = bin_sum(np.trunc(full), 2, 2)
    assert not np.array_equal(per_pixel, np.trunc(bin_sum(full, 2, 2)))
    np.testing.assert_array_equal(out, per_pixel)
    assert read(p + "image1:DataType_RBV", as_string=True) == "Int16"

    put(p + "ROI1:EnableScale", "Enable")
    put(p + "ROI1:Scale", 4.0)
    acquire(p)
    full, out = frames(p, "image1:")
    np.testing.assert_array_equal(out, np.trunc(bin_sum(full.astype(np.float64), 2, 2) / 4.0))

    put(p + "ROI1:DataTypeOut", "Float64")
    acquire(p)
    full, out = frames(p, "image1:")
    np.testing.assert_allclose(out, bin_sum(full.astype(np.float64), 2, 2) / 4.0)


def test_requests_are_clipped_to_the_input_and_kept(p):
    for name, value in [("MinX", 50), ("SizeX", 100), ("BinX", 0), ("MinY", 100),
                        ("BinY", -3)]:
        put(p + "ROI1:" + name, value)
    acquire(p)
    full, out = frames(p, "image1:")
    np.testing.assert_array_equal(out, full[47:48, 50:64])
    assert [read(p + f"ROI1:{n}_RBV") for n in ("MinX", "SizeX", "BinX", "MinY", "SizeY",
                                                 "BinY")] == [50, 14, 1, 47, 1, 1]
    assert read(p + "ROI1:MinY") == 100  # the setpoint keeps the request
    message = read(p + "ROI1:StatusMessage_RBV", as_string=True)
    assert "MinY 100" in message and "BinX 0" in message and "SizeX 100" in message

    # a smaller input shrinks the region; when it grows back, so does the region
    put(p + "ROI1:MinY", 10)
    put(p + "cam1:SizeX", 56)
    acquire(p)
    assert read(p + "ROI1:SizeX_RBV") == 6 and read(p + "ROI1:MaxSizeX_RBV") == 56
    put(p + "cam1:SizeX", NX)
    acquire(p)
    assert read(p + "ROI1:SizeX_RBV") == 14 and read(p + "ROI1:SizeY_RBV") == NY - 10

    put(p + "ROI1:AutoSizeX", "Yes")
    put(p + "ROI1:SizeX", 3)
    put(p + "ROI1:EnableY", "Disable")
    put(p + "ROI1:CollapseDims", "Enable")
    put(p + "ROI1:MinX", 63)
    acquire(p)
    full, out = frames(p, "image1:")
    assert read(p + "ROI1:SizeX_RBV") == 1
    assert out.shape == (NY,)  # X collapsed: a 1-D array along Y
    np.testing.assert_array_equal(out, full[:, 63])
    assert [read(p + f"ROI1:ArraySize{a}_RBV") for a in "XYZ"] == [NY, 0, 0]


@pytest.mark.parametrize("mode", ["RGB1", "RGB2", "RGB3"])
def test_colour_arrays_map_xyz_by_colour_mode(p, mode):
    put(p + "cam1:ColorMode", mode)
    put(p + "cam1:DataType", "UInt8")
    put(p + "cam1:GainY", 1.0)
    put(p + "cam1:GainGreen", 2.0)
    for name, value in [("MinX", 10), ("SizeX", 20), ("MinY", 5), ("SizeY", 10), ("ReverseY", 1)]:
        put(p + "ROI1:" + name, value)
    put(p + "Trans1:Type", "Rot90")
    acquire(p)
    full, out, turned = frames(p, "image1:", "image2:")
    ay, ax = SPATIAL_AXES[mode]
    cut = [slice(None)] * 3
    cut[ay], cut[ax] = slice(14, 4, -1), slice(10, 30)
    np.testing.assert_array_equal(out, full[tuple(cut)])
    np.testing.assert_array_equal(turned, np.rot90(out, -1, axes=(ay, ax)))
    assert [read(p + f"ROI1:MaxSize{a}_RBV") for a in "XYZ"] == [NX, NY, 3]
    assert [read(p + f"ROI1:ArraySize{a}_RBV") for a in "XYZ"] == [20, 10, 3]
    assert [read(p + f"Trans1:ArraySize{a}_RBV") for a in "XYZ"] == [10, 20, 3]
    assert read(p + "image2:ColorMode_RBV", as_string=True) == mode

    put(p + "ROI1:MinZ", 1)  # green only: collapses to a Mono image
    put(p + "ROI1:SizeZ", 1)
    acquire(p)
    full, out = frames(p, "image1:")
    green = [slice(None)] * 3
    green[3 - ay - ax] = 1
    np.testing.assert_array_equal(out, full[tuple(green)][14:4:-1, 10:30])
    assert read(p + "image1:ColorMode_RBV", as_string=True) == "Mono"
    assert read(p + "image1:NDimensions_RBV") == 2


# --- Transform through the IOC -------------------------------------------------------------------
def test_every_transform_type_matches_numpy(p):
    assert read(p + "Trans1:PluginType_RBV") == "NDPluginTransform"
    # Type is a setpoint without readback, as in ADCore
    assert epics.caget(p + "Trans1:Type_RBV", timeout=0.5, connection_timeout=0.5) is None
    put(p + "ROI1:SizeX", 40)  # a non-square input, so a wrong axis cannot pass
    for name in TYPES:
        put(p + "Trans1:Type", name)
        acquire(p)
        _, out, turned = frames(p, "image1:", "image2:")
        np.testing.assert_array_equal(turned, EXPECTED_TURN[name](out, (0, 1)), err_msg=name)
        assert read(p + "Trans1:ArraySizeX_RBV") == turned.shape[1], name


def test_roi_then_rotation_maps_the_peak_and_every_pixel_to_its_detector_pixel(p):
    for name, value in [("SimMode", "Peaks"), ("PeakStartX", 40), ("PeakStartY", 30),
                        ("PeakWidthX", 2), ("PeakWidthY", 2), ("PeakVariation", 0),
                        ("Gain", 1000.0), ("GainY", 1.0)]:
        put(p + "cam1:" + name, value)
    for name, value in [("MinX", 20), ("SizeX", 30), ("MinY", 10), ("SizeY", 24), ("ReverseY", 1)]:
        put(p + "ROI1:" + name, value)
    put(p + "Trans1:Type", "Rot90")
    acquire(p)
    full, turned = frames(p, "image2:")
    assert turned.shape == (30, 24)
    # by hand: ROI pixel (xr, yr) is detector (20 + xr, 10 + 23 - yr); Rot90 output (x, y)
    # is ROI pixel (y, 23 - x), so output (x, y) is detector (20 + y, 10 + x)
    y, x = np.unravel_index(np.argmax(turned), turned.shape)
    assert (20 + y, 10 + x) == (40, 30)
    ys, xs = np.indices(turned.shape)
    np.testing.assert_array_equal(turned, full[10 + xs, 20 + ys])


# --- the coordinate transform, in process -------------------------------------------------------
def quiet(plugin_class, **values):
    plugin = plugin_class("P", "P:", PortGraph())
    plugin.log.setLevel(logging.ERROR)
    for name, value in values.items():
        plugin.values[name] = value
        plugin.after_put(plugin.params[name], value)
    plugin.freeze()  # process() runs on the frozen parameters, as the plugin's owner takes them
    return plugin


def assert_pixels_map_to_detector(out: NDArray, detector: np.ndarray) -> None:
    """Every output pixel is the sum of the detector block its to_detector() pixel starts."""
    bx, by = out.dims[0].binning, out.dims[1].binning
    ys, xs = np.indices(out.data.shape)
    det = out.to_detector(np.column_stack([xs.ravel(), ys.ravel()])).round().astype(int)
    sums = [detector[dy:dy + by, dx:dx + bx].sum() for dx, dy in det]
    np.testing.assert_array_equal(out.data.ravel(), sums)


def test_roi_and_transform_compose_the_detector_transform():
    detector = np.random.default_rng(1).integers(0, 1000, (NY, NX)).astype(np.int32)
    # a camera region like the sim's: MinX 6, MinY 3, 40x30 pixels, reversed in y
    cam = NDArray.from_numpy(np.ascontiguousarray(detector[3:33, 6:46][::-1]))
    cam.dims = [NDDimension(40, 6, 1, False), NDDimension(30, 3, 1, True)]
    cam.transform = region_transform(6, 3, 1, 1, 40, 30, False, True)
    roi = quiet(ROI, MinX=4, SizeX=20, MinY=2, SizeY=12, ReverseX=1)
    out = roi.process(cam)
    assert out.data.shape == (12, 20)
    assert_pixels_map_to_detector(out, detector)
    # dims in detector pixels: x from 6 + 4; y counted from the reversed camera's far end
    assert (out.dims[0].offset, out.dims[0].reverse) == (10, True)
    assert (out.dims[1].offset, out.dims[1].reverse) == (3 + 30 - 2 - 12, True)
    for name in TYPES:
        turned = quiet(Transform, Type=TYPES.index(name)).process(out)
        np.testing.assert_array_equal(turned.data, EXPECTED_TURN[name](out.data, (0, 1)))
        assert_pixels_map_to_detector(turned, detector)
        corner = turned.to_detector([[0, 0]]).round().astype(int)[0]
        assert turned.data[0, 0] == detector[corner[1], corner[0]], name


def test_camera_binning_composes_with_roi_binning():
    sim = SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(max_size_x=NX,
                                                                         max_size_y=NY))
    sim.values.update(DataType=5, GainY=64.0, AcquireTime=0.001)  # UInt32: sums cannot wrap

    def sim_frame(**region) -> NDArray:
        sim.values.update(Reset=1, **region)
        params = dict(sim.values)
        sim.prepare(params)
        return sim.produce_frame(FrameContext(Acquisition.start(params), 0, threading.Event()))

    detector = sim_frame().data.astype(np.int64)
    binned = sim_frame(MinX=6, SizeX=40, BinX=2, MinY=3, SizeY=36, BinY=3)
    assert binned.data.shape == (12, 20)
    roi = quiet(ROI, MinX=3, SizeX=12, BinX=2, MinY=2, SizeY=8, BinY=2, ReverseX=1)
    out = roi.process(binned)
    assert out.data.shape == (4, 6)
    assert [(d.offset, d.binning) for d in out.dims] == [(6 + 3 * 2, 4), (3 + 2 * 3, 6)]
    assert_pixels_map_to_detector(out, detector)
    np.testing.assert_array_equal(out.to_detector([[5, 0]]), [[12, 9]])  # reversed: last bin


# --- pure functions and bad input ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"])
def test_extract_sums_in_the_output_type_for_every_type(dtype):
    data = (np.arange(24).reshape(4, 6) * 37 - 300).astype(np.float64)
    source = data.astype(dtype) if dtype[0] == "f" else \
        np.trunc(data).astype(np.int64).astype(dtype)
    regions = [Region(1, 4, 2, True), Region(0, 4, 2, False)]  # dims order: x then y
    out = extract(source, regions, np.dtype("u1"))
    wide = source[0:4, 1:5]
    per_element = np.trunc(wide.astype(np.float64)).astype(np.int64) if dtype[0] == "f" \
        else wide.astype(np.int64)
    expected = (bin_sum(per_element, 2, 2)[:, ::-1] % 256).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_impossible_arrays_give_no_output_and_a_reason():
    roi = quiet(ROI)
    assert roi.process(NDArray.from_numpy(np.zeros((2, 2, 2, 2), np.uint8))) is None
    assert "4-D" in roi.values["StatusMessage_RBV"]
    assert roi.process(NDArray.from_numpy(np.zeros((0, 5), np.uint8))) is None
    assert "none empty" in roi.values["StatusMessage_RBV"]
    one_d = roi.process(NDArray.from_numpy(np.arange(5, dtype=np.int16)))
    np.testing.assert_array_equal(one_d.data, np.arange(5))
    trans = quiet(Transform, Type=1)
    flat = NDArray.from_numpy(np.arange(5, dtype=np.int16))
    assert trans.process(flat) is flat
    assert "1-D" in trans.values["StatusMessage_RBV"]


def test_declarations_follow_the_adcore_templates():
    roi = ROI("ROI1", "ROI1:", PortGraph())
    assert roi.params["DataTypeOut"].choices[-1] == "Automatic"
    assert roi.values["DataTypeOut"] == 10 and roi.params["DataTypeOut"].record_type == \
        ("mbbo", "mbbi")
    assert [roi.values[f"Size{a}"] for a in "XYZ"] == [1_000_000] * 3
    assert roi.params["EnableX"].choices == ("Disable", "Enable") and roi.values["EnableX"] == 1
    assert roi.params["AutoSizeZ"].choices == ("No", "Yes") and roi.values["AutoSizeZ"] == 0
    assert roi.params["Scale"].record_type == ("ao", "ai") and roi.values["Scale"] == 1.0
    trans = Transform("TRANS1", "Trans1:", PortGraph())
    assert trans.params["Type"].choices == TYPES and trans.params["Type"].pv_suffixes == ["Type"]
    assert TYPES == ("None", "Rot90", "Rot180", "Rot270", "Mirror", "Rot90Mirror",
                     "Rot180Mirror", "Rot270Mirror")


# --- the plugin base's buffers and output budget (issue 17 item 7) -----------------------------
def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def acquire_many(p: str, count: int) -> None:
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", count)
    put(p + "cam1:Acquire", 1)  # WaitForPlugins: completes when the plugins are done


def test_max_byte_rate_holds_the_output_to_its_budget_and_counts_what_it_drops(p):
    """ROI1 passes on at most MaxByteRate bytes a second (a 64x48 UInt16 frame is 6144
    bytes): of 10 frames at once, one goes on, the others are counted on DroppedOutputArrays
    and reach IMAGE1 as lost frames; the camera counts them lost."""
    put(p + "ROI1:DroppedOutputArrays", 0)
    before = read(p + "image1:UniqueId_RBV")
    put(p + "ROI1:MaxByteRate", 10_000)
    try:
        assert read(p + "ROI1:MaxByteRate_RBV") == 10_000
        acquire_many(p, 10)
        dropped = read(p + "ROI1:DroppedOutputArrays_RBV")
        assert 8 <= dropped <= 9, dropped
        assert wait_until(lambda: read(p + "cam1:FramesLost_RBV") == dropped)
        assert read(p + "image1:UniqueId_RBV") != before  # what went on is the image
        put(p + "ROI1:MaxByteRate", 0)  # no limit
        put(p + "ROI1:DroppedOutputArrays", 0)
        acquire_many(p, 10)
        assert read(p + "ROI1:DroppedOutputArrays_RBV") == 0
        assert read(p + "cam1:FramesLost_RBV") == 0
    finally:
        put(p + "ROI1:MaxByteRate", 0)


def test_num_queued_arrays_counts_what_wait_for_plugins_waits_for(p):
    """The driver's NumQueuedArrays is driver-wide: frames held for the plugins count, and it
    is 0 when Acquire's put-callback (WaitForPlugins) completes."""
    put(p + "cam1:DeferredProcessing", "Until released")
    try:
        put(p + "cam1:ImageMode", "Multiple")
        put(p + "cam1:NumImages", 4)
        put(p + "cam1:Acquire", 1, wait=False)
        assert wait_until(lambda: read(p + "cam1:DeferredFrames_RBV") == 4)
        assert wait_until(lambda: read(p + "cam1:NumQueuedArrays") == 4)
        assert read(p + "cam1:AcquireBusy") == 1  # WaitForPlugins: still waiting for them
        put(p + "cam1:ReleaseFrames", 1)
        assert wait_until(lambda: read(p + "cam1:AcquireBusy") == 0)
        assert wait_until(lambda: read(p + "cam1:NumQueuedArrays") == 0)
        assert read(p + "ROI1:NumQueuedArrays") == 0
    finally:
        put(p + "cam1:DeferredProcessing", "Off")


def test_pre_alloc_buffers_fills_the_free_list_with_buffers_of_the_array_size(p):
    """As asynNDArrayDriver: NumPreAllocBuffers buffers of the latest array's size are in the
    pool's free list afterwards (the ones already there are used first)."""
    acquire(p)
    size = read(p + "ROI1:ArraySize_RBV")
    assert size == NX * NY * 2
    put(p + "ROI1:EmptyFreeList", 1)
    assert wait_until(lambda: read(p + "ROI1:PoolFreeBuffers") == 0)
    put(p + "ROI1:NumPreAllocBuffers", 7)
    put(p + "ROI1:PreAllocBuffers", 1)  # a busy record: completes once they are made
    assert read(p + "ROI1:PreAllocBuffers") == 0
    message = get(p + "ROI1:StatusMessage_RBV", as_string=True)
    assert message == f"PreAllocBuffers: 7 buffers of {size} bytes in the free list", message
    assert wait_until(lambda: read(p + "ROI1:PoolFreeBuffers") == 7)
    assert read(p + "ROI1:PoolUsedMem") >= 7 * size / 2**20 * 0.99


@pytest.mark.parametrize("region", [{}, dict(MinX=6, SizeX=40, BinX=2, MinY=3, SizeY=36, BinY=3),
                                    dict(BinX=2, ReverseX=1, ReverseY=1)])
def test_a_module_placeholder_carries_the_attributes_its_module_frames_carry(region):
    """ndflow.cluster sends a silent module rank's frames as placeholders tagged by
    `module_attributes`: the same ModuleIndex and offsets as that module's real frames."""
    frames = {}
    for module in range(4):
        sim = SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(
            max_size_x=NX, max_size_y=NY, modules=(2, 2)))
        sim.module = module
        sim.values.update(AcquireTime=0.001, Reset=1, **region)
        params = dict(sim.values)
        sim.prepare(params)
        frame = sim.produce_frame(FrameContext(Acquisition.start(params), 0, threading.Event()))
        control = SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(
            max_size_x=NX, max_size_y=NY, modules=(2, 2)))  # the control rank's: no module
        control.values.update(**region)
        placeholder = control.module_attributes(module)
        assert {k: a.value for k, a in placeholder.items()} == \
            {k: frame.attributes[k].value for k in placeholder}
        assert set(placeholder) == {"ModuleIndex", "ModuleOffsetX", "ModuleOffsetY"}
        frames[module] = (int(placeholder["ModuleOffsetX"].value),
                          int(placeholder["ModuleOffsetY"].value))
    assert len(set(frames.values())) == 4
    plain = SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(max_size_x=NX,
                                                                           max_size_y=NY))
    assert plain.module_attributes(0) == {}  # no modules: no placeholder attributes
