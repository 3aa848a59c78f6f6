"""Frame -> NTNDArray: the sending half of ADCore's ntndArrayConverter (fromArray), for
NDPluginPva; field meanings in `ntndarray`.

`to_value` is one frame's complete Value; `NTNDArrayStream` makes the successive updates of one
PV, each marking only what changed since the previous one (see its docstring for why).

Copies: p4p copies an assigned numpy array exactly once, into a PVXS shared_array (`storePy`:
`PyArray_FromAny` with the array's own native dtype returns the array itself when it is
C-contiguous, then one memcpy). The pixels are handed to p4p as a 1-D *view* of the frame, so
that memcpy is the only copy (ADCore's converter wraps the NDArray buffer with none; p4p gives no
way to lend it a buffer). Once a Value is built it owns its pixels: the pool buffer may be
reused at once. A frame that is not C-contiguous costs a second copy (numpy's, to make it so).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from p4p import Value

from ..ndarray import EPICS_EPOCH_OFFSET, AttrSource, NDArray, NDDimension
from .ntndarray import (BSLZ4_HEADER, COLOR_MODE, ELEMENTS, LZ4_FRAMING,
                        POSIX_TIME_AT_EPICS_EPOCH, TYPE, scalar_type)

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


# --- one frame ---------------------------------------------------------------------------------
def to_value(array: NDArray) -> Value:
    """The complete NTNDArray Value of `array`, every field set.

    The pixels are copied once, by p4p, into the Value: the caller may reuse the frame's buffer
    as soon as this returns. Raises ValueError for a missing frame (no pixels) or an element
    type NTNDArray cannot carry."""
    return Value(TYPE, frame_fields(array))


def frame_fields(array: NDArray) -> dict[str, Any]:
    """Every top-level field of `array`'s NTNDArray, as p4p assigns them (the pixels a 1-D view,
    not yet copied). Raises ValueError as `to_value`."""
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
        member = ELEMENTS.get((dtype.kind, dtype.itemsize), ("",))[0]
        if not member:
            raise ValueError(f"no NTNDArray element type for {dtype}")
        compressed_size = uncompressed_size = int(data.nbytes)
    dims = array.dims if _dims_fit(array) else [NDDimension(n) for n in reversed(data.shape)]
    sec, nsec = array.epics_ts
    data_sec, data_nsec = _split_seconds(array.timestamp + EPICS_EPOCH_OFFSET)
    return {
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
    }


# --- successive frames of one PV ------------------------------------------------------------------
#: fields that change with every frame: always marked
PER_FRAME = ("value", "uniqueId", "timeStamp", "dataTimeStamp")
#: fields that stay as they were from one frame to the next unless the acquisition changes:
#: marked only when they differ from the previous frame's
STRUCTURE = ("codec", "compressedSize", "uncompressedSize", "dimension", "attribute")


class NTNDArrayStream:
    """The updates of one NTNDArray PV: the first a complete Value, each later one marking only
    the fields that differ from the previous update's (the pixels, uniqueId and time stamps
    always). Not thread-safe: one PV posts from one thread at a time (its endpoint's lock).

    Why: PVXS serialises only the marked fields of an update, and everything that holds a copy
    merges updates into it (the SharedPV's current value, which a new subscriber and a get
    receive; PVXS's squash of a slow subscriber's queue; p4p's and pvAccessCPP's client
    monitors), so every client still sees complete frames while the unchanging dimension,
    codec and attribute structures are not rebuilt and re-sent per frame.

    The caller must `reset()` when an update it was given was not posted (the next one is then
    complete again)."""

    def __init__(self) -> None:
        #: the structure fields of the last update handed out (not its pixels: a reference to
        #: them would hold the previous frame's buffer until the next frame)
        self._last: dict[str, Any] | None = None

    def reset(self) -> None:
        """Make the next update complete."""
        self._last = None

    def update(self, array: NDArray) -> Value:
        """The next update, for `array`. Raises ValueError as `to_value` (the stream is then
        as before)."""
        fields = frame_fields(array)
        last = self._last
        if last is None:
            marked = fields
        else:
            marked = {name: fields[name] for name in PER_FRAME}
            for name in STRUCTURE:
                if not _same(name, fields[name], last[name]):
                    marked[name] = fields[name]
        value = Value(TYPE, marked)
        self._last = {name: fields[name] for name in STRUCTURE}
        return value


def _same(name: str, new: Any, old: Any) -> bool:
    """Whether field `name` is the same on the wire in both frames. Attribute values are
    compared with their type code and, for floats, their sign (0.0 == -0.0 in Python, not on
    the wire); an array value or a NaN always counts as changed."""
    if name != "attribute":
        return bool(new == old)
    if len(new) != len(old):
        return False
    for a, b in zip(new, old):
        if (a["name"] != b["name"] or a["descriptor"] != b["descriptor"]
                or a["sourceType"] != b["sourceType"] or a["source"] != b["source"]
                or not _same_variant(a["value"], b["value"])):
            return False
    return True


def _same_variant(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    (code, x), (code_b, y) = a, b
    if code != code_b or code.startswith("a"):
        return False
    if type(x) is not type(y):
        return False
    if isinstance(x, float):
        return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)
    return bool(x == y)


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
        if attr.name == COLOR_MODE:  # the array's colour mode is the truth; ADCore: int32
            value: Any = ("i", int(array.color_mode))
            color_sent = True
        else:
            value = _variant(attr.value)
        out.append({"name": attr.name, "value": value, "descriptor": attr.description,
                    "sourceType": int(attr.source_type), "source": attr.source})
    if not color_sent:
        out.append({"name": COLOR_MODE, "value": ("i", int(array.color_mode)),
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
        if dtype.kind in "iuf" and (dtype.kind, dtype.itemsize) in ELEMENTS:
            return (ELEMENTS[(dtype.kind, dtype.itemsize)][2], value.item())
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
        if key in ELEMENTS and arr.ndim == 1:
            return ("a" + ELEMENTS[key][2], arr)
    return ("s", str(value))


def _wire_bytes(name: str, data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The compressed bytes ADCore would send for ndflow's compressed `data` (see the module
    docstring): a view wherever possible."""
    chunk = data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    if name == "bslz4" and chunk.size >= BSLZ4_HEADER:
        return chunk[BSLZ4_HEADER:]
    if name == "lz4" and chunk.size >= LZ4_FRAMING:
        total, block, packed = struct.unpack(">QII", chunk[:LZ4_FRAMING].tobytes())
        if block >= total and packed < total and chunk.size == LZ4_FRAMING + packed:
            return chunk[LZ4_FRAMING:]  # one LZ4 block: exactly ADCore's bytes
        # stored raw (LZ4 did not shrink it) or in several blocks: ADCore sends one LZ4 block
        import imagecodecs
        plain = imagecodecs.lz4h5_decode(chunk.tobytes())
        return np.frombuffer(imagecodecs.lz4_encode(plain), dtype=np.uint8)
    return chunk
