"""NDPluginProcess (Proc1:) end to end: a real IOC, a 64x48 sim, Proc1, and two Float64
stdarrays plugins, one on the sim (the input frame) and one after Proc1 (the output), compared
with numpy re-implementations of ADCore's documented equations."""

from __future__ import annotations

import epics
import numpy as np
import pytest

from conftest import running_ioc
from test_acquisition import get, put, wait_for

CONFIG = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 64, max_size_y: 48}}
plugins:
  - {type: stdarrays, port: IN1, prefix: "image1:", input: SIM1,
     options: {data_type: Float64, nelm: 20000}}
  - {type: process, port: PROC1, prefix: "Proc1:", input: SIM1}
  - {type: stdarrays, port: OUT1, prefix: "image2:", input: PROC1,
     options: {data_type: Float64, nelm: 20000}}
"""

COEFFICIENTS = ("OC1", "OC2", "OC3", "OC4", "FC1", "FC2", "FC3", "FC4", "RC1", "RC2")
# What NDProcess.template's <FilterType>Seq records write ("N": NumFilterRecip = 1/NumFilter).
PRESETS = {
    "RecursiveAve": (1, -1, 0, 1, 1, -1, 0, 1, 0, 1),
    "Average": (1, 0, "N", 0, 1, 0, "N", 0, 0, 0),
    "Sum": (1, 0, 1, 0, 1, 0, 1, 0, 0, 0),
    "Difference": (-1, 0, 1, 0, 0, 0, 1, 0, 0, 1),
    "RecursiveAveDiff": (-1, 0, 1, 0, 1, -1, 0, 1, 0, 1),
    "CopyToFilter": (0, 0, 1, 0, 0, 0, 1, 0, 0, 1),
}


def preset(kind: str, num_filter: int) -> dict[str, float]:
    return {name: 1 / num_filter if v == "N" else float(v)
            for name, v in zip(COEFFICIENTS, PRESETS[kind])}


PROC_RESET = [("EnableBackground", 0), ("EnableFlatField", 0), ("EnableOffsetScale", 0),
              ("EnableLowClip", 0), ("EnableHighClip", 0), ("EnableFilter", 0),
              ("AutoResetFilter", 0), ("FilterCallbacks", 0), ("DataTypeOut", "Automatic"),
              ("Offset", 0.0), ("Scale", 1.0), ("LowClipValue", 0.0), ("HighClipValue", 100.0),
              ("FilterType", "RecursiveAve"), ("NumFilter", 1)]
CAM_RESET = [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("DataType", "UInt8"),
             ("ColorMode", "Mono"), ("SimMode", "LinearRamp"), ("Noise", 0.0), ("Offset", 0.0),
             ("GainX", 1.0), ("GainY", 1.0), ("Gain", 1.0), ("AcquireTime", 0.001),
             ("AcquirePeriod", 0.0), ("SizeX", 64), ("SizeY", 48), ("Reset", 1)]


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("process")) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    """The IOC's prefix, with Proc1 doing nothing and the sim making a fresh UInt8 ramp."""
    prefix = ioc.prefix
    for name, value in PROC_RESET:
        put(prefix + "Proc1:" + name, value)
    for name, value in CAM_RESET:
        put(prefix + "cam1:" + name, value)
    return prefix


def image(p: str, plugin: str) -> np.ndarray:
    ndims = get(p + plugin + "NDimensions_RBV")
    shape = tuple(get(p + plugin + f"ArraySize{i}_RBV") for i in reversed(range(ndims)))
    return np.asarray(get(p + plugin + "ArrayData", count=int(np.prod(shape)))).reshape(shape)


def acquire(p: str) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (the sim's frame, Proc1's last output)."""
    put(p + "cam1:Acquire", 1)
    return image(p, "image1:"), image(p, "image2:")


def proc(p: str, **values) -> None:
    for name, value in values.items():
        put(p + "Proc1:" + name, value)


def test_pvs_defaults_and_presets(p):
    assert get(p + "Proc1:PluginType_RBV").startswith("NDPluginProcess")
    assert get(p + "Proc1:DataTypeOut_RBV", as_string=True) == "Automatic"
    assert get(p + "Proc1:ScaleFlatField_RBV") == 255.0
    assert get(p + "Proc1:HighClipThresh_RBV") == 100.0
    assert epics.PV(p + "Proc1:FilterCallbacks").get_ctrlvars(timeout=5)["enum_strs"] == \
        ("Every array", "Array N only")
    assert epics.caget(p + "Proc1:FilterType_RBV", timeout=1) is None  # setpoint only
    # the RecursiveAve preset is in force after boot, as in ADCore (RC1 record VAL is 1)
    assert get(p + "Proc1:RC1_RBV") == 0.0 and get(p + "Proc1:RC2_RBV") == 1.0
    enum_strs = epics.PV(p + "Proc1:FilterType").get_ctrlvars(timeout=5)["enum_strs"]
    assert enum_strs == tuple(PRESETS)
    for kind in PRESETS:
        put(p + "Proc1:FilterType", kind)
        for name, expected in preset(kind, 1).items():
            assert get(p + f"Proc1:{name}_RBV") == expected, (kind, name)
            assert get(p + f"Proc1:{name}", use_monitor=False) == expected, (kind, name)


def test_no_processing_passes_the_frame_and_bad_num_filter_is_refused(ioc, p):
    frame, out = acquire(p)
    np.testing.assert_array_equal(out, frame)
    assert get(p + "image2:DataType_RBV", as_string=True) == "UInt8"

    put(p + "Proc1:FilterType", "Average")
    put(p + "Proc1:NumFilter", 0)
    assert get(p + "Proc1:NumFilter_RBV") == 1
    assert "NumFilter" in get(p + "Proc1:StatusMessage_RBV", as_string=True)
    assert get(p + "Proc1:NumFilterRecip") == 1.0
    put(p + "Proc1:NumFilter", 4)  # rewrites the current type's preset (NumFilterRecip FLNK)
    assert get(p + "Proc1:NumFilterRecip") == 0.25
    assert get(p + "Proc1:OC3_RBV") == 0.25 and get(p + "Proc1:FC3_RBV") == 0.25
    acquire(p)  # still serving
    assert "Traceback" not in ioc.log()


def test_background_subtraction_and_validity(p):
    first, _ = acquire(p)
    put(p + "Proc1:SaveBackground", 1)
    assert get(p + "Proc1:ValidBackground_RBV", as_string=True) == "Valid"
    assert get(p + "Proc1:SaveBackground_RBV") == 0
    proc(p, EnableBackground=1, DataTypeOut="Float64")
    put(p + "cam1:GainX", 3.0)  # a new ramp, so the difference is not flat
    second, out = acquire(p)
    assert not np.all(second - first == (second - first).flat[0])
    np.testing.assert_array_equal(out, second - first)

    put(p + "cam1:SizeX", 32)  # another size: the background no longer applies
    third, out = acquire(p)
    assert get(p + "Proc1:ValidBackground_RBV", as_string=True) == "Invalid"
    np.testing.assert_array_equal(out, third)


def test_flat_field_leaves_zero_flat_pixels_alone(p):
    flat, _ = acquire(p)
    assert flat[0, 0] == 0  # the ramp starts at 0: a zero in the flat field
    put(p + "Proc1:SaveFlatField", 1)
    assert get(p + "Proc1:ValidFlatField_RBV", as_string=True) == "Valid"
    proc(p, EnableFlatField=1, ScaleFlatField=100.0, DataTypeOut="Float64")
    frame, out = acquire(p)
    with np.errstate(divide="ignore"):
        expected = np.where(flat != 0, frame * (100.0 / flat), frame)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert np.isfinite(out).all()
    proc(p, ScaleFlatField=255.0)


def test_offset_scale_and_clipping(p):
    proc(p, EnableOffsetScale=1, Offset=-10.0, Scale=2.5, EnableHighClip=1, HighClipThresh=150.0,
         HighClipValue=200.0, EnableLowClip=1, LowClipThresh=5.0, LowClipValue=1.0,
         DataTypeOut="Float64")
    frame, out = acquire(p)
    expected = (frame - 10.0) * 2.5
    expected[expected > 150.0] = 200.0
    expected[expected < 5.0] = 1.0
    assert {1.0, 200.0} <= set(np.unique(out))
    np.testing.assert_array_equal(out, expected)
    proc(p, HighClipThresh=100.0, LowClipThresh=0.0)


def test_data_type_out_c_casts_negative_floats(p):
    proc(p, EnableOffsetScale=1, Offset=-20.0, Scale=1.5, DataTypeOut="UInt8")
    frame, out = acquire(p)
    assert get(p + "image2:DataType_RBV", as_string=True) == "UInt8"
    values = (frame - 20.0) * 1.5
    expected = np.trunc(values).astype(np.int64).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 226  # (0 - 20) * 1.5 = -30 -> (epicsUInt8) -30 = 226
    proc(p, DataTypeOut="Int16")
    frame, out = acquire(p)
    assert get(p + "image2:DataType_RBV", as_string=True) == "Int16"
    np.testing.assert_array_equal(out, np.trunc((frame - 20.0) * 1.5))


def test_rgb_and_float_input(p):
    put(p + "cam1:ColorMode", "RGB1")
    proc(p, EnableOffsetScale=1, Offset=3.0, Scale=2.0, DataTypeOut="UInt16")
    frame, out = acquire(p)
    assert frame.shape == (48, 64, 3) and out.shape == frame.shape
    np.testing.assert_array_equal(out, (frame + 3.0) * 2.0)
    put(p + "cam1:ColorMode", "Mono")
    put(p + "cam1:DataType", "Float32")
    put(p + "cam1:Gain", 0.25)
    proc(p, DataTypeOut="Automatic", Offset=-0.1)
    frame, out = acquire(p)
    assert get(p + "image2:DataType_RBV", as_string=True) == "Float32"
    np.testing.assert_array_equal(out, ((frame - 0.1) * 2.0).astype(np.float32))
    put(p + "cam1:Offset", -3.0)  # negative floats, converted with nothing else enabled
    proc(p, EnableOffsetScale=0, DataTypeOut="UInt8")
    frame, out = acquire(p)
    assert frame.min() < -2.0
    np.testing.assert_array_equal(out, np.trunc(frame).astype(np.int64).astype(np.uint8))


def test_auto_offset_scale_is_a_busy_record(p):
    proc(p, DataTypeOut="UInt8")
    busy = epics.PV(p + "Proc1:AutoOffsetScale")
    assert busy.wait_for_connection(5)
    put(p + "cam1:GainX", 3.0)
    busy.put(1, use_complete=True)
    assert wait_for(lambda: get(p + "Proc1:AutoOffsetScale", use_monitor=False) == 1)
    assert not busy.put_complete
    first, out = acquire(p)
    np.testing.assert_array_equal(out, first)  # the array that measures is not scaled
    assert wait_for(lambda: busy.put_complete)
    assert get(p + "Proc1:AutoOffsetScale", use_monitor=False) == 0
    low, high = first.min(), first.max()
    assert get(p + "Proc1:Offset_RBV") == -low
    assert get(p + "Proc1:Scale_RBV") == pytest.approx(255.0 / (high - low))
    assert get(p + "Proc1:HighClipThresh_RBV") == 255.0
    for name in ("EnableOffsetScale", "EnableLowClip", "EnableHighClip"):
        assert get(p + f"Proc1:{name}_RBV", as_string=True) == "Enable"
    second, out = acquire(p)  # the ramp moved up by one: the top values exceed 255
    scaled = (second - low) * (255.0 / (high - low))
    expected = np.where(scaled > 255.0, 100.0, scaled)  # HighClipValue stays 100
    expected = np.where(expected < 0.0, 0.0, expected)
    np.testing.assert_array_equal(out, np.trunc(expected))
    assert (out == 100).sum() >= (second == second.max()).sum()


def reference_filter(frames, coefficients, num_filter, auto_reset=False):
    """The documented equations, with NumFiltered N, reset on the first frame."""
    c = coefficients
    f, n, outputs = None, 0, []
    for i, frame in enumerate(frames):
        if f is None or (auto_reset and n >= num_filter):
            f = c["RC1"] * (frame if f is None else f) + c["RC2"] * frame
            n = 0
        n = min(n + 1, num_filter)
        o = (c["OC1"] + c["OC2"] / n) * f + (c["OC3"] + c["OC4"] / n) * frame
        f = (c["FC1"] + c["FC2"] / n) * f + (c["FC3"] + c["FC4"] / n) * frame
        outputs.append((o, n))
    return outputs


def noisy(p):
    """Frames that differ randomly from one another."""
    put(p + "cam1:SimMode", "Offset&Noise")
    put(p + "cam1:Noise", 100.0)
    put(p + "cam1:Offset", 10.0)


@pytest.mark.parametrize("kind", ["RecursiveAve", "Sum"])
def test_recursive_filter_every_array(p, kind):
    noisy(p)
    proc(p, FilterType=kind, NumFilter=3, DataTypeOut="Float64", EnableFilter=1, ResetFilter=1)
    frames, outs, counts = [], [], []
    for _ in range(5):
        frame, out = acquire(p)
        frames.append(frame)
        outs.append(out)
        counts.append(get(p + "Proc1:NumFiltered_RBV"))
    expected = reference_filter(frames, preset(kind, 3), 3)
    assert counts == [n for _, n in expected] == [1, 2, 3, 3, 3]
    for out, (o, _) in zip(outs, expected):
        np.testing.assert_allclose(out, o, rtol=1e-12)
    if kind == "Sum":
        np.testing.assert_array_equal(outs[-1], np.sum(frames, axis=0))
    assert get(p + "Proc1:ResetFilter_RBV") == 0


def test_average_array_n_only_with_auto_reset(p):
    noisy(p)
    proc(p, FilterType="Average", NumFilter=3, AutoResetFilter=1, FilterCallbacks="Array N only",
         DataTypeOut="Float64", EnableFilter=1, ResetFilter=1)
    assert get(p + "Proc1:OC3_RBV") == pytest.approx(1 / 3)
    frames, emitted = [], []
    for _ in range(6):
        before = get(p + "image2:ArrayCounter_RBV")
        frame, out = acquire(p)
        frames.append(frame)
        if get(p + "image2:ArrayCounter_RBV") != before:
            emitted.append(out)
    assert len(emitted) == 2, "only every 3rd array is output"
    np.testing.assert_allclose(emitted[0], np.mean(frames[:3], axis=0), rtol=1e-12)
    np.testing.assert_allclose(emitted[1], np.mean(frames[3:], axis=0), rtol=1e-12)
    expected = reference_filter(frames, preset("Average", 3), 3, auto_reset=True)
    np.testing.assert_allclose(emitted[1], expected[5][0], rtol=1e-12)

