"""The classes a user's algorithm works with: the base class, its result and the frame's metadata.

Vetoing a frame: `return Veto("no beam")` (or `Result(status=Status.VETO, message=...)`; outputs
given with it are still published). The frame goes downstream as a missing frame with cause
`vetoed` and that message, is counted on the plugin's `FramesVetoed_RBV`, and a file writer
records it as such: reduction discards useless data visibly, not silently. A veto is a
decision, not a failure: it does not count as a failed frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .declare import Declaration


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"  # the frame goes on; the message is shown
    ERROR = "error"  # the frame is marked failed (missing, cause "processing error")
    VETO = "veto"  # the frame is discarded on purpose (missing, cause "vetoed")


@dataclass
class Result:
    """What `process()` returns. A plain dict is taken as `Result(outputs=that dict)`."""

    outputs: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = None  # replaces the frame passed downstream
    attributes: dict[str, Any] = field(default_factory=dict)  # NDAttributes to add or change
    remove_attributes: Sequence[str] = ()
    status: Status = Status.OK
    message: str = ""


def Veto(reason: str = "", outputs: Mapping[str, Any] | None = None) -> Result:  # noqa: N802
    """What `process()` returns to veto its frame (see the module docstring): a Result with
    status VETO, the reason as its message, and optionally outputs to publish all the same."""
    return Result(outputs=dict(outputs or {}), status=Status.VETO, message=str(reason))


@dataclass(frozen=True)
class Dimension:
    size: int
    offset: int = 0
    binning: int = 1
    reverse: bool = False


@dataclass(frozen=True)
class FrameInfo:
    """The pixel layout and identity of the frame being processed (`metadata`)."""

    unique_id: int
    timestamp: float  # seconds since the EPICS epoch (1990)
    epics_ts: tuple[int, int]
    dims: tuple[Dimension, ...]  # dims[0] is the fastest axis, as in ADCore
    dtype: np.dtype
    color_mode: str  # "Mono", "RGB1", ...
    transform: np.ndarray  # 3x3: this frame's pixel (x, y, 1) -> detector pixel
    #: a multi-channel frame's channel names (EIGER2 thresholds, ...): `image` is then
    #: (C, H, W), channel j is image[j]; empty for an ordinary frame (ndflow.channels)
    channels: tuple[str, ...] = ()

    @property
    def channel_axis(self) -> int | None:
        """The numpy axis of the channels (0), or None for a single-channel frame."""
        return 0 if self.channels else None


class Params(dict):
    """The current input values, by attribute name; `params.threshold` works too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no input parameter {name!r}") from None


#: where `read_file` may read: the IOC's read folders (the config file's folder, the data roots)
#: and its algorithm folders; the child process sets them from the IOC's site
_READ_FOLDERS: tuple[str, ...] = ()
_HOME = ""  # the algorithm file's folder: relative names are read from there


def set_read_folders(folders: Iterable[str], home: Any) -> None:
    global _READ_FOLDERS, _HOME
    _READ_FOLDERS, _HOME = tuple(str(f) for f in folders), str(home)


def read_file(path: str, max_bytes: int = 512 * 2**20) -> bytes:
    """The bytes of the file `path` (a mask, a calibration) if it lies in one of the IOC's
    configured folders: its data roots, its config file's folder, its algorithm folders. A
    relative `path` is taken from the algorithm file's folder. Links below a folder, '..' out
    of it and anything but a regular file are refused with ValueError (a one-line reason), so an
    input PV that names a file cannot read the rest of the machine."""
    import os.path
    from pathlib import Path

    from . import safepath
    text = os.path.expanduser(str(path).strip())
    if not text:
        raise ValueError("no file named")
    if not os.path.isabs(text):
        text = os.path.join(_HOME, text)
    roots = [Path(f) for f in _READ_FOLDERS]
    where = safepath.locate(text, roots, "the IOC's folders")
    try:
        return safepath.read_file(where, max_bytes)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None


class Algorithm:
    """Base class of a user algorithm. One instance lives in the child process for as long as
    the file is unchanged, so it may keep state between frames (a background, a running mean)."""

    def start(self) -> None:
        """Called once after loading, before the first frame."""

    def stop(self) -> None:
        """Called before the instance is replaced (reload) or the child exits."""

    def params_changed(self, params: Params, changed: set[str]) -> None:
        """Called when operators changed inputs; `changed` holds attribute names."""

    def process(self, image: np.ndarray, params: Params, attributes: Mapping[str, Any],
                metadata: FrameInfo) -> Result | Mapping[str, Any] | None:
        """Work on one frame. `image` is a read-only view of shared memory: copy what you keep."""
        raise NotImplementedError

    @classmethod
    def declarations(cls) -> list[Declaration]:
        """Inputs and outputs in the order they were written, base classes first."""
        seen: dict[str, Declaration] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, Declaration):
                    seen.pop(attr, None)
                    seen[attr] = value
        return list(seen.values())
