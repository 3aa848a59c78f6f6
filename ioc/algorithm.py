"""The algorithm API: what a user's algorithm file imports.

    from ndflow.algorithm import Algorithm, Input, Output, Result, Alarm

    class Centroid(Algorithm):
        threshold = Input(100.0, low=0, units="counts", doc="pixels below are ignored")
        cx = Output(float, units="px")

        def process(self, image, params, attributes, metadata):
            ...
            return {"cx": x}

This module runs inside the algorithm's child process, possibly under another interpreter or
virtual environment than the IOC's, so it imports the standard library, numpy and
`ndflow.params` (itself standard-library only) and nothing else.

An attribute `threshold` becomes the PVs `$(P)$(R)Threshold` and `Threshold_RBV` (CamelCase, as
areaDetector names things); an output `cx` becomes `Cx_RBV`. `name=` chooses another PV name.

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

# EPICS alarm limits for an output: LOLO/HIHI raise a major alarm, LOW/HIGH a minor one. The
# same class the IOC's declarations use (ndflow.params is standard-library only).
from .params import AlarmLimits as Alarm

__all__ = ["Algorithm", "Input", "Output", "Alarm", "Result", "Status", "Params", "FrameInfo",
           "Dimension", "Veto"]


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

    from . import safepath  # standard library only, like this module
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


_STR_MAX = 40
INPUT_GROUP, OUTPUT_GROUP = "Inputs", "Outputs"  # the screen groups of inputs and outputs


class Declaration:
    """One declared parameter. The kind follows from the default (or type) given first:
    a float, int, bool or str; `choices=` makes an enum; `length=` with float/int, or a
    list/array default, makes a 1-D array."""

    direction = ""

    def __init__(self, default: Any = None, *, choices: Iterable[str] | None = None,
                 low: float | None = None, high: float | None = None, units: str = "",
                 doc: str = "", precision: int | None = None, length: int | None = None,
                 alarm: Alarm | None = None, name: str | None = None) -> None:
        self.attr = ""
        self.pv_name = name or ""
        self.choices = tuple(choices) if choices is not None else ()
        self.low, self.high, self.units, self.doc = low, high, units, doc
        self.alarm = alarm
        self.kind, self.default, self.dtype, self.length = _infer(default, self.choices, length)
        if self.kind == "float":
            self.precision = 3 if precision is None else precision
        else:
            self.precision = precision or 0
        if alarm is not None and self.kind not in ("float", "int"):
            raise TypeError("alarm limits need a float or int parameter")

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr
        if not self.pv_name:
            self.pv_name = "".join(part[:1].upper() + part[1:] for part in attr.split("_"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attr}: {self.kind})"

    def describe(self) -> dict[str, Any]:
        """The declaration as the child reports it to the IOC (JSON-able)."""
        default = self.default
        if isinstance(default, np.ndarray):
            default = default.tolist()
        alarm = None
        if self.alarm is not None:
            alarm = [self.alarm.lolo, self.alarm.low, self.alarm.high, self.alarm.hihi]
        return {"attr": self.attr, "name": self.pv_name, "direction": self.direction,
                "kind": self.kind, "default": default, "choices": list(self.choices),
                "low": self.low, "high": self.high, "units": self.units, "doc": self.doc,
                "precision": self.precision, "length": self.length, "dtype": self.dtype,
                "alarm": alarm}


class Input(Declaration):
    """An operator-settable parameter: PVs `<Name>` and `<Name>_RBV`."""

    direction = "in"


class Output(Declaration):
    """A result: PV `<Name>_RBV`, updated from what `process()` returns."""

    direction = "out"


def _infer(default: Any, choices: tuple[str, ...], length: int | None
           ) -> tuple[str, Any, str, int]:
    """(kind, default, dtype, length) from what the user wrote."""
    if choices:
        if default in (None, str):
            default = choices[0]
        if isinstance(default, int) and not isinstance(default, bool):
            default = choices[default]
        if default not in choices:
            raise ValueError(f"default {default!r} is not one of {list(choices)}")
        return "enum", default, "", 1
    if isinstance(default, (list, tuple, np.ndarray)) or (
            length is not None and default in (float, int, None)):
        values = np.asarray(default if isinstance(default, (list, tuple, np.ndarray)) else [])
        is_int = default is int or (values.size and values.dtype.kind in "iub")
        dtype = "int32" if is_int else "float64"
        n = length or max(int(values.size), 1)
        if values.size > n:
            raise ValueError(f"default has {values.size} elements, more than length={n}")
        return "array", values.astype(dtype), dtype, n
    if default is bool or isinstance(default, (bool, np.bool_)):
        return "bool", bool(default) if default is not bool else False, "", 1
    if default is int or isinstance(default, (int, np.integer)):
        return "int", int(default) if default is not int else 0, "", 1
    if default is float or default is None or isinstance(default, (float, np.floating)):
        return "float", float(default) if default not in (float, None) else 0.0, "", 1
    if default is str or isinstance(default, str):
        text = default if isinstance(default, str) else ""
        n = length or _STR_MAX
        return "str", text, "", n
    raise TypeError(f"cannot declare a parameter from {default!r}: use a float, int, bool, str, "
                    f"choices=[...] or a list/array")


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
