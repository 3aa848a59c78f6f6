"""NDPluginFFT (`FFT1:`, with `image2:` reading it) and NDPluginROIStat (`ROIStat1:` +
`ROIStat1:1:`..`8:`) through a real IOC: every result a client reads against an independent numpy
computation on the same frame (read back through an `image1:` Float64 waveform), the averaging,
the time series, resets, bad puts, ophyd 1.x's plugin classes, and the PVs of ADCore's screens."""

from __future__ import annotations

import math
import threading

import numpy as np
import epics
import pytest

from conftest import running_ioc
from test_acquisition import get, image, put, wait_for

NX, NY = 64, 24  # padded to 64 x 32, not square: a 2-D FFT must not mix up its axes
FX, FY = 32, 16  # the kept quarter: the output array's size
CONFIG = f"""
transports: [ca]
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
plugins:
  - {{type: stdarrays, port: Image1, prefix: "image1:", input: SIM1,
     options: {{data_type: Float64, nelm: {NX * NY}}}}}
  - {{type: "ndflow.plugins.fft:FFT", port: FFT1, prefix: "FFT1:", input: SIM1,
     options: {{nchans: {NX}}}}}
  - {{type: stdarrays, port: Image2, prefix: "image2:", input: FFT1,
     options: {{data_type: Float64, nelm: 4096}}}}
  - {{type: roi, port: ROI1, prefix: "ROI1:", input: SIM1}}
  - {{type: "ndflow.plugins.fft:FFT", port: FFT2, prefix: "FFT2:", input: ROI1,
     options: {{nchans: {NX}}}}}
  - {{type: "ndflow.plugins.roistat:ROIStat", port: ROISTAT1, prefix: "ROIStat1:", input: SIM1,
     options: {{nchans: 16}}}}
"""
RESULTS = ("MinValue", "MaxValue", "MeanValue", "Total", "Net")


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("fft_roistat")) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    """An idle camera making noisy Float32 peaks (every frame differs), acquisitions that wait
    for the plugins, FFT1 plain (no averaging, DC kept)."""
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("ColorMode", "Mono"),
                        ("DataType", "Float32"), ("SimMode", "Peaks"), ("PeakStartX", 10),
                        ("PeakStartY", 12), ("PeakWidthX", 4), ("PeakWidthY", 6),
                        ("PeakStepX", 20), ("PeakStepY", 18), ("PeakNumX", 3), ("PeakNumY", 2),
                        ("Gain", 100.0), ("Noise", 5.0), ("Offset", 2.0), ("AcquireTime", 0.001),
                        ("AcquirePeriod", 0.0), ("Reset", 1)]:
        put(p + "cam1:" + name, value)
    for name, value in [("FFTNumAverage", 1), ("FFTSuppressDC", "Disable"),
                        ("FFTTimePerPoint", 0.002), ("FFTResetAverage", 1)]:
        put(p + "FFT1:" + name, value)
    return p


def acquire(p: str) -> np.ndarray:
    """One frame, processed by every plugin (WaitForPlugins), as image1 shows it."""
    put(p + "cam1:Acquire", 1)
    return image(p).astype(np.float64)


def wave(pv: str, count: int) -> np.ndarray:
    return np.asarray(get(pv, count=count), dtype=np.float64)


def close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-9, err_msg=what)


# --- an independent FFT: numpy's complex FFT of the zero-padded frame ----------------------------


def padded(values: np.ndarray) -> np.ndarray:
    shape = [1 << math.ceil(math.log2(n)) for n in values.shape]
    out = np.zeros(shape)
    out[tuple(slice(0, n) for n in values.shape)] = values
    return out


def reference_fft(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ADCore's transform: the complex conjugate of numpy's, cropped to the kept quarter;
    the padded input)."""
    series = padded(values)
    full = np.conj(np.fft.fftn(series))
    keep = tuple(slice(0, max(n // 2, 1)) for n in series.shape)
    return full[keep], series


# --- FFT ------------------------------------------------------------------------------------------


def test_fft_2d_waveforms_and_output_array_equal_numpy(p):
    img = acquire(p)
    assert img.shape == (NY, NX)
    spectrum, series = reference_fft(img)
    n = series.size
    f = p + "FFT1:"
    close(wave(f + "FFTTimeSeries", NX), series[0], "FFTTimeSeries")
    close(wave(f + "FFTReal", NX // 2), spectrum[0].real, "FFTReal")
    close(wave(f + "FFTImaginary", NX // 2), spectrum[0].imag, "FFTImaginary")
    close(wave(f + "FFTAbsValue", NX // 2), np.abs(spectrum[0]) / n, "FFTAbsValue")
    close(wave(f + "FFTFreqAxis", NX // 2), np.fft.fftfreq(NX, 0.002)[: NX // 2], "FFTFreqAxis")
    close(wave(f + "FFTTimeAxis", NX), np.arange(NX) * 0.002, "FFTTimeAxis")
    assert get(f + "FFTNumAveraged") == 1
    assert get(f + "PluginType_RBV") == "NDPluginFFT"
    # the output array, as image2 (NDStdArrays Float64, reading FFT1) shows it: FX x FY
    assert wait_for(lambda: get(p + "image2:UniqueId_RBV") == get(p + "image1:UniqueId_RBV"))
    sizes = [get(p + f"image2:ArraySize{i}_RBV") for i in range(2)]
    assert sizes == [FX, FY] and get(p + "image2:DataType_RBV", as_string=True) == "Float64"
    data = wave(p + "image2:ArrayData", sizes[0] * sizes[1]).reshape(sizes[1], sizes[0])
    close(data, np.abs(spectrum) / n, "image2:ArrayData")


def test_fft_average_and_suppress_dc(p):
    f = p + "FFT1:"
    put(f + "FFTNumAverage", 3)
    put(f + "FFTSuppressDC", "Enable")
    put(f + "FFTResetAverage", 1)
    assert get(f + "FFTResetAverage", as_string=True) == "Reset"
    frames = []
    for k in range(1, 6):
        img = acquire(p)
        spectrum, series = reference_fft(img)
        magnitude = np.abs(spectrum) / series.size
        magnitude[0, 0] = 0.0
        frames.append(magnitude)
        # ADCore's weights: the mean of the first 3, then (2/3) * average + (1/3) * new
        expected = np.mean(frames, axis=0) if k <= 3 else expected * (2 / 3) + magnitude / 3
        assert get(f + "FFTNumAveraged") == min(k, 3)
        close(wave(f + "FFTAbsValue", NX // 2), expected[0], f"FFTAbsValue frame {k}")
        real = wave(f + "FFTReal", NX // 2)
        assert real[0] == 0.0 and wave(f + "FFTImaginary", 2)[0] == 0.0
        close(real[1:], spectrum[0, 1:].real, "FFTReal (not averaged)")
        assert wait_for(lambda: get(p + "image2:UniqueId_RBV") == get(p + "image1:UniqueId_RBV"))
        out = wave(p + "image2:ArrayData", FX * FY).reshape(FY, FX)
        close(out, expected, f"image2 frame {k}")
    assert get(f + "FFTResetAverage", as_string=True) == "Done"
    put(f + "FFTResetAverage", 1)
    img = acquire(p)
    assert get(f + "FFTNumAveraged") == 1
    spectrum, series = reference_fft(img)
    close(wave(f + "FFTAbsValue", NX // 2)[1:], np.abs(spectrum[0, 1:]) / series.size,
          "after ResetAverage")


def test_fft_1d_of_a_collapsed_row(p):
    r = p + "ROI1:"
    for name, value in [("MinX", 3), ("SizeX", 40), ("MinY", 12), ("SizeY", 1), ("BinX", 1),
                        ("BinY", 1), ("CollapseDims", "Enable"), ("EnableCallbacks", "Enable")]:
        put(r + name, value)
    put(p + "FFT2:FFTTimePerPoint", 1e-3)
    img = acquire(p)
    row = img[12, 3:43]
    spectrum, series = reference_fft(row)
    assert series.shape == (64,) and spectrum.shape == (32,)
    f = p + "FFT2:"
    assert get(f + "ArraySize0_RBV") == 40 and get(f + "NDimensions_RBV") == 1
    close(wave(f + "FFTTimeSeries", 64), series, "1-D FFTTimeSeries")
    close(wave(f + "FFTReal", 32), spectrum.real, "1-D FFTReal")
    close(wave(f + "FFTImaginary", 32), spectrum.imag, "1-D FFTImaginary")
    close(wave(f + "FFTAbsValue", 32), np.abs(spectrum) / 64, "1-D FFTAbsValue")
    close(wave(f + "FFTFreqAxis", 32), np.arange(32) / (64 * 1e-3), "1-D FFTFreqAxis")


def test_fft_bad_puts_are_refused_or_clamped_and_the_plugin_keeps_working(p):
    f = p + "FFT1:"
    put(f + "FFTTimePerPoint", 0.25)
    for bad in (0.0, -1.0, 5e-324):  # 5e-324 s would make the frequency axis infinite
        epics_put_may_fail(f + "FFTTimePerPoint", bad)
        assert get(f + "FFTTimePerPoint_RBV") == 0.25
        assert "above 0" in get(f + "StatusMessage_RBV", as_string=True)
    put(f + "FFTTimePerPointLink", 0.004)  # ADCore's link writes FFTTimePerPoint
    assert get(f + "FFTTimePerPoint_RBV") == 0.004 and get(f + "FFTTimePerPoint") == 0.004
    put(f + "FFTNumAverage", -7)
    assert get(f + "FFTNumAverage_RBV") == 1
    counter = get(f + "ArrayCounter_RBV")
    acquire(p)
    assert wait_for(lambda: get(f + "ArrayCounter_RBV") == counter + 1)
    close(wave(f + "FFTFreqAxis", 4), np.arange(4) / (NX * 0.004), "axis after the link put")


def epics_put_may_fail(pv: str, value) -> None:
    """A put the IOC refuses: pyepics reports the CA error; the test checks the value."""
    epics.caput(pv, value, wait=True, timeout=5)


# --- ROIStat --------------------------------------------------------------------------------------

ROIS = {  # N: (MinX, SizeX, MinY, SizeY, BgdWidth, what it tests)
    1: (5, 20, 4, 10, 2, "inside"),
    2: (-10, 1_000_000, 40, 100, 0, "clipped to the frame"),
    3: (60, 10, 0, NY, 3, "border wider than half the region"),
    4: (NX + 50, 5, NY + 50, 5, 1, "outside: the last pixel"),
}


def clipped(offset: int, size: int, n: int) -> tuple[int, int]:
    offset = min(max(offset, 0), n - 1)
    return offset, min(max(size, 1), n - offset)


def roi_reference(img: np.ndarray, ox: int, sx: int, oy: int, sy: int, bgd: int) -> dict:
    """The statistics of a region, its background border taken pixel by pixel."""
    region = img[oy: oy + sy, ox: ox + sx]
    total = region.sum()
    border: list[float] = []
    if bgd:
        bx, by = min(bgd, sx), min(bgd, sy)
        rows = list(range(by)) + list(range(sy - by, sy))
        for y in rows:
            border += list(region[y])
        for y in range(by, sy - by):
            border += list(region[y, :bx]) + list(region[y, sx - bx:])
    net = total - (np.mean(border) * region.size if border else 0.0)
    return {"MinValue": region.min(), "MaxValue": region.max(), "MeanValue": region.mean(),
            "Total": total, "Net": net}


@pytest.fixture
def rois(p):
    s = p + "ROIStat1:"
    put(s + "ResetAll", 1)
    for n in range(1, 9):
        put(s + f"{n}:Use", "No")
    for n, (mx, sx, my, sy, bgd, what) in ROIS.items():
        for name, value in [("MinX", mx), ("SizeX", sx), ("MinY", my), ("SizeY", sy),
                            ("BgdWidth", bgd), ("Name", what[:39]), ("Use", "Yes")]:
            put(s + f"{n}:{name}", value)
    return s


def test_roistat_values_equal_numpy_on_the_same_frame(p, rois):
    s = rois
    img = acquire(p)
    for n, (mx, sx, my, sy, bgd, what) in ROIS.items():
        ox, cx = clipped(mx, sx, NX)
        oy, cy = clipped(my, sy, NY)
        expected = roi_reference(img, ox, cx, oy, cy, bgd)
        for name in RESULTS:
            assert get(s + f"{n}:{name}_RBV") == pytest.approx(expected[name], rel=1e-9,
                                                               abs=1e-6), f"ROI {n} ({what}) {name}"
        assert [get(s + f"{n}:{k}_RBV") for k in ("MinX", "SizeX", "MinY", "SizeY")] == \
            [ox, cx, oy, cy], f"ROI {n} ({what}) clipped region"
        assert [get(s + f"{n}:{k}") for k in ("MinX", "SizeX", "MinY", "SizeY")] == \
            [mx, sx, my, sy], f"ROI {n}: the requests are kept"
        assert (get(s + f"{n}:MaxSizeX_RBV"), get(s + f"{n}:MaxSizeY_RBV")) == (NX, NY)
        assert get(s + f"{n}:Name", as_string=True) == what[:39]
    for name in RESULTS:  # ROI 5 is not used: nothing computed
        assert get(s + f"5:{name}_RBV") == 0.0
    assert get(s + "PluginType_RBV") == "NDPluginROIStat"

    put(s + "2:Reset", 1)
    assert all(get(s + f"2:{name}_RBV") == 0.0 for name in RESULTS)
    assert get(s + "1:Total_RBV") == pytest.approx(img[4:14, 5:25].sum())
    put(s + "ResetAll", 1)
    assert all(get(s + f"{n}:{name}_RBV") == 0.0 for n in ROIS for name in RESULTS)


def test_roistat_time_series(p, rois):
    s = rois
    put(s + "TSNumPoints", 3)
    put(s + "TSControl", "Erase/Start")
    assert get(s + "TSAcquiring", as_string=True) == "Acquiring"
    totals, means = [], []
    for _ in range(3):
        img = acquire(p)
        totals.append(img[4:14, 5:25].sum())
        means.append(img[0:NY, 60:64].mean())
    assert wait_for(lambda: get(s + "TSAcquiring", as_string=True) == "Done")
    assert get(s + "TSCurrentPoint") == 3
    close(wave(s + "1:TSTotal", 3), totals, "1:TSTotal")
    close(wave(s + "3:TSMeanValue", 3), means, "3:TSMeanValue")
    stamps = wave(s + "1:TSTimestamp", 3)
    assert (np.diff(stamps) > 0).all() and stamps[0] > 0
    acquire(p)  # full (fixed length): not recorded
    assert get(s + "TSCurrentPoint") == 3
    put(s + "TSControl", "Start")  # full: stays Done
    assert get(s + "TSAcquiring", as_string=True) == "Done"
    put(s + "TSControl", "Erase")
    assert get(s + "TSCurrentPoint") == 0
    put(s + "TSNumPoints", 10 ** 6)  # clamped to NCHANS
    assert get(s + "TSNumPoints") == 16


# --- clients --------------------------------------------------------------------------------------


def test_ophyd_fft_and_roistat_plugin_classes_connect_stage_and_trigger(tmp_path):
    """ophyd 1.x's classes on an IOC of their own: pyepics' caget/caput above leave epics.PV
    objects in its cache, which ophyd would pick up instead of its own (and fail on)."""
    with running_ioc(CONFIG, tmp_path) as own:
        ophyd_session(own.prefix)


def ophyd_session(p: str) -> None:
    from ophyd import Component as Cpt
    from ophyd.areadetector import ImagePlugin, SimDetector, SingleTrigger
    from ophyd.areadetector.plugins import (FFTPlugin, FFTPlugin_V35, PluginBase_V35, ROIPlugin,
                                            ROIStatNPlugin, ROIStatNPlugin_V25, ROIStatPlugin,
                                            ROIStatPlugin_V35)

    rois = {f"roistat1_{n}": Cpt(ROIStatNPlugin_V25, f"ROIStat1:{n}:") for n in range(1, 9)}
    Detector = type("Detector", (SingleTrigger, SimDetector), {
        "fft1": Cpt(FFTPlugin_V35, "FFT1:"), "fft_base": Cpt(FFTPlugin, "FFT1:"),
        "image2": Cpt(ImagePlugin, "image2:"), "roi1": Cpt(ROIPlugin, "ROI1:"),
        "fft2": Cpt(FFTPlugin_V35, "FFT2:"), "roistat1": Cpt(ROIStatPlugin_V35, "ROIStat1:"),
        "roistat_base": Cpt(ROIStatPlugin, "ROIStat1:"),
        "roistatn_base": Cpt(ROIStatNPlugin, "ROIStat1:1:"), **rois})
    det = Detector(p, name="det")
    det.wait_for_connection(timeout=20)
    # ophyd's areadetector components are lazy: wait_for_connection() skips them. Every one
    # these classes add to PluginBase (whose own, e.g. AsynIO, are the base's business).
    base = set(PluginBase_V35.component_names)
    unconnected = []
    for plugin in [det.fft1, det.fft2, det.roistat1, *(getattr(det, n) for n in rois)]:
        for attr in set(type(plugin).component_names) - base:
            signal = getattr(plugin, attr)
            for sub in ([signal] if not hasattr(signal, "walk_signals") else
                        [i.item for i in signal.walk_signals(include_lazy=True)]):
                try:
                    sub.wait_for_connection(timeout=5)
                except TimeoutError:
                    unconnected.append(sub.name)
    assert not unconnected
    det.validate_asyn_ports()
    graph, _ = det.get_asyn_digraph()
    assert {("SIM1", "FFT1"), ("FFT1", "Image2"), ("SIM1", "ROISTAT1"),
            ("ROI1", "FFT2")} <= set(graph.edges)
    det.cam.stage_sigs.update({"image_mode": "Multiple", "num_images": 1, "acquire_time": 0.2,
                               "data_type": "UInt16", "sim_mode": "Peaks"})
    det.roistat1_1.use.put("Yes", wait=True)
    det.stage()
    try:
        for plugin in (det.fft1, det.roistat1, det.image2):
            assert plugin.enable.get(as_string=True) == "Enable"
        before = det.fft1.array_counter.get()
        det.trigger().wait(timeout=20)
        assert det.fft1.array_counter.get() == before + 1
        assert det.fft1.fft_abs_value.get().size == NX // 2
        assert det.roistat1_1.total.get() != 0.0
        assert det.roistat1.ts_control.get(as_string=True) in ("Erase/Start", "Start", "Stop",
                                                               "Read", "Erase")
    finally:
        det.unstage()


# The PVs ADCore's own Phoebus screens name for these plugins (ADCore ee039d24,
# ADApp/op/bob/autoconvert/NDFFT*.bob and NDROIStat*.bob), besides NDPluginBase.bob's. $(RTS) PVs
# of the FFT plots belong to an NDPluginTimeSeries feeding the FFT, not to the FFT plugin.
ADCORE_FFT_SCREEN = ["FFTDirection", "FFTNumAverage", "FFTNumAveraged", "FFTResetAverage",
                     "FFTSuppressDC", "Name", "FFTFreqAxis", "FFTAbsValue", "FFTImaginary",
                     "FFTReal", "FFTTimeSeries"]
ADCORE_ROISTAT_SCREEN = ["ResetAll", "TSAcquiring", "TSControl", "TSCurrentPoint", "TSNumPoints",
                         "TSRead.SCAN"]
ADCORE_ROISTATN_SCREEN = ["BgdWidth", "BgdWidth_RBV", "MaxSizeX_RBV", "MaxSizeY_RBV",
                          "MaxValue_RBV", "MeanValue_RBV", "MinValue_RBV", "MinX", "MinX_RBV",
                          "MinY", "MinY_RBV", "Name", "Net_RBV", "Reset", "SizeX", "SizeX_RBV",
                          "SizeY", "SizeY_RBV", "Total_RBV", "Use", "Use_RBV"]
# and the template records ophyd or the screens do not name
TEMPLATE_ONLY = ["FFT1:FFTTimePerPoint", "FFT1:FFTTimePerPoint_RBV", "FFT1:FFTTimePerPointLink",
                 "FFT1:FFTTimeAxis", "FFT1:FFTDirection_RBV", "FFT1:FFTSuppressDC_RBV",
                 "FFT1:FFTNumAverage_RBV", "ROIStat1:TSRead",
                 *(f"ROIStat1:8:{w}" for w in ("TSMinValue", "TSMaxValue", "TSMeanValue",
                                                "TSTotal", "TSNet", "TSTimestamp"))]


def test_every_pv_of_adcore_screens_and_templates_connects(ioc):
    names = [f"FFT1:{s}" for s in ADCORE_FFT_SCREEN] + \
        [f"ROIStat1:{s}" for s in ADCORE_ROISTAT_SCREEN] + \
        [f"ROIStat1:{n}:{s}" for n in range(1, 9) for s in ADCORE_ROISTATN_SCREEN] + TEMPLATE_ONLY
    # pyepics' PV cache, never ca.clear_channel: a channel caget/caput made earlier is shared
    pvs = {name: epics.get_pv(ioc.prefix + name, connect=False) for name in names}
    missing = [name for name, pv in pvs.items() if not pv.wait_for_connection(5)]
    assert not missing


def test_enum_strings_are_adcore_s(ioc):
    expected = {"FFT1:FFTDirection": ["Time to freq.", "Freq. to time"],
                "FFT1:FFTSuppressDC": ["Disable", "Enable"],
                "FFT1:FFTResetAverage": ["Done", "Reset"],
                "ROIStat1:TSControl": ["Erase/Start", "Start", "Stop", "Read", "Erase"],
                "ROIStat1:TSAcquiring": ["Done", "Acquiring"],
                "ROIStat1:1:Use": ["No", "Yes"], "ROIStat1:1:Use_RBV": ["No", "Yes"]}
    for name, strings in expected.items():
        pv = epics.get_pv(ioc.prefix + name)
        assert pv.wait_for_connection(5), name
        assert list(pv.get_ctrlvars()["enum_strs"]) == strings, name
    assert get(ioc.prefix + "FFT1:Name", as_string=True) == "FFT1"
    assert get(ioc.prefix + "ROIStat1:TSRead") == 3


def test_the_plugins_survive_puts_during_acquisition(ioc, p, rois):
    """ROI sizes, time-series commands and FFT settings written while frames stream: no dead
    worker, no traceback, the counters keep moving."""
    s, f = rois, p + "FFT1:"
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:AcquirePeriod", 0.01)
    put(p + "cam1:Acquire", 1, wait=False)
    stop = threading.Event()

    bad = [0, -1, -50, 10**6, 2**31 - 1, -2**31, 5]

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            put(s + "1:SizeX", bad[i % len(bad)])
            put(s + "1:MinY", bad[(i + 3) % len(bad)])
            put(s + "1:BgdWidth", bad[(i + 1) % len(bad)])
            put(s + "TSControl", i % 5)
            put(f + "FFTNumAverage", i % 4 + 1)
            put(f + "FFTResetAverage", 1)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        start_fft, start_roi = get(f + "ArrayCounter_RBV"), get(s + "ArrayCounter_RBV")
        assert wait_for(lambda: get(f + "ArrayCounter_RBV") > start_fft + 20, 20)
        assert wait_for(lambda: get(s + "ArrayCounter_RBV") > start_roi + 20, 20)
    finally:
        stop.set()
        worker.join(10)
        # the region is clipped per frame (as ADCore's): let a frame follow the last put
        after = get(s + "ArrayCounter_RBV")
        frame_after = wait_for(lambda: get(s + "ArrayCounter_RBV") > after + 1, 20)
        put(p + "cam1:Acquire", 0)
    assert frame_after, "no frame after the puts stopped"
    assert 1 <= get(s + "1:SizeX_RBV") <= NX and 0 <= get(s + "1:MinY_RBV") < NY
    log = ioc.log()
    assert "Traceback" not in log and "processing array" not in log, log
