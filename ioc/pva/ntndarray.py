"""NDArray <-> NTNDArray, as ADCore's ntndArrayConverter does it (fromArray / toArray): what
both directions share.

The two halves are separate modules, since a sender and a receiver never need each other:
`ntndarray_stream` builds the `epics:nt/NTNDArray:1.0` Values NDPluginPva publishes (a full
Value, or a stream of updates carrying only what changed), `ntndarray_in` reads one back into
what pvaDriver needs to build an NDArray. Both are pure functions of their input (the stream of
one PV keeps the previous frame's fields), so a plugin thread (sending) and a driver thread
(receiving) can use them concurrently.

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

ndflow-specific, on top of ADCore:
- ndflow's "lz4" and "bslz4" bytes are one HDF5 chunk (the LZ4 filter's 16-byte framing, the
  bitshuffle filter's 12-byte header; see plugins/codec.py). On the wire they are ADCore's bytes
  (a bare LZ4 block; bitshuffle blocks with no header), so ADCore's pvaDriver, ImageJ and PvaPy
  decode them; the receiving side restores the framing. Other codecs' bytes are ADCore's.
- Attribute values keep their type: numpy scalars go as the matching scalar type and come back
  as the same numpy type; Python int goes as int64 (uint64 above 2**63-1) and comes back as int;
  float as double; bool as boolean (ADCore's pvaDriver ignores boolean attributes: it has no
  such NDAttrDataType); a numeric array as a variant array (ADCore ignores those too); anything
  else as its str().
"""

from __future__ import annotations

import numpy as np
from p4p.nt import NTNDArray

from ..ndarray import EPICS_EPOCH_OFFSET

NTNDARRAY_ID = "epics:nt/NTNDArray:1.0"
#: the Type every frame is built with (built once: Type construction costs more than a frame's
#: metadata)
TYPE = NTNDArray.buildType()
POSIX_TIME_AT_EPICS_EPOCH = int(EPICS_EPOCH_OFFSET)

#: pvData ScalarType numbers, as ADCore stores them in codec.parameters
PV_BOOLEAN, PV_BYTE, PV_SHORT, PV_INT, PV_LONG, PV_UBYTE, PV_USHORT, PV_UINT, PV_ULONG, \
    PV_FLOAT, PV_DOUBLE, PV_STRING = range(12)

#: (numpy kind, itemsize) -> (union member, ScalarType, p4p type code)
ELEMENTS: dict[tuple[str, int], tuple[str, int, str]] = {
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
COLOR_MODE = "ColorMode"  # the attribute the colour layout travels in
LZ4_FRAMING = 16  # ndflow "lz4": u64 size, u32 block size, u32 compressed size (HDF5 filter)
BSLZ4_HEADER = 12  # ndflow "bslz4": u64 size, u32 block bytes (bitshuffle HDF5 filter)


class NTNDArrayError(ValueError):
    """A Value that cannot be read as an NTNDArray frame; the message says why, for a status."""


def scalar_type(dtype: np.dtype | str) -> int:
    """The pvData ScalarType of a numpy element type (ADCore's NDDataTypeToScalar)."""
    dtype = np.dtype(dtype)
    try:
        return ELEMENTS[(dtype.kind, dtype.itemsize)][1]
    except KeyError:
        raise ValueError(f"no NTNDArray element type for {dtype}") from None
