"""NDFileHDF5 (`HDF1:`): arrays to HDF5 with h5py, in ADCore's default layout.

Layout: the frames in `/entry/data/data` (one row per array, the first axis growing), each
NDAttribute in `/entry/instrument/NDAttributes/<name>` (one value per row), plus ADCore's
NDArrayUniqueId, NDArrayTimeStamp, NDArrayEpicsTSSec and NDArrayEpicsTSnSec there. This is what
ophyd-async and ophyd's file handlers read. A file whose first frame is sparse (a Sparse
plugin upstream) holds Lima2's CSR datasets `/entry/data/{index,intensity,frame_ptr}` instead
of `data` (see ndflow.plugins.sparse_csr); the rest of the layout is the same.

What ndflow adds: a lost frame still takes its row. The row holds FillValue,
`NDAttributes/NDArrayStatus` is non-zero (the code of the cause), and `/entry/ndflow/missing`
lists the unique id, cause and message of each lost frame. Readers know what is missing and why
instead of seeing a gap. `/entry/ndflow/acquisitions/<id>` records, once per acquisition in the
file, its effective parameter sets as JSON attributes: `driver` (the detector's frozen
parameters), `pipeline` (for each plugin port, the values it processed with and from which
unique id each applied), `frames` (how many the driver produced) and `state`, written when the
file closes. A SWMR file cannot add groups once readers may attach, so it records only the
acquisition of the frame it was opened with, as it stood then.

Compression: None, zlib (deflate), Blosc, BSLZ4 and LZ4 through hdf5plugin's filters. N-bit,
szip and JPEG are not offered and say so. Arrays that a Codec plugin compressed upstream are
written as they are, one frame per chunk, with `write_direct_chunk`. The dataset then gets the
filter that matches the codec, whatever Compression says (as ADCore does).

SWMR: with SWMRMode=On the file is created with the latest format and switched to SWMR after its
datasets exist. Readers may open it while it grows; they see frames up to the last flush
(NumFramesFlush, FlushNow, and the close). Attributes that first appear after the file was opened
are not stored (SWMR cannot add datasets), and a warning names them.

Chunks, the compression filter and FillValue are fitted when a file opens: see
ndflow.plugins.hdf5_layout.

A full disk: HDF5 cannot recover from a failed write (the library may crash when the file is
closed afterwards). So before each row the writer checks the room left: free space on the file
system and the process's file-size limit. It stops with "disk full" while there is still room
to close the file cleanly, and every frame written so far stays readable. If a write fails
anyway, the file object is abandoned, never closed, so the IOC keeps running.

Not supported: the XML layout files (XMLFileName), extra dimensions (NumExtraDims > 0) and
position mode. Their PVs exist so clients connect; a non-default value is reported on
WriteMessage and the default layout is used.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

# hdf5plugin's own filters, whatever HDF5_PLUGIN_PATH offers: importing netCDF4 points it at
# netCDF4's plugin folder, whose Blosc/Zstd/Bzip2 filters are linked to netCDF4's own copy of
# libhdf5; HDF5 loads them when hdf5plugin asks whether a filter is there, and hdf5plugin then
# keeps them ("already loaded, skip it"). Called from h5py's library they query the other
# library with h5py's ids and every Blosc dataset fails ("error during user callback").
hdf5plugin.register(force=True)

from ndflow.ndarray import Acquisition, MissingCause, NDArray
from ndflow.params import R, RW, W, bool_param, enum_param, float_param, int_param, \
    string_param, text_param
from ndflow.plugins.codec import BLOSC_COMPRESSORS
from ndflow.plugins.file_writer import SINGLE, FileWriter, WriteError
from ndflow.plugins.hdf5_layout import CHUNK_SETTING_MAX, COMPRESSIONS, codec_filter, \
    compression_filter, fill_value, fit_chunks
from ndflow.plugins.sparse_csr import CSRRows

ATTR_GROUP = "/entry/instrument/NDAttributes"
_MISSING_CODES = {cause: i + 1 for i, cause in enumerate(MissingCause)}
_EXTRA = ("N", "X", "Y", *map(str, range(3, 10)))
#: room kept free for HDF5's metadata and the final flush when checking for a full disk
_CLOSE_MARGIN = 64 * 1024
#: attribute rows are written in blocks of this many (and at every flush and close)
_ATTRIBUTE_BLOCK = 64
#: files whose writes failed inside HDF5: kept open forever, because closing them can crash
_ABANDONED: list[Any] = []

HDF5_PARAMS = (
    enum_param("FileFormat", ("HDF5", "Invalid"), 0, RW, rbv_choices=("HDF5", "Undefined"),
               group="File"),
    bool_param("FlushNow", "Done", "Flush", 0, W, group="HDF5"),
    bool_param("ChunkSizeAuto", "No", "Yes", 1, RW, group="Chunking"),
    int_param("NumRowChunks", 0, RW, low=0, high=CHUNK_SETTING_MAX, group="Chunking",
              doc="rows per chunk (0: all); at most the frame's, and within HDF5's 4 GiB"),
    int_param("NumColChunks", 0, RW, low=0, high=CHUNK_SETTING_MAX, group="Chunking",
              doc="columns per chunk (0: all); at most the frame's"),
    *(int_param(f"ChunkSize{i}", 0, RW, low=0, high=CHUNK_SETTING_MAX, group="Chunking")
      for i in range(2, 10)),
    int_param("NumFramesChunks", 0, RW, low=0, high=CHUNK_SETTING_MAX, group="Chunking",
              doc="frames per chunk (0: 1); at most NumCapture, and within HDF5's 4 GiB per "
                  "chunk (fitted when the file opens, said on StatusMessage_RBV)"),
    int_param("NDAttributeChunk", 0, RW, low=0, high=CHUNK_SETTING_MAX, group="Chunking"),
    int_param("BoundaryAlign", 0, RW, low=0, units="bytes", group="Chunking"),
    int_param("BoundaryThreshold", 1, RW, low=0, units="bytes", group="Chunking"),
    int_param("NumFramesFlush", 0, RW, low=0, group="Chunking",
              doc="flush every N frames (0: only at FlushNow and close)"),
    int_param("NumExtraDims", 0, RW, low=0, high=9, group="Extra dims"),
    *(p for d in _EXTRA for p in (
        int_param(f"ExtraDimSize{d}", 1, RW, low=1, group="Extra dims"),
        string_param(f"ExtraDimName{d}_RBV", "", R, group="Extra dims"))),
    *(int_param(f"ExtraDimChunk{d}", 0, RW, low=0, group="Extra dims") for d in _EXTRA[1:]),
    bool_param("StoreAttr", "No", "Yes", 1, RW, group="HDF5"),
    bool_param("StorePerform", "No", "Yes", 0, RW, group="HDF5"),
    float_param("RunTime", 0.0, R, units="s", group="HDF5"),
    float_param("IOSpeed", 0.0, R, precision=1, units="Mbit/s", group="HDF5"),
    enum_param("Compression", COMPRESSIONS, 0, RW, group="Compression"),
    int_param("NumDataBits", 0, RW, units="bit", group="Compression"),
    int_param("DataBitsOffset", 0, RW, units="bit", group="Compression"),
    int_param("SZipNumPixels", 16, RW, units="bit", group="Compression"),
    int_param("ZLevel", 6, RW, low=0, high=9, group="Compression"),
    enum_param("BloscShuffle", ("None", "Byte", "Bit"), 0, RW, group="Compression"),
    enum_param("BloscCompressor", BLOSC_COMPRESSORS, 0, RW, group="Compression"),
    int_param("BloscLevel", 5, RW, low=0, high=9, group="Compression"),
    int_param("JPEGQuality", 90, RW, low=1, high=100, group="Compression"),
    bool_param("DimAttDatasets", "No", "Yes", 0, RW, group="HDF5"),
    float_param("FillValue", 0.0, RW, precision=1, group="HDF5",
                doc="what the rows of lost frames hold; clamped to the data type's range when "
                    "the file opens (integers truncated, as HDF5 converts)"),
    text_param("XMLFileName", 2048, "", RW, group="Layout"),
    bool_param("XMLValid_RBV", "No", "Yes", 1, R, group="Layout"),
    text_param("XMLErrorMsg_RBV", 256, "", R, group="Layout"),
    bool_param("SWMRSupported_RBV", "Not Supported", "Supported", 1, R, group="SWMR"),
    bool_param("SWMRMode", "Off", "On", 0, RW, group="SWMR"),
    bool_param("SWMRActive_RBV", "Off", "Active", 0, R, group="SWMR"),
    int_param("SWMRCbCounter_RBV", 0, R, group="SWMR"),
    bool_param("PositionMode", "Off", "On", 0, RW, group="Positions"),
    *(string_param(f"Pos{kind}Dim{d}", "", RW, group="Positions")
      for kind in ("Name", "Index") for d in _EXTRA),
)


class HDF5(FileWriter):
    screen = "NDFileHDF5"
    kind = "hdf5"
    PARAMS = (*FileWriter.PARAMS, HDF5_PARAMS)
    extension = ".h5"

    plugin_type = f"NDFileHDF5 ver{h5py.version.hdf5_version}"
    sparse_aware = True  # sparse frames are written in Lima2's CSR layout (sparse_csr)
    #: multi-channel frames are rows of (N, C, H, W), as Lima2's files; `data` attribute
    #: `channels` names axis 1
    channels_aware = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._file: h5py.File | None = None
        self._path = Path()
        self._size_limit = resource.RLIM_INFINITY  # the process's file-size limit
        self._data: h5py.Dataset | None = None
        self._csr: CSRRows | None = None  # a file of sparse frames: its CSR rows instead
        self._attrs: dict[str, h5py.Dataset] = {}
        self._missing: h5py.Dataset | None = None
        self._perform: h5py.Dataset | None = None
        self._rows = 0
        self._attr_rows = 0  # rows already in the attribute datasets
        self._pending: list[dict[str, Any]] = []  # attribute rows not yet written
        self._direct = False
        self._file_channels: tuple[str, ...] = ()  # NDArray.channels of the open file's frames
        self._ignored: set[str] = set()
        self._since_flush = 0
        self._acquisitions: dict[int, Acquisition] = {}  # of the frames in the open file

    # --- unsupported options are said, not silently ignored ------------------------------------------
    def put_Compression(self, value: int) -> int:
        if COMPRESSIONS[value] in ("N-bit", "szip", "JPEG"):
            self.message(f"Compression {COMPRESSIONS[value]} is not supported; choose None, "
                         "zlib, Blosc, BSLZ4 or LZ4", logging.WARNING)
        return value

    def put_XMLFileName(self, value: str) -> str:
        valid = not value.strip()
        self.set_many({"XMLValid_RBV": int(valid), "XMLErrorMsg_RBV": "" if valid else
                       "XML layout files are not supported; the default layout is used"})
        return value

    def put_NumExtraDims(self, value: int) -> int:
        if value:
            self.message("NumExtraDims > 0 is not supported; frames are stored along one "
                         "axis", logging.WARNING)
        return value

    # --- the format -----------------------------------------------------------------------------------
    def open_file(self, path: Path, first: NDArray) -> None:
        v = self.values  # a file's layout: the user values when it opens (as ADCore)
        swmr = bool(v["SWMRMode"])
        # created under the data root's descriptor, links refused (FileWriter.open_hdf5)
        self._file = self.open_hdf5(path, libver="latest" if swmr else "earliest")
        self._path = path
        self._size_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        self._rows = 0
        self._attr_rows = 0
        self._pending = []
        self._since_flush = 0
        self._ignored = set()
        f = self._file
        f.attrs["creator"] = f"ndflow {self.plugin_type}"
        entry = f.require_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data_group = entry.require_group("data")
        data_group.attrs["NX_class"] = "NXdata"
        self._csr = CSRRows.create(data_group, first, compression_filter(self.values)) \
            if first.sparse is not None else None
        self._data = self._create_data(data_group, first) if self._csr is None else None
        group = f.require_group(ATTR_GROUP)
        self._attrs = {}
        standard = {"NDArrayUniqueId": np.int32, "NDArrayTimeStamp": np.float64,
                    "NDArrayEpicsTSSec": np.uint32, "NDArrayEpicsTSnSec": np.uint32,
                    "NDArrayStatus": np.int8}
        for name, dtype in standard.items():
            self._attrs[name] = self._series(group, name, np.dtype(dtype))
        self._attrs["NDArrayStatus"].attrs["meaning"] = "0 valid; " + "; ".join(
            f"{code} {cause.value}" for cause, code in _MISSING_CODES.items())
        if v["StoreAttr"]:
            for attr in first.attributes.values():
                if np.ndim(attr.value):  # 1-D results (profiles): the table writer's (Table1)
                    self._ignored.add(attr.name)
                elif attr.name not in self._attrs:
                    dataset = self._series(group, attr.name, _attr_dtype(attr.value))
                    dataset.attrs["description"] = attr.description
                    dataset.attrs["source"] = attr.source
                    dataset.attrs["source_type"] = attr.source_type.name
                    self._attrs[attr.name] = dataset
        self._missing = entry.require_group("ndflow").create_dataset(
            "missing", shape=(0,), maxshape=(None,), chunks=(64,), dtype=np.dtype(
                [("unique_id", "i4"), ("cause", "S24"), ("message", "S120")]))
        self._perform = None
        if v["StorePerform"]:
            self._perform = f.require_group("/entry/instrument/performance").create_dataset(
                "timestamp", shape=(0, 2), maxshape=(None, 2), chunks=(64, 2), dtype="f8")
            self._perform.attrs["columns"] = "seconds since open, seconds writing this frame"
        self._acquisitions = {}
        if swmr:  # SWMR cannot add groups once switched on: record the opening frame's
            self._note_acquisition(first)
            self._record_acquisitions()
            f.swmr_mode = True
        self.set_many({"SWMRActive_RBV": int(swmr), "SWMRCbCounter_RBV": 0})

    def _create_data(self, group: h5py.Group, first: NDArray) -> h5py.Dataset:
        shape = tuple(d.size for d in reversed(first.dims))
        dtype = first.dtype if first.dtype is not None else np.dtype("u1")
        self._direct = first.codec.compressed
        notes: dict[str, str] = {}  # settings this file cannot use as they stand
        if self._direct:
            chunks = (1, *shape)
            filters = codec_filter(first)
        else:
            v = self.values
            chunks, note = fit_chunks(
                shape, dtype.itemsize, auto=bool(v["ChunkSizeAuto"]), rows=v["NumRowChunks"],
                cols=v["NumColChunks"], frames=v["NumFramesChunks"],
                held=1 if v["FileWriteMode"] == SINGLE else v["NumCapture"])
            if note:
                notes["chunks"] = note
            filters = compression_filter(v)
        requested = self.values["FillValue"]
        fill, note = fill_value(requested, dtype)
        if note:
            notes["FillValue"] = f"FillValue {requested:g} {note}"
        if notes:  # on StatusMessage_RBV, and logged once per topic every few seconds (files
            # may open at every frame)
            self.message("; ".join(notes.values()), log=False)
            for topic, text in notes.items():
                self.notes.line(topic, text)
        dataset = group.create_dataset(
            "data", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks,
            fillvalue=fill, **filters)
        dataset.attrs["signal"] = 1
        self._file_channels = first.channels
        if first.channels:
            dataset.attrs["channels"] = list(first.channels)
            dataset.attrs["channel_axis"] = 1
        return dataset

    def _series(self, group: h5py.Group, name: str, dtype: np.dtype) -> h5py.Dataset:
        chunk = max(1, self.values["NDAttributeChunk"] or 16)
        return group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,),
                                    dtype=dtype)

    def _check_room(self, nbytes: int) -> None:
        """Refuse a row that might not fit (see the module docstring: full disk)."""
        need = 2 * nbytes + _CLOSE_MARGIN
        try:  # by the open file's handle: a name could have been swapped meanwhile
            fd = self._file.id.get_vfd_handle()
            stat = os.fstatvfs(fd)
            free = stat.f_bavail * stat.f_frsize
            if self._size_limit != resource.RLIM_INFINITY:
                free = min(free, self._size_limit - os.fstat(fd).st_size)
        except (OSError, ValueError, AttributeError):
            return
        if free < need:
            raise WriteError(f"disk full: {max(free, 0) / 1e6:.1f} MB left for "
                             f"{self._path.name}; stopped after {self._rows} frames")

    def _note_acquisition(self, array: NDArray) -> None:
        acquisition = array.acquisition
        if acquisition is not None and acquisition.id not in self._acquisitions:
            self._acquisitions[acquisition.id] = acquisition

    def _record_acquisitions(self) -> None:
        """Write each acquisition's effective parameter sets (once per acquisition)."""
        group = self._file.require_group("/entry/ndflow/acquisitions")
        for acquisition in self._acquisitions.values():
            if str(acquisition.id) in group:
                continue
            record = group.create_group(str(acquisition.id))
            for name, value in acquisition_record(acquisition).items():
                record.attrs[name] = value

    def write_array(self, array: NDArray) -> None:
        started = time.monotonic()
        self._note_acquisition(array)
        self._check_room(array.compressed_size)
        row = self._grow()
        data = self._data
        if self._csr is not None:
            self._csr.write(array)
        elif array.sparse is not None:
            raise WriteError(f"array {array.unique_id} is sparse but the file holds dense "
                             "frames; start a new file")
        elif self._direct:
            if not array.codec.compressed:
                raise WriteError(f"array {array.unique_id} is not compressed but the file "
                                 "holds pre-compressed frames; start a new file")
            data.id.write_direct_chunk((row, *([0] * (data.ndim - 1))), array.data)
        else:
            if array.codec.compressed:
                raise WriteError(f"array {array.unique_id} is compressed ({array.codec.name}) "
                                 "but the file was opened for uncompressed frames")
            frame = array.data
            if frame.shape != data.shape[1:]:
                raise WriteError(f"array {array.unique_id} has shape {frame.shape}, the file "
                                 f"{data.shape[1:]}; start a new file")
            if array.channels != self._file_channels:
                raise WriteError(f"array {array.unique_id} has channels {array.channels}, "
                                 f"the file {self._file_channels}; start a new file")
            data[row] = frame
        self._write_attributes(array, row, 0)
        if self._perform is not None:
            self._perform.resize((row + 1, 2))
            self._perform[row] = (started - self._opened_at, time.monotonic() - started)
        self._after_row()

    def write_missing(self, array: NDArray) -> None:
        if self._data is None and self._csr is None:
            return
        self._check_room(1024)
        self._note_acquisition(array)
        row = self._grow()  # the row keeps the fill value
        if self._csr is not None:
            self._csr.write_missing()
        cause = array.status.missing
        self._write_attributes(array, row, _MISSING_CODES.get(cause, 127) if cause else 127)
        missing = self._missing
        n = missing.shape[0]
        missing.resize((n + 1,))
        missing[n] = (array.unique_id, (cause.value if cause else "unknown").encode()[:24],
                      array.status.message.encode("utf-8", "replace")[:120])
        self._after_row()

    def _grow(self) -> int:
        row = self._rows
        if self._data is not None:  # a sparse file's rows grow as they are written
            self._data.resize((row + 1, *self._data.shape[1:]))
        self._rows = row + 1
        return row

    def _write_attributes(self, array: NDArray, row: int, status: int) -> None:
        """Queue this row's attribute values; they are written in blocks (_write_pending),
        because resizing a dozen small datasets per frame costs more than the frame."""
        values = {"NDArrayUniqueId": array.unique_id, "NDArrayTimeStamp": array.timestamp,
                  "NDArrayEpicsTSSec": array.epics_ts[0],
                  "NDArrayEpicsTSnSec": array.epics_ts[1], "NDArrayStatus": status}
        if self._params()["StoreAttr"]:
            for attr in array.attributes.values():
                if attr.name in self._attrs:
                    values.setdefault(attr.name, attr.value)
                elif attr.name not in self._ignored:
                    self._ignored.add(attr.name)
                    self.message(f"attribute {attr.name} first seen after the file was "
                                 "opened: not stored in this file", logging.WARNING)
        self._pending.append(values)
        if len(self._pending) >= _ATTRIBUTE_BLOCK:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        first = self._attr_rows
        end = first + len(rows)
        for name, dataset in self._attrs.items():
            dataset.resize((end,))
            column = [row.get(name) for row in rows]
            try:
                dataset[first:end] = np.asarray(column, dtype=dataset.dtype)
            except (TypeError, ValueError):  # a missing value, or one of another type
                for i, value in enumerate(column):
                    try:
                        dataset[first + i] = value
                    except (TypeError, ValueError):
                        pass  # the row keeps the fill value
        self._attr_rows = end

    def _after_row(self) -> None:
        self._since_flush += 1
        every = self._params()["NumFramesFlush"]
        if every and self._since_flush >= every:
            self.flush_file()

    def flush_file(self) -> None:
        if self._file is not None:
            self._write_pending()
            self._file.flush()
            self._since_flush = 0
            if self.values["SWMRActive_RBV"]:
                self.increment("SWMRCbCounter_RBV")

    def abandon_file(self) -> None:
        _ABANDONED.append((self._file, self._data, self._attrs, self._missing, self._perform,
                           self._csr))
        self._file = None
        self._pending = []
        self.close_file()

    def close_file(self) -> None:
        if self._file is not None:
            self._write_pending()
            if not self._file.swmr_mode:
                self._record_acquisitions()
        f, self._file = self._file, None
        self._data = None
        self._csr = None
        self._attrs = {}
        self._missing = None
        self._perform = None
        self._acquisitions = {}
        self.set("SWMRActive_RBV", 0)
        if f is not None:
            f.close()

    def on_closed(self, seconds: float, nbytes: int) -> None:
        self.set_many({"RunTime": seconds,
                       "IOSpeed": nbytes * 8 / 1e6 / seconds if seconds > 0 else 0.0})


def acquisition_record(acquisition: Acquisition) -> dict[str, Any]:
    """An acquisition's effective parameter sets, as HDF5 attribute values (JSON text)."""
    def scalars(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if isinstance(v, (int, float, str))}
    pipeline = {port: [{"from_unique_id": uid, "params": scalars(values)}
                       for uid, values in changes]
                for port, changes in list(acquisition.pipeline.items())}
    return {"driver": json.dumps(scalars(acquisition.settings)),
            "pipeline": json.dumps(pipeline), "frames": acquisition.frames,
            "state": acquisition.state.name}


def _attr_dtype(value: Any) -> np.dtype:
    if isinstance(value, (bool, np.bool_)):
        return np.dtype("u1")
    if isinstance(value, (int, float, np.number)):
        return np.asarray(value).dtype  # Python int -> int64, float -> float64
    return h5py.string_dtype()
