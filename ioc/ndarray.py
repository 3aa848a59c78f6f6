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
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .adcore import COLOR_MODES, data_type_index
from .state import RunEvent, RunMachine, RunState

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


@dataclass(frozen=True, eq=False)
class RadialProfile:
    """A radial background: mean and standard deviation of the pixel values per radius bin
    around `centre` (x, y), bins of equal width from 0 to `radius_max`. Kept with a sparse frame
    (Lima2's SMX sparse format) so the background the pixels were cut against is not lost."""

    centre: tuple[float, float]
    radius_max: float
    avg: np.ndarray  # float32, one per bin
    std: np.ndarray  # float32, one per bin

    @property
    def nbins(self) -> int:
        return int(self.avg.size)


@dataclass(frozen=True, eq=False)
class SparsePayload:
    """A sparse frame (Lima2's plain sparse format): the kept pixels of a dense frame of
    `shape`, as flat C-order `index` (uint32) and `intensity` (the dense element type); every
    other pixel is 0 (or the `background` profile, when densified with it). An NDArray carrying
    one has `data` = `intensity` and keeps the dense `dims`, as a compressed array does."""

    index: np.ndarray
    intensity: np.ndarray
    shape: tuple[int, ...]
    background: RadialProfile | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.intensity.dtype

    @property
    def dense_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.intensity.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes held: index, intensity and the background profile."""
        extra = self.background.avg.nbytes + self.background.std.nbytes \
            if self.background is not None else 0
        return int(self.index.nbytes + self.intensity.nbytes + extra)


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
    driver can wait for the pipeline (WaitForPlugins) without stopping the next acquisition.
    Once closed (the driver made its last frame), the count reaching 0 calls `on_idle` once."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._on_idle: Callable[[], None] | None = None

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        fire = None
        with self._cond:
            self._count -= 1
            if self._count <= 0:
                self._count = 0
                self._cond.notify_all()
                fire, self._on_idle = self._on_idle, None
        if fire is not None:
            fire()

    def close(self, on_idle: Callable[[], None]) -> None:
        """No more frames will enter; call `on_idle` (once) as soon as none is left."""
        with self._cond:
            self._closed = True
            if self._count:
                self._on_idle = on_idle
                return
        on_idle()

    @property
    def count(self) -> int:
        return self._count

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


_acquisition_ids = itertools.count(1)


def resolve(future: Future) -> None:
    """Complete `future` unless it is already done (any thread)."""
    try:
        future.set_result(None)
    except InvalidStateError:
        pass


@dataclass(eq=False)
class Acquisition:
    """One run of Acquire=1: its id, the parameter snapshot it was started with, and its own
    processing state, so acquisition N+1 can run while N's frames are still in the pipeline.

    `acquired` completes when the driver is done with it, `processed` when, in addition, every
    frame has left every plugin: the two completions behind Acquire's put-callback and
    AcquireBusy. `pipeline` is the effective pipeline set: for each plugin port, the parameter
    values it processed this acquisition's frames with, and from which frame each applied."""

    id: int
    settings: dict[str, Any]  # the driver's parameter values it runs with (frozen at its start)
    in_flight: InFlight = field(default_factory=InFlight)
    first_id: int | None = None  # unique id of its first frame, so plugins can sort from it
    frames: int = 0  # frames the driver produced (placeholders included)
    processing_errors: bool = False  # some frame failed in a plugin
    lost: set[int] = field(default_factory=set)  # unique ids of frames that became missing
    pipeline: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)  # POSIX time of Acquire=1
    ended: float | None = None  # POSIX time the driver made its last frame (None: running)
    #: when its first frame is due (time.monotonic), if not at once: a cluster rank's place on
    #: the frames' common timeline (ndflow.cluster.numbering.first_frame_in)
    first_due: float | None = None
    acquired: Future = field(default_factory=Future)
    processed: Future = field(default_factory=Future)
    on_state: Callable[["Acquisition", RunState], None] | None = None
    on_lost: Callable[["Acquisition"], None] | None = None
    run: RunMachine = field(init=False)

    def __post_init__(self) -> None:
        self.run = RunMachine(self._entered)

    @classmethod
    def start(cls, settings: Mapping[str, Any],
              on_state: Callable[["Acquisition", RunState], None] | None = None
              ) -> "Acquisition":
        return cls(next(_acquisition_ids), dict(settings), on_state=on_state)

    def _entered(self, state: RunState) -> None:
        if self.on_state is not None:
            self.on_state(self, state)

    @property
    def state(self) -> RunState:
        return self.run.state

    def end_acquisition(self, failed: bool = False) -> None:
        """The driver made its last frame (driver thread); processing ends when the pipeline
        has drained."""
        self.ended = time.time()
        self.run.fire(RunEvent.ACQ_FAULT if failed else RunEvent.ACQUIRED)
        resolve(self.acquired)
        self.in_flight.close(self._drained)

    def _drained(self) -> None:
        self.run.fire(RunEvent.PROC_FAULT if self.processing_errors else RunEvent.DRAINED)
        resolve(self.processed)

    def note_lost(self, unique_id: int, failed: bool) -> None:
        """A frame of this acquisition became missing somewhere (any thread); `failed`: by a
        processing error, which makes the processing state failed (a drop does not)."""
        if failed:
            self.processing_errors = True
        if unique_id not in self.lost:
            self.lost.add(unique_id)
            if self.on_lost is not None:
                self.on_lost(self)

    def record_params(self, port: str, from_id: int, values: dict[str, Any]) -> None:
        """`port` processes this acquisition's frames from `from_id` on with `values` (the full
        set the first time, then what changed)."""
        self.pipeline.setdefault(port, []).append((from_id, values))


def xyz_dims(ndims: int, color_mode: int) -> tuple[int, ...]:
    """The dimensions (dims index) holding X, Y and Z, the first `ndims` of them, as
    NDArray::getInfo assigns them: a 3-D RGB1 array is (colour, x, y), RGB2 (x, colour, y)."""
    if ndims == 3:
        mode = COLOR_MODES[color_mode] if 0 <= color_mode < len(COLOR_MODES) else "Mono"
        return {"RGB1": (1, 2, 0), "RGB2": (0, 2, 1)}.get(mode, (0, 1, 2))
    return tuple(range(ndims))


SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # transform: x <-> y


_IDENTITY = np.eye(3)
_IDENTITY.flags.writeable = False


def identity() -> np.ndarray:
    """The identity transform, shared: transforms are never changed in place (read-only, so an
    attempt fails loudly), and a frame should not cost an np.eye."""
    return _IDENTITY


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
    #: a sparse frame: `data` is its intensity, `dims` the dense layout (ndflow.sparse)
    sparse: SparsePayload | None = None
    #: names of the channels of a multi-channel frame (EIGER2 thresholds, ...): numpy axis 0
    #: (the slowest dim, dims[-1]) holds them, so `data` is (C, H, W). Empty: one channel, the
    #: frame as ADCore knows it (Mono or RGB by color_mode). See ndflow.channels.
    channels: tuple[str, ...] = ()

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
        """A new array for `data` carrying this one's identity and metadata (plugins' outputs).
        The transform is shared, not copied: arrays never change a transform in place."""
        dims = changes.pop("dims", None)
        if dims is None:
            dims = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in self.dims]
        new = NDArray(data, self.unique_id, self.timestamp, self.epics_ts, dims,
                      dict(self.attributes), self.codec, changes.pop("transform", self.transform),
                      self.status, self.acquisition, self.color_mode)
        # a sparse payload goes with its own intensity array; other data is a new frame
        new.sparse = changes.pop("sparse", self.sparse if data is not None and
                                 data is self.data else None)
        new.channels = self.channels
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    # --- descriptions published by NDArrayBase PVs ----------------------------------------------
    @property
    def valid(self) -> bool:
        return self.data is not None and self.status.missing is None

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
        if self.sparse is not None:
            return self.sparse.dense_nbytes
        return int(self.data.nbytes) if self.data is not None else 0

    @property
    def compressed_size(self) -> int:
        """Bytes actually held (CompressedSize_RBV); a sparse frame's index and profile too."""
        if self.sparse is not None:
            return self.sparse.nbytes
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
