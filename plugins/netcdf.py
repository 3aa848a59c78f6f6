"""NDFileNetCDF (`netCDF1:`): arrays to netCDF-4 files (h5netcdf), in ADCore's NDFileNetCDF layout.

Layout (NDFileNetCDF.cpp, file version 3.1):
- dimensions `numArrays` (unlimited: one row per array), `dim0`..`dimN-1` (the array's
  dimensions slowest first, as netCDF orders them) and `attrStringSize` (256);
- global attributes `dataType` (ADCore's NDDataType number), `NDNetCDFFileVersion` 3.1,
  `numArrayDims`, `dimSize`/`dimOffset`/`dimBinning`/`dimReverse` (ADCore's order, fastest
  first) and, per NDAttribute, `Attr_<name>_DataType`, `_Description`, `_Source`, `_SourceType`;
- variables `uniqueId` (int), `timeStamp` (double), `epicsTSSec`, `epicsTSNsec` (int),
  `array_data` (numArrays, dim0, ...) and `Attr_<name>` per NDAttribute (numArrays), or
  (numArrays, attrStringSize) characters for a string attribute.
The attributes of a file are those of its first array, as in ADCore; a later array missing one
leaves its fill value, and one a later array adds is not stored (said once per file).

Differences, because the file is netCDF-4 (HDF5-based) where ADCore writes netCDF-3 classic:
unsigned and 64-bit arrays keep their own type (classic has no unsigned types, so ADCore stores
UInt8 as signed bytes and 64-bit integers as doubles); `dataType` still says what the array was.

What ndflow adds: a lost frame still takes its row (array_data keeps the fill value) and its
code in the variable `ndflowStatus` (0: a frame; otherwise the cause, listed in the global
attribute `ndflowStatusCodes`), so a reader sees what is missing and why. Files are created
only under the data roots, through the NDFile base (`open_hdf5`).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import h5netcdf
import numpy as np

from ndflow.adcore import data_type_index
from ndflow.ndarray import MissingCause, NDArray, NDAttribute
from ndflow.params import RW, enum_param
from ndflow.plugins.file_writer import FileWriter

FILE_VERSION = 3.1
ATTR_STRING_SIZE = 256
STATUS_CODES = {cause: i + 1 for i, cause in enumerate(MissingCause)}
_ROW = "numArrays"

NETCDF_PARAMS = (
    enum_param("FileFormat", ("netCDF", "Invalid"), 0, RW, rbv_choices=("netCDF", "Undefined"),
               group="File"),
)

#: NDAttribute value types as NDFileNetCDF names them (Attr_<name>_DataType)
_TYPE_NAMES = {"i1": "Int8", "u1": "UInt8", "i2": "Int16", "u2": "UInt16", "i4": "Int32",
               "u4": "UInt32", "i8": "Int64", "u8": "UInt64", "f4": "Float32", "f8": "Float64"}
#: NDAttribute source types as NDAttribute.cpp names them (Attr_<name>_SourceType)
_SOURCE_TYPES = {"DRIVER": "NDAttrSourceDriver", "PARAM": "NDAttrSourceParam",
                 "EPICS_PV": "NDAttrSourceEPICSPV", "FUNCT": "NDAttrSourceFunct",
                 "CONST": "NDAttrSourceConst"}


def attribute_dtype(value: Any) -> np.dtype | None:
    """The netCDF type of an NDAttribute's value; None for a string (stored as characters)."""
    if isinstance(value, (bool, np.bool_)):
        return np.dtype("u1")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, np.number):
        return value.dtype
    if isinstance(value, numbers.Integral):
        return np.dtype("i8")
    if isinstance(value, numbers.Real):
        return np.dtype("f8")
    return None


def attribute_chars(value: Any) -> np.ndarray:
    """A string attribute as its row of `attrStringSize` characters (cut to fit)."""
    raw = str(value).encode("utf-8", "replace")[:ATTR_STRING_SIZE]
    row = np.zeros(ATTR_STRING_SIZE, dtype="S1")
    row[: len(raw)] = np.frombuffer(raw, dtype="S1")
    return row


class NetCDF(FileWriter):
    screen = "NDFileNetCDF"
    kind = "netcdf"
    plugin_type = "NDFileNetCDF"
    PARAMS = (*FileWriter.PARAMS, NETCDF_PARAMS)
    extension = ".nc"
    compression_aware = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._h5: Any = None  # the h5py file open_hdf5 made (h5netcdf does not close it)
        self._nc: h5netcdf.File | None = None
        self._rows = 0
        self._shape: tuple[int, ...] = ()
        self._dtype = np.dtype("u1")
        self._attrs: dict[str, np.dtype | None] = {}  # name -> type (None: characters)
        self._extra_said = False

    def open_file(self, path: Path, first: NDArray) -> None:
        data = first.data
        assert data is not None
        self._h5 = self.open_hdf5(path, track_order=True)
        try:
            self._nc = nc = h5netcdf.File(self._h5, "w")
            self._define(nc, first, data)
        except BaseException:
            self.close_file()
            raise
        self._rows = 0
        self._extra_said = False

    def _define(self, nc: h5netcdf.File, first: NDArray, data: np.ndarray) -> None:
        self._shape, self._dtype = data.shape, data.dtype
        dims = tuple(f"dim{i}" for i in range(data.ndim))
        nc.dimensions = {_ROW: None, **dict(zip(dims, data.shape)),
                         "attrStringSize": ATTR_STRING_SIZE}
        a = nc.attrs
        a["dataType"] = np.int32(data_type_index(data.dtype))
        a["NDNetCDFFileVersion"] = np.float64(FILE_VERSION)
        a["numArrayDims"] = np.int32(first.ndims)
        a["dimSize"] = np.array([d.size for d in first.dims], dtype="i4")
        a["dimOffset"] = np.array([d.offset for d in first.dims], dtype="i4")
        a["dimBinning"] = np.array([d.binning for d in first.dims], dtype="i4")
        a["dimReverse"] = np.array([int(d.reverse) for d in first.dims], dtype="i4")
        a["ndflowStatusCodes"] = "0 valid; " + "; ".join(
            f"{code} {cause.value}" for cause, code in STATUS_CODES.items())
        nc.create_variable("uniqueId", (_ROW,), "i4", chunks=(64,))
        nc.create_variable("timeStamp", (_ROW,), "f8", chunks=(64,))
        nc.create_variable("epicsTSSec", (_ROW,), "i4", chunks=(64,))
        nc.create_variable("epicsTSNsec", (_ROW,), "i4", chunks=(64,))
        nc.create_variable("array_data", (_ROW, *dims), data.dtype,
                           chunks=(1, *data.shape))
        nc.create_variable("ndflowStatus", (_ROW,), "i1", chunks=(64,))
        self._attrs = {}
        for attr in first.attributes.values():
            if not attr.name or "/" in attr.name:  # not a netCDF (HDF5) name: said, skipped
                self.notes.line("name", f"attribute {attr.name!r}: not a netCDF name; "
                                        "not stored")
                continue
            self._define_attribute(nc, attr)

    def _define_attribute(self, nc: h5netcdf.File, attr: NDAttribute) -> None:
        dtype = attribute_dtype(attr.value)
        a = nc.attrs
        a[f"Attr_{attr.name}_DataType"] = "String" if dtype is None else _TYPE_NAMES.get(
            dtype.str[1:], "Undefined")
        a[f"Attr_{attr.name}_Description"] = attr.description
        a[f"Attr_{attr.name}_Source"] = attr.source
        a[f"Attr_{attr.name}_SourceType"] = _SOURCE_TYPES.get(attr.source_type.name,
                                                              "NDAttrSourceUndefined")
        if dtype is None:
            nc.create_variable(f"Attr_{attr.name}", (_ROW, "attrStringSize"), "S1",
                               chunks=(64, ATTR_STRING_SIZE))
        else:
            nc.create_variable(f"Attr_{attr.name}", (_ROW,), dtype, chunks=(64,))
        self._attrs[attr.name] = dtype

    def _next_row(self, array: NDArray, status: int) -> int:
        nc = self._nc
        assert nc is not None
        row = self._rows
        nc.resize_dimension(_ROW, row + 1)
        v = nc.variables
        v["uniqueId"][row] = array.unique_id
        v["timeStamp"][row] = array.timestamp
        v["epicsTSSec"][row] = array.epics_ts[0]
        v["epicsTSNsec"][row] = array.epics_ts[1]
        v["ndflowStatus"][row] = status
        self._rows = row + 1
        return row

    def write_array(self, array: NDArray) -> None:
        data = array.data
        assert data is not None and self._nc is not None
        if data.shape != self._shape or data.dtype != self._dtype:
            # the file's dimensions are fixed: a different frame is a lost row, said
            self._next_row(array, STATUS_CODES[MissingCause.PROCESSING_ERROR])
            self.notes.line("shape", f"array {array.unique_id} is {data.dtype} {data.shape}, "
                                     f"the file holds {self._dtype} {self._shape}: its row "
                                     "is left empty")
            return
        row = self._next_row(array, 0)
        self._nc.variables["array_data"][row] = data
        extra = []
        for attr in array.attributes.values():
            if attr.name not in self._attrs:
                extra.append(attr.name)
                continue
            variable = self._nc.variables[f"Attr_{attr.name}"]
            dtype = self._attrs[attr.name]
            try:
                variable[row] = attribute_chars(attr.value) if dtype is None else attr.value
            except (TypeError, ValueError, OverflowError):
                pass  # a value of another type than the file's: its fill value stays
        if extra and not self._extra_said:
            self._extra_said = True
            self.notes.line("attrs", f"attributes {', '.join(extra[:5])} first appeared after "
                                     "the file was opened: not stored (as ADCore)")

    def write_missing(self, array: NDArray) -> None:
        if self._nc is None:
            return
        cause = array.status.missing
        self._next_row(array, STATUS_CODES.get(cause, 127) if cause else 127)

    def flush_file(self) -> None:
        if self._nc is not None:
            self._nc.flush()

    def close_file(self) -> None:
        nc, self._nc = self._nc, None
        h5, self._h5 = self._h5, None
        try:
            if nc is not None:
                nc.close()
        finally:
            if h5 is not None:
                h5.close()
