"""NDPluginProcess (`Proc1:`): background, flat field, offset/scale, clipping, recursive filter.

Follows ADCore's NDPluginProcess.cpp and NDProcess.template:

- If any step is enabled the array is converted to float64 and the steps run in ADCore's order:
  subtract the background; multiply by ScaleFlatField/flat where the flat is non-zero (a zero
  flat pixel is left as it is, so no inf/NaN); (value + Offset) * Scale; high clip, then low
  clip; the recursive filter. The result is C-cast (truncate, then wrap) to DataTypeOut
  (Automatic = the input's type). With nothing enabled the input is only converted.
- SaveBackground / SaveFlatField store the plugin's most recent *output* array (ADCore's
  pArrays[0]) as float64, so save it with the correction disabled, as ADCore's docs say.
  ValidBackground_RBV / ValidFlatField_RBV are re-evaluated for every array: a stored array
  of a different element count is not applied.
- The filter keeps one float64 array F and NumFiltered N (incremented up to NumFilter):
  on reset F = ROffset + RC1*F + RC2*I (F starts as a copy of the first input);
  O = OOffset + OScale*((OC1 + OC2/N)*F + (OC3 + OC4/N)*I);
  F = FOffset + FScale*((FC1 + FC2/N)*F + (FC3 + FC4/N)*I). A zero coefficient skips its term.
  ResetFilter is consumed by the next array, as in ADCore even when the filter is off.
  AutoResetFilter resets once N reached NumFilter; FilterCallbacks "Array N only" outputs an
  array only when N == NumFilter.
- FilterType writes the coefficient presets of the template's seq records; NumFilter rewrites
  the current type's preset (NumFilterRecip's FLNK). As in a booted ADCore IOC, where
  NumFilter's PINI runs that chain, the RecursiveAve preset is in force at start, so RC1 is 0
  although its record's VAL is 1.
- AutoOffsetScale (busy): the next array's min/max (of the input, before processing) set
  Offset = -min, Scale = (2**(8*bytes of output element) - 1)/(max - min), LowClipThresh 0,
  HighClipThresh the same maximum and enable offset/scale and both clips, for the arrays that
  follow; it then returns to Done, which completes a put-callback. As in ADCore the maximum
  assumes an unsigned type (a signed output wraps) and only the _RBVs show the new values.

- ReadBackgroundTIFFSeq / ReadFlatFieldTIFFSeq (ADCore: sseq records that point NDArrayPort at
  the `Proc1:TIFF:` reader, make it read its file, save it as background/flat and restore the
  port): a write of any value, or of their `.PROC` field as ADCore's screens do, reads the TIFF
  file named by `TIFF:FilePath`, `TIFF:FileName`, `TIFF:FileTemplate` and `TIFF:FileNumber`
  (ADCore's `Proc1:TIFF:` PV names, formatted as NDFile formats them) and puts it in force as
  the background or flat field. The file is read only under the data roots (no '..', no links,
  a regular file; ndflow.safepath), with tifffile, and its decoded size is checked before
  decoding; a file that cannot be used refuses the put with the reason (the previous background
  or flat stays). ndflow stores the file's pixels as they are, where ADCore's sequence passes
  them through this plugin first (so with corrections enabled ADCore would store a corrected
  file); no rewiring happens, so PortBackup only stores what a client writes.

Deliberate differences: a write of 0 to SaveBackground/SaveFlatField does nothing (ADCore saves
on any write); NumFilter < 1 is refused with a message and set to 1 (ADCore keeps the value and
uses 1, while NumFilterRecip becomes inf).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import tifffile

from ndflow import safepath
from ndflow.component import PutRefused

from ndflow.busy import Busy, finish, until
from ndflow.transport import HANDLED
from ndflow.dtypes import AUTOMATIC, DATA_TYPES_OUT, c_cast, output_dtype
from ndflow.ndarray import NDArray
from ndflow.params import R, W, Param, bool_param, enum_param, float_param, int_param, \
    string_param, text_param
from ndflow.plugin import Plugin
from ndflow.plugins.file_writer import WriteError, format_file_name

#: the largest background/flat TIFF read (file bytes, and decoded bytes)
MAX_TIFF_BYTES = 1 << 30

FILTER_TYPES = ("RecursiveAve", "Average", "Sum", "Difference", "RecursiveAveDiff", "CopyToFilter")
PRESET_COEFFICIENTS = ("OC1", "OC2", "OC3", "OC4", "FC1", "FC2", "FC3", "FC4", "RC1", "RC2")
RECIP = "1/N"  # a preset entry that takes NumFilterRecip
# NDProcess.template's <FilterType>Seq records: what each writes to PRESET_COEFFICIENTS.
FILTER_PRESETS: dict[str, tuple[float | str, ...]] = {
    "RecursiveAve": (1, -1, 0, 1, 1, -1, 0, 1, 0, 1),
    "Average": (1, 0, RECIP, 0, 1, 0, RECIP, 0, 0, 0),
    "Sum": (1, 0, 1, 0, 1, 0, 1, 0, 0, 0),
    "Difference": (-1, 0, 1, 0, 0, 0, 1, 0, 0, 1),
    "RecursiveAveDiff": (-1, 0, 1, 0, 1, -1, 0, 1, 0, 1),
    "CopyToFilter": (0, 0, 1, 0, 0, 0, 1, 0, 0, 1),
}
DEFAULT_COEFFICIENTS = {"OOffset": 0.0, "OScale": 1.0, "OC1": 1.0, "OC2": -1.0, "OC3": 0.0,
                        "OC4": 1.0, "FOffset": 0.0, "FScale": 1.0, "FC1": 1.0, "FC2": -1.0,
                        "FC3": 0.0, "FC4": 1.0, "ROffset": 0.0, "RC1": 1.0, "RC2": 1.0}


def filter_preset(filter_type: int, num_filter: int) -> dict[str, float]:
    """The coefficients FilterType `filter_type` writes when NumFilter is `num_filter`."""
    preset = FILTER_PRESETS[FILTER_TYPES[filter_type]]
    return {name: 1.0 / num_filter if v == RECIP else float(v)
            for name, v in zip(PRESET_COEFFICIENTS, preset)}


PROCESS_PARAMS: tuple[Param, ...] = (
    enum_param("DataTypeOut", DATA_TYPES_OUT, AUTOMATIC, group="Output",
               doc="Element type of the output; Automatic keeps the input's"),
    bool_param("SaveBackground", default=1, group="Background",
               doc="Store the last output array as the background"),
    bool_param("EnableBackground", "Disable", "Enable", group="Background"),
    bool_param("ValidBackground_RBV", "Invalid", "Valid", access=R, group="Background"),
    bool_param("SaveFlatField", default=1, group="Flat field",
               doc="Store the last output array as the flat field"),
    bool_param("EnableFlatField", "Disable", "Enable", group="Flat field"),
    bool_param("ValidFlatField_RBV", "Invalid", "Valid", access=R, group="Flat field"),
    float_param("ScaleFlatField", 255.0, precision=0, group="Flat field",
                doc="Multiplies array/flat"),
    bool_param("EnableOffsetScale", "Disable", "Enable", group="Offset and scale"),
    bool_param("AutoOffsetScale", "Done", "Calculating", access=W, coalesce=False,
               group="Offset and scale",
               doc="Set Offset/Scale from the next array so the output fills its type"),
    float_param("Offset", 0.0, precision=2, group="Offset and scale"),
    float_param("Scale", 1.0, precision=2, group="Offset and scale"),
    bool_param("EnableLowClip", "Disable", "Enable", group="Clipping"),
    float_param("LowClipThresh", 0.0, precision=0, group="Clipping"),
    float_param("LowClipValue", 0.0, precision=0, group="Clipping"),
    bool_param("EnableHighClip", "Disable", "Enable", group="Clipping"),
    float_param("HighClipThresh", 100.0, precision=0, group="Clipping"),
    float_param("HighClipValue", 100.0, precision=0, group="Clipping"),
    bool_param("EnableFilter", "Disable", "Enable", group="Filter"),
    bool_param("ResetFilter", default=1, group="Filter"),
    bool_param("AutoResetFilter", group="Filter"),
    bool_param("FilterCallbacks", "Every array", "Array N only", group="Filter"),
    int_param("NumFilter", 1, low=1, group="Filter"),
    float_param("NumFilterRecip", 1.0, R, precision=3, group="Filter", doc="1/NumFilter"),
    int_param("NumFiltered_RBV", 0, R, group="Filter"),
    enum_param("FilterType", FILTER_TYPES, 0, W, group="Filter",
               doc="Writes the coefficient preset of this filter type"),
    # The preset writes the setpoint records too (seq links), hence also_setpoint.
    *(float_param(name, value, precision=2, group="Filter",
                  also_setpoint=name in PRESET_COEFFICIENTS)
      for name, value in DEFAULT_COEFFICIENTS.items()),
    # ADCore's sseq records and the Proc1:TIFF: file-name PVs they read through
    int_param("ReadBackgroundTIFFSeq", 0, W, group="Background",
              doc="read the TIFF file named by TIFF:* as the background"),
    int_param("ReadBackgroundTIFFSeq.PROC", 0, W, group="Background",
              doc="processing the sequence (ADCore's screens write .PROC)"),
    int_param("ReadFlatFieldTIFFSeq", 0, W, group="Flat field",
              doc="read the TIFF file named by TIFF:* as the flat field"),
    int_param("ReadFlatFieldTIFFSeq.PROC", 0, W, group="Flat field"),
    string_param("PortBackup", "", W, group="TIFF file"),
    text_param("TIFF:FilePath", 256, "", group="TIFF file",
               doc="folder of the background/flat TIFF (under a data root)"),
    text_param("TIFF:FileName", 256, "", group="TIFF file"),
    text_param("TIFF:FileTemplate", 256, "%s%s_%3.3d.tif", group="TIFF file",
               doc="C printf format taking FilePath, FileName, FileNumber"),
    int_param("TIFF:FileNumber", 1, group="TIFF file"),
    text_param("TIFF:FullFileName_RBV", 512, "", R, group="TIFF file"),
)


@dataclass(frozen=True)
class Coefficients:
    """The recursive filter's coefficients, read once per array."""

    o_offset: float
    o_scale: float
    oc: tuple[float, float, float, float]
    f_offset: float
    f_scale: float
    fc: tuple[float, float, float, float]
    r_offset: float
    rc: tuple[float, float]

    @classmethod
    def of(cls, v: Mapping[str, Any]) -> "Coefficients":
        return cls(v["OOffset"], v["OScale"], tuple(v[f"OC{i}"] for i in range(1, 5)),
                   v["FOffset"], v["FScale"], tuple(v[f"FC{i}"] for i in range(1, 5)),
                   v["ROffset"], (v["RC1"], v["RC2"]))


def _combine(offset: float, a: float, x: np.ndarray, b: float, y: np.ndarray) -> np.ndarray:
    """offset + a*x + b*y, leaving out a term whose coefficient is 0 (as ADCore does, so an
    inf or NaN there does not leak through a zero weight)."""
    out = np.full(y.shape, offset, dtype=np.float64)
    if a:
        out += a * x
    if b:
        out += b * y
    return out


class RecursiveFilter:
    """The filter array F and the count N of arrays filtered since the last reset."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.num_filtered = 0

    def step(self, data: np.ndarray, c: Coefficients, num_filter: int, reset: bool,
             auto_reset: bool) -> np.ndarray:
        """Filter one float64 array; returns the output O and updates F and N."""
        if self.array is None or self.array.size != data.size:
            self.array = data.copy()
            reset = True
        f = self.array.reshape(data.shape)
        if auto_reset and self.num_filtered >= num_filter:
            reset = True
        if reset:
            f = _combine(c.r_offset, c.rc[0], f, c.rc[1], data)
            self.num_filtered = 0
        if self.num_filtered < num_filter:
            self.num_filtered += 1
        n = self.num_filtered
        o1, o2 = c.o_scale * (c.oc[0] + c.oc[1] / n), c.o_scale * (c.oc[2] + c.oc[3] / n)
        f1, f2 = c.f_scale * (c.fc[0] + c.fc[1] / n), c.f_scale * (c.fc[2] + c.fc[3] / n)
        out = _combine(c.o_offset, o1, f, o2, data)
        self.array = _combine(c.f_offset, f1, f, f2, data)
        return out


def flat_factor(flat: np.ndarray, scale: float) -> np.ndarray:
    """ScaleFlatField / flat, 1 where the flat is 0 (that pixel stays finite)."""
    return np.divide(scale, flat, out=np.ones_like(flat, dtype=np.float64), where=flat != 0)


def correct(data: np.ndarray, v: Mapping[str, Any], background: np.ndarray | None,
            factor: np.ndarray | None) -> np.ndarray:
    """Background, flat field (`factor` from flat_factor), offset/scale and clipping on a
    float64 array, in place."""
    if background is not None:
        data -= background.reshape(data.shape)
    if factor is not None:
        data *= factor.reshape(data.shape)
    if v["EnableOffsetScale"]:
        data += v["Offset"]
        data *= v["Scale"]
    if v["EnableHighClip"]:
        np.putmask(data, data > v["HighClipThresh"], v["HighClipValue"])
    if v["EnableLowClip"]:
        np.putmask(data, data < v["LowClipThresh"], v["LowClipValue"])
    return data


def _folder(value: str) -> str:
    """TIFF:FilePath stored with a trailing '/', as NDFile stores FilePath."""
    return value if not value or value.endswith("/") else value + "/"


class Process(Plugin):
    screen = "NDProcess"
    PARAMS = Plugin.PARAMS + (PROCESS_PARAMS,)
    kind = "process"
    plugin_type = "NDPluginProcess"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # ADCore never sets these driver parameters at start, so their readbacks read 0; the
        # records' VAL=1 is only what a bare .PROC writes.
        self.values.update(SaveBackground=0, SaveFlatField=0, ResetFilter=0)
        self.values.update(filter_preset(self.values["FilterType"], self.values["NumFilter"]))
        self._background: np.ndarray | None = None
        self._flat: np.ndarray | None = None
        self._factor: tuple[np.ndarray, float, np.ndarray] | None = None  # flat, scale, factor
        self._last_output: np.ndarray | None = None  # ADCore's pArrays[0]
        self._filter = RecursiveFilter()
        self._filter_lock = threading.Lock()
        self._auto = Busy()  # AutoOffsetScale=1 put-callbacks
        for name in ("ReadBackgroundTIFFSeq", "ReadBackgroundTIFFSeq.PROC"):
            self.put_hooks[name] = self._read_background_tiff
        for name in ("ReadFlatFieldTIFFSeq", "ReadFlatFieldTIFFSeq.PROC"):
            self.put_hooks[name] = self._read_flat_tiff
        self.put_hooks["TIFF:FilePath"] = _folder

    # --- processing ---------------------------------------------------------------------------------
    def process(self, array: NDArray) -> NDArray | None:
        v = self.frame_settings
        # one-shot commands the data path consumes: read live, not from the frozen set
        reset, auto = bool(self.values["ResetFilter"]), bool(self.values["AutoOffsetScale"])
        if reset:
            self.set("ResetFilter", 0)
        data_in = array.data
        background = self._reference(self._background, data_in.size, "ValidBackground_RBV",
                                     v["EnableBackground"])
        flat = self._reference(self._flat, data_in.size, "ValidFlatField_RBV",
                               v["EnableFlatField"])
        dtype = output_dtype(v["DataTypeOut"], data_in.dtype)
        if not (background is not None or flat is not None or auto or v["EnableFilter"]
                or v["EnableOffsetScale"] or v["EnableLowClip"] or v["EnableHighClip"]):
            self.set_if_changed({"NumFiltered_RBV": self._filter.num_filtered})
            return self._output(array, data_in, dtype)

        data = data_in.astype(np.float64)
        # ADCore measures the input, before any correction; an empty array counts as 0..1.
        low, high = (float(data.min()), float(data.max())) if auto and data.size else (0.0, 1.0)
        correct(data, v, background, None if flat is None else
                self._flat_factor(flat, float(v["ScaleFlatField"])))
        emit = True
        if v["EnableFilter"]:
            num_filter = max(1, v["NumFilter"])
            with self._filter_lock:
                data = self._filter.step(data, Coefficients.of(v), num_filter,
                                         reset, bool(v["AutoResetFilter"]))
                emit = not (v["FilterCallbacks"] and self._filter.num_filtered != num_filter)
        self.set_if_changed({"NumFiltered_RBV": self._filter.num_filtered})
        out = self._output(array, data, dtype) if emit else None
        if auto:
            if out is not None and high > low:
                self._apply_auto_offset_scale(low, high, dtype)
            if self._last_output is not None:
                self._auto_done()
        return out

    def _flat_factor(self, flat: np.ndarray, scale: float) -> np.ndarray:
        """Computed once per saved flat and scale, not per frame."""
        cached = self._factor
        if cached is None or cached[0] is not flat or cached[1] != scale:
            cached = self._factor = (flat, scale, flat_factor(flat, scale))
        return cached[2]

    def _reference(self, stored: np.ndarray | None, size: int, valid_name: str,
                   enabled: int) -> np.ndarray | None:
        """A stored background/flat if it fits this array (publishing its validity) and is
        enabled."""
        valid = stored is not None and stored.size == size
        self.set_if_changed({valid_name: int(valid)})
        return stored if valid and enabled else None

    def _output(self, array: NDArray, values: np.ndarray, dtype: np.dtype) -> NDArray:
        """`values` as `dtype` (a C cast), in a buffer from this plugin's pool (NoMemory when
        refused); the input's own data when nothing changes it (shared, never written)."""
        data = c_cast(values, dtype)
        if data is not array.data:
            buffer = self.output_buffer(data.shape, data.dtype)
            np.copyto(buffer, data)
            data = buffer
        self._last_output = data
        return array.derive(data)

    def _apply_auto_offset_scale(self, low: float, high: float, dtype: np.dtype) -> None:
        maximum = 2.0 ** (8 * dtype.itemsize) - 1
        self.set_many({"Scale": maximum / (high - low), "Offset": -low, "LowClipThresh": 0.0,
                       "HighClipThresh": maximum, "EnableOffsetScale": 1, "EnableLowClip": 1,
                       "EnableHighClip": 1})

    # --- AutoOffsetScale: a busy record ------------------------------------------------------------
    async def put_AutoOffsetScale(self, value: int) -> Any:
        """1 completes (put-callback) once an array has set Offset/Scale; 0 cancels."""
        if not value:
            self.set("AutoOffsetScale", 0)
            self._auto.release()
            return HANDLED
        waiting = self._auto.arm()
        self.set("AutoOffsetScale", 1)
        return await finish(waiting, self.publisher)

    def _auto_done(self) -> None:
        """Back to Done (processing thread); completes the waiting put-callbacks."""
        self.set("AutoOffsetScale", 0)
        self._auto.release()

    # --- commands -------------------------------------------------------------------------------------
    async def put_SaveBackground(self, value: int) -> int:
        if value:  # a frame-sized copy, by the plugin's owner between frames, not on the loop
            await until(self.between_frames(self._save_background))
        return 0

    async def put_SaveFlatField(self, value: int) -> int:
        if value:
            await until(self.between_frames(self._save_flat))
        return 0

    def _save_background(self) -> None:
        self._background = self._save("background", "ValidBackground_RBV")

    def _save_flat(self) -> None:
        self._flat = self._save("flat field", "ValidFlatField_RBV")

    def _save(self, what: str, valid_name: str) -> np.ndarray | None:
        last = self._last_output
        self.set(valid_name, int(last is not None))
        if last is None:
            self.message(f"no {what} saved: this plugin has not output an array yet",
                         logging.WARNING)
            return None
        self.message(f"{what} saved from the last output array ({last.size} elements)")
        return last.astype(np.float64)

    def put_FilterType(self, value: int) -> int:
        self.set_many(filter_preset(value, self.values["NumFilter"]))
        return value

    def put_NumFilter(self, value: int) -> int:  # at least 1 by its declaration
        self.set("NumFilterRecip", 1.0 / value)
        self.set_many(filter_preset(self.values["FilterType"], value))
        return value

    # --- ReadBackgroundTIFFSeq / ReadFlatFieldTIFFSeq ----------------------------------------------
    async def _read_background_tiff(self, value: int) -> int:
        await self._read_tiff("background", "ValidBackground_RBV", "_background")
        return 0

    async def _read_flat_tiff(self, value: int) -> int:
        await self._read_tiff("flat field", "ValidFlatField_RBV", "_flat")
        return 0

    async def _read_tiff(self, what: str, valid_name: str, slot: str) -> None:
        """Read the TIFF file the TIFF:* PVs name (off the event loop) and put it in force
        between frames; a file that cannot be used refuses the put with the reason."""
        v = self.values
        try:
            name = format_file_name(v["TIFF:FileTemplate"], v["TIFF:FilePath"],
                                    v["TIFF:FileName"], v["TIFF:FileNumber"])
        except WriteError as exc:
            raise PutRefused(f"{what} not read: {exc}") from None
        self.set("TIFF:FullFileName_RBV", name[:511])
        try:
            pixels = await asyncio.to_thread(self._load_tiff, name)
        except ValueError as exc:  # PathRefused and the reasons below
            raise PutRefused(f"{what} not read: {exc}") from None

        def install() -> None:
            setattr(self, slot, pixels)
            self.set(valid_name, 1)
        await until(self.between_frames(install))
        self.message(f"{what} read from {name} ({'x'.join(map(str, pixels.shape[::-1]))})")

    def _load_tiff(self, name: str) -> np.ndarray:
        """The first image of the TIFF file `name` as float64; only under the data roots."""
        if self.site is None:
            raise ValueError("no data_roots configured; TIFF files are read only under those")
        where = self.site.locate(name)  # PathRefused (a ValueError) outside the roots
        try:
            data = safepath.read_file(where, MAX_TIFF_BYTES)
        except FileNotFoundError:
            raise ValueError(f"{name}: no such file") from None
        except OSError as exc:
            raise ValueError(f"{name}: {exc.strerror or exc}") from None
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                nbytes = int(np.prod(page.shape)) * np.dtype(page.dtype).itemsize
                pixels = page.asarray() if nbytes <= MAX_TIFF_BYTES else None
        except Exception as exc:  # tifffile's errors; never quoted (they show file bytes)
            raise ValueError(f"{name}: not a readable TIFF file ({type(exc).__name__})") \
                from None
        if pixels is None:
            raise ValueError(f"{name}: {nbytes} bytes decoded is more than {MAX_TIFF_BYTES}")
        if pixels.dtype.kind not in "iuf" or pixels.size == 0:
            raise ValueError(f"{name}: {pixels.dtype} image; a background or flat field "
                             "needs numbers")
        return np.asarray(pixels, dtype=np.float64)
