"""NDPluginStats (`Stats1:`): statistics, centroid, profiles and histogram of each array.

Follows NDPluginStats.cpp and NDStats.template (ADCore 3.14):
- Statistics over all elements: min/max (first occurrence) with their x/y, mean, total,
  sigma = sqrt(sum(v^2)/n - mean^2), and Net = Total - (average of the BgdWidth-wide border
  slabs of every dimension, corners counted twice) * n.
- Centroid of the values >= CentroidThreshold from raw moments, with ADCore's formulas for
  sigma, SigmaXY (a correlation), skew, excess kurtosis, eccentricity and orientation (degrees).
- Profiles: average and thresholded column/row means, the row/column through the centroid and
  through the cursor (positions clamped to the image), and CursorVal.
- Histogram: bin = (int)((v - HistMin) * (HistSize - 1) / (HistMax - HistMin) + 0.5), values
  outside [HistMin, HistMax] counted in HistBelow/HistAbove, entropy = -sum(c ln c) / n.
- The time series of the 23 results (Stats1:TSTotal ...) with its controls at Stats1:TS:.
Results are written to the readbacks (`Total_RBV`, `Sigma_RBV`, ...); the output array is the
input (no copy) carrying the results as NDAttributes, then the plugin's own NDAttributesFile.

Deliberate differences: ADCore attaches no fixed attributes (only what the plugin's
NDAttributesFile lists); we always attach the computed results, named as their PVs
(MinValue, SigmaValue, Total, CentroidX, ...) with source type PARAM and ADCore's drvInfo
string (TOTAL, ...) as source, as such a file would. ComputeProfiles computes the average and
threshold profiles itself (ADCore fills them only when ComputeCentroid is also on). MinX/MinY
of a colour array are its pixel's x/y (ADCore divides the element index by the x size). A
negative cursor is clamped to 0 (ADCore's unsigned clamp sends it to the far edge). Sigma is 0
where rounding makes the variance slightly negative. For 3-D arrays centroid results are 0 and
no profiles are published, as ADCore's centroid/profile code refuses ndims > 2.

Multi-channel frames (ndflow.channels, e.g. EIGER2's two thresholds) at NDArrayAddress 0: the
PVs, the time series and the unsuffixed attributes are channel 1's, exactly as for that channel
alone; the ten statistics of every channel j are in the waveforms `Channel<Result>_RBV`
(element j-1, e.g. ChannelTotal_RBV, ChannelSigma_RBV) and the attributes `<Result>_<name>`
(Total_threshold_2). Centroid, profiles and histogram stay channel 1's: for another channel's,
set NDArrayAddress to it (the plugin then sees that channel alone).

Speed: one blocked pass converts cache-sized row blocks to float64 and takes sum, sum of
squares, profiles and threshold moments from them; min/max come from argmin/argmax.
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.channels import MAX_CHANNELS
from ndflow.ndarray import AttrSource, NDArray, NDAttribute, NDDimension, xyz_dims
from ndflow.params import R, RW, W, Param, ParamTable, array_param, bool_param, float_param, \
    int_param
from ndflow.plugin import Plugin

from .timeseries import TimeSeries

BLOCK_ELEMENTS = 1 << 17  # float64 elements per block: 1 MB, stays in L2

# result name -> ADCore's asyn drvInfo string (the source of a PARAM attribute)
STATISTICS = {"MinValue": "MIN_VALUE", "MinX": "MIN_X", "MinY": "MIN_Y",
              "MaxValue": "MAX_VALUE", "MaxX": "MAX_X", "MaxY": "MAX_Y",
              "MeanValue": "MEAN_VALUE", "SigmaValue": "SIGMA_VALUE", "Total": "TOTAL",
              "Net": "NET"}
CENTROID = {"CentroidTotal": "CENTROID_TOTAL", "CentroidX": "CENTROIDX_VALUE",
            "CentroidY": "CENTROIDY_VALUE", "SigmaX": "SIGMAX_VALUE", "SigmaY": "SIGMAY_VALUE",
            "SigmaXY": "SIGMAXY_VALUE", "SkewX": "SKEWX_VALUE", "SkewY": "SKEWY_VALUE",
            "KurtosisX": "KURTOSISX_VALUE", "KurtosisY": "KURTOSISY_VALUE",
            "Eccentricity": "ECCENTRICITY_VALUE", "Orientation": "ORIENTATION_VALUE"}
# NDStats.template's time-series waveforms, in NDPluginStats.h's NDStatTSType order
TS_WAVEFORMS = {"TSMinValue": "MinValue", "TSMinX": "MinX", "TSMinY": "MinY",
                "TSMaxValue": "MaxValue", "TSMaxX": "MaxX", "TSMaxY": "MaxY",
                "TSMeanValue": "MeanValue", "TSSigma": "SigmaValue", "TSTotal": "Total",
                "TSNet": "Net", **{f"TS{name}": name for name in CENTROID},
                "TSTimestamp": None}
# Reset, Reset1, Reset2 (sseq records writing 0 to the results), each chaining to the next
RESETS = {"Reset": (*STATISTICS,), "Reset1": tuple(list(CENTROID)[:10]),
          "Reset2": ("Eccentricity", "Orientation", "HistBelow", "HistAbove", "HistEntropy")}
PRECISION = {"SigmaValue": 1, "CentroidX": 1, "CentroidY": 1, "SigmaX": 1, "SigmaY": 1,
             "SigmaXY": 3, "SkewX": 3, "SkewY": 3, "KurtosisX": 3, "KurtosisY": 3,
             "Eccentricity": 3, "Orientation": 3}
PROFILES = ("Average", "Threshold", "Centroid", "Cursor")


class StatsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    xsize: int = Field(1024, ge=1, description="X profile waveform length (ADCore XSIZE)")
    ysize: int = Field(1024, ge=1, description="Y profile waveform length (YSIZE)")
    hist_size: int = Field(256, ge=1, description="histogram waveform length (HIST_SIZE)")
    nchans: int = Field(2048, ge=1, description="time-series length (NCHANS)")


# --- computation (pure functions, also used by bench/stats.py) ------------------------------------


@dataclass
class Scan:
    """What one blocked pass over a 2-D image gives."""

    total: float = 0.0
    sum_sq: float = 0.0
    col: np.ndarray | None = None  # column sums of all values (length nx)
    row: np.ndarray | None = None  # row sums of all values (length ny)
    col_thr: np.ndarray | None = None  # column sums of the values >= threshold
    row_thr: np.ndarray | None = None  # row sums of the values >= threshold
    m11: float = 0.0  # sum of x * y * value over the values >= threshold


def scan(image: np.ndarray, sums: bool = True, threshold: float | None = None,
         profiles: bool = False) -> Scan:
    """Sum and sum of squares (`sums`), threshold moments (`threshold` not None) and the
    all-value profiles (`profiles`) of a 2-D array, in one pass over float64 row blocks.

    No BLAS: its worker threads fight the plugin threads for cores and made a busy 2-core
    machine ten times slower; numpy's own SIMD reductions do not."""
    ny, nx = image.shape
    rows = max(1, min(ny, BLOCK_ELEMENTS // max(nx, 1)))
    buf = np.empty((rows, nx))
    x = np.arange(nx, dtype=np.float64)
    out = Scan()
    if profiles:
        out.col, out.row = np.zeros(nx), np.empty(ny)
    if threshold is not None:
        keep = np.empty(buf.shape, dtype=bool)
        out.col_thr, out.row_thr = np.zeros(nx), np.empty(ny)
        row_x = np.empty(ny)
    for start in range(0, ny, rows):
        stop = min(start + rows, ny)
        block = buf[: stop - start]
        np.copyto(block, image[start:stop], casting="unsafe")
        if sums:
            flat = block.reshape(-1)
            out.total += float(flat.sum())
            out.sum_sq += float(np.einsum("i,i->", flat, flat))
        if profiles:
            out.col += block.sum(axis=0)
            out.row[start:stop] = block.sum(axis=1)
        if threshold is not None:
            kept = keep[: stop - start]
            np.greater_equal(block, threshold, out=kept)
            np.multiply(block, kept, out=block)
            columns = block.sum(axis=0)
            if image.dtype.kind == "f" and not np.isfinite(columns).all():
                # NaN or -inf times 0 is NaN: zero the rejected values instead (slower)
                np.copyto(block, image[start:stop], casting="unsafe")
                block[~kept] = 0.0
                columns = block.sum(axis=0)
            out.col_thr += columns
            out.row_thr[start:stop] = block.sum(axis=1)
            row_x[start:stop] = np.einsum("ij,j->i", block, x)
    if threshold is not None:
        out.m11 = float(np.einsum("i,i->", np.arange(ny, dtype=np.float64), row_x))
    return out


def _extreme(data: np.ndarray, smallest: bool) -> int:
    """Flat index of the first minimum/maximum; NaN is skipped unless the first element is NaN,
    as ADCore's running comparison does."""
    index = int(np.argmin(data) if smallest else np.argmax(data))
    if data.dtype.kind == "f" and math.isnan(data.flat[index]) and \
            not math.isnan(data.flat[0]):
        index = int(np.nanargmin(data) if smallest else np.nanargmax(data))
    return index


def background(data: np.ndarray, width: int) -> float:
    """Average of the `width`-wide slabs at both ends of every dimension (corners twice)."""
    counts, pixels = 0.0, 0
    for axis, size in enumerate(data.shape):
        first = min(width, size)
        offset = max(0, size - width)
        for start, length in ((0, first), (offset, min(width, size - offset))):
            slab = np.take(data, np.arange(start, start + length), axis=axis)
            counts += float(slab.sum(dtype=np.float64))
            pixels += slab.size
    return counts / max(pixels, 1)


def statistics(data: np.ndarray, sums: Scan, x_axis: int, y_axis: int | None,
               bgd_width: int) -> dict[str, float]:
    """The ten statistics results; `sums` is a scan of `data` with sums=True."""
    n = data.size
    results: dict[str, float] = {}
    for label, smallest in (("Min", True), ("Max", False)):
        index = _extreme(data, smallest)
        coords = np.unravel_index(index, data.shape)
        results[f"{label}Value"] = float(data.flat[index])
        results[f"{label}X"] = float(coords[x_axis])
        results[f"{label}Y"] = float(coords[y_axis]) if y_axis is not None else 0.0
    mean = sums.total / n
    results["MeanValue"] = mean
    results["SigmaValue"] = math.sqrt(max(sums.sum_sq / n - mean * mean, 0.0)) \
        if math.isfinite(sums.sum_sq) else math.nan
    results["Total"] = sums.total
    results["Net"] = sums.total - background(data, bgd_width) * n if bgd_width > 0 \
        else sums.total
    return results


def channel_statistics(data: np.ndarray, bgd_width: int) -> list[dict[str, float]]:
    """The ten statistics of each channel of a (C, H, W) frame, each plane as a 2-D image."""
    return [statistics(plane, scan(plane), 1, 0, bgd_width) for plane in data]


def _channel_pv(name: str) -> str:
    """The per-channel waveform of a statistics result (SigmaValue's PV is Sigma_RBV)."""
    return f"Channel{'Sigma' if name == 'SigmaValue' else name}_RBV"


def centroid(sums: Scan) -> dict[str, float]:
    """Centroid results from the threshold profiles and M11, as doComputeCentroidT does."""
    results = dict.fromkeys(CENTROID, 0.0)
    px, py = sums.col_thr, sums.row_thr
    x = np.arange(px.size, dtype=np.float64)
    y = np.arange(py.size, dtype=np.float64)
    m00 = float(px.sum())
    if not m00 > 0.0:
        return results
    m10, m20, m30, m40 = (float(px @ x ** k) for k in (1, 2, 3, 4))
    m01, m02, m03, m04 = (float(py @ y ** k) for k in (1, 2, 3, 4))
    m11 = sums.m11
    mu20 = m20 - m10 * m10 / m00
    mu02 = m02 - m01 * m01 / m00
    mu11 = m11 - m10 * m01 / m00
    mu30 = m30 - 3 * m10 * m20 / m00 + 2 * m10 ** 3 / m00 ** 2
    mu03 = m03 - 3 * m01 * m02 / m00 + 2 * m01 ** 3 / m00 ** 2
    mu40 = m40 - 4 * m30 * m10 / m00 + 6 * m20 * m10 ** 2 / m00 ** 2 - 3 * m10 ** 4 / m00 ** 3
    mu04 = m04 - 4 * m03 * m01 / m00 + 6 * m02 * m01 ** 2 / m00 ** 2 - 3 * m01 ** 4 / m00 ** 3
    var_x, var_y, var_xy = mu20 / m00, mu02 / m00, mu11 / m00
    sigma_x = math.sqrt(var_x) if var_x >= 0 else math.nan
    sigma_y = math.sqrt(var_y) if var_y >= 0 else math.nan
    results.update(CentroidTotal=m00, CentroidX=m10 / m00, CentroidY=m01 / m00,
                   SigmaX=sigma_x, SigmaY=sigma_y,
                   Orientation=math.degrees(0.5 * math.atan2(2.0 * var_xy, var_x - var_y)))
    if sigma_x != 0 and sigma_y != 0:
        results["SigmaXY"] = var_xy / (sigma_x * sigma_y)
    if var_x != 0:
        results["SkewX"] = mu30 / (m00 * var_x ** 1.5) if var_x > 0 else math.nan
        results["KurtosisX"] = mu40 / (m00 * var_x ** 2) - 3.0
    if var_y != 0:
        results["SkewY"] = mu03 / (m00 * var_y ** 1.5) if var_y > 0 else math.nan
        results["KurtosisY"] = mu04 / (m00 * var_y ** 2) - 3.0
    if mu20 + mu02 != 0:
        results["Eccentricity"] = ((mu20 - mu02) ** 2 - 4 * mu11 ** 2) / (mu20 + mu02) ** 2
    return results


def profiles(image: np.ndarray, sums: Scan, centroid_x: float, centroid_y: float,
             cursor_x: int, cursor_y: int) -> tuple[dict[str, np.ndarray], float]:
    """The eight profile waveforms (keyed e.g. "AverageX") and the value at the cursor."""
    ny, nx = image.shape

    def clamp(value: float, size: int) -> int:
        return int(min(max(value, 0), size - 1)) if math.isfinite(value) else 0

    cy, cx = clamp(centroid_y + 0.5, ny), clamp(centroid_x + 0.5, nx)
    ky, kx = clamp(cursor_y, ny), clamp(cursor_x, nx)
    out = {"AverageX": sums.col / ny, "AverageY": sums.row / nx,
           "ThresholdX": sums.col_thr / ny, "ThresholdY": sums.row_thr / nx,
           "CentroidX": image[cy].astype(np.float64), "CentroidY": image[:, cx].astype(np.float64),
           "CursorX": image[ky].astype(np.float64), "CursorY": image[:, kx].astype(np.float64)}
    return out, float(image[ky, kx])


def _bins(values: np.ndarray, size: int, low: float, high: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bin of each inside value, below, above, inside masks) as doComputeHistogramT bins."""
    scale = (size - 1) / (high - low)
    with np.errstate(invalid="ignore"):
        bins = np.trunc((values - low) * scale + 0.5)
        below = (bins < 0) | (values < low) | np.isnan(values)
        above = ~below & ((bins > size - 1) | (values > high))
    inside = ~(below | above)
    return bins[inside].astype(np.intp), below, above, inside


@functools.lru_cache(maxsize=8)
def _value_bins(dtype: str, size: int, low: float, high: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_bins` of every value an 8/16-bit type can hold, in the order of its unsigned view."""
    itemsize = np.dtype(dtype).itemsize
    values = np.arange(1 << (8 * itemsize), dtype=np.float64)
    if np.dtype(dtype).kind == "i":
        values[values.size // 2:] -= values.size
    return _bins(values, size, low, high)


def histogram(data: np.ndarray, size: int, low: float, high: float
              ) -> tuple[np.ndarray, int, int, float]:
    """(counts per bin, below, above, entropy) with doComputeHistogramT's binning."""
    if high <= low:
        high = low + 1.0
    flat = data.reshape(-1)
    if data.dtype.kind in "iub" and data.dtype.itemsize <= 2:
        # Count each possible value once, then bin the (at most 65536) values by a table that
        # only changes with the type and HistSize/Min/Max.
        unsigned = flat.view(f"u{data.dtype.itemsize}")
        per_value = np.bincount(unsigned, minlength=1 << (8 * data.dtype.itemsize))
        bins, below, above, inside = _value_bins(data.dtype.str, size, low, high)
        counts = np.bincount(bins, weights=per_value[inside], minlength=size)
        n_below, n_above = int(per_value[below].sum()), int(per_value[above].sum())
    else:
        bins, below, above, inside = _bins(flat.astype(np.float64), size, low, high)
        counts = np.bincount(bins, minlength=size).astype(np.float64)
        n_below, n_above = int(below.sum()), int(above.sum())
    positive = counts[counts > 0]
    entropy = -float(positive @ np.log(positive)) / max(flat.size, 1)
    return counts, n_below, n_above, entropy


def histogram_x(size: int, low: float, high: float) -> np.ndarray:
    """HistogramX_RBV as computeHistX gives it (from the unadjusted HistMax)."""
    size = max(size, 1)
    return low + np.arange(size) * ((high - low) / size)


def xy_axes(array: NDArray) -> tuple[int, int | None]:
    """numpy axes of x and y for MinX/MinY/MaxX/MaxY (y None for a 1-D array)."""
    nd = array.data.ndim
    if nd == 1:
        return 0, None
    x, y = xyz_dims(nd, array.color_mode)[:2]
    return nd - 1 - x, nd - 1 - y  # numpy axes run opposite to dims


# --- the plugin -----------------------------------------------------------------------------------


def _result(name: str) -> Param:
    return float_param(name, 0.0, RW, precision=PRECISION.get(name, 0),
                       rbv_name="Sigma_RBV" if name == "SigmaValue" else None,
                       group="Centroid" if name in CENTROID else "Statistics")


class Stats(Plugin):
    screen = "NDStats"
    kind = "stats"
    plugin_type = "NDPluginStats"
    Options = StatsOptions
    channels_aware = True  # statistics per channel (module docstring)

    def __init__(self, *args: Any, options: StatsOptions | None = None, **kw: Any) -> None:
        self.options = options or StatsOptions()
        self.ts = TimeSeries(list(TS_WAVEFORMS), self.options.nchans, sub="TS:")
        super().__init__(*args, **kw)
        self.ts.attach(self)
        self._image_size: tuple[int, int] | None = None  # (nx, ny) of the last 1-D/2-D array
        self._shown_channels = 1  # channels in the per-channel waveforms
        self.values["HistogramX_RBV"] = self._histogram_x()

    def declare(self) -> ParamTable:
        o = self.options
        table = super().declare()
        params = [
            bool_param("ComputeStatistics", default=1, group="Statistics"),
            int_param("BgdWidth", 1, group="Statistics"),
            *(_result(name) for name in STATISTICS),
            bool_param("ComputeCentroid", group="Centroid"),
            float_param("CentroidThreshold", 1.0, precision=0, group="Centroid"),
            *(_result(name) for name in CENTROID),
            bool_param("ComputeProfiles", group="Profiles"),
            int_param("ProfileSizeX_RBV", 0, R, group="Profiles"),
            int_param("ProfileSizeY_RBV", 0, R, group="Profiles"),
            int_param("MaxSizeX", 0, R, group="Profiles", doc="Follows ProfileSizeX_RBV"),
            int_param("MaxSizeY", 0, R, group="Profiles", doc="Follows ProfileSizeY_RBV"),
            int_param("CursorX", 256, group="Profiles"),
            int_param("CursorY", 256, group="Profiles"),
            float_param("CursorVal", 0.0, R, precision=1, group="Profiles"),
            *(array_param(f"Profile{kind}{axis}_RBV", "f8", o.xsize if axis == "X" else o.ysize,
                          group="Profiles") for kind in PROFILES for axis in "XY"),
            bool_param("ComputeHistogram", group="Histogram"),
            int_param("HistSize", min(256, o.hist_size), low=1, high=o.hist_size,
                      group="Histogram", doc="bins, at most the waveform length"),
            float_param("HistMin", 0.0, precision=0, group="Histogram"),
            float_param("HistMax", 255.0, precision=0, group="Histogram"),
            int_param("HistBelow", 0, group="Histogram"),
            int_param("HistAbove", 0, group="Histogram"),
            float_param("HistEntropy", 0.0, precision=3, group="Histogram"),
            array_param("Histogram_RBV", "f8", o.hist_size, group="Histogram"),
            array_param("HistogramX_RBV", "f8", o.hist_size, group="Histogram"),
            *(int_param(name, 0, W, group="Statistics", doc="Write to zero results")
              for name in RESETS),
            *self.ts.params(),
            int_param("NumChannels_RBV", 1, R, group="Channels",
                      doc="channels of the last frame (ndflow: multi-channel frames)"),
            *(array_param(_channel_pv(name), "f8", MAX_CHANNELS, group="Channels",
                          doc=f"{name} of each channel of the last multi-channel frame")
              for name in STATISTICS),
        ]
        for p in params:
            table.params[p.name] = p
        return table

    # --- puts -----------------------------------------------------------------------------------
    def put_HistSize(self, value: int) -> int:  # clamped to 1..hist_size by its declaration
        self.set("HistogramX_RBV", self._histogram_x(size=value))
        return value

    def put_HistMin(self, value: float) -> float:
        self.set("HistogramX_RBV", self._histogram_x(low=value))
        return value

    def put_HistMax(self, value: float) -> float:
        if value <= self.values["HistMin"]:
            self.message(f"HistMax {value:g} is not above HistMin; binning uses HistMin + 1")
        self.set("HistogramX_RBV", self._histogram_x(high=value))
        return value

    def put_CursorX(self, value: int) -> int:
        self._check_cursor("CursorX", value, 0)
        return value

    def put_CursorY(self, value: int) -> int:
        self._check_cursor("CursorY", value, 1)
        return value

    def _check_cursor(self, name: str, value: int, axis: int) -> None:
        if self._image_size is not None and not 0 <= value < self._image_size[axis]:
            edge = min(max(value, 0), self._image_size[axis] - 1)
            self.message(f"{name} {value} is outside the {self._image_size[axis]}-pixel image; "
                         f"profiles use {edge}")

    def _reset(self, first: str, value: int) -> int:
        names = list(RESETS)
        for group in names[names.index(first):]:  # Reset -> Reset1 -> Reset2 (FLNK chain)
            self.set_many(dict.fromkeys(RESETS[group], 0))
        return value

    def put_Reset(self, value: int) -> int:
        return self._reset("Reset", value)

    def put_Reset1(self, value: int) -> int:
        return self._reset("Reset1", value)

    def put_Reset2(self, value: int) -> int:
        return self._reset("Reset2", value)

    def _histogram_x(self, size: int | None = None, low: float | None = None,
                     high: float | None = None) -> np.ndarray:
        v = self.values
        out = histogram_x(v["HistSize"] if size is None else size,
                          v["HistMin"] if low is None else low,
                          v["HistMax"] if high is None else high)
        out.flags.writeable = False
        return out

    # --- data path ------------------------------------------------------------------------------
    def process(self, array: NDArray) -> NDArray:
        if len(array.channels) > 1:
            return self._process_channels(array)
        if self._shown_channels != 1:
            self._show_channels([])
        return self._process_one(array)

    def _process_channels(self, array: NDArray) -> NDArray:
        """All channels of a multi-channel frame: channel 1 as a frame of its own, then the
        statistics of every channel (module docstring)."""
        dims = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in array.dims[:-1]]
        first = self._process_one(array.derive(array.data[0], dims=dims, channels=()))
        out = array.derive(array.data)
        out.attributes = first.attributes
        if not self.frame_params["ComputeStatistics"] or array.data.size == 0:
            self._show_channels([], len(array.channels))
            return out
        width = int(self.frame_params["BgdWidth"])
        per_channel = [{name: first.attributes[name].value for name in STATISTICS}]
        per_channel += channel_statistics(array.data[1:], width)
        for label, results in zip(array.channels, per_channel):
            for name, source in STATISTICS.items():
                key = f"{name}_{label}"
                out.attributes[key] = NDAttribute(key, results[name], f"{name} of {label} "
                                                  "(Stats)", AttrSource.PARAM, source)
        self._show_channels(per_channel)
        return out

    def _show_channels(self, per_channel: list[dict[str, float]], count: int = 0) -> None:
        """The per-channel waveforms (empty for a single-channel frame, or when statistics
        are off) and the frame's channel count."""
        self._shown_channels = max(1, count or len(per_channel))
        values: dict[str, Any] = {"NumChannels_RBV": self._shown_channels}
        for name in STATISTICS:
            wave = np.array([r[name] for r in per_channel], dtype=np.float64)
            wave.flags.writeable = False
            values[_channel_pv(name)] = wave
        self.set_many(values)

    def _process_one(self, array: NDArray) -> NDArray:
        v = self.frame_params
        data = array.data
        if data.size == 0:
            self.message(f"array {array.unique_id} is empty; nothing computed")
            return array
        results: dict[str, float] = dict.fromkeys([*STATISTICS, *CENTROID], 0.0)
        published: dict[str, Any] = {}
        image = data.reshape(1, -1) if data.ndim == 1 else data if data.ndim == 2 else None
        want_stats, want_centroid = bool(v["ComputeStatistics"]), bool(v["ComputeCentroid"])
        want_profiles = bool(v["ComputeProfiles"])
        moments = image is not None and (want_centroid or want_profiles)
        sums = Scan()
        if want_stats or moments:
            target = image if image is not None else data.reshape(data.shape[0], -1)
            sums = scan(target, sums=want_stats,
                        threshold=float(v["CentroidThreshold"]) if moments else None,
                        profiles=moments and want_profiles)
        if want_stats:
            x_axis, y_axis = xy_axes(array)
            results.update(statistics(data, sums, x_axis, y_axis, int(v["BgdWidth"])))
            published.update({name: results[name] for name in STATISTICS})
        if moments:
            results.update(centroid(sums))
        if want_centroid:
            published.update({name: results[name] for name in CENTROID})
        if want_centroid or want_profiles:
            published.update(self._profile_sizes(array))
        if want_profiles and image is not None:
            published.update(self._profiles(image, sums, results))
        if v["ComputeHistogram"]:
            published.update(self._histogram(data))
        self.set_many(published)
        self.ts.record([array.timestamp if source is None else results[source]
                        for source in TS_WAVEFORMS.values()], array.timestamp)
        return self._output(array, published)

    def _profile_sizes(self, array: NDArray) -> dict[str, int]:
        """ADCore: x = dims[0], y = dims[1] (1 for a 1-D array), also for colour arrays."""
        size_x = array.dims[0].size if array.dims else array.data.shape[-1]
        size_y = array.dims[1].size if len(array.dims) > 1 else 1
        if array.data.ndim <= 2:
            self._image_size = (size_x, size_y)
        return {"ProfileSizeX_RBV": size_x, "ProfileSizeY_RBV": size_y,
                "MaxSizeX": size_x, "MaxSizeY": size_y}

    def _profiles(self, image: np.ndarray, sums: Scan, results: dict[str, float]
                  ) -> dict[str, Any]:
        waves, cursor_value = profiles(image, sums, results["CentroidX"], results["CentroidY"],
                                       int(self.frame_params["CursorX"]),
                                       int(self.frame_params["CursorY"]))
        out: dict[str, Any] = {"CursorVal": cursor_value}
        for key, wave in waves.items():
            limit = self.options.xsize if key.endswith("X") else self.options.ysize
            wave = np.ascontiguousarray(wave[:limit], dtype=np.float64)
            wave.flags.writeable = False
            out[f"Profile{key}_RBV"] = wave
        return out

    def _histogram(self, data: np.ndarray) -> dict[str, Any]:
        v = self.frame_params
        counts, below, above, entropy = histogram(data, int(v["HistSize"]),
                                                  float(v["HistMin"]), float(v["HistMax"]))
        counts.flags.writeable = False
        return {"Histogram_RBV": counts, "HistBelow": below, "HistAbove": above,
                "HistEntropy": entropy}

    def _output(self, array: NDArray, published: dict[str, Any]) -> NDArray:
        """The input array (data shared) with the computed results as attributes."""
        out = array.derive(array.data)
        for name, source in {**STATISTICS, **CENTROID}.items():
            if name in published:
                out.attributes[name] = NDAttribute(name, published[name], f"{name} (Stats)",
                                                   AttrSource.PARAM, source)
        for name, value in published.items():  # profiles, histogram: 1-D attributes (Table1)
            if isinstance(value, np.ndarray) and name.endswith("_RBV"):
                out.attributes[name[:-4]] = NDAttribute(name[:-4], value, f"{name[:-4]} (Stats)",
                                                        AttrSource.PARAM, name)
        return out  # the base adds this plugin's own NDAttributesFile attributes

    def periodic(self, elapsed: float) -> None:
        super().periodic(elapsed)
        self.ts.periodic()
