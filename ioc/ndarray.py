"""NDArray: a numpy frame plus ADCore's metadata, and three things ADCore lacks.

Axis convention: `dims[0]` is the fastest-varying dimension, as in ADCore, so a 2-D mono frame
with numpy shape (ny, nx) has dims[0].size == nx. `transform` maps this array's pixel coordinates
(x, y, 1) to detector pixel coordinates; ROI, binning and flips compose it. `status` tells whether
the frame is real data or a placeholder for a frame that was lost, and why.
"""

from __future__ import annotations

import enum
import itertools
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .adcore import COLOR_MODES, data_type_index

EPICS_EPOCH_OFFSET = 631152000.0  # seconds from 1970-01-01 to 1990-01-01


class AttrSource(enum.IntEnum):
    DRIVER = 0
    PARAM = 1
    EPICS_PV = 2
    FUNCT = 3
    CONST = 4
    UNDEFINED = 5


@dataclass
class NDAttribute:
    name: str
    value: Any
    description: str = ""
    source_type: AttrSource = AttrSource.DRIVER
    source: str = ""

    def number(self) -> float | None:
        """The value as a double, or None if it is not numeric (text is not parsed, as ADCore's
        getValue does not convert an NDAttrString)."""
        value = self.value
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, (numbers.Real, np.bool_)):
            return float(value)
        return None


@dataclass
class NDDimension:
    size: int
    offset: int = 0  # in unbinned detector pixels
    binning: int = 1  # cumulative
    reverse: bool = False


@dataclass(frozen=True)
class Codec:
    """How `NDArray.data` is compressed. A compressed array's data is the compressed bytes
    (1-D uint8) while `dims` keep the uncompressed layout and `dtype` the element type, as
    ADCore's NDCodec_t plus dataType do."""

    name: str = ""  # "", "jpeg", "zlib", "blosc", "lz4", "lz4hdf5", "bslz4"
    level: int = 0
    shuffle: int = 0
    compressor: int = 0
    dtype: str = ""  # numpy dtype string of the uncompressed elements

    @property
    def compressed(self) -> bool:
        return bool(self.name)


class MissingCause(enum.Enum):
    DETECTOR_FAULT = "detector fault"
    DROPPED = "overrun/dropped"
    NO_MEMORY = "no memory in pool"
    VETOED = "vetoed"
    PROCESSING_ERROR = "processing error"
    TIMEOUT = "timeout"
    INPUT_ERROR = "unreadable input"  # a source file that gives no frame (truncated FITS, ...)


@dataclass(frozen=True)
class FrameStatus:
    missing: MissingCause | None = None
    message: str = ""

    @property
    def valid(self) -> bool:
        return self.missing is None


VALID = FrameStatus()


class InFlight:
    """Counts deliveries of one acquisition's frames that plugins have not finished yet, so the
    driver can wait for the pipeline (WaitForPlugins) without stopping the next acquisition."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        with self._cond:
            self._count -= 1
            if self._count <= 0:
                self._count = 0
                self._cond.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


_acquisition_ids = itertools.count(1)


@dataclass
class Acquisition:
    """One run of Acquire=1: its id and the parameter snapshot it was started with."""

    id: int
    params: dict[str, Any]
    in_flight: InFlight = field(default_factory=InFlight)
    first_id: int | None = None  # unique id of its first frame, so plugins can sort from it

    @classmethod
    def start(cls, params: Mapping[str, Any]) -> "Acquisition":
        return cls(next(_acquisition_ids), dict(params))


def xyz_dims(ndims: int, color_mode: int) -> tuple[int, ...]:
    """The dimensions (dims index) holding X, Y and Z, the first `ndims` of them, as
    NDArray::getInfo assigns them: a 3-D RGB1 array is (colour, x, y), RGB2 (x, colour, y)."""
    if ndims == 3:
        mode = COLOR_MODES[color_mode] if 0 <= color_mode < len(COLOR_MODES) else "Mono"
        return {"RGB1": (1, 2, 0), "RGB2": (0, 2, 1)}.get(mode, (0, 1, 2))
    return tuple(range(ndims))


SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # transform: x <-> y


def identity() -> np.ndarray:
    return np.eye(3)


@dataclass
class NDArray:
    data: np.ndarray | None
    unique_id: int = 0
    timestamp: float = 0.0  # seconds since the EPICS epoch
    epics_ts: tuple[int, int] = (0, 0)  # (secPastEpoch, nsec)
    dims: list[NDDimension] = field(default_factory=list)
    attributes: dict[str, NDAttribute] = field(default_factory=dict)
    codec: Codec = Codec()
    transform: np.ndarray = field(default_factory=identity)
    status: FrameStatus = VALID
    acquisition: Acquisition | None = None
    color_mode: int = 0  # index into COLOR_MODES

    @classmethod
    def from_numpy(cls, data: np.ndarray, color_mode: int = 0, **kw: Any) -> "NDArray":
        dims = [NDDimension(n) for n in reversed(data.shape)]
        return cls(data=data, dims=dims, color_mode=color_mode, **kw)

    @classmethod
    def missing(cls, cause: MissingCause, message: str = "", **kw: Any) -> "NDArray":
        return cls(data=None, status=FrameStatus(cause, message), **kw)

    def stamp(self, unique_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.unique_id = unique_id
        self.timestamp = now - EPICS_EPOCH_OFFSET
        sec = int(self.timestamp)
        self.epics_ts = (sec, int((self.timestamp - sec) * 1e9))

    def derive(self, data: np.ndarray | None, **changes: Any) -> "NDArray":
        """A new array for `data` carrying this one's identity and metadata (plugins' outputs)."""
        new = NDArray(data=data, unique_id=self.unique_id, timestamp=self.timestamp,
                      epics_ts=self.epics_ts,
                      dims=[NDDimension(d.size, d.offset, d.binning, d.reverse) for d in self.dims],
                      attributes=dict(self.attributes), codec=self.codec,
                      transform=self.transform.copy(), status=self.status,
                      acquisition=self.acquisition, color_mode=self.color_mode)
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    # --- descriptions published by NDArrayBase PVs ----------------------------------------------
    @property
    def valid(self) -> bool:
        return self.status.valid and self.data is not None

    @property
    def ndims(self) -> int:
        return len(self.dims)

    @property
    def dtype(self) -> np.dtype | None:
        """The element type, also of a compressed array."""
        if self.codec.compressed:
            return np.dtype(self.codec.dtype)
        return self.data.dtype if self.data is not None else None

    @property
    def data_type(self) -> int:
        dtype = self.dtype
        return data_type_index(dtype) if dtype is not None else 0

    @property
    def nbytes(self) -> int:
        """Uncompressed size in bytes (ArraySize_RBV)."""
        if self.codec.compressed:
            return int(np.prod([d.size for d in self.dims])) * np.dtype(self.codec.dtype).itemsize
        return int(self.data.nbytes) if self.data is not None else 0

    @property
    def compressed_size(self) -> int:
        """Bytes actually held (CompressedSize_RBV)."""
        return int(self.data.nbytes) if self.data is not None else 0

    def xyz_sizes(self) -> tuple[int, int, int]:
        """ArraySizeX/Y/Z as ADCore reports them for this array's colour mode."""
        sizes = [d.size for d in self.dims] + [0, 0, 0]
        x, y, z = xyz_dims(3, self.color_mode) if self.ndims == 3 else (0, 1, 2)
        return sizes[x], sizes[y], sizes[z]

    # --- coordinate transform -------------------------------------------------------------------
    def to_detector(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) array pixel coordinates (x, y) to detector coordinates."""
        return apply_transform(self.transform, points)

    def from_detector(self, points: np.ndarray) -> np.ndarray:
        return apply_transform(np.linalg.inv(self.transform), points)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    homog = np.column_stack([pts, np.ones(len(pts))])
    return (homog @ matrix.T)[:, :2]


def region_transform(offset_x: float, offset_y: float, bin_x: float, bin_y: float,
                     size_x: int, size_y: int, reverse_x: bool, reverse_y: bool) -> np.ndarray:
    """Pixel (x, y) of a binned, optionally reversed region -> pixel of its source.

    Output pixel x covers source pixels [offset + x*bin, offset + (x+1)*bin); with reverse the
    first output pixel is the last region bin."""
    sx = -bin_x if reverse_x else bin_x
    sy = -bin_y if reverse_y else bin_y
    tx = offset_x + ((size_x - 1) * bin_x if reverse_x else 0)
    ty = offset_y + ((size_y - 1) * bin_y if reverse_y else 0)
    return np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])
