"""How HDF1 lays a frame's dataset out: the chunk shape, the compression filter, the fill value.

Pure functions of the settings and the first frame, called when a file opens (the frame's size
and type are known only then). Each fitting is said on StatusMessage_RBV and logged at most once
per few seconds (by the writer, ndflow.plugins.hdf5): frames per chunk
(NumFramesChunks, declared up to 2**20) at most the frames the file will hold (NumCapture; 1 in
Single mode), and a chunk within HDF5's limits (2**32-1 elements, 4 GiB; HDF5 accepts a bigger
chunk at creation and fails at the first write, which allocates it whole); FillValue clamped to
the data type's range and truncated for integers, as HDF5 converts (a cast would wrap -5 to 251).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import hdf5plugin
import numpy as np

from ndflow.ndarray import NDArray
from ndflow.plugins.codec import BLOSC_CNAMES
from ndflow.plugins.file_writer import WriteError

COMPRESSIONS = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")
#: HDF5's limits for one chunk: 2**32-1 elements and 4 GiB. The library accepts a bigger chunk
#: when the dataset is created and fails at the first write (it allocates whole chunks), so the
#: chunk shape is fitted when the file opens (`fit_chunks`).
CHUNK_MAX_BYTES = 2 ** 32 - 1
CHUNK_MAX_ELEMENTS = 2 ** 32 - 1
#: declared maximum of a chunk setting (rows, columns, frames or attribute values per chunk):
#: chunk sizes are fitted to the frame and to CHUNK_MAX_BYTES when a file opens anyway; this
#: keeps what a client can ask for in a range that means something (a million frames of a
#: 1-pixel detector per chunk is 8 MB)
CHUNK_SETTING_MAX = 2 ** 20


def fit_chunks(shape: tuple[int, ...], itemsize: int, *, auto: bool, rows: int, cols: int,
               frames: int, held: int) -> tuple[tuple[int, ...], str]:
    """The chunk shape (frames, *frame) for frames of `shape`: the settings (ChunkSizeAuto,
    NumRowChunks, NumColChunks, NumFramesChunks) fitted to the frame, to the `held` frames
    the file will hold (NumCapture; 1 in Single mode; 0: unbounded) and to HDF5's limits per
    chunk, and what was fitted ("" if nothing): HDF5 would take a 4 GiB chunk at creation
    and fail at the first write, or write gigabytes of fill for a few frames."""
    requested = max(1, frames)
    if auto or len(shape) < 2:
        frame = list(shape)
    else:
        frame = [*shape[:-2], min(rows or shape[-2], shape[-2]), min(cols or shape[-1], shape[-1])]
    frames = requested
    said = []
    if held and frames > held:
        frames = held
        said.append(f"NumFramesChunks {requested} > the {held} frames of a file: "
                    f"{frames} per chunk")
    limit = min(CHUNK_MAX_ELEMENTS, CHUNK_MAX_BYTES // max(1, itemsize))
    fitted = list(frame)
    for axis in range(len(fitted)):  # a frame bigger than a chunk may be: fewer rows first
        others = math.prod(fitted) // fitted[axis]
        fitted[axis] = max(1, min(fitted[axis], limit // others))
    if fitted != frame:
        said.append(f"a chunk of one frame {tuple(frame)} is over HDF5's 4 GiB: "
                    f"{tuple(fitted)}")
    most = max(1, limit // math.prod(fitted))
    if frames > most:
        said.append(f"{frames} frames of {math.prod(fitted) * itemsize} bytes per chunk "
                    f"are over HDF5's 4 GiB: {most} per chunk")
        frames = most
    return (frames, *fitted), ("chunking fitted: " + "; ".join(said) if said else "")


def compression_filter(values: Mapping[str, Any]) -> dict[str, Any]:
    """h5py's dataset arguments for the Compression setting (and its Blosc/zlib options)."""
    name = COMPRESSIONS[values["Compression"]]
    if name == "None":
        return {}
    if name == "zlib":
        return {"compression": "gzip", "compression_opts": values["ZLevel"]}
    if name == "Blosc":
        return dict(hdf5plugin.Blosc(cname=BLOSC_CNAMES[values["BloscCompressor"]],
                                     clevel=values["BloscLevel"],
                                     shuffle=values["BloscShuffle"]))
    if name == "LZ4":
        return dict(hdf5plugin.LZ4())
    if name == "BSLZ4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise WriteError(f"Compression {name} is not supported; choose None, zlib, Blosc, "
                     "BSLZ4 or LZ4")


def codec_filter(array: NDArray) -> dict[str, Any]:
    """The HDF5 filter that reads chunks compressed by the Codec plugin."""
    codec = array.codec
    if codec.name == "zlib":
        return {"compression": "gzip"}
    if codec.name == "blosc":
        return dict(hdf5plugin.Blosc())
    if codec.name == "lz4hdf5":
        return dict(hdf5plugin.LZ4())
    if codec.name == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise WriteError(f"arrays compressed with {codec.name!r} cannot be written to HDF5 "
                     "as they are; decompress them first")


def fill_value(value: float, dtype: np.dtype) -> tuple[Any, str | None]:
    """FillValue as a dataset of `dtype` holds it, and what was changed: clamped to the type's
    range and, for integers, truncated toward zero, as HDF5's own conversion does (numpy's cast
    would wrap -5 to 251 in a UInt8 and make 1e30 whatever the platform gives)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        number = min(max(int(value), int(info.min)), int(info.max))  # value is finite
        fill = dtype.type(number)
        if number != value:
            kind = "truncated" if info.min <= value <= info.max else "clamped"
            return fill, f"{kind} to {number} for {dtype.name} data"
        return fill, None
    if dtype.kind == "f":
        info = np.finfo(dtype)
        number = min(max(value, float(info.min)), float(info.max))
        if number != value:
            return dtype.type(number), f"clamped to {number:g} for {dtype.name} data"
        return dtype.type(value), None
    return np.zeros((), dtype)[()], None
