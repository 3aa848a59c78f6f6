"""NDArray <-> NTNDArray, as ADCore's ntndArrayConverter does it (fromArray / toArray).

`to_value` builds the `epics:nt/NTNDArray:1.0` Value NDPluginPva publishes; `from_value` reads
one back into what pvaDriver needs to build an NDArray. Both are pure functions of their input,
so a plugin thread (sending) and a driver thread (receiving) can call them concurrently.

Field by field, as ADCore (`ntndArrayConverter.cpp`):
- value: the union member of the element type (`byteValue` ... `doubleValue`); a compressed
  array goes as `ubyteValue` of its compressed bytes, `codec.name` its codec and
  `codec.parameters` an int, the pvData ScalarType of the uncompressed elements (the type would
  otherwise be lost). `compressedSize`/`uncompressedSize` are always set.
- dimension[]: size, offset, fullSize (= size, as ADCore), binning, reverse; dims[0] fastest.
- timeStamp: the NDArray's epicsTS, EPICS epoch -> POSIX epoch (+631152000 s).
- dataTimeStamp: the NDArray's timeStamp double, also shifted to POSIX.
- attribute[]: NTAttribute {name, value (a variant scalar; unselected when undefined),
  descriptor, source, sourceType}; `ColorMode` always travels as an attribute (int32, as ADCore
  drivers attach it), since the receiving side reads the colour layout from it.
- uniqueId.

Copies: p4p copies an assigned numpy array exactly once, into a PVXS shared_array
(`storePy`: `PyArray_FromAny` with the array's own native dtype returns the array itself when
it is C-contiguous, then one memcpy). `to_value` hands p4p a 1-D *view* of the frame, so the
memcpy is the only copy (ADCore's converter wraps the NDArray buffer with none; p4p gives no way
to lend it a buffer). Once `to_value` returns, the Value owns its pixels: the pool buffer may be
reused at once. A frame that is not C-contiguous costs a second copy (numpy's, to make it so).
Receiving, `from_value` returns a read-only view of the PVXS buffer (no copy); the driver's copy
into its pool is then the only one, as pvaDriver's memcpy.

ndflow-specific, on top of ADCore:
- ndflow's "lz4" and "bslz4" bytes are one HDF5 chunk (the LZ4 filter's 16-byte framing, the
  bitshuffle filter's 12-byte header; see plugins/codec.py). On the wire they are ADCore's bytes
  (a bare LZ4 block; bitshuffle blocks with no header), so ADCore's pvaDriver, ImageJ and PvaPy
  decode them; `from_value` restores the framing. Other codecs' bytes are the same as ADCore's.
- Attribute values keep their type: numpy scalars go as the matching scalar type and come back
  as the same numpy type; Python int goes as int64 (uint64 above 2**63-1) and comes back as int;
  float as double; bool as boolean (ADCore's pvaDriver ignores boolean attributes: it has no
  such NDAttrDataType); a numeric array as a variant array (ADCore ignores those too); anything
  else as its str().
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from p4p import Value
from p4p.nt import NTNDArray

from ..adcore import COLOR_MODES
from ..ndarray import (EPICS_EPOCH_OFFSET, AttrSource, Codec, NDArray, NDAttribute,
                       NDDimension)

NTNDARRAY_ID = "epics:nt/NTNDArray:1.0"
#: the Type every frame is built with (built once: Type construction costs more than a frame's
#: metadata)
TYPE = NTNDArray.buildType()
POSIX_TIME_AT_EPICS_EPOCH = int(EPICS_EPOCH_OFFSET)

#: pvData ScalarType numbers, as ADCore stores them in codec.parameters
PV_BOOLEAN, PV_BYTE, PV_SHORT, PV_INT, PV_LONG, PV_UBYTE, PV_USHORT, PV_UINT, PV_ULONG, \
    PV_FLOAT, PV_DOUBLE, PV_STRING = range(12)

# (numpy kind, itemsize) -> (union member, ScalarType, p4p type code)
_ELEMENTS: dict[tuple[str, int], tuple[str, int, str]] = {
    ("i", 1): ("byteValue", PV_BYTE, "b"),
    ("u", 1): ("ubyteValue", PV_UBYTE, "B"),
    ("i", 2): ("shortValue", PV_SHORT, "h"),
    ("u", 2): ("ushortValue", PV_USHORT, "H"),
    ("i", 4): ("intValue", PV_INT, "i"),
    ("u", 4): ("uintValue", PV_UINT, "I"),
    ("i", 8): ("longValue", PV_LONG, "l"),
    ("u", 8): ("ulongValue", PV_ULONG, "L"),
    ("f", 4): ("floatValue", PV_FLOAT, "f"),
    ("f", 8): ("doubleValue", PV_DOUBLE, "d"),
}
#: ScalarType -> numpy element type (the ten NDDataTypes)
SCALAR_DTYPES: dict[int, np.dtype] = {
    PV_BYTE: np.dtype("i1"), PV_UBYTE: np.dtype("u1"), PV_SHORT: np.dtype("i2"),
    PV_USHORT: np.dtype("u2"), PV_INT: np.dtype("i4"), PV_UINT: np.dtype("u4"),
    PV_LONG: np.dtype("i8"), PV_ULONG: np.dtype("u8"), PV_FLOAT: np.dtype("f4"),
    PV_DOUBLE: np.dtype("f8"),
}
#: union member -> numpy element type
_MEMBER_DTYPES = {member: np.dtype(f"{kind}{size}")
                  for (kind, size), (member, _, _) in _ELEMENTS.items()}
#: p4p scalar type code of a variant -> how its Python value comes back
_SCALAR_DECODE: dict[str, Any] = {
    "b": np.int8, "B": np.uint8, "h": np.int16, "H": np.uint16, "i": np.int32, "I": np.uint32,
    "l": int, "L": np.uint64, "f": np.float32, "d": float, "?": bool, "s": str,
}
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_COLOR_MODE = "ColorMode"
_SOURCES = {int(source): source for source in AttrSource}
_LZ4_FRAMING = 16  # ndflow "lz4": u64 size, u32 block size, u32 compressed size (HDF5 filter)
_BSLZ4_HEADER = 12  # ndflow "bslz4": u64 size, u32 block bytes (bitshuffle HDF5 filter)


class NTNDArrayError(ValueError):
    """A Value that cannot be read as an NTNDArray frame; the message says why, for a status."""


def scalar_type(dtype: np.dtype | str) -> int:
    """The pvData ScalarType of a numpy element type (ADCore's NDDataTypeToScalar)."""
    dtype = np.dtype(dtype)
    try:
        return _ELEMENTS[(dtype.kind, dtype.itemsize)][1]
    except KeyError:
        raise ValueError(f"no NTNDArray element type for {dtype}") from None


# --- NDArray -> Value -----------------------------------------------------------------------------
def to_value(array: NDArray) -> Value:
    """The NTNDArray Value of `array`, every field set (a subscriber's copy is a merge of
    changed fields, so a field left unset would keep the previous frame's content).

    The pixels are copied once, by p4p, into the Value: the caller may reuse the frame's buffer
    as soon as this returns. Raises ValueError for a missing frame (no pixels) or an element
    type NTNDArray cannot carry."""
    data = array.data
    if data is None:
        raise ValueError(f"frame {array.unique_id} is missing ({array.status.missing}): "
                         "no pixels to send")
    codec = array.codec
    if codec.compressed:
        dtype = np.dtype(codec.dtype)
        payload = _wire_bytes(codec.name, data, dtype)
        member = "ubyteValue"
        compressed_size = int(payload.nbytes)
        uncompressed_size = array.nbytes
    else:
        dtype = data.dtype
        # reshape(-1) of a C-contiguous array is a view: p4p's memcpy is then the only copy
        payload = data.reshape(-1)
        member = _ELEMENTS.get((dtype.kind, dtype.itemsize), ("",))[0]
        if not member:
            raise ValueError(f"no NTNDArray element type for {dtype}")
        compressed_size = uncompressed_size = int(data.nbytes)
    dims = array.dims if _dims_fit(array) else [NDDimension(n) for n in reversed(data.shape)]
    sec, nsec = array.epics_ts
    data_sec, data_nsec = _split_seconds(array.timestamp + EPICS_EPOCH_OFFSET)
    return Value(TYPE, {
        "value": (member, payload),
        "codec": {"name": codec.name, "parameters": ("i", scalar_type(dtype))},
        "compressedSize": compressed_size,
        "uncompressedSize": uncompressed_size,
        "dimension": [{"size": d.size, "offset": d.offset, "fullSize": d.size,
                       "binning": d.binning, "reverse": bool(d.reverse)} for d in dims],
        "timeStamp": {"secondsPastEpoch": int(sec) + POSIX_TIME_AT_EPICS_EPOCH,
                      "nanoseconds": int(nsec), "userTag": 0},
        "dataTimeStamp": {"secondsPastEpoch": data_sec, "nanoseconds": data_nsec,
                          "userTag": 0},
        "attribute": _attributes_out(array),
        "uniqueId": _int32(array.unique_id),
    })


def _dims_fit(array: NDArray) -> bool:
    """Whether `array.dims` describe its pixels (a frame made without dims gets its shape's)."""
    dims = array.dims
    if not dims:
        return False
    if array.codec.compressed:
        return True
    return math.prod(d.size for d in dims) == array.data.size


def _split_seconds(seconds: float) -> tuple[int, int]:
    """(seconds, nanoseconds) of a POSIX time, the nanoseconds rounded, so that
    `sec - 631152000 + nsec * 1e-9` gives the EPICS-epoch double back bit for bit (the rounding
    error, < 1 ns, is far below half a double's step at these magnitudes)."""
    whole = math.floor(seconds)
    nsec = int(round((seconds - whole) * 1e9))
    if nsec >= 1_000_000_000:
        whole, nsec = whole + 1, nsec - 1_000_000_000
    return int(whole), nsec


def _int32(n: int) -> int:
    """uniqueId is an int32 on the wire (as in ADCore); wrap larger counters as C does."""
    n = int(n) & 0xFFFFFFFF
    return n - (1 << 32) if n >= 1 << 31 else n


def _attributes_out(array: NDArray) -> list[dict[str, Any]]:
    out = []
    color_sent = False
    for attr in array.attributes.values():
        if attr.name == _COLOR_MODE:  # the array's colour mode is the truth; ADCore: int32
            value: Any = ("i", int(array.color_mode))
            color_sent = True
        else:
            value = _variant(attr.value)
        out.append({"name": attr.name, "value": value, "descriptor": attr.description,
                    "sourceType": int(attr.source_type), "source": attr.source})
    if not color_sent:
        out.append({"name": _COLOR_MODE, "value": ("i", int(array.color_mode)),
                    "descriptor": "Color mode", "sourceType": int(AttrSource.DRIVER),
                    "source": ""})
    return out


def _variant(value: Any) -> Any:
    """An attribute value as p4p assigns it to a variant: (type code, value), or None for an
    undefined attribute (an unselected variant, as ADCore's fromUndefinedAttribute)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("?", bool(value))
    if isinstance(value, np.generic):
        dtype = value.dtype
        if dtype.kind in "iuf" and (dtype.kind, dtype.itemsize) in _ELEMENTS:
            return (_ELEMENTS[(dtype.kind, dtype.itemsize)][2], value.item())
        if dtype.kind == "f":  # float16, longdouble
            return ("d", float(value))
        if dtype.kind == "S":
            return ("s", value.decode("latin-1"))
        return ("s", str(value))
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return ("l", value)
        if 0 <= value <= _UINT64_MAX:
            return ("L", value)
        return ("s", str(value))
    if isinstance(value, float):
        return ("d", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bytes):
        return ("s", value.decode("latin-1"))
    if isinstance(value, (np.ndarray, list, tuple)):
        arr = np.asarray(value)
        if arr.size == 1 and isinstance(value, np.ndarray):
            return _variant(arr.reshape(-1)[0])
        key = (arr.dtype.kind, arr.dtype.itemsize)
        if key in _ELEMENTS and arr.ndim == 1:
            return ("a" + _ELEMENTS[key][2], arr)
    return ("s", str(value))


def _wire_bytes(name: str, data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The compressed bytes ADCore would send for ndflow's compressed `data` (see the module
    docstring): a view wherever possible."""
    chunk = data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    if name == "bslz4" and chunk.size >= _BSLZ4_HEADER:
        return chunk[_BSLZ4_HEADER:]
    if name == "lz4" and chunk.size >= _LZ4_FRAMING:
        total, block, packed = struct.unpack(">QII", chunk[:_LZ4_FRAMING].tobytes())
        if block >= total and packed < total and chunk.size == _LZ4_FRAMING + packed:
            return chunk[_LZ4_FRAMING:]  # one LZ4 block: exactly ADCore's bytes
        # stored raw (LZ4 did not shrink it) or in several blocks: ADCore sends one LZ4 block
        import imagecodecs
        plain = imagecodecs.lz4h5_decode(chunk.tobytes())
        return np.frombuffer(imagecodecs.lz4_encode(plain), dtype=np.uint8)
    return chunk


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
        if name == _COLOR_MODE:  # ADCore reads it with getAs<int32>
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
