"""NDPluginFFT and NDPluginROIStat computations against independent references: explicit DFT
sums (ADCore's exp(+2 pi i ...) sign, power-of-two padding, cropping and normalisation), pixel
loops for the ROI statistics and background border, and the documented averaging weights; plus
the plugins' handling of input they cannot use (no IOC: process() called directly)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray, NDAttribute
from ndflow.plugins.fft import FFT, Average, freq_axis, next_pow2, spectrum, time_axis
from ndflow.plugins.roistat import ROIStat, SeriesBuffer, clip, statistics

RNG = np.random.default_rng(16)


# --- FFT ------------------------------------------------------------------------------------------


def dft_matrix(n: int) -> np.ndarray:
    """Numerical Recipes' forward transform (isign=+1): W[k, j] = exp(+2 pi i j k / n)."""
    k = np.arange(n)
    return np.exp(2j * np.pi * np.outer(k, k) / n)


def reference_1d(x: np.ndarray):
    n = 1 << max(0, math.ceil(math.log2(x.size)))
    padded = np.zeros(n)
    padded[: x.size] = x
    return (dft_matrix(n) @ padded)[: n // 2], padded, n


def reference_2d(img: np.ndarray):
    ny, nx = img.shape
    py, px = 1 << math.ceil(math.log2(ny)), 1 << math.ceil(math.log2(nx))
    padded = np.zeros((py, px))
    padded[:ny, :nx] = img
    full = dft_matrix(py) @ padded @ dft_matrix(px).T  # rows transform along y, columns along x
    return full[: max(py // 2, 1), : px // 2], padded, px * py


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (2, 2), (3, 4), (48, 64), (64, 64),
                                         (65, 128), (1000, 1024)])
def test_next_pow2(n, expected):
    assert next_pow2(n) == expected


@pytest.mark.parametrize("size", [2, 5, 64, 100])
def test_1d_spectrum_equals_the_padded_dft(size):
    x = RNG.normal(10.0, 3.0, size)
    expected, padded, n = reference_1d(x)
    got = spectrum(x)
    np.testing.assert_allclose(got.time_series, padded)
    np.testing.assert_allclose(got.real, expected.real, atol=1e-9)
    np.testing.assert_allclose(got.imaginary, expected.imag, atol=1e-9)
    np.testing.assert_allclose(got.magnitude, np.abs(expected) / n, atol=1e-12)
    assert got.real.shape == (n // 2,)


@pytest.mark.parametrize("shape", [(48, 64), (5, 12), (1, 8), (16, 16), (3, 2)])
def test_2d_spectrum_equals_the_padded_dft_also_when_not_square(shape):
    img = RNG.integers(0, 255, shape).astype(np.uint8)
    expected, padded, n = reference_2d(img.astype(float))
    got = spectrum(img)
    np.testing.assert_allclose(got.time_series, padded)
    np.testing.assert_allclose(got.real, expected.real, atol=1e-8)
    np.testing.assert_allclose(got.imaginary, expected.imag, atol=1e-8)
    np.testing.assert_allclose(got.magnitude, np.abs(expected) / n, atol=1e-12)


def test_a_sine_peaks_at_its_frequency_bin():
    t = np.arange(256) * 0.001  # 1 ms per point
    x = 3.0 + 2.0 * np.sin(2 * np.pi * 125.0 * t)
    got = spectrum(x)
    freq = freq_axis(256, 0.001)
    peak = int(np.argmax(got.magnitude[1:])) + 1
    assert freq[peak] == pytest.approx(125.0)
    assert got.magnitude[peak] == pytest.approx(1.0)  # amplitude/2 with the 1/N scaling
    assert got.magnitude[0] == pytest.approx(3.0)  # the mean
    np.testing.assert_allclose(freq, np.fft.fftfreq(256, 0.001)[:128])
    np.testing.assert_allclose(time_axis(256, 0.001), t)


def test_suppress_dc_zeroes_element_zero_only():
    img = RNG.normal(100.0, 5.0, (8, 16))
    plain, suppressed = spectrum(img), spectrum(img, suppress_dc=True)
    for name in ("real", "imaginary", "magnitude"):
        a, b = getattr(plain, name), getattr(suppressed, name)
        assert b[0, 0] == 0.0
        np.testing.assert_array_equal(a.reshape(-1)[1:], b.reshape(-1)[1:])
    assert plain.magnitude[0, 0] == pytest.approx(img.mean())


def test_spectrum_refuses_3d():
    with pytest.raises(ValueError, match="1-D or 2-D"):
        spectrum(np.zeros((2, 3, 4)))


def test_average_is_the_mean_of_the_first_n_then_exponential():
    frames = [RNG.random(6) for _ in range(6)]
    avg = Average()
    got = [avg.add(f, 3) for f in frames]
    counts = []
    avg2 = Average()
    for f in frames:
        avg2.add(f, 3)
        counts.append(avg2.count)
    assert counts == [1, 2, 3, 3, 3, 3]
    for k in range(3):
        np.testing.assert_allclose(got[k], np.mean(frames[: k + 1], axis=0))
    expected = np.mean(frames[:3], axis=0)
    for k in range(3, 6):
        expected = expected * (2 / 3) + frames[k] / 3
        np.testing.assert_allclose(got[k], expected)


def test_average_restarts_on_a_new_count_or_shape_and_returns_copies():
    avg = Average()
    a, b = RNG.random(4), RNG.random(4)
    first = avg.add(a, 4)
    avg.add(b, 4)
    np.testing.assert_array_equal(first, a)  # not changed by the later add
    np.testing.assert_array_equal(avg.add(b, 2), b)  # NumAverage changed: restarted
    assert avg.count == 1
    np.testing.assert_array_equal(avg.add(np.ones(2), 2), [1, 1])  # a new shape restarts


def fft_plugin(**values) -> FFT:
    plugin = FFT("FFT1", "FFT1:", PortGraph())
    plugin.values.update(values)
    plugin.freeze()
    return plugin


def test_fft_plugin_output_and_waveforms():
    img = RNG.integers(0, 1000, (48, 64)).astype(np.uint16)
    plugin = fft_plugin(FFTTimePerPoint=0.5)
    array = NDArray.from_numpy(img, unique_id=7)
    array.attributes["ColorMode"] = NDAttribute("ColorMode", 0)  # the input's: not carried
    out = plugin.process(array)
    expected, padded, n = reference_2d(img.astype(float))
    assert out.data.dtype == np.float64 and out.data.shape == (32, 32)
    assert [d.size for d in out.dims] == [32, 32] and out.unique_id == 7
    assert out.attributes == {}
    np.testing.assert_allclose(out.data, np.abs(expected) / n, atol=1e-12)
    v = plugin.values
    np.testing.assert_allclose(v["FFTReal"], expected[0].real, atol=1e-8)
    np.testing.assert_allclose(v["FFTImaginary"], expected[0].imag, atol=1e-8)
    np.testing.assert_allclose(v["FFTTimeSeries"], padded[0])
    np.testing.assert_allclose(v["FFTFreqAxis"], np.arange(32) / (64 * 0.5))
    np.testing.assert_allclose(v["FFTTimeAxis"], np.arange(64) * 0.5)
    assert v["FFTNumAveraged"] == 1 and v["FFTResetAverage"] == 0


def test_fft_plugin_refuses_what_it_cannot_transform_and_keeps_its_average(caplog):
    plugin = fft_plugin(FFTNumAverage=5)
    good = RNG.random((4, 8))
    plugin.process(NDArray.from_numpy(good))
    cases = [(np.zeros((2, 3, 4)), "1-D or 2-D"), (np.zeros((4, 1)), "at least 2 points"),
             (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
             (np.array([1.0, np.inf, 2.0]), "NaN or infinity")]
    with caplog.at_level(logging.WARNING):
        for data, reason in cases:
            assert plugin.process(NDArray.from_numpy(data)) is None
            assert reason in plugin.values["StatusMessage_RBV"]
    assert plugin.values["FFTNumAveraged"] == 1
    np.testing.assert_allclose(plugin.values["FFTAbsValue"], spectrum(good).magnitude[0])
    plugin.options.max_points = 16
    assert plugin.process(NDArray.from_numpy(np.zeros((4, 8)))) is None
    assert "max_points" in plugin.values["StatusMessage_RBV"]


def test_fft_plugin_without_array_callbacks_gives_no_output():
    plugin = fft_plugin(ArrayCallbacks=0)
    assert plugin.process(NDArray.from_numpy(RNG.random(16))) is None
    assert plugin.values["FFTAbsValue"].size == 8


# --- ROIStat --------------------------------------------------------------------------------------


def loop_statistics(img: np.ndarray, ox: int, sx: int, oy: int, sy: int, bgd: int) -> dict:
    """NDPluginROIStat's loops, pixel by pixel (2-D)."""
    values = [float(img[y, x]) for y in range(oy, oy + sy) for x in range(ox, ox + sx)]
    total = sum(values)
    border = []
    if bgd > 0:
        bx, by = min(bgd, sx), min(bgd, sy)
        for y in list(range(oy, oy + by)) + list(range(oy + sy - by, oy + sy)):
            border += [float(img[y, x]) for x in range(ox, ox + sx)]
        for y in range(oy + by, oy + sy - by):
            border += [float(img[y, x]) for x in range(ox, ox + bx)]
            border += [float(img[y, x]) for x in range(ox + sx - bx, ox + sx)]
    background = sum(border) / len(border) * len(values) if border else 0.0
    return {"MinValue": min(values), "MaxValue": max(values), "MeanValue": total / len(values),
            "Total": total, "Net": total - background}


@pytest.mark.parametrize("ox, sx, oy, sy, bgd", [
    (0, 64, 0, 48, 0), (5, 10, 3, 7, 1), (5, 10, 3, 7, 2), (10, 3, 10, 9, 2),  # bgd > width/2
    (0, 1, 0, 1, 1), (20, 40, 30, 18, 100), (0, 64, 47, 1, 3)])
def test_statistics_equal_adcore_loops(ox, sx, oy, sy, bgd):
    img = RNG.integers(-100, 3000, (48, 64)).astype(np.int32)
    got = statistics(img, ox, sx, oy, sy, bgd)
    expected = loop_statistics(img, ox, sx, oy, sy, bgd)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-9), name


def test_statistics_1d_border_is_both_ends():
    x = np.arange(20, dtype=np.uint8) ** 2 % 97
    got = statistics(x, 4, 10, bgd_width=3)
    region = x[4:14].astype(float)
    background = (region[:3].sum() + region[-3:].sum()) / 6 * 10
    assert got["Total"] == region.sum() and got["Net"] == pytest.approx(region.sum() - background)
    assert (got["MinValue"], got["MaxValue"]) == (region.min(), region.max())


def test_statistics_nan_as_adcore_running_comparison():
    img = np.array([[1.0, np.nan, 5.0], [-2.0, 3.0, 4.0]])
    got = statistics(img, 0, 3, 0, 2)
    assert (got["MinValue"], got["MaxValue"]) == (-2.0, 5.0)
    assert math.isnan(got["Total"]) and math.isnan(got["MeanValue"])
    first = statistics(img, 1, 2, 0, 2)  # the region starts with NaN: it stays
    assert math.isnan(first["MinValue"]) and math.isnan(first["MaxValue"])


@pytest.mark.parametrize("offset, size, n, expected", [
    (0, 1, 10, (0, 1)), (-5, 4, 10, (0, 4)), (8, 100, 10, (8, 2)), (50, 3, 10, (9, 1)),
    (3, 0, 10, (3, 1)), (3, -7, 10, (3, 1)), (2**31 - 1, 2**31 - 1, 10, (9, 1))])
def test_clip(offset, size, n, expected):
    assert clip(offset, size, n) == expected


def test_series_buffer_fixed_length():
    series = SeriesBuffer(2, 4)
    assert series.record({0: [1, 2, 3, 4, 5]}, 1.0) is None  # not acquiring
    series.set_points(3)
    assert series.start(erase=True)
    assert series.record({0: [1, 2, 3, 4, 5]}, 10.0) is False
    assert series.record({1: [6, 7, 8, 9, 10]}, 11.0) is False
    assert series.record({0: [0, 0, 0, 0, 1]}, 12.0) is True
    assert not series.acquiring and not series.start(erase=False)  # full: Start does nothing
    data = series.snapshot()
    assert data.shape == (2, 6, 3)
    np.testing.assert_array_equal(data[0, 4], [5, 0, 1])
    np.testing.assert_array_equal(data[1, 5], [0, 11, 0])  # ROI 2 used only in the 2nd array
    np.testing.assert_array_equal(data[0, 5], [10, 0, 12])
    series.erase()
    assert series.snapshot().shape == (2, 6, 0)


def roistat_plugin(**values) -> ROIStat:
    plugin = ROIStat("ROISTAT1", "ROIStat1:", PortGraph())
    plugin.values.update(values)
    plugin._requested.update({k: v for k, v in values.items() if k in plugin._requested})
    plugin.freeze()
    return plugin


def test_roistat_plugin_clips_and_shows_requests_apart():
    img = RNG.integers(0, 255, (48, 64)).astype(np.uint8)
    plugin = roistat_plugin(**{"1:Use": 1, "1:MinX": -10, "1:SizeX": 10**9, "1:MinY": 40,
                               "1:SizeY": 20, "1:BgdWidth": 2, "3:Use": 1, "3:MinX": 63,
                               "3:SizeX": 5, "3:MinY": 100, "3:SizeY": 5})
    out = plugin.process(NDArray.from_numpy(img))
    assert out.data is img
    v = plugin.values
    assert (v["1:MinX"], v["1:SizeX"], v["1:MinY"], v["1:SizeY"]) == (0, 64, 40, 8)
    assert (v["3:MinX"], v["3:SizeX"], v["3:MinY"], v["3:SizeY"]) == (63, 1, 47, 1)
    assert (v["1:MaxSizeX_RBV"], v["1:MaxSizeY_RBV"]) == (64, 48)
    assert v["1:Total_RBV"] == img[40:48].astype(float).sum()
    assert v["3:Total_RBV"] == float(img[47, 63])
    assert v["2:Total_RBV"] == 0.0 and v["2:MaxSizeX_RBV"] == 0  # not used: untouched
    plugin.freeze()  # the next frame's parameters: the requests, not the clipped values
    assert (plugin.frame_settings["1:MinX"], plugin.frame_settings["1:SizeX"]) == (-10, 10**9)
    plugin.process(NDArray.from_numpy(np.ones((96, 128), np.uint8)))  # a larger frame
    assert (v["1:MinX"], v["1:SizeX"], v["1:MinY"], v["1:SizeY"]) == (0, 128, 40, 20)


def test_roistat_plugin_refuses_3d_and_says_nan():
    plugin = roistat_plugin(**{"1:Use": 1, "1:SizeX": 4, "1:SizeY": 4})
    assert plugin.process(NDArray.from_numpy(np.zeros((3, 4, 4), np.uint8))) is None
    assert "1-D or 2-D" in plugin.values["StatusMessage_RBV"]
    img = np.ones((4, 4))
    img[2, 2] = np.nan
    plugin.process(NDArray.from_numpy(img))
    assert "NaN" in plugin.values["StatusMessage_RBV"]
    assert math.isnan(plugin.values["1:Total_RBV"]) and plugin.values["1:MaxValue_RBV"] == 1.0
