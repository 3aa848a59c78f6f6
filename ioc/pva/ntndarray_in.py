"""NTNDArray -> frame: the receiving half of ADCore's ntndArrayConverter (toArray), for the PVA
driver (pvaDriver) and the observation client.

`from_value` reads an update into a `Frame`; `Frame.to_ndarray` makes the NDArray. A monitor's
update is complete even when the server sent only the fields that changed (p4p's client merges
each update into the previous one), so nothing here keeps state between updates.

Copies: `from_value` returns a read-only view of the PVXS buffer (no copy); the driver's copy
into its pool is then the only one, as pvaDriver's memcpy. Field meanings and the ndflow framing
of "lz4"/"bslz4" bytes: see `ntndarray`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from p4p import Value

from ..adcore import COLOR_MODES
from ..ndarray import AttrSource, Codec, NDArray, NDAttribute, NDDimension
from .ntndarray import COLOR_MODE, POSIX_TIME_AT_EPICS_EPOCH, SCALAR_DTYPES, NTNDArrayError

#: p4p scalar type code of a variant -> how its Python value comes back
_SCALAR_DECODE: dict[str, Any] = {
    "b": np.int8, "B": np.uint8, "h": np.int16, "H": np.uint16, "i": np.int32, "I": np.uint32,
    "l": int, "L": np.uint64, "f": np.float32, "d": float, "?": bool, "s": str,
}
_SOURCES = {int(source): source for source in AttrSource}


# --- Value -> frame -------------------------------------------------------------------------------
@dataclass
class Frame:
    """What an NTNDArray update holds, in ndflow's terms: everything needed to build an NDArray.

    `data` is a read-only view of the received buffer, in numpy order (shape reversed from
    `dims`) or, for a compressed frame, its 1-D uint8 bytes in ndflow's framing (`codec` names
    the codec and the element type)."""

    data: np.ndarray
    dims: list[NDDimension]
    unique_id: int
    timestamp: float  # EPICS epoch
    epics_ts: tuple[int, int]
    attributes: dict[str, NDAttribute] = field(default_factory=dict)
    codec: Codec = Codec()
    color_mode: int = 0

    @property
    def dtype(self) -> np.dtype:
        """The element type (also of a compressed frame)."""
        return np.dtype(self.codec.dtype) if self.codec.compressed else self.data.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy shape of the (uncompressed) pixels."""
        return tuple(d.size for d in reversed(self.dims))

    def to_ndarray(self, out: np.ndarray | None = None, cls: type[NDArray] = NDArray) -> NDArray:
        """An NDArray (of class `cls`) of this frame. With `out` (an array of `data`'s shape and
        type, e.g. from a pool) the pixels are copied into it, the one copy of the receiving
        side; without, the NDArray shares the received (read-only) buffer."""
        data = self.data
        if out is not None:
            out[...] = data
            data = out
        return cls(data=data, unique_id=self.unique_id, timestamp=self.timestamp,
                       epics_ts=self.epics_ts,
                       dims=[NDDimension(d.size, d.offset, d.binning, d.reverse)
                             for d in self.dims],
                       attributes=dict(self.attributes), codec=self.codec,
                       color_mode=self.color_mode)


def check_type(value: Value) -> None:
    """Raise NTNDArrayError if `value` does not have NTNDArray's structure (what ADCore's
    NTNDArray::isCompatible checks before pvaDriver starts its monitor)."""
    missing = [name for name in ("value", "dimension") if name not in value]
    type_id = value.getID()
    if not missing:
        try:
            union = value.type("value").aspy()
        except (KeyError, TypeError, ValueError):
            union = None
        if not (isinstance(union, tuple) and union and union[0] == "U"):
            missing = ["a value union"]
    if missing:
        raise NTNDArrayError(f"not an NTNDArray (type {type_id or 'structure'}, has no "
                             f"{', '.join(missing)})")


def from_value(value: Value) -> Frame:
    """The frame an NTNDArray update carries, as ADCore's toArray reads it. Raises
    NTNDArrayError, with a message fit for a status PV, for what is not a readable frame (no
    union member selected, an element type NDArray lacks, sizes that disagree)."""
    check_type(value)
    pixels = value["value"]
    if pixels is None:  # a server's initial, empty Value (ADCore: "no union field selected")
        raise NTNDArrayError("no union field selected (the server has not sent a frame yet)")
    try:
        member = value.type("value->").aspy()
    except (KeyError, TypeError, ValueError):
        member = ""
    dims = [NDDimension(int(d["size"]), int(d["offset"]), int(d["binning"]),
                        bool(d["reverse"])) for d in value["dimension"]]
    if any(d.size < 0 for d in dims):
        raise NTNDArrayError(f"negative dimension size in {[d.size for d in dims]}")
    if len(dims) > 10:
        raise NTNDArrayError(f"{len(dims)} dimensions (NDArray has at most 10)")
    codec_name = str(value.get("codec.name", "") or "")
    count = math.prod(d.size for d in dims) if dims else 0
    if codec_name:
        dtype = _codec_dtype(value)
        raw = np.asarray(pixels).reshape(-1)
        raw = raw.view(np.uint8) if raw.dtype != np.uint8 else raw
        data = _ndflow_bytes(codec_name, raw, dtype, count)
        codec = Codec(codec_name, dtype=dtype.str)
    else:
        data = np.asarray(pixels)
        if data.dtype.kind == "b" or member == "a?":
            raise NTNDArrayError("boolean pixels (booleanValue) have no NDArray data type")
        if not dims:
            dims = [NDDimension(int(data.size))]
            count = int(data.size)
        if data.size != count:
            raise NTNDArrayError(f"{data.size} elements for dimensions "
                                 f"{[d.size for d in dims]} ({count} elements)")
        data = data.reshape(tuple(d.size for d in reversed(dims)))
        codec = Codec()
    attributes, color_mode = _attributes_in(value)
    sec = int(value.get("timeStamp.secondsPastEpoch", 0) or 0)
    nsec = int(value.get("timeStamp.nanoseconds", 0) or 0)
    data_sec = int(value.get("dataTimeStamp.secondsPastEpoch", 0) or 0)
    data_nsec = int(value.get("dataTimeStamp.nanoseconds", 0) or 0)
    return Frame(
        data=data, dims=dims, unique_id=int(value.get("uniqueId", 0) or 0),
        # an unset dataTimeStamp (p4p's NTNDArray.wrap leaves it 0) is no time: 0.0, not 1970
        timestamp=(data_sec - POSIX_TIME_AT_EPICS_EPOCH) + data_nsec * 1e-9
        if data_sec or data_nsec else 0.0,
        # a time before the EPICS epoch (a server that sets none) is no time: (0, 0)
        epics_ts=(sec - POSIX_TIME_AT_EPICS_EPOCH, nsec)
        if sec >= POSIX_TIME_AT_EPICS_EPOCH else (0, 0),
        attributes=attributes, codec=codec, color_mode=color_mode)


def _codec_dtype(value: Value) -> np.dtype:
    """The uncompressed element type from codec.parameters (ADCore: an int ScalarType)."""
    parameters = value.get("codec.parameters")
    if isinstance(parameters, (int, np.integer)) and not isinstance(parameters, bool) \
            and int(parameters) in SCALAR_DTYPES:
        return SCALAR_DTYPES[int(parameters)]
    raise NTNDArrayError(f"compressed frame ({value.get('codec.name')}) whose codec.parameters "
                         f"({parameters!r}) is not the ScalarType of its elements")


def _ndflow_bytes(name: str, raw: np.ndarray, dtype: np.dtype, count: int) -> np.ndarray:
    """ADCore's compressed bytes -> ndflow's (one HDF5 chunk; see the module docstring)."""
    total = count * dtype.itemsize
    if name == "bslz4":
        header = struct.pack(">QI", total, _bshuf_block_elements(dtype.itemsize) * dtype.itemsize)
        return _joined(header, raw)
    if name == "lz4":
        if raw.size == total:  # the HDF5 LZ4 filter would read a block this size as raw
            import imagecodecs
            plain = np.frombuffer(imagecodecs.lz4_decode(raw.tobytes(), out=total), np.uint8)
            return _joined(struct.pack(">QII", total, total, total), plain)
        return _joined(struct.pack(">QII", total, total, raw.size), raw)
    return raw


def _bshuf_block_elements(itemsize: int) -> int:
    """bitshuffle's default block (bshuf_default_block_size, what ADCore compresses with):
    ~8 kB, a multiple of 8 elements. The same as plugins/codec.py's, which the core does not
    import."""
    size = 8192 // itemsize
    return max(size - size % 8, 128)


def _joined(header: bytes, body: np.ndarray) -> np.ndarray:
    out = np.empty(len(header) + body.size, dtype=np.uint8)
    out[:len(header)] = np.frombuffer(header, dtype=np.uint8)
    out[len(header):] = body
    out.flags.writeable = False
    return out


def _attributes_in(value: Value) -> tuple[dict[str, NDAttribute], int]:
    attributes: dict[str, NDAttribute] = {}
    color_mode = 0
    for elem in value.get("attribute", None) or []:
        name = str(elem.get("name", "") or "")
        if not name:
            continue
        raw = elem.get("value")
        if raw is None:
            decoded: Any = None
        elif isinstance(raw, np.ndarray):
            decoded = np.array(raw)  # its own copy: the received buffer is read-only
        elif isinstance(raw, (str, bool)):  # no type code needed (saves a lookup per attribute)
            decoded = raw
        else:
            try:
                code = elem.type("value->").aspy()
            except (KeyError, TypeError, ValueError):
                code = ""
            kind = _SCALAR_DECODE.get(code) if isinstance(code, str) else None
            decoded = kind(raw) if kind is not None else raw
        source_type = _SOURCES.get(elem.get("sourceType", 0), AttrSource.UNDEFINED)
        if name == COLOR_MODE:  # ADCore reads it with getAs<int32>
            try:
                color_mode = int(decoded)
                decoded = color_mode
            except (TypeError, ValueError):
                raise NTNDArrayError(f"attribute ColorMode is {raw!r}, not a colour mode "
                                     f"number") from None
            if not 0 <= color_mode < len(COLOR_MODES):
                raise NTNDArrayError(f"attribute ColorMode {color_mode} is not one of "
                                     f"0..{len(COLOR_MODES) - 1}")
        attributes[name] = NDAttribute(name, decoded, str(elem.get("descriptor", "") or ""),
                                       source_type, str(elem.get("source", "") or ""))
    return attributes, color_mode
