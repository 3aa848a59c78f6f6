"""The algorithm child process: loads the user's file, reports its declarations, and processes
frames that the IOC places in shared memory, until told to stop or the IOC goes away.

Run as a script by the IOC (never imported by it):
    <python> child.py <socket fd> <JSON settings>
It needs the standard library and numpy only, so `<python>` may be any interpreter or virtual
environment the user names. `ndflow.algorithm`, `wire` and `shm` are loaded from the IOC's source
folders through stand-in packages, so ndflow need not be installed where the child runs.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the IOC dies, however it dies; the socket EOF is the backup."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the IOC died before prctl took effect
        os._exit(0)


def stand_in_packages(ndflow_dir: str, plugins_dir: str) -> None:
    for name, path in (("ndflow", ndflow_dir), ("ndflow.plugins", plugins_dir)):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module


class Runtime:
    def __init__(self, channel: Any, settings: dict[str, Any]) -> None:
        from ndflow import algorithm
        from ndflow import shm
        from ndflow.plugins.python import wire
        self.api, self.shm, self.wire = algorithm, shm, wire
        # the memory limit is not set here: the IOC watches this process's resident memory
        # (plugins/python/memwatch.py), which a GPU library's address-space reservations leave be
        algorithm.set_read_folders(settings.get("read_folders", ()),
                                   Path(settings["file"]).parent)
        self.channel = channel
        self.settings = settings
        self.path = Path(settings["file"])
        self.class_name = settings.get("class") or ""
        self.instance: Any = None
        self.declarations: list[Any] = []
        self.params = algorithm.Params()
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
        try:
            instance, declarations = self._load()
        except (Exception, SystemExit) as exc:  # SyntaxError, ImportError, sys.exit() in module code
            self.channel.send(self.wire.LOAD_ERROR, {
                "message": _one_line(exc), "traceback": _user_traceback(exc, str(self.path)),
                "running": self.instance is not None})
            return
        old = self.instance
        if old is not None:
            self._call_hook(old, "stop")
        defaults = {d.attr: d.default for d in declarations if d.direction == "in"}
        self.params = self.api.Params({k: self.params.get(k, v) for k, v in defaults.items()})
        self.instance, self.declarations = instance, declarations
        self.output_names = {d.attr for d in declarations if d.direction == "out"}
        self.loads += 1
        self.channel.send(self.wire.DECLARE, {
            "declarations": [d.describe() for d in declarations],
            "class": type(instance).__name__, "loads": self.loads,
            "python": sys.executable, "pid": os.getpid()})
        self._call_hook(instance, "start")

    def _load(self) -> tuple[Any, list[Any]]:
        source = self.path.read_text()
        code = compile(source, str(self.path), "exec")
        name = f"ndflow_algorithm_{self.path.stem}_{self.loads + 1}"
        module = types.ModuleType(name)
        module.__file__ = str(self.path)
        sys.modules[name] = module
        exec(code, module.__dict__)
        base = self.api.Algorithm
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
            print(f"{name}() failed: {_one_line(exc)}", file=sys.stderr, flush=True)

    # --- frames -------------------------------------------------------------------------------
    def on_frame(self, h: dict[str, Any], fds: list[int]) -> None:
        for seg_id, fd in zip(h.get("new", ()), fds):
            # read-only: the frame is shared with every other plugin (zero copy)
            self.segments[seg_id] = self.shm.Segment.attach(fd, seg_id, readonly=True)
        image = self.segments[h["seg"]].array(tuple(h["shape"]), h["dtype"], h["off"],
                                              tuple(h["strides"]))
        info = self.api.FrameInfo(
            unique_id=h["id"], timestamp=h["ts"], epics_ts=tuple(h["ets"]),
            dims=self._dims(h["dims"]), dtype=image.dtype, color_mode=h["color"],
            transform=self._transform(h["tf"]), channels=tuple(h.get("chan", ())))
        reply: dict[str, Any] = {"id": h["id"]}
        out_fds: list[int] = []
        start = time.perf_counter()
        try:
            if self.instance is None:
                raise RuntimeError("no algorithm loaded")
            result = self.instance.process(image, self.params, h["attrs"], info)
            reply["t"] = time.perf_counter() - start
            out_fds = self._result(result, reply)
        except MemoryError as exc:  # the machine (or the child's cgroup) refused an allocation
            reply.update(status="exception", t=time.perf_counter() - start,
                         message=f"MemoryError: an allocation failed ({exc or 'no detail'})",
                         traceback=_user_traceback(exc, str(self.path)))
        except Exception as exc:
            message = _one_line(exc)
            if "WRITEABLE" in message or "read-only" in message:
                message += " (the frame is shared read-only with the other plugins: copy it " \
                           "to change it, e.g. image.copy())"
            reply.update(status="exception", t=time.perf_counter() - start,
                         message=message, traceback=_user_traceback(exc, str(self.path)))
        del image
        try:
            self.channel.send(self.wire.DONE, reply, out_fds)
        except TypeError as exc:  # an output or attribute that cannot cross to the IOC
            failed = {k: reply[k] for k in ("id", "t", "image", "out_segment") if k in reply}
            failed.update(status="exception", message=f"process() returned {exc}")
            self.channel.send(self.wire.DONE, failed, out_fds)

    def _dims(self, dims: list[list[Any]]) -> tuple[Any, ...]:
        """Frames of a run share their layout: build its objects once (per-frame cost)."""
        if self._dims_cache[0] != dims:
            self._dims_cache = (dims, tuple(self.api.Dimension(*d) for d in dims))
        return self._dims_cache[1]

    def _transform(self, values: list[float]) -> Any:
        if self._tf_cache[0] != values:
            matrix = _matrix(values)
            matrix.flags.writeable = False
            self._tf_cache = (values, matrix)
        return self._tf_cache[1]

    def _result(self, result: Any, reply: dict[str, Any]) -> list[int]:
        api = self.api
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
            segment = self.out_segments[slot] = self.shm.Segment.create(size, "ndflow-out")
            fds = [segment.fd]
            reply["out_segment"] = segment.id
        np.copyto(segment.array(image.shape, image.dtype, writable=True), image)
        reply["image"] = {"shape": list(image.shape), "dtype": image.dtype.str, "slot": slot}
        return fds

    def on_params(self, h: dict[str, Any]) -> None:
        values = h.get("values", {})
        changed = {k for k, v in values.items() if _differs(self.params.get(k), v)}
        self.params.update(values)
        if changed and self.instance is not None and not h.get("initial"):
            self._call_hook(self.instance, "params_changed", self.params, changed)

    # --- main loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        wire = self.wire
        while True:
            try:
                kind, header, fds = self.channel.recv()
            except wire.ChannelClosed:
                break
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
        if self.instance is not None:
            self._call_hook(self.instance, "stop")


def _matrix(values: list[float]) -> Any:
    return np.asarray(values, dtype=float).reshape(3, 3)


def _differs(a: Any, b: Any) -> bool:
    """Scalars, strings and arrays alike."""
    return not np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or '').name} line {exc.lineno})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_traceback(exc: BaseException, path: str) -> str:
    """The traceback from the user's code onwards (our frames are noise to them)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def main() -> int:
    fd = int(sys.argv[1])
    settings = json.loads(sys.argv[2])
    die_with_parent(settings["parent_pid"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the IOC decides when we stop
    faulthandler.enable(file=sys.stderr)  # a segfault leaves its stack in the IOC log
    sys.dont_write_bytecode = True
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)  # our sibling modules must not shadow the user's imports
    stand_in_packages(settings["ndflow_dir"], settings["plugins_dir"])
    sys.path.insert(0, str(Path(settings["file"]).parent))
    import socket
    from ndflow.plugins.python import wire
    channel = wire.Channel(socket.socket(fileno=fd))
    runtime = Runtime(channel, settings)
    runtime.load()
    runtime.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
