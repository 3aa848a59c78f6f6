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

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.channels import MAX_CHANNELS
from ndflow.ndarray import AttrSource, NDArray, NDAttribute, NDDimension
from ndflow.params import R, RW, W, Param, ParamTable, array_param, bool_param, float_param, \
    int_param
from ndflow.plugin import Plugin

from .stats_compute import (CENTROID, STATISTICS, Scan, _channel_pv, centroid,
                            channel_statistics, histogram, histogram_x, profiles, scan,
                            statistics, xy_axes)
from .timeseries import TimeSeries

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
        if not self.frame_settings["ComputeStatistics"] or array.data.size == 0:
            self._show_channels([], len(array.channels))
            return out
        width = int(self.frame_settings["BgdWidth"])
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
        v = self.frame_settings
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
                                       int(self.frame_settings["CursorX"]),
                                       int(self.frame_settings["CursorY"]))
        out: dict[str, Any] = {"CursorVal": cursor_value}
        for key, wave in waves.items():
            limit = self.options.xsize if key.endswith("X") else self.options.ysize
            wave = np.ascontiguousarray(wave[:limit], dtype=np.float64)
            wave.flags.writeable = False
            out[f"Profile{key}_RBV"] = wave
        return out

    def _histogram(self, data: np.ndarray) -> dict[str, Any]:
        v = self.frame_settings
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
