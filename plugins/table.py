"""The table writer (`Table1:`): 0-D and 1-D results of every frame, as HDF5 columns.

Why: Stats values, profiles, histograms and a Python algorithm's outputs travel with each frame
as NDAttributes, and an image writer keeps only the scalar ones, beside pixels that may not be
wanted at all. Lima2 saves "any stage"; this writer saves the results of a stage, one row per
frame, keyed by uniqueId, in the NDFile way (FilePath, FileName, FileNumber, FileTemplate,
Capture, NumCapture, FileWriteMode, the data roots: all from `FileWriter`).

Layout, in the group `/entry/<GroupName>` (default `/entry/table`), every dataset growing one
row per frame:
- `uniqueId` (int64), `timestamp` (EPICS epoch seconds), `status` (0 valid, else the code of
  the frame's MissingCause as in HDF1's NDArrayStatus), `cause` and `message` (text): a lost frame
  is a row too, with its cause; no frame that reached the writer is left out.
- `values/<attribute>`: each scalar NDAttribute (numbers as float64, text as strings), NaN
  (or "") where a frame did not have it, lost frames included. A column that first appears
  later is created then, its earlier rows NaN.
- `arrays/<attribute>`: each 1-D attribute (Stats' ProfileAverageX, Histogram, an algorithm's
  array output) as a (frames, length) float64 dataset, NaN-padded, with `lengths/<attribute>`.
- `logs/<pv>`: asynchronous metadata. The PVs named in LogPVs (Channel Access, or `pva://`)
  are monitored while the file is open (`ndflow.pvwatch`, never on the frame path): with
  LogPeriod 0 every update is logged, otherwise the latest value every LogPeriod seconds;
  `time` (POSIX seconds) and `value` datasets.
- attributes of the group: static metadata, once per file: `ndflow_version`, `config` (the
  IOC's effective configuration, JSON), `detector` (the driver's identity and sizes, JSON).
- `acquisitions/<id>`: per acquisition, its effective parameter sets (`driver`, `pipeline`,
  as HDF1 records them), `frames`, `state`, the acquisition's start and stop (POSIX seconds:
  Acquire=1 and the driver's last frame, `start_time`, `stop_time`) and the times of the first
  and last frames written here (`first_frame_time`, `last_frame_time`).
Per-frame metadata are the attributes themselves.

Several writers per file: point Table1 and HDF1 at the same FilePath/FileName and they write
one file (HDF1's `/entry/data`, Table1's `/entry/table`), through `ndflow.plugins.h5share`
(one owner of the file handle, refcounted; see there for a writer that opens after the other
closed). Otherwise each writes its own file.

Rows are kept in memory and written in blocks (every 64 rows, at FlushNow, NumFramesFlush and
close) under the shared file's lock, as HDF1 does for its attribute columns.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from ndflow import __version__, pvwatch
from ndflow.component import PutRefused
from ndflow.ndarray import MissingCause, NDArray
from ndflow.params import R, RW, W, bool_param, enum_param, float_param, int_param, text_param
from ndflow.plugins.file_writer import FileWriter, WriteError
from ndflow.plugins.h5share import file_lock
from ndflow.plugins.hdf5 import acquisition_record
from ndflow.plugins.pv_log import MAX_LOG_PVS, PVLog, log_pv_names

#: the code of each cause in the `status` column (HDF1's NDArrayStatus codes)
MISSING_CODES = {cause: i + 1 for i, cause in enumerate(MissingCause)}
#: rows are written in blocks of this many
BLOCK = 64
#: groups of /entry that belong to the image writer: refused as GroupName
_RESERVED = {"data", "instrument", "ndflow"}
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DETECTOR_KEYS = ("Manufacturer_RBV", "Model_RBV", "SerialNumber_RBV", "FirmwareVersion_RBV",
                  "SDKVersion_RBV", "DriverVersion_RBV", "ADCoreVersion_RBV", "MaxSizeX_RBV",
                  "MaxSizeY_RBV", "DataType", "ColorMode", "AcquireTime", "AcquirePeriod",
                  "NumImages", "ImageMode")

TABLE_PARAMS = (
    enum_param("FileFormat", ("HDF5", "Invalid"), 0, RW, rbv_choices=("HDF5", "Undefined"),
               group="File"),
    text_param("GroupName", 256, "table", RW, group="Table",
               doc="the table's group: /entry/<GroupName> (letters, digits, _)"),
    text_param("LogPVs", 1024, "", RW, group="Table",
               doc="PVs logged while a file is open, separated by spaces or commas "
                   f"(at most {MAX_LOG_PVS}; pva://NAME over pvAccess)"),
    float_param("LogPeriod", 0.0, RW, precision=2, low=0.0, high=3600.0, units="s",
                group="Table", doc="0: log every update; T: the latest value every T s"),
    int_param("NumFramesFlush", 0, RW, low=0, group="Table",
              doc="write and flush every N rows (0: every 64 rows, at FlushNow and close)"),
    bool_param("FlushNow", "Done", "Flush", 0, W, group="Table"),
    int_param("NumColumns_RBV", 0, R, group="Table", doc="value and array columns in the file"),
    int_param("NumLogged_RBV", 0, R, group="Table", doc="PV samples logged in the file"),
    int_param("LogPVsConnected_RBV", 0, R, group="Table",
              doc="PVs of LogPVs that have a value (a misspelt name never connects)"),
)


class Table(FileWriter):
    kind = "table"
    plugin_type = "NDFileTable"
    PARAMS = (*FileWriter.PARAMS, TABLE_PARAMS)
    extension = ".h5"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._file: Any = None  # a SharedH5File
        self._group: h5py.Group | None = None
        self._rows: list[tuple] = []  # rows not yet written
        self._written = 0  # rows in the file
        self._values: dict[str, h5py.Dataset] = {}
        self._arrays: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._fixed: dict[str, h5py.Dataset] = {}
        self._acquisitions: dict[int, Any] = {}
        self._times: dict[int, list[float]] = {}  # acquisition id -> [first, last] POSIX
        self._skipped: set[str] = set()  # attributes with no column (said once per file)
        self._since_flush = 0
        # asynchronous logs (the clients' threads queue samples; the writer drains them)
        self._log = PVLog(f"{self.port}-log", self.message)
        self._logs: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}

    # --- puts: checked on the event loop, nothing to wait for ---------------------------------
    def put_GroupName(self, value: str) -> str:
        name = value.strip()
        if not _GROUP_NAME.match(name) or name in _RESERVED:
            message = (f"GroupName {name[:40]!r}: letters, digits and _ (at most 64), not "
                       f"{', '.join(sorted(_RESERVED))}")
            self._fail(message)
            raise PutRefused(message)
        return name

    def put_LogPVs(self, value: str) -> str:
        try:
            names = log_pv_names(value)
            for name in names:  # monitors start now, so they are connected when a file opens
                pvwatch.shared().watch(name)
        except ValueError as exc:  # PVNameError too
            self._fail(f"LogPVs: {exc}")
            raise PutRefused(f"LogPVs: {exc}") from None
        return " ".join(names)

    def periodic(self, elapsed: float) -> None:
        """LogPVsConnected_RBV: an operator sees a name that never connects before a file
        misses its log (the monitors started at the put)."""
        super().periodic(elapsed)
        watch = pvwatch.shared()
        connected = sum(watch.latest(name) is not None for name in self.values["LogPVs"].split())
        self.set_if_changed({"LogPVsConnected_RBV": connected})

    # --- the format -----------------------------------------------------------------------------
    def open_file(self, path: Path, first: NDArray) -> None:
        v = self.values  # a file's layout: the user values when it opens (as HDF1)
        name = v["GroupName"]
        file = self.open_hdf5(path, libver="earliest")
        try:
            with file_lock(file):
                entry = file.require_group("entry")
                entry.attrs.setdefault("NX_class", "NXentry")
                if name in entry:
                    raise WriteError(f"cannot open {path}: /entry/{name} is already in the "
                                     "file (another table writer?): set GroupName")
                group = entry.create_group(name)
                group.attrs["NX_class"] = "NXcollection"
                group.attrs["creator"] = f"ndflow {self.plugin_type} ({self.port})"
                group.attrs["ndflow_version"] = __version__
                site = self.site
                group.attrs["config"] = site.config_json if site is not None else ""
                group.attrs["detector"] = json.dumps(detector_info(first))
                self._fixed = {
                    "uniqueId": _column(group, "uniqueId", np.dtype("i8"), 0),
                    "timestamp": _column(group, "timestamp", np.dtype("f8"), math.nan),
                    "status": _column(group, "status", np.dtype("i1"), 0),
                    "cause": _column(group, "cause", h5py.string_dtype(), ""),
                    "message": _column(group, "message", h5py.string_dtype(), ""),
                }
                self._fixed["status"].attrs["meaning"] = "0 valid; " + "; ".join(
                    f"{code} {cause.value}" for cause, code in MISSING_CODES.items())
                self._fixed["timestamp"].attrs["units"] = "s since 1990-01-01 (EPICS epoch)"
                group.require_group("values")
                group.require_group("arrays")
                group.require_group("lengths")
                group.require_group("logs")
        except BaseException:
            file.close()
            raise
        self._file, self._group = file, group
        self._rows, self._written, self._since_flush = [], 0, 0
        self._values, self._arrays, self._logs = {}, {}, {}
        self._acquisitions, self._times, self._skipped = {}, {}, set()
        self.set_many({"NumColumns_RBV": 0, "NumLogged_RBV": 0})
        self._log.start(v["LogPVs"], v["LogPeriod"])

    def write_array(self, array: NDArray) -> None:
        self._add_row(array, 0, "", "")

    def write_missing(self, array: NDArray) -> None:
        cause = array.status.missing
        self._add_row(array, MISSING_CODES.get(cause, 127) if cause else 127,
                      cause.value if cause else "unknown", array.status.message[:200])

    def _add_row(self, array: NDArray, status: int, cause: str, message: str) -> None:
        if self._group is None:
            return
        acquisition = array.acquisition
        if acquisition is not None:
            self._acquisitions.setdefault(acquisition.id, acquisition)
            now = time.time()
            self._times.setdefault(acquisition.id, [now, now])[1] = now
        values = {} if status else {a.name: a.value for a in array.attributes.values()}
        self._rows.append((array.unique_id, array.timestamp, status, cause, message, values))
        self._since_flush += 1
        every = self._params()["NumFramesFlush"]
        if every and self._since_flush >= every:
            self.flush_file()
        elif len(self._rows) >= BLOCK:
            self._write_block()

    def _write_block(self) -> None:
        """Write the rows held and the log samples, under the file's lock."""
        rows, self._rows = self._rows, []
        with file_lock(self._file):
            if rows:
                self._write_rows(rows)
            self._write_samples()

    def _write_rows(self, rows: list[tuple]) -> None:
        first, end = self._written, self._written + len(rows)
        fixed = self._fixed
        for i, key in enumerate(("uniqueId", "timestamp", "status", "cause", "message")):
            dataset = fixed[key]
            dataset.resize((end,))
            dataset[first:end] = np.asarray([row[i] for row in rows], dtype=dataset.dtype)
        scalars: dict[str, list[Any]] = {}
        arrays: dict[str, dict[int, np.ndarray]] = {}
        for r, row in enumerate(rows):
            for name, value in row[5].items():
                kind, converted = _classify(value)
                if kind == "array":
                    arrays.setdefault(name, {})[r] = converted
                elif kind is not None:
                    scalars.setdefault(name, [None] * len(rows))[r] = converted
                elif name not in self._skipped:
                    self._skipped.add(name)
                    self.message(f"attribute {name[:60]} ({type(value).__name__}) is not 0-D "
                                 "or 1-D: not in the table", logging.WARNING)
        for name, column in scalars.items():
            dataset = self._value_column(name, column)
            if dataset is None:
                continue
            dataset.resize((end,))
            if dataset.dtype.kind == "O":  # text: numbers as their text, absent ""
                block = ["" if v is None else v if isinstance(v, str) else repr(v)
                         for v in column]
            else:  # numbers: text and absent values NaN
                block = [v if isinstance(v, float) else math.nan for v in column]
            dataset[first:end] = np.asarray(block, dtype=dataset.dtype)
        for name, dataset in self._values.items():  # columns this block did not have
            if dataset.shape[0] < end:
                dataset.resize((end,))
        for name, by_row in arrays.items():
            pair = self._array_column(name)
            if pair is None:
                continue
            data, lengths = pair
            width = max(len(a) for a in by_row.values())
            if width > data.shape[1]:
                data.resize((data.shape[0], width))
            data.resize((end, data.shape[1]))
            lengths.resize((end,))
            block = np.full((len(rows), data.shape[1]), np.nan)
            sizes = np.zeros(len(rows), dtype=np.int32)
            for r, a in by_row.items():
                block[r, : a.size] = a
                sizes[r] = a.size
            data[first:end] = block
            lengths[first:end] = sizes
        for data, lengths in self._arrays.values():
            if data.shape[0] < end:
                data.resize((end, data.shape[1]))
                lengths.resize((end,))
        self._written = end
        self.set("NumColumns_RBV", len(self._values) + len(self._arrays))

    def _value_column(self, name: str, column: list[Any]) -> h5py.Dataset | None:
        dataset = self._values.get(name)
        if dataset is None:
            key = _dataset_name(name)
            if key is None or key in self._group["values"]:
                return None
            text = any(isinstance(v, str) for v in column)
            dataset = _column(self._group["values"], key,
                              h5py.string_dtype() if text else np.dtype("f8"),
                              "" if text else math.nan)
            dataset.resize((self._written,))
            dataset.attrs["attribute"] = name[:256]
            self._values[name] = dataset
        return dataset

    def _array_column(self, name: str) -> tuple[h5py.Dataset, h5py.Dataset] | None:
        pair = self._arrays.get(name)
        if pair is None:
            key = _dataset_name(name)
            if key is None or key in self._group["arrays"]:
                return None
            data = self._group["arrays"].create_dataset(
                key, shape=(self._written, 1), maxshape=(None, None), chunks=(BLOCK, 256),
                dtype="f8", fillvalue=math.nan)
            data.attrs["attribute"] = name[:256]
            data.attrs["lengths"] = f"{self._group.name}/lengths/{key}"
            lengths = _column(self._group["lengths"], key, np.dtype("i4"), 0)
            lengths.resize((self._written,))
            pair = self._arrays[name] = (data, lengths)
        return pair

    # --- asynchronous logs ----------------------------------------------------------------------
    def _write_samples(self) -> None:
        taken = self._log.drain()
        count = 0
        for name, samples in taken.items():
            pair = self._logs.get(name)
            if pair is None:
                key = _dataset_name(name)
                if key is None or key in self._group["logs"]:
                    continue
                group = self._group["logs"].create_group(key)
                group.attrs["pv"] = name
                text = isinstance(samples[0][1], str)
                pair = self._logs[name] = (
                    _column(group, "time", np.dtype("f8"), math.nan),
                    _column(group, "value", h5py.string_dtype() if text else np.dtype("f8"),
                            "" if text else math.nan))
                pair[0].attrs["units"] = "s since 1970-01-01 (POSIX)"
            times, values = pair
            n = times.shape[0]
            times.resize((n + len(samples),))
            values.resize((n + len(samples),))
            times[n:] = [t for t, _ in samples]
            for i, (_, value) in enumerate(samples):
                kind, converted = _classify(value)
                if kind == "text" and values.dtype.kind == "O":
                    values[n + i] = converted
                elif kind == "number" and values.dtype.kind == "f":
                    values[n + i] = converted
            count += len(samples)
        if count:
            self.set("NumLogged_RBV", self.values["NumLogged_RBV"] + count)

    # --- per-acquisition metadata, flush and close --------------------------------------------
    def _record_acquisitions(self) -> None:
        group = self._group.require_group("acquisitions")
        for acquisition in self._acquisitions.values():
            key = str(acquisition.id)
            record = group[key] if key in group else group.create_group(key)
            for name, value in acquisition_record(acquisition).items():
                record.attrs[name] = value
            first, last = self._times.get(acquisition.id, (math.nan, math.nan))
            record.attrs["start_time"] = acquisition.started
            record.attrs["stop_time"] = math.nan if acquisition.ended is None \
                else acquisition.ended
            record.attrs["first_frame_time"] = first
            record.attrs["last_frame_time"] = last
            record.attrs["times"] = "POSIX seconds: start_time Acquire=1, stop_time the " \
                "driver's last frame (NaN: still running), first/last_frame_time the first " \
                "and last frames written here"

    def flush_file(self) -> None:
        if self._file is not None:
            self._write_block()
            with file_lock(self._file):
                self._file.flush()
            self._since_flush = 0

    def close_file(self) -> None:
        file = self._file
        self._log.stop()
        try:
            if file is not None:
                self._write_block()
                with file_lock(file):
                    self._record_acquisitions()
        finally:
            self._file = self._group = None
            self._fixed, self._values, self._arrays, self._logs = {}, {}, {}, {}
            self._log.clear()
            if file is not None:
                file.close()  # gives back this writer's share (h5share)

    def abandon_file(self) -> None:
        # A write failed inside HDF5: the file is not closed (see HDF1), and nothing more is
        # written; its share is kept, so the registry never closes it either.
        self._log.stop()
        self._file = self._group = None
        self._rows = []
        self._fixed, self._values, self._arrays, self._logs = {}, {}, {}, {}

    def _params(self) -> Mapping[str, Any]:
        return self.frame_settings

    def shutdown(self) -> None:
        self._log.stop()
        super().shutdown()


def detector_info(first: NDArray) -> dict[str, Any]:
    """The driver's identity and layout from the acquisition's frozen parameters (static)."""
    params = first.acquisition.settings if first.acquisition is not None else {}
    info = {k: params[k] for k in _DETECTOR_KEYS
            if k in params and isinstance(params[k], (int, float, str))}
    info["frame_shape"] = [d.size for d in reversed(first.dims)]
    return info


def _classify(value: Any) -> tuple[str | None, Any]:
    """("number", float), ("text", str), ("array", 1-D float64) or (None, value)."""
    if isinstance(value, (bool, np.bool_)):
        return "number", float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            return "number", float(value)
        except OverflowError:
            return "number", math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        return "text", value[:4096]
    if isinstance(value, bytes):
        return "text", value[:4096].decode("latin-1")
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return None, value
        if array.ndim == 0 or array.size == 1:
            return "number", float(array.reshape(-1)[0]) if array.size else math.nan
        if array.ndim == 1:
            return "array", array
    return None, value


def _dataset_name(name: str) -> str | None:
    """An HDF5 link name for an attribute or PV name ('/' and '.' names cannot be links)."""
    key = name.replace("/", "_")[:255]
    return None if key in ("", ".", "..") else key


def _column(group: h5py.Group, name: str, dtype: Any, fill: Any) -> h5py.Dataset:
    """An empty, growing 1-D dataset (text columns keep HDF5's empty-string fill)."""
    text = h5py.check_string_dtype(np.dtype(dtype)) is not None
    return group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(BLOCK,),
                                dtype=dtype, fillvalue=None if text else fill)

