"""ADSimDetector-compatible simulated detector.

The images follow ADSimDetector's simDetector.cpp (driver 2.11): a raw image of MaxSizeX x
MaxSizeY is computed in the selected data type, then the MinX/SizeX/BinX/ReverseX region is cut
out of it, binned by summing as NDArrayPool::convert does. LinearRamp starts at
`inc * (GainX*x + GainY*y)` with `inc = (type)(Gain * AcquireTime * 1000)` and adds `inc` every
frame until a simulation parameter changes (ResetImage). Integer types wrap like C casts.
ndflow addition: Offset and Noise (a uniform [0, Noise) background) are added in every mode,
and SimMode Offset&Noise is that background alone.

ndflow addition, multi-channel frames (ndflow.channels; EIGER2's two thresholds): with
NumChannels C > 1 (ColorMode Mono) each frame is (C, SizeY, SizeX), channels named
`options.channel_names` or threshold_1..C. Channel 1 is the ordinary frame above; channel j is
    channel_j = (type)(channel_1 * ChannelGain**(j-1) + (j-1) * ChannelOffset)
computed in float64 from channel 1's pixels and cast as a C cast (truncate, wrap; saturating at
the int64 range), so a higher threshold counts ChannelGain times fewer photons.

ndflow addition, detector modules (partial-frame dispatch, ndflow.cluster): `options.modules`
[X, Y] cuts the frame into a gap-free grid of X x Y equal tiles, module m being column m % X,
row m // X. In one process the option changes nothing (the frame is whole). In a cluster each
acquisition rank produces one module (`module`, set by ndflow.cluster): its frame is exactly the
whole frame's tile (same formula and uniqueIds; the timestamps are the rank's own clock, as each
module of a real detector stamps its own), its dims and transform place it on the detector, and
it carries the NDAttributes ModuleIndex, ModuleOffsetX, ModuleOffsetY (the tile's pixel offset
in the whole frame), so its file records where it goes. Each rank computes the whole raw image
and cuts its tile out: the random parts (Noise, PeakVariation) differ between modules.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ndflow import __version__
from ndflow.adcore import AD_BASE, DATA_TYPES, NDARRAY_BASE, NUMPY_DTYPES
from ndflow.channels import MAX_CHANNELS, check_names, default_names
from ndflow.driver import Driver, FrameContext
from ndflow.dtypes import c_cast, c_cast_scalar
from ndflow.graph import PortGraph
from ndflow.ndarray import AttrSource, NDArray, NDAttribute, NDDimension
from ndflow.params import R, RW, enum_param, float_param, initial_values, int_param, text_param
from ndflow.thread_nice import MAX_NICE, nice_current_thread
from ndflow.drivers.sim_ramp import PendingIncrements, one_pass, wrap_int
from ndflow.drivers.sim_region import (SIM_TO_ND_COLOR, Region, bin_sum, color_planes,
                                      module_tile, raw_shape)

SIM_COLOR_MODES = ("Mono", "RGB1", "RGB2", "RGB3")
LINEAR_RAMP, PEAKS, SINE, OFFSET_NOISE = range(4)

SIM_PARAMS = (
    enum_param("ColorMode", SIM_COLOR_MODES, 0, RW, group="Readout"),
    float_param("GainX", 1.0, precision=2, group="Simulation"),
    float_param("GainY", 1.0, precision=2, group="Simulation"),
    float_param("GainRed", 1.0, precision=2, group="Simulation"),
    float_param("GainGreen", 1.0, precision=2, group="Simulation"),
    float_param("GainBlue", 1.0, precision=2, group="Simulation"),
    int_param("Reset", 1, group="Simulation", doc="1 = recompute the base image at the next frame"),
    float_param("Offset", 0.0, precision=1, group="Simulation"),
    float_param("Noise", 0.0, precision=1, low=0.0, group="Simulation"),
    enum_param("SimMode", ("LinearRamp", "Peaks", "Sine", "Offset&Noise"), 0, group="Simulation"),
    int_param("PeakStartX", 1, group="Peaks"),
    int_param("PeakStartY", 1, group="Peaks"),
    # At most 100 x 100 peaks: each is a step of a Python loop in the acquisition thread (up to
    # ~50 us); 2**31 of them held a frame, and a Stop, for hours.
    int_param("PeakNumX", 1, low=0, high=100, group="Peaks"),
    int_param("PeakNumY", 1, low=0, high=100, group="Peaks"),
    int_param("PeakStepX", 1, group="Peaks"),
    int_param("PeakStepY", 1, group="Peaks"),
    int_param("PeakWidthX", 10, low=1, group="Peaks"),
    int_param("PeakWidthY", 20, low=1, group="Peaks"),
    # Heights vary by up to 10x at most; the percentage is drawn as an int64 random number,
    # which 1e300 % is not.
    float_param("PeakVariation", 3.0, precision=1, low=0.0, high=1000.0, units="%", group="Peaks"),
    *(p for axis in "XY" for p in (
        enum_param(f"{axis}SineOperation", ("Add", "Multiply"), 0, group="Sine"),
        float_param(f"{axis}Sine1Amplitude", 1.0, precision=2, group="Sine"),
        float_param(f"{axis}Sine1Frequency", 1.0, precision=2, group="Sine"),
        float_param(f"{axis}Sine1Phase", 0.0, precision=2, group="Sine"),
        float_param(f"{axis}Sine2Amplitude", 1.0, precision=2, group="Sine"),
        float_param(f"{axis}Sine2Frequency", 2.0, precision=2, group="Sine"),
        float_param(f"{axis}Sine2Phase", 90.0, precision=2, group="Sine"),
    )),
)
#: ndflow: multi-channel frames (module docstring); applied at the next acquisition
CHANNEL_PARAMS = (
    int_param("NumChannels", 1, low=1, high=MAX_CHANNELS, group="Channels",
              doc="channels per frame (ColorMode Mono): 1 = an ordinary frame"),
    float_param("ChannelGain", 0.5, precision=3, low=0.0, high=10.0, group="Channels",
                doc="channel j = channel 1 * ChannelGain**(j-1) + (j-1) * ChannelOffset"),
    float_param("ChannelOffset", 0.0, precision=1, low=-1e9, high=1e9, group="Channels",
                doc="added (j-1) times to channel j"),
    text_param("ChannelNames_RBV", 256, "", R, group="Channels",
               doc="the channel names of the last acquisition, space separated"),
)
# Writing any of these recomputes the base image (simDetector::writeInt32/writeFloat64).
_RESETTING = {p.name for p in SIM_PARAMS} | {"DataType", "ColorMode"}


class SimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_size_x: int = Field(1024, ge=1, le=65536)
    max_size_y: int = Field(1024, ge=1, le=65536)
    data_type: str = Field("UInt8", description="initial DataType: " + ", ".join(DATA_TYPES))
    values: dict[str, Any] = Field(
        default_factory=dict, description="initial values of its PVs, by setpoint name, as a "
        "client would write them (e.g. {SimMode: Peaks, Gain: 200})")
    channel_names: list[str] = Field(
        default_factory=list, max_length=MAX_CHANNELS, description="names of channels "
        "1..NumChannels (identifiers); missing ones are threshold_<j>")

    modules: tuple[int, int] = Field(
        (1, 1), description="[X, Y]: the sensor as a gap-free grid of X x Y equal modules "
        "(tiles); in a cluster each acquisition rank produces one (partial-frame dispatch)")
    nice: int = Field(0, ge=0, le=MAX_NICE, description="nice value of the thread making "
                      "frames (Linux; 0 = the IOC's): a free-running sim yields CPU to the "
                      "server and its clients")

    @field_validator("channel_names")
    @classmethod
    def _identifiers(cls, names: list[str]) -> list[str]:
        return list(check_names(names))

    @field_validator("modules")
    @classmethod
    def _grid(cls, grid: tuple[int, int], info: ValidationInfo) -> tuple[int, int]:
        for axis, n, size in (("X", grid[0], info.data.get("max_size_x")),
                              ("Y", grid[1], info.data.get("max_size_y"))):
            if n < 1 or n > 64:
                raise ValueError(f"{n} modules across {axis}: 1 to 64")
            if size is not None and size % n:
                raise ValueError(f"{n} modules do not divide the sensor's {size} pixels "
                                 f"across {axis}")
        return grid


class SimDetector(Driver):
    screen = "simDetector"
    PARAMS = (NDARRAY_BASE, AD_BASE, SIM_PARAMS, CHANNEL_PARAMS)
    kind = "sim"
    Options = SimOptions
    manufacturer = "Simulated detector"
    model = "Basic simulator"
    driver_version = __version__
    shares_frames = True  # frame_steps moves the image on as one process's frames would
    bounded_frame_time = True

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 options: SimOptions | None = None, **kw: Any) -> None:
        super().__init__(port, prefix, graph, pool_bytes, **kw)
        opts = options or SimOptions()
        if opts.data_type not in DATA_TYPES:
            raise ValueError(f"data_type {opts.data_type!r} is not one of {', '.join(DATA_TYPES)}")
        given = tuple(opts.channel_names)
        self.channel_names = given + default_names(MAX_CHANNELS)[len(given):]
        self.values.update({
            "MaxSizeX_RBV": opts.max_size_x, "MaxSizeY_RBV": opts.max_size_y,
            "SizeX": opts.max_size_x, "SizeY": opts.max_size_y,
            "ArraySizeX_RBV": opts.max_size_x, "ArraySizeY_RBV": opts.max_size_y,
            "DataType": DATA_TYPES.index(opts.data_type), "ImageMode": 2,
            "AcquireTime": 0.001, "AcquirePeriod": 0.005, "NumImages": 100,
            "SDKVersion_RBV": __version__, "SerialNumber_RBV": "No serial number",
            "FirmwareVersion_RBV": "No firmware",
        })
        self.params.override("MinX", high=opts.max_size_x - 1)
        self.params.override("MinY", high=opts.max_size_y - 1)
        self.values.update(initial_values(
            self.params, opts.values,
            lambda name: hasattr(self, f"put_{name}") or name in self.put_hooks))
        self._raw: np.ndarray | None = None
        #: integer Mono LinearRamp: increments not yet added to _raw (ndflow.drivers.sim_ramp)
        self._pending = PendingIncrements()
        self._background: np.ndarray | None = None
        self._sine_counter = np.zeros(2, dtype=np.int64)
        self._rng = np.random.default_rng()
        self._inc_key: tuple | None = None
        self._inc: Any = None
        self._region: tuple[Mapping[str, Any], Region] | None = None
        self.module_grid: tuple[int, int] = tuple(opts.modules)  # type: ignore[assignment]
        #: the module this process produces (set by ndflow.cluster), None: the whole frame
        self.module: int | None = None
        #: ndflow.cluster, several ranks sharing whole frames: (this frame resets the image) ->
        #: how many frames the image moves on for it (the frames other ranks made in between
        #: count); None: 1, every frame is this process's
        self.frame_steps: Callable[[bool], int] | None = None
        self._nice, self._niced_thread = opts.nice, 0

    def color_mode_of(self, params: Mapping[str, Any]) -> int:
        return SIM_TO_ND_COLOR[int(params["ColorMode"])]

    # --- parameter writes ---------------------------------------------------------------------------
    def handle_put(self, param, raw, source=None):  # type: ignore[override]
        if param.name in _RESETTING and param.name != "Reset":
            self.values["Reset"] = 1
            self.set("Reset", 1)
        return super().handle_put(param, raw, source)

    # --- acquisition --------------------------------------------------------------------------------
    def prepare(self, settings: dict[str, Any]) -> None:
        """Clamp the region as simDetector::computeImage does, publishing the corrected values."""
        if self._nice and self._niced_thread != threading.get_native_id():
            self._niced_thread = threading.get_native_id()  # prepare runs on that thread
            problem = nice_current_thread(self._nice)
            if problem:
                self.message(f"options.{problem}", logging.WARNING)
        p = settings
        max_x, max_y = p["MaxSizeX_RBV"], p["MaxSizeY_RBV"]
        fixes = {}
        for axis, maximum in (("X", max_x), ("Y", max_y)):
            lo = min(max(p[f"Min{axis}"], 0), maximum - 1)
            size = min(p[f"Size{axis}"], maximum - lo)
            fixes[f"Min{axis}"], fixes[f"Size{axis}"] = lo, size
            fixes[f"Bin{axis}"] = max(1, p[f"Bin{axis}"])
        for name, value in fixes.items():
            if value != settings[name]:
                self.set(name, value)
        settings.update(fixes)
        channels = int(p.get("NumChannels", 1))
        if channels > 1 and int(p["ColorMode"]) != 0:
            self.message(f"NumChannels {channels} needs ColorMode Mono: this acquisition makes "
                         "1 channel")
            settings["NumChannels"] = channels = 1
        self.set("ChannelNames_RBV", " ".join(self.channel_names[:channels]))
        if self.module is not None:
            gx, gy = self.module_grid
            width, height = settings["SizeX"] // settings["BinX"], settings["SizeY"] // settings["BinY"]
            if width % gx or height % gy:
                raise ValueError(f"the {gx}x{gy} modules do not divide the {width}x{height} "
                                 "frame (SizeX/BinX, SizeY/BinY)")

    def produce_frame(self, ctx: FrameContext) -> NDArray | None:
        p = ctx.settings
        if not ctx.wait(float(p["AcquireTime"])):
            return None
        dtype = NUMPY_DTYPES[int(p["DataType"])]
        self._compute_raw(p, dtype)
        return self._extract_region(p, dtype)

    def _compute_raw(self, p: Mapping[str, Any], dtype: np.dtype) -> None:
        color = int(p["ColorMode"])
        shape = raw_shape(p["MaxSizeX_RBV"], p["MaxSizeY_RBV"], color)
        reset = bool(self.values["Reset"]) or self._raw is None or \
            self._raw.shape != shape or self._raw.dtype != dtype
        if reset:
            self._raw = np.zeros(shape, dtype=dtype)
            self._pending.clear()
            self._background = self._make_background(p, shape, dtype)
            self._sine_counter[:] = 0
            self.values["Reset"] = 0
            self.set("Reset", 0)
        mode = int(p["SimMode"])
        skip = 0 if self.frame_steps is None else self.frame_steps(reset) - 1
        if mode != LINEAR_RAMP or not one_pass(dtype, color):
            self._pending.fold(self._raw)
        if mode == LINEAR_RAMP:
            self._linear_ramp(p, dtype, color, reset)
            if skip and dtype.kind in "iu":  # one add of skip x inc wraps as skip adds do
                self._linear_ramp(p, dtype, color, False, skip)
            else:
                for _ in range(skip):  # floats: one add per frame skipped rounds as they do
                    self._linear_ramp(p, dtype, color, False)
        elif mode == PEAKS:
            self._peaks(p, dtype, color)
        elif mode == SINE:
            self._sine(p, dtype, color, skip)  # the skipped frames move its counters on
        else:
            self._raw[...] = 0
        if self._background is not None and (mode != LINEAR_RAMP or reset):
            # A ramp accumulates, so it gets the background once, on its reset frame.
            start = int(self._rng.integers(0, self._background.size))
            self._raw += np.roll(self._background.reshape(-1), -start).reshape(shape)
        if reset and mode == LINEAR_RAMP and one_pass(dtype, color):
            self._pending.rebase(self._raw)

    def _make_background(self, p: Mapping[str, Any], shape: tuple[int, ...],
                         dtype: np.dtype) -> np.ndarray | None:
        noise, offset = float(p["Noise"]), float(p["Offset"])
        if noise == 0 and c_cast_scalar(offset, dtype) == 0:
            return None
        values = offset + noise * self._rng.random(shape)
        return c_cast(values, dtype)

    def _linear_ramp(self, p: Mapping[str, Any], dtype: np.dtype, color: int,
                     reset: bool, times: int = 1) -> None:
        """`times` (integer types only, not on a reset): the add of that many frames."""
        inc = self._increment(float(p["Gain"]) * float(p["AcquireTime"]) * 1000.0, dtype)
        if color == 0:
            if reset:
                ny, nx = self._raw.shape
                ramp = _ramp(nx, ny, p)
                self._raw[...] = c_cast(float(inc) * ramp, dtype)
            elif one_pass(dtype, color):
                self._pending.add(int(inc) * times)  # written with the region
            else:
                self._raw += _times(inc, times, dtype)
            return
        incs = [_color_increment(float(p[g]), inc, dtype) for g in ("GainRed", "GainGreen", "GainBlue")]
        planes = color_planes(self._raw, color)
        if reset:
            ramp = _ramp(planes[0].shape[1], planes[0].shape[0], p)
            for plane, c_inc in zip(planes, incs):
                plane[...] = c_cast(float(c_inc) * ramp, dtype)
        else:
            for plane, c_inc in zip(planes, incs):
                plane += _times(c_inc, times, dtype)

    def _increment(self, value: float, dtype: np.dtype) -> Any:
        """scalar_cast of the ramp increment, cached: it is the same for every frame."""
        key = (value, dtype)
        if self._inc_key != key:
            self._inc_key, self._inc = key, c_cast_scalar(value, dtype)
        return self._inc

    def _peaks(self, p: Mapping[str, Any], dtype: np.dtype, color: int) -> None:
        self._raw[...] = 0
        planes = [self._raw] if color == 0 else color_planes(self._raw, color)
        ny, nx = planes[0].shape
        gain, gx, gy = float(p["Gain"]), float(p["GainX"]), float(p["GainY"])
        wx, wy = max(1, int(p["PeakWidthX"])), max(1, int(p["PeakWidthY"]))
        variation = int(p["PeakVariation"])
        color_gains = [1.0] if color == 0 else [float(p[g]) for g in
                                                 ("GainRed", "GainGreen", "GainBlue")]
        for i in range(int(p["PeakNumY"])):
            for j in range(int(p["PeakNumX"])):
                g_var = 1.0 + (int(self._rng.integers(0, variation)) + 1) / 100.0 \
                    if variation else 1.0
                cy = i * int(p["PeakStepY"]) + int(p["PeakStartY"])
                cx = j * int(p["PeakStepX"]) + int(p["PeakStartX"])
                y0, y1 = max(cy - 4 * wy, 0), min(cy + 4 * wy, ny)
                x0, x1 = max(cx - 4 * wx, 0), min(cx + 4 * wx, nx)
                if y0 >= y1 or x0 >= x1:
                    continue
                gauss_y = gy * np.exp(-(((np.arange(y0, y1) - cy) / wy) ** 2) / 2.0)
                gauss_x = gx * np.exp(-(((np.arange(x0, x1) - cx) / wx) ** 2) / 2.0)
                peak = g_var * gain * np.outer(gauss_y, gauss_x)
                for plane, cg in zip(planes, color_gains):
                    plane[y0:y1, x0:x1] += c_cast(cg * peak, dtype)

    def _sine(self, p: Mapping[str, Any], dtype: np.dtype, color: int, skip: int = 0) -> None:
        """`skip`: frames other ranks made since this one's last (their counters' moves)."""
        ny, nx = (color_planes(self._raw, color)[0] if color else self._raw).shape
        waves = {}
        for k, (axis, n, gain_axis) in enumerate((("X", nx, "GainX"), ("Y", ny, "GainY"))):
            self._sine_counter[k] += n * skip
            t = (self._sine_counter[k] + np.arange(n)) * float(p[gain_axis]) / n
            self._sine_counter[k] += n
            for s in ("1", "2"):
                amp, freq, phase = (float(p[f"{axis}Sine{s}{f}"]) for f in
                                    ("Amplitude", "Frequency", "Phase"))
                waves[axis + s] = amp * np.sin((t * freq + phase / 360.0) * 2.0 * np.pi)
        gain = float(p["Gain"])
        if color == 0:
            x = waves["X1"] + waves["X2"] if p["XSineOperation"] == 0 else waves["X1"] * waves["X2"]
            y = waves["Y1"] + waves["Y2"] if p["YSineOperation"] == 0 else waves["Y1"] * waves["Y2"]
            self._raw[...] = c_cast(gain * (y[:, None] + x[None, :]), dtype)
            return
        red, green, blue = color_planes(self._raw, color)
        red[...] = c_cast(np.broadcast_to(gain * float(p["GainRed"]) * waves["X1"],
                                             (ny, nx)), dtype)
        green[...] = c_cast(np.broadcast_to((gain * float(p["GainGreen"]) * waves["Y1"])
                                               [:, None], (ny, nx)), dtype)
        blue[...] = c_cast(gain * float(p["GainBlue"]) *
                              (waves["X2"][None, :] + waves["Y2"][:, None]) / 2.0, dtype)

    def _extract_region(self, p: Mapping[str, Any], dtype: np.dtype) -> NDArray:
        cached = self._region
        if cached is None or cached[0] is not p:  # worked out once per acquisition
            region = Region.of(p, self._raw.ndim)
            if self.module is not None:
                region = region.tile(self.module, module_tile(self.module_grid, self.module,
                                                              region.nx, region.ny))
            cached = self._region = (p, region)
        r = cached[1]
        channels = int(p.get("NumChannels", 1))
        out = self.output_buffer(r.shape if channels == 1 else (channels, *r.shape), dtype)
        region = self._raw[r.index]
        if r.bx > 1 or r.by > 1:
            region = bin_sum(self._pending.shifted(region), r.x_axis, r.y_axis, r.bx, r.by,
                             dtype)
        if r.flips is not None:
            region = region[r.flips]
        if r.crop is not None:
            region = region[r.crop]
        if r.bx > 1 or r.by > 1:
            np.copyto(out if channels == 1 else out[0], region, casting="unsafe")
        else:  # the ramp's pending increments added as the pixels are copied: one pass
            self._pending.write(region, out if channels == 1 else out[0],
                                (r.index, r.flips, r.crop))
        if channels == 1:
            frame = NDArray(out, dims=list(r.dims), color_mode=SIM_TO_ND_COLOR[r.color],
                            transform=r.transform)
        else:
            fill_channels(out, float(p["ChannelGain"]), float(p["ChannelOffset"]))
            frame = NDArray(out, dims=[*r.dims, NDDimension(channels)], transform=r.transform,
                            channels=self.channel_names[:channels])
        if r.module is not None:
            frame.attributes.update(_module_attributes(r.module, r.tile_x0, r.tile_y0))
        return frame

    def module_attributes(self, module: int) -> dict[str, NDAttribute]:
        """Module `module`'s attributes as its rank would give them with the current
        parameters (the tile's offsets in the frame's region)."""
        if self.module_grid == (1, 1):
            return {}
        region = Region.of(self.values, self._raw.ndim if self._raw is not None else
                           (2 if int(self.values["ColorMode"]) == 0 else 3))
        x0, y0, _, _ = module_tile(self.module_grid, module, region.nx, region.ny)
        return _module_attributes(module, x0, y0)


def _module_attributes(module: int, x0: int, y0: int) -> dict[str, NDAttribute]:
    return {name: NDAttribute(name, value, text, AttrSource.DRIVER)
            for name, value, text in (("ModuleIndex", module, "detector module"),
                                      ("ModuleOffsetX", x0, "module's X offset"),
                                      ("ModuleOffsetY", y0, "module's Y offset"))}


def fill_channels(frame: np.ndarray, gain: float, offset: float) -> None:
    """Channels 2..C of a (C, H, W) frame from channel 1 (the module docstring's formula)."""
    first = frame[0].astype(np.float64)
    for j in range(1, frame.shape[0]):
        values = first * gain ** j + j * offset
        if frame.dtype.kind != "f":
            values = np.clip(np.trunc(values), -2.0 ** 63, 2.0 ** 63 - 2048)
        frame[j] = values.astype(np.int64).astype(frame.dtype) if frame.dtype.kind != "f" \
            else values.astype(frame.dtype)


def _color_increment(color_gain: float, inc: Any, dtype: np.dtype) -> Any:
    """`(epicsType) gainRed * incMono`: the gain is cast to the pixel type before multiplying."""
    if dtype.kind == "f":
        return dtype.type(color_gain * float(inc))
    return c_cast_scalar(float(int(c_cast_scalar(color_gain, dtype)) * int(inc)), dtype)


def _ramp(nx: int, ny: int, p: Mapping[str, Any]) -> np.ndarray:
    return float(p["GainX"]) * np.arange(nx)[None, :] + float(p["GainY"]) * np.arange(ny)[:, None]


def _times(inc: Any, times: int, dtype: np.dtype) -> Any:
    """`times` adds of the integer increment `inc` as one value of `dtype`, wrapped as the
    adds wrap."""
    return inc if times == 1 else wrap_int(int(inc) * times, dtype)
