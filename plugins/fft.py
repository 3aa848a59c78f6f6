"""NDPluginFFT (`FFT1:`): the FFT of each 1-D or 2-D array, its waveforms and an averaged output.

Follows NDPluginFFT.cpp and NDFFT.template (ADCore 3.14):
- Each dimension is zero-padded to the next power of two (nTimeX x nTimeY). The transform uses
  ADCore's sign, sum(x exp(+2 pi i k n / N)) (Numerical Recipes' four1/fourn with isign=1), so
  FFTImaginary is minus numpy's imaginary part; FFTReal and the magnitude are the same.
- Only the first nTimeX/2 columns and max(nTimeY/2, 1) rows are kept; the magnitude is
  |F| / (nTimeX * nTimeY). FFTSuppressDC zeroes element 0 of the real part, the imaginary part
  and the magnitude.
- The magnitude is averaged: after a reset (FFTResetAverage, a change of FFTNumAverage) the n-th
  FFT is weighted 1/min(n, FFTNumAverage) and the average so far 1 - that, so the first
  FFTNumAverage arrays give their plain mean and later ones an exponential average.
- Waveforms (the first row of a 2-D FFT, as ADCore): FFTTimeSeries (the padded input),
  FFTReal, FFTImaginary, FFTAbsValue (averaged), FFTTimeAxis (n * FFTTimePerPoint) and
  FFTFreqAxis, at most NCHANS elements (commonPlugins: NCHANS=$(XSIZE)).
- The output array (when ArrayCallbacks is Enable) is the averaged magnitude, Float64, with dims
  [nFreqX] or [nFreqX, nFreqY]: what `image2:` (NDStdArrays, Float64) shows in commonPlugins.
- FFTTimePerPointLink (ADCore: an ao whose DOL writes FFTTimePerPoint at boot) writes
  FFTTimePerPoint; FFTDirection is served and, as in ADCore, not used (always time to
  frequency). Waveforms longer than NCHANS are cut, as a waveform record's NELM cuts them.

Deliberate differences:
- A 2-D FFT is the FFT of the image. ADCore hands fourn the lengths as {nTimeX, nTimeY}, which
  fourn reads slowest-first, so for a non-square padded image it transforms the pixels as if the
  rows were nTimeY long; for square images (the sim's 1024x1024) both agree.
- FFTFreqAxis is k / (nTimeX * FFTTimePerPoint), numpy's fftfreq; ADCore uses
  k * 0.5 / FFTTimePerPoint / (nFreqX - 1), which its source marks as doubtful (its last point is
  the Nyquist frequency, one bin too high). FFTTimePerPoint below 1e-12 s (0, negative) is
  refused: ADCore divides by it and publishes infinities.
- FFTDirection Freq. to time says on StatusMessage_RBV that it is not implemented.
- FFTNumAveraged is the number of FFTs in the average (1 after the first); ADCore shows the
  weight count of the next FFT, one more until FFTNumAverage is reached. A change of the array
  size restarts the average (ADCore keeps the count but zeroes the stored magnitude).
- The output keeps the input's uniqueId and time stamps (ADCore counts its own ids from 0 and
  stamps the current time), so downstream plugins keep ndflow's per-acquisition accounting; as
  in ADCore it carries none of the input's attributes, only this plugin's NDAttributesFile.
- Arrays the plugin cannot transform give no output and say why on StatusMessage_RBV: not 1-D
  or 2-D (ADCore only traces it), fewer than 2 points along X (ADCore publishes empty waveforms),
  more than `max_points` padded points (a memory bound ADCore lacks), or NaN/infinity in a float
  array (ADCore would average NaN into every later result until a reset).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.adcore import MAX_SECONDS
from ndflow.component import PutRefused
from ndflow.ndarray import NDArray, NDDimension, identity
from ndflow.params import R, RW, W, INT32_MAX, ParamTable, array_param, bool_param, float_param, \
    int_param, string_param
from ndflow.plugin import Outputs, Plugin

GROUP = "FFT"
#: the smallest FFTTimePerPoint taken: the frequency axis (1 / time) stays finite
MIN_TIME_PER_POINT = 1e-12
WAVEFORMS = ("FFTTimeSeries", "FFTReal", "FFTImaginary", "FFTAbsValue")


class FFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nchans: int = Field(1024, ge=2, le=1 << 24,
                        description="waveform length (ADCore NCHANS; commonPlugins: XSIZE)")
    max_points: int = Field(1 << 24, ge=2, le=1 << 28,
                            description="largest padded array transformed (nTimeX * nTimeY); "
                                        "larger arrays are refused, bounding the memory a "
                                        "frame can take")


# --- computation (pure functions) ---------------------------------------------------------------


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), as NDPluginFFT::nextPow2 rounds sizes."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclass
class Spectrum:
    """One array's FFT, laid out as ADCore keeps it (numpy shapes: rows = y)."""

    time_series: np.ndarray  # the zero-padded input, (nTimeY, nTimeX) or (nTimeX,)
    real: np.ndarray  # (nFreqY, nFreqX) or (nFreqX,)
    imaginary: np.ndarray
    magnitude: np.ndarray  # |F| / (nTimeX * nTimeY)


def padded_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(nTimeX, nTimeY) for a 1-D or 2-D numpy shape."""
    ny, nx = (1, shape[0]) if len(shape) == 1 else shape
    return next_pow2(nx), next_pow2(ny)


def spectrum(data: np.ndarray, suppress_dc: bool = False) -> Spectrum:
    """The FFT of a 1-D or 2-D array with ADCore's padding, sign, normalisation and cropping.

    A real input's transform is Hermitian, so the real FFT (numpy's rfft/rfft2) gives the kept
    quarter at a quarter of the cost; ADCore's exp(+i...) sign is the complex conjugate of it."""
    if data.ndim not in (1, 2):
        raise ValueError(f"FFT needs a 1-D or 2-D array, not {data.ndim}-D")
    n_time_x, n_time_y = padded_sizes(data.shape)
    n_freq_x, n_freq_y = n_time_x // 2, max(n_time_y // 2, 1)
    if data.ndim == 1:
        series = np.zeros(n_time_x)
        series[: data.shape[0]] = data
        full = np.fft.rfft(series)[:n_freq_x]
    else:
        series = np.zeros((n_time_y, n_time_x))
        series[: data.shape[0], : data.shape[1]] = data
        full = np.fft.rfft2(series)[:n_freq_y, :n_freq_x]
    real = np.ascontiguousarray(full.real)
    imaginary = -full.imag  # the conjugate: ADCore's positive exponent
    magnitude = np.abs(full) / (n_time_x * n_time_y)
    if suppress_dc and real.size:
        real.flat[0] = imaginary.flat[0] = magnitude.flat[0] = 0.0
    return Spectrum(series, real, imaginary, magnitude)


class Average:
    """NDPluginFFT's running average of the magnitude: after a restart the n-th FFT gets weight
    1/min(n, num_average), so the first num_average give their mean and later ones decay
    exponentially. Not thread-safe: the plugin holds a lock around add()."""

    def __init__(self) -> None:
        self.values: np.ndarray | None = None
        self.count = 0  # FFTs in the average, at most num_average
        self._num_average = 0

    def restart(self) -> None:
        self.values = None
        self.count = 0

    def add(self, magnitude: np.ndarray, num_average: int) -> np.ndarray:
        """Fold one magnitude in and return the average. The stored average is replaced, never
        changed in place, so the caller may keep (and publish) what it got without a copy."""
        num_average = max(1, int(num_average))
        if num_average != self._num_average or self.values is None or \
                self.values.shape != magnitude.shape:
            self._num_average = num_average
            self.restart()
        n = min(self.count + 1, num_average)
        if n == 1:
            self.values = magnitude.astype(np.float64, copy=True)
        else:
            self.values = self.values * (1.0 - 1.0 / n) + magnitude * (1.0 / n)
        self.count = n
        return self.values


def time_axis(n_time_x: int, time_per_point: float) -> np.ndarray:
    """FFTTimeAxis: the time of each padded input point."""
    return np.arange(n_time_x, dtype=np.float64) * time_per_point


def freq_axis(n_time_x: int, time_per_point: float) -> np.ndarray:
    """FFTFreqAxis: the frequency of each kept bin, k / (nTimeX * time_per_point)."""
    return np.arange(n_time_x // 2, dtype=np.float64) / (n_time_x * time_per_point)


def _frozen(values: np.ndarray, limit: int) -> np.ndarray:
    """A private read-only float64 copy of at most `limit` elements, for a waveform PV."""
    out = np.array(values.reshape(-1)[:limit], dtype=np.float64)
    out.flags.writeable = False
    return out


# --- the plugin -----------------------------------------------------------------------------------


class FFT(Plugin):
    screen = "NDFFT"
    kind = "fft"
    plugin_type = "NDPluginFFT"
    Options = FFTOptions

    def __init__(self, *args: Any, options: FFTOptions | None = None, **kw: Any) -> None:
        self.options = options or FFTOptions()
        super().__init__(*args, **kw)
        self.values["Name"] = self.port  # commonPlugins: NAME=FFT1, the port's name
        self._lock = threading.Lock()  # the average, when NumThreads > 1
        self._average = Average()
        self._reset_pending = True  # FFTResetAverage's VAL 1 is written at boot (PINI)
        self._axes_key: tuple[int, float] | None = None
        self._refusal = ""  # the last reason an array was refused, said once

    def declare(self) -> ParamTable:
        n = self.options.nchans
        table = super().declare()
        params = [
            float_param("FFTTimePerPoint", 0.1, RW, precision=3, low=0.0, high=MAX_SECONDS,
                        units="s", group=GROUP,
                        doc="time between input points (> 0): scales both axes"),
            float_param("FFTTimePerPointLink", 0.1, W, precision=3, low=0.0, high=MAX_SECONDS,
                        units="s", group=GROUP, doc="writes FFTTimePerPoint (ADCore's link)"),
            bool_param("FFTDirection", "Time to freq.", "Freq. to time", 0, RW, group=GROUP,
                       doc="not used: always time to frequency, as ADCore"),
            bool_param("FFTSuppressDC", "Disable", "Enable", 0, RW, group=GROUP,
                       doc="zero the DC element (0 Hz) of every result"),
            int_param("FFTNumAverage", 1, RW, low=1, high=INT32_MAX, group=GROUP,
                      doc="FFT magnitudes averaged; a change restarts the average"),
            int_param("FFTNumAveraged", 0, R, group=GROUP, doc="FFTs in the average so far"),
            bool_param("FFTResetAverage", "Done", "Reset", 1, W, group=GROUP,
                       doc="restart the average at the next array"),
            string_param("Name", "", W, group=GROUP),
            array_param("FFTTimeAxis", "f8", n, group="Waveforms"),
            array_param("FFTFreqAxis", "f8", n, group="Waveforms"),
            *(array_param(name, "f8", n, group="Waveforms") for name in WAVEFORMS),
        ]
        for p in params:
            table.params[p.name] = p
        return table

    # --- puts -----------------------------------------------------------------------------------
    def put_FFTTimePerPoint(self, value: float) -> float:
        if not value >= MIN_TIME_PER_POINT:
            raise PutRefused(f"FFTTimePerPoint must be above 0 (at least {MIN_TIME_PER_POINT:g}"
                             f" s): the frequency axis is 1 / (points x FFTTimePerPoint)")
        return value

    def put_FFTDirection(self, value: int) -> int:
        if value:
            self.message("FFTDirection Freq. to time is not implemented (nor in ADCore): "
                         "arrays are still transformed from time to frequency")
        return value

    async def put_FFTTimePerPointLink(self, value: float) -> float:
        await self.handle_put(self.params["FFTTimePerPoint"], value)
        return value

    def put_FFTResetAverage(self, value: int) -> int:
        if value:
            self._reset_pending = True
        return value

    # --- data path ------------------------------------------------------------------------------
    def process(self, array: NDArray) -> Outputs:
        v = self.frame_settings
        data = array.data
        reason = self._refuse(data)
        if reason:
            if reason != self._refusal:
                self._refusal = reason
                self.message(f"array {array.unique_id}: {reason}; no FFT", logging.WARNING)
            return None
        self._refusal = ""
        result = spectrum(data, bool(v["FFTSuppressDC"]))
        with self._lock:
            if self._reset_pending:
                self._reset_pending = False
                self._average.restart()
                self.set("FFTResetAverage", 0)
            average = self._average.add(result.magnitude, int(v["FFTNumAverage"]))
            count = self._average.count
        self._publish(result, average, count, float(v["FFTTimePerPoint"]))
        if not v["ArrayCallbacks"]:
            return None
        return self._output(array, average)

    def _refuse(self, data: np.ndarray) -> str:
        """Why this array cannot be transformed ("" if it can)."""
        if data.ndim not in (1, 2):
            return f"FFT needs a 1-D or 2-D array, not {data.ndim}-D"
        if data.shape[-1] < 2:
            return f"FFT needs at least 2 points along X, not {data.shape[-1]}"
        n_time_x, n_time_y = padded_sizes(data.shape)
        if n_time_x * n_time_y > self.options.max_points:
            return (f"padded to {n_time_x}x{n_time_y} points, above max_points "
                    f"{self.options.max_points}")
        if data.dtype.kind in "fc" and not np.isfinite(data).all():
            return "NaN or infinity in the array (it would spoil the average)"
        return ""

    def _publish(self, result: Spectrum, average: np.ndarray, count: int,
                 time_per_point: float) -> None:
        limit = self.options.nchans
        first = (lambda a: a) if result.real.ndim == 1 else (lambda a: a[0])
        self.set_many({
            "FFTTimeSeries": _frozen(first(result.time_series), limit),
            "FFTReal": _frozen(first(result.real), limit),
            "FFTImaginary": _frozen(first(result.imaginary), limit),
            "FFTAbsValue": _frozen(first(average), limit),
            "FFTNumAveraged": count,
        })
        n_time_x = result.time_series.shape[-1]
        key = (n_time_x, time_per_point)
        if key != self._axes_key:  # only when the size or the time per point changed
            self._axes_key = key
            self.set_many({"FFTTimeAxis": _frozen(time_axis(n_time_x, time_per_point), limit),
                           "FFTFreqAxis": _frozen(freq_axis(n_time_x, time_per_point), limit)})

    def _output(self, array: NDArray, average: np.ndarray) -> NDArray:
        """The averaged magnitude as a Float64 array from this plugin's pool."""
        buffer = self.output_buffer(average.shape, np.float64)
        np.copyto(buffer, average)
        dims = [NDDimension(n) for n in reversed(average.shape)]
        return array.derive(buffer, dims=dims, attributes={}, transform=identity(),
                            color_mode=0)
