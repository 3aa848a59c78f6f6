"""The algorithm child process: loads the user's file, reports its declarations, and processes
frames that the IOC places in shared memory, until told to stop or the IOC goes away.

Started by the IOC (never imported by it) as
    <python> /proc/self/fd/<image> <socket fd> <JSON settings>
where the image is a zip holding `ndflow/algorithm` (this package) and nothing else of ndflow
(see ndflow.plugins.python.supervisor.child_image). This package needs the
standard library and numpy only, so `<python>` may be any interpreter or virtual environment
the user names, with or without ndflow installed.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from . import api, param, wire
from .declare import Declaration
from .errors import one_line, user_traceback
from .segment import Segment

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the IOC dies, however it dies; the socket EOF is the backup."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the IOC died before prctl took effect
        os._exit(0)


class Runtime:
    def __init__(self, channel: wire.Channel, settings: dict[str, Any]) -> None:
        # the memory limit is not set here: the IOC watches this process's resident memory
        # (plugins/python/memwatch.py), which a GPU library's address-space reservations leave be
        api.set_read_folders(settings.get("read_folders", ()),
                                   Path(settings["file"]).parent)
        self.channel = channel
        self.settings = settings
        self.path = Path(settings["file"])
        self.class_name = settings.get("class") or ""
        self.instance: Any = None
        self.declarations: list[Declaration] = []
        self.inputs: dict[str, Declaration] = {}  # attribute name -> input declaration
        self.input_values = api.Params()  # what process() gets as `params`
        #: the IOC's protocol version (the settings'); a child of another version only says so
        self.mismatch = wire.version_mismatch(settings.get("protocol"), wire.PROTOCOL_VERSION)
        self.segments: dict[int, Any] = {}
        # Output images go round a ring of segments, one more than the frames in flight: the
        # IOC copies image N while this process may already write N+1 .. N+depth.
        self.out_segments: list[Any] = [None] * (int(settings.get("depth", 1)) + 1)
        self.outputs = 0
        self.loads = 0
        self._dims_cache: tuple[list[list[Any]] | None, Any] = (None, ())
        self.output_names: set[str] = set()
        self._tf_cache: tuple[list[float] | None, Any] = (None, None)

    # --- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        """Compile and instantiate the algorithm; on any failure keep the current one and tell
        the IOC why. Source is compiled directly so a stale .pyc can never be used."""
        if self.mismatch:
            self.channel.send(wire.LOAD_ERROR, {"message": self.mismatch, "traceback": "",
                                                "running": False,
                                                "protocol": wire.PROTOCOL_VERSION})
            return
        try:
            instance, declarations = self._load()
        except (Exception, SystemExit) as exc:  # SyntaxError, ImportError, sys.exit() in module code
            self.channel.send(wire.LOAD_ERROR, {
                "message": one_line(exc), "traceback": user_traceback(exc, str(self.path)),
                "running": self.instance is not None, "protocol": wire.PROTOCOL_VERSION})
            return
        old = self.instance
        if old is not None:
            self._call_hook(old, "stop")
        defaults = {d.attr: d.default for d in declarations if d.direction == "in"}
        self.input_values = api.Params({k: self.input_values.get(k, v)
                                       for k, v in defaults.items()})
        self.instance, self.declarations = instance, declarations
        self.inputs = {d.attr: d for d in declarations if d.direction == "in"}
        self.output_names = {d.attr for d in declarations if d.direction == "out"}
        self.loads += 1
        self.channel.send(wire.DECLARE, {
            "declarations": [{"attr": d.attr, "direction": d.direction,
                              "param": param.describe(d.param)} for d in declarations],
            "class": type(instance).__name__, "loads": self.loads,
            "python": sys.executable, "pid": os.getpid(), "protocol": wire.PROTOCOL_VERSION})
        self._call_hook(instance, "start")

    def _load(self) -> tuple[Any, list[Any]]:
        source = self.path.read_text()
        code = compile(source, str(self.path), "exec")
        name = f"ndflow_algorithm_{self.path.stem}_{self.loads + 1}"
        module = types.ModuleType(name)
        module.__file__ = str(self.path)
        sys.modules[name] = module
        exec(code, module.__dict__)
        base = api.Algorithm
        found = {v.__name__: v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, base) and v is not base
                 and v.__module__ == name}
        if self.class_name:
            if self.class_name not in found:
                raise LookupError(f"{self.path.name} defines no Algorithm class "
                                  f"{self.class_name!r} (found: {', '.join(found) or 'none'})")
            cls = found[self.class_name]
        elif len(found) == 1:
            cls = next(iter(found.values()))
        else:
            raise LookupError(f"{self.path.name} defines {len(found) or 'no'} Algorithm classes "
                              f"({', '.join(found) or 'none'}); name one with 'class' in the config")
        declarations = cls.declarations()
        names = [d.pv_name for d in declarations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two parameters map to the same PV name: {', '.join(dupes)}")
        return cls(), declarations

    def _call_hook(self, instance: Any, name: str, *args: Any) -> None:
        try:
            getattr(instance, name)(*args)
        except Exception as exc:
            print(f"{name}() failed: {one_line(exc)}", file=sys.stderr, flush=True)

    # --- frames -------------------------------------------------------------------------------
    def on_frame(self, h: dict[str, Any], fds: list[int]) -> None:
        for seg_id, fd in zip(h.get("new", ()), fds):
            # read-only: the frame is shared with every other plugin (zero copy)
            self.segments[seg_id] = Segment.attach(fd, seg_id, readonly=True)
        image = self.segments[h["seg"]].array(tuple(h["shape"]), h["dtype"], h["off"],
                                              tuple(h["strides"]))
        info = api.FrameInfo(
            unique_id=h["id"], timestamp=h["ts"], epics_ts=tuple(h["ets"]),
            dims=self._dims(h["dims"]), dtype=image.dtype, color_mode=h["color"],
            transform=self._transform(h["tf"]), channels=tuple(h.get("chan", ())))
        reply: dict[str, Any] = {"id": h["id"]}
        out_fds: list[int] = []
        start = time.perf_counter()
        try:
            if self.instance is None:
                raise RuntimeError("no algorithm loaded")
            result = self.instance.process(image, self.input_values, h["attrs"], info)
            reply["t"] = time.perf_counter() - start
            out_fds = self._result(result, reply)
        except MemoryError as exc:  # the machine (or the child's cgroup) refused an allocation
            reply.update(status="exception", t=time.perf_counter() - start,
                         message=f"MemoryError: an allocation failed ({exc or 'no detail'})",
                         traceback=user_traceback(exc, str(self.path)))
        except Exception as exc:
            message = one_line(exc)
            if "WRITEABLE" in message or "read-only" in message:
                message += " (the frame is shared read-only with the other plugins: copy it " \
                           "to change it, e.g. image.copy())"
            reply.update(status="exception", t=time.perf_counter() - start,
                         message=message, traceback=user_traceback(exc, str(self.path)))
        del image
        try:
            self.channel.send(wire.DONE, reply, out_fds)
        except TypeError as exc:  # an output or attribute that cannot cross to the IOC
            failed = {k: reply[k] for k in ("id", "t", "image", "out_segment") if k in reply}
            failed.update(status="exception", message=f"process() returned {exc}")
            self.channel.send(wire.DONE, failed, out_fds)

    def _dims(self, dims: list[list[Any]]) -> tuple[Any, ...]:
        """Frames of a run share their layout: build its objects once (per-frame cost)."""
        if self._dims_cache[0] != dims:
            self._dims_cache = (dims, tuple(api.Dimension(*d) for d in dims))
        return self._dims_cache[1]

    def _transform(self, values: list[float]) -> Any:
        if self._tf_cache[0] != values:
            matrix = _matrix(values)
            matrix.flags.writeable = False
            self._tf_cache = (values, matrix)
        return self._tf_cache[1]

    def _result(self, result: Any, reply: dict[str, Any]) -> list[int]:
        if result is None:
            result = api.Result()
        elif isinstance(result, dict):
            result = api.Result(outputs=dict(result))
        elif not isinstance(result, api.Result):
            raise TypeError(f"process() returned {type(result).__name__}; return a Result, "
                            f"a dict of outputs or None")
        unknown = sorted(set(result.outputs) - self.output_names)
        if unknown:
            raise KeyError(f"process() returned undeclared outputs: {', '.join(unknown)}")
        status = api.Status(result.status)
        reply.update(status=status.value, message=str(result.message or ""),
                     outputs=result.outputs, attrs=result.attributes,
                     remove=list(result.remove_attributes))
        if result.image is None:
            return []
        image = np.ascontiguousarray(result.image)
        fds: list[int] = []
        slot = self.outputs % len(self.out_segments)
        self.outputs += 1
        segment = self.out_segments[slot]
        if segment is None or len(segment) < image.nbytes:
            size = max(image.nbytes, 2 * len(segment) if segment else 0)
            segment = self.out_segments[slot] = Segment.create(size, "ndflow-out")
            fds = [segment.fd]
            reply["out_segment"] = segment.id
        np.copyto(segment.array(image.shape, image.dtype, writable=True), image)
        reply["image"] = {"shape": list(image.shape), "dtype": image.dtype.str, "slot": slot}
        return fds

    def on_params(self, h: dict[str, Any]) -> None:
        """Input values in the IOC's stored form, by attribute, shown to process() as declared.
        A value that does not fit this child's declarations was stored for the other version of
        the file (a reload in flight: another worker declared first, or a put crossed the
        DECLARE); it is skipped, and the IOC sends every value again after each DECLARE."""
        values = {}
        for attr, stored in (h.get("values") or {}).items():
            declaration = self.inputs.get(attr)
            if declaration is None:
                continue
            try:
                values[attr] = declaration.user_value(stored)
            except (IndexError, TypeError, ValueError):
                continue
        changed = {k for k, v in values.items() if _differs(self.input_values.get(k), v)}
        self.input_values.update(values)
        if changed and self.instance is not None and not h.get("initial"):
            self._call_hook(self.instance, "params_changed", self.input_values, changed)

    # --- main loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            try:
                kind, header, fds = self.channel.recv()
            except wire.ChannelClosed:
                break
            try:
                if kind == wire.FRAME:
                    self.on_frame(header, fds)
                elif kind == wire.PARAMS:
                    self.on_params(header)
                elif kind == wire.RELOAD:
                    self.load()
                elif kind == wire.FORGET:
                    for seg_id in header.get("ids", ()):
                        self.segments.pop(seg_id, None)
                elif kind == wire.SHUTDOWN:
                    break
            except wire.ChannelClosed:  # the IOC closed it while we answered: it stops (or
                break  # gave up on this frame), as when a receive finds it closed
        if self.instance is not None:
            self._call_hook(self.instance, "stop")


def _matrix(values: list[float]) -> Any:
    return np.asarray(values, dtype=float).reshape(3, 3)


def _differs(a: Any, b: Any) -> bool:
    """Scalars, strings and arrays alike."""
    return not np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


def _keep_image_private(image: str) -> None:
    """The image this process runs from (/proc/self/fd/<n>) stays open for imports, but is not
    handed on to the programs the algorithm starts."""
    fd = image.rpartition("/")[2]
    if image.startswith("/proc/self/fd/") and fd.isdigit():
        try:
            os.set_inheritable(int(fd), False)
        except OSError:
            pass


def main() -> int:
    fd = int(sys.argv[1])
    settings = json.loads(sys.argv[2])
    die_with_parent(settings["parent_pid"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the IOC decides when we stop
    faulthandler.enable(file=sys.stderr)  # a segfault leaves its stack in the IOC log
    sys.dont_write_bytecode = True
    _keep_image_private(sys.argv[0])
    sys.path.insert(0, str(Path(settings["file"]).parent))  # the user's modules come first
    import socket
    channel = wire.Channel(socket.socket(fileno=fd))
    runtime = Runtime(channel, settings)
    runtime.load()
    runtime.serve()
    return 0

