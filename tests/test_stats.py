"""NDPluginStats: every result PV against an independent numpy computation on the same frame,
the time series, and bad puts. The frame is read back through an `image1:` Float64 waveform,
so every sim data type arrives exactly."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from conftest import running_ioc
from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray
from ndflow.plugins.stats import Stats
from test_acquisition import get, image, put, wait_for

CONFIG = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 64, max_size_y: 48}}
plugins:
  - {type: stdarrays, port: IMAGE1, prefix: "image1:", input: SIM1,
     options: {data_type: Float64, nelm: 9216}}
  - {type: stats, port: STATS1, prefix: "Stats1:", input: SIM1,
     options: {xsize: 64, ysize: 48, hist_size: 32, nchans: 16}}
"""
STATS = ("MinValue", "MinX", "MinY", "MaxValue", "MaxX", "MaxY", "MeanValue", "Total", "Net")
CENTROID = ("CentroidTotal", "CentroidX", "CentroidY", "SigmaX", "SigmaY", "SigmaXY", "SkewX",
            "SkewY", "KurtosisX", "KurtosisY", "Eccentricity", "Orientation")
SETTINGS = {"BgdWidth": 2, "CursorX": 10, "CursorY": 7, "HistSize": 20, "HistMin": 5.0,
            "HistMax": 150.0}


# --- an independent reference ---------------------------------------------------------------------


def reference(img: np.ndarray, threshold: float, colour: bool = False) -> dict:
    """What NDPluginStats documents, computed directly (central moments, explicit borders)."""
    v = img.astype(np.float64)
    n, w = v.size, SETTINGS["BgdWidth"]
    out: dict = {}
    for label, index in (("Min", np.argmin(v)), ("Max", np.argmax(v))):
        pos = np.unravel_index(index, v.shape)
        out[label + "Value"] = v.flat[index]
        out[label + "X"], out[label + "Y"] = (pos[1], pos[0]) if v.ndim > 1 else (pos[0], 0)
    out.update(MeanValue=v.mean(), Sigma=v.std(), Total=v.sum())
    if v.ndim == 3:  # the colour axis has borders too, as ADCore's N-D loop gives it
        slabs = [v[:w], v[-w:], v[:, :w], v[:, -w:], v[:, :, :w], v[:, :, -w:]]
    else:
        slabs = [v[:w], v[-w:], v[:, :w], v[:, -w:]]
    background = sum(s.sum() for s in slabs) / sum(s.size for s in slabs)
    out["Net"] = v.sum() - background * n
    hist_size, low, high = SETTINGS["HistSize"], SETTINGS["HistMin"], SETTINGS["HistMax"]
    flat = v.reshape(-1)
    inside = (flat >= low) & (flat <= high)
    bins = np.floor((flat[inside] - low) * (hist_size - 1) / (high - low) + 0.5).astype(int)
    counts = np.bincount(bins, minlength=hist_size).astype(float)
    out.update(Histogram=counts, HistBelow=int((flat < low).sum()),
               HistAbove=int((flat > high).sum()),
               HistEntropy=-sum(c * math.log(c) for c in counts if c > 0) / n)
    out["HistogramX"] = low + np.arange(hist_size) * (high - low) / hist_size
    if colour:
        return out
    ny, nx = v.shape
    y, x = np.mgrid[:ny, :nx]
    t = np.where(v >= threshold, v, 0.0)
    m = t.sum()
    cx, cy = (t * x).sum() / m, (t * y).sum() / m
    dx, dy = x - cx, y - cy
    vx, vy, vxy = (t * dx ** 2).sum() / m, (t * dy ** 2).sum() / m, (t * dx * dy).sum() / m
    out.update(CentroidTotal=m, CentroidX=cx, CentroidY=cy, SigmaX=vx ** 0.5, SigmaY=vy ** 0.5,
               SigmaXY=vxy / (vx * vy) ** 0.5,
               SkewX=(t * dx ** 3).sum() / m / vx ** 1.5, SkewY=(t * dy ** 3).sum() / m / vy ** 1.5,
               KurtosisX=(t * dx ** 4).sum() / m / vx ** 2 - 3,
               KurtosisY=(t * dy ** 4).sum() / m / vy ** 2 - 3,
               Eccentricity=((vx - vy) ** 2 - 4 * vxy ** 2) / (vx + vy) ** 2,
               Orientation=math.degrees(0.5 * math.atan2(2 * vxy, vx - vy)))
    row, col = int(cy + 0.5), int(cx + 0.5)
    kx, ky = min(SETTINGS["CursorX"], nx - 1), min(SETTINGS["CursorY"], ny - 1)
    out.update(ProfileAverageX=v.mean(axis=0), ProfileAverageY=v.mean(axis=1),
               ProfileThresholdX=t.mean(axis=0), ProfileThresholdY=t.mean(axis=1),
               ProfileCentroidX=v[row], ProfileCentroidY=v[:, col],
               ProfileCursorX=v[ky], ProfileCursorY=v[:, kx], CursorVal=v[ky, kx])
    return out


def check(actual: float, expected: float, name: str) -> None:
    """close(), except that Orientation is an axis: -90 and +90 degrees are the same one (a
    symmetric spot has SigmaXY ~ 0, whose sign rounding decides)."""
    if name == "Orientation":
        actual = expected + (actual - expected + 90.0) % 180.0 - 90.0
    close(actual, expected, name)


def close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-9, err_msg=what)


# --- the IOC ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("stats")) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    """Prefix of an idle 64x48 camera in Single mode whose acquisitions wait for the plugins."""
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("ColorMode", "Mono"),
                        ("DataType", "UInt8"), ("SimMode", "LinearRamp"), ("GainX", 1.0),
                        ("GainY", 2.0), ("Gain", 1.0), ("AcquireTime", 0.001), ("Noise", 0.0),
                        ("Offset", 0.0), ("AcquirePeriod", 0.0), ("Reset", 1)]:
        put(p + "cam1:" + name, value)
    for name, value in [("ComputeStatistics", "Yes"), ("ComputeCentroid", "Yes"),
                        ("ComputeProfiles", "Yes"), ("ComputeHistogram", "Yes"), *SETTINGS.items()]:
        put(p + "Stats1:" + name, value)
    return p


def acquire(p: str) -> None:
    put(p + "cam1:Acquire", 1)  # completes when the plugins are done


def wave(pv: str, count: int) -> np.ndarray:
    return np.asarray(get(pv, count=count), dtype=float)


CASES = {
    "ramp-uint8": {"DataType": "UInt8"},
    "ramp-int8-wraps-negative": {"DataType": "Int8"},
    "peaks-uint16": {"DataType": "UInt16", "SimMode": "Peaks", "PeakStartX": 20, "PeakStartY": 15,
                     "PeakWidthX": 6, "PeakWidthY": 9, "Gain": 3000.0},
    "peaks-float32-noise": {"DataType": "Float32", "SimMode": "Peaks", "PeakStartX": 40,
                            "PeakStartY": 30, "PeakWidthX": 5, "PeakWidthY": 4, "Gain": 120.5,
                            "Noise": 4.0, "Offset": 1.0},
    "ramp-float32": {"DataType": "Float32", "Gain": 0.37},
}


@pytest.mark.parametrize("case", CASES)
def test_every_result_matches_numpy(p, case):
    for name, value in CASES[case].items():
        put(p + "cam1:" + name, value)
    threshold = 30.0
    put(p + "Stats1:CentroidThreshold", threshold)
    acquire(p)
    img = image(p)
    assert img.shape == (48, 64)
    ref = reference(img, threshold)
    s = p + "Stats1:"
    for name in STATS + CENTROID:
        check(get(s + name + "_RBV"), ref[name], name)
    close(get(s + "Sigma_RBV"), ref["Sigma"], "Sigma")
    assert get(s + "ProfileSizeX_RBV") == 64 and get(s + "ProfileSizeY_RBV") == 48
    assert get(s + "MaxSizeX") == 64 and get(s + "MaxSizeY") == 48
    for name in ("AverageX", "ThresholdX", "CentroidX", "CursorX"):
        close(wave(s + f"Profile{name}_RBV", 64), ref["Profile" + name], name)
    for name in ("AverageY", "ThresholdY", "CentroidY", "CursorY"):
        close(wave(s + f"Profile{name}_RBV", 48), ref["Profile" + name], name)
    close(get(s + "CursorVal"), ref["CursorVal"], "CursorVal")
    close(wave(s + "Histogram_RBV", 20), ref["Histogram"], "Histogram")
    close(wave(s + "HistogramX_RBV", 20), ref["HistogramX"], "HistogramX")
    assert get(s + "HistBelow_RBV") == ref["HistBelow"]
    assert get(s + "HistAbove_RBV") == ref["HistAbove"]
    close(get(s + "HistEntropy_RBV"), ref["HistEntropy"], "HistEntropy")
    assert ref["HistBelow"] + ref["HistAbove"] < img.size  # the histogram saw real data


def test_rgb1_statistics_over_all_elements(p):
    put(p + "cam1:ColorMode", "RGB1")
    put(p + "cam1:GainRed", 1.0)
    put(p + "cam1:GainGreen", 2.0)
    put(p + "cam1:GainBlue", 3.0)
    acquire(p)
    img = image(p)
    assert img.shape == (48, 64, 3)
    ref = reference(img, 1.0, colour=True)
    s = p + "Stats1:"
    for name in ("MinValue", "MaxValue", "MeanValue", "Total", "Net"):
        close(get(s + name + "_RBV"), ref[name], name)
    close(get(s + "Sigma_RBV"), ref["Sigma"], "Sigma")
    # pixel coordinates of the extremes (shape (y, x, colour))
    for label in ("Min", "Max"):
        y, x, _ = np.unravel_index(np.argmin(img) if label == "Min" else np.argmax(img), img.shape)
        assert (get(s + label + "X_RBV"), get(s + label + "Y_RBV")) == (x, y)
    close(wave(s + "Histogram_RBV", 20), ref["Histogram"], "Histogram")
    assert get(s + "HistBelow_RBV") == ref["HistBelow"]
    # ADCore's centroid refuses ndims > 2: results are zero
    assert get(s + "CentroidX_RBV") == 0.0 and get(s + "CentroidTotal_RBV") == 0.0


def test_disabled_groups_keep_their_last_values(p):
    acquire(p)
    total = get(p + "Stats1:Total_RBV")
    put(p + "Stats1:ComputeStatistics", "No")
    put(p + "cam1:Gain", 2.0)  # a different frame
    acquire(p)
    assert get(p + "Stats1:Total_RBV") == total
    put(p + "Stats1:Reset", 1)  # the sseq chain zeroes every result
    for name in ("Total_RBV", "Sigma_RBV", "CentroidX_RBV", "Orientation_RBV",
                 "HistEntropy_RBV"):
        assert wait_for(lambda: get(p + "Stats1:" + name) == 0.0), name


def test_time_series_fixed_length_then_circular(p):
    ts = p + "Stats1:TS:"
    put(ts + "TSAcquireMode", "Fixed length")
    put(ts + "TSNumPoints", 4)
    # TSAcquire is a busy record: the put completes only when the series is full
    started = threading.Thread(target=put, args=(ts + "TSAcquire", 1), kwargs={"timeout": 30})
    started.start()
    assert wait_for(lambda: get(ts + "TSAcquiring", as_string=True) == "Acquiring")
    seen: dict[str, list] = {"Total": [], "MeanValue": [], "MaxValue": [], "CentroidX": []}
    stamps = []
    for _ in range(4):
        acquire(p)  # LinearRamp: each frame is the last plus one
        for name in seen:
            seen[name].append(get(p + f"Stats1:{name}_RBV"))
        stamps.append(get(p + "Stats1:TimeStamp_RBV"))
    started.join(10)
    assert not started.is_alive(), "TSAcquire put did not complete when the series filled"
    assert get(ts + "TSAcquiring", as_string=True) == "Done"
    assert get(ts + "TSCurrentPoint") == 4
    assert len(set(seen["Total"])) == 4
    for name, values in seen.items():
        close(wave(p + f"Stats1:TS{name}", 4), values, name)
    close(wave(p + "Stats1:TSTimestamp", 4), stamps, "TSTimestamp")
    close(wave(ts + "TSTimestamp", 4), stamps, "TS:TSTimestamp")
    close(wave(ts + "TSTimeAxis", 4), 0.1 * np.arange(4), "TSTimeAxis")
    acquire(p)  # a full Fixed-length series takes no more points
    assert get(ts + "TSCurrentPoint") == 4

    put(ts + "TSAcquireMode", "Circ. buffer")
    put(ts + "TSNumPoints", 3)
    put(ts + "TSAcquire", 1, wait=False)
    assert wait_for(lambda: get(ts + "TSAcquiring", as_string=True) == "Acquiring")
    totals = []
    for _ in range(5):
        acquire(p)
        totals.append(get(p + "Stats1:Total_RBV"))
    assert get(ts + "TSCurrentPoint") == 5 % 3
    put(ts + "TSRead", 1)
    assert wait_for(lambda: np.allclose(wave(p + "Stats1:TSTotal", 3), totals[2:]))  # oldest 1st
    close(wave(ts + "TSTimeAxis", 3), [-0.2, -0.1, 0.0], "circular TSTimeAxis")
    put(ts + "TSAcquire", 0)
    assert get(ts + "TSAcquiring", as_string=True) == "Done"


def test_bad_puts_are_clamped_or_explained(ioc, p):
    s = p + "Stats1:"
    for bad, used in ((0, 1), (-5, 1), (1000, 32)):
        put(s + "HistSize", bad)
        assert get(s + "HistSize_RBV") == used
        assert f"HistSize {bad}" in get(s + "StatusMessage_RBV", as_string=True)
    put(s + "HistMin", 50.0)
    put(s + "HistMax", 10.0)  # not above HistMin: ADCore bins with HistMin + 1
    assert "HistMax" in get(s + "StatusMessage_RBV", as_string=True)
    acquire(p)  # gives the plugin the image size
    put(s + "CursorX", 1000)
    assert "outside" in get(s + "StatusMessage_RBV", as_string=True)
    put(s + "CursorY", -4)
    acquire(p)
    img = image(p)
    close(wave(s + "ProfileCursorY_RBV", 48), img[:, 63], "cursor clamped to the last column")
    close(wave(s + "ProfileCursorX_RBV", 64), img[0], "negative cursor clamped to row 0")
    assert get(s + "CursorVal") == img[0, 63]
    hist = wave(s + "Histogram_RBV", 32)
    assert hist.sum() + get(s + "HistBelow_RBV") + get(s + "HistAbove_RBV") == img.size
    assert get(p + "cam1:ArrayCounter_RBV") >= 2 and get(s + "ArrayCounter_RBV") >= 2
    assert "Traceback" not in ioc.log()


# --- every data type, in-process (no IOC) -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"])
def test_each_data_type_in_process(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -100), min(info.max, 200)) if info else (-100, 200)
    img = rng.integers(low, high, (48, 64)).astype(dtype)
    plugin = Stats("STATS1", "Stats1:", PortGraph())
    plugin.values.update(ComputeCentroid=1, ComputeProfiles=1, ComputeHistogram=1, **SETTINGS)
    plugin.freeze()  # process() runs on the frozen parameters, as the plugin's owner takes them
    out = plugin.process(NDArray.from_numpy(img))
    assert out.data is img  # passed on without a copy
    ref = reference(img, plugin.values["CentroidThreshold"])
    for name in STATS + CENTROID:
        close(plugin.values[name], ref[name], name)
        close(out.attributes[name].value, ref[name], name)  # attached for downstream plugins
    close(out.attributes["SigmaValue"].value, ref["Sigma"], "Sigma")
    assert out.attributes["Total"].source == "TOTAL"  # ADCore's drvInfo, as a PARAM attribute
    close(plugin.values["Histogram_RBV"], ref["Histogram"], "Histogram")
    close(plugin.values["ProfileCentroidY_RBV"], ref["ProfileCentroidY"], "ProfileCentroidY")


def test_nan_is_skipped_like_adcore_and_1d_arrays_work():
    plugin = Stats("STATS1", "Stats1:", PortGraph())
    plugin.values.update(ComputeCentroid=1, CentroidThreshold=0.0)
    plugin.freeze()
    data = np.array([3.0, np.nan, -2.0, 7.0, 1.0])
    plugin.process(NDArray.from_numpy(data))
    v = plugin.values
    assert (v["MinValue"], v["MinX"], v["MaxValue"], v["MaxX"]) == (-2.0, 2.0, 7.0, 3.0)
    assert math.isnan(v["Total"])  # ADCore sums the NaN in
    close(v["CentroidX"], (3 * 0 + 7 * 3 + 1 * 4) / 11, "CentroidX skips NaN and -2")
    assert v["CentroidY"] == 0.0
