"""Lane: one algorithm child process, the frames in flight to it, and its supervision.

A worker thread hands a frame to `submit()`, which places it in shared memory (no copy when it
already lives in a segment, else one copy into one of the lane's slots), sends a FRAME message and
returns at once; up to `depth` frames are in flight, so copying the next frame overlaps the
child's work on this one. The lane's own thread reads the replies, enforces the per-frame
timeout and the memory limit, and restarts the child with back-off when it dies, hangs, crashes or
grows past its memory limit.

The child leads its own session and process group, so whatever it starts (a multiprocessing
pool, a subprocess) is in that group: a timeout, a memory kill and a stop end the whole group,
and nothing the algorithm started outlives its child.

Children are started from one long-lived spawner thread because PR_SET_PDEATHSIG fires when the
*thread* that forked the child exits, not only the process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import ndflow
import ndflow.plugins
from ndflow import shm
from ndflow.adcore import COLOR_MODES
from ndflow.ndarray import MissingCause, NDArray

from . import wire
from .memwatch import MemoryWatch

CHILD_SCRIPT = Path(__file__).with_name("child.py")


class LaneState(enum.IntEnum):
    STOPPED = 0
    STARTING = 1
    RUNNING = 2  # a child with a loaded algorithm
    RESTARTING = 3  # waiting out the back-off after a death
    FAILED = 4  # a child is up but has no algorithm (the file did not load)


LANE_STATES = ("Stopped", "Starting", "Running", "Restarting", "Failed")


@dataclass(frozen=True)
class ChildSpec:
    name: str  # for logs: the plugin port
    python: str
    file: Path
    class_name: str
    memory_mb: float  # resident memory beyond the footprint after loading (0: no limit)
    frame_timeout: float
    start_timeout: float
    #: folders the algorithm may read files from (`ndflow.algorithm.read_file`)
    read_folders: tuple[str, ...] = ()


class LaneOwner(Protocol):
    """What a lane reports to (the plugin). Called from the lane's thread."""

    def lane_declared(self, lane: "Lane", reply: dict[str, Any]) -> None: ...
    def lane_load_error(self, lane: "Lane", reply: dict[str, Any]) -> None: ...
    def lane_result(self, lane: "Lane", array: NDArray, reply: dict[str, Any],
                    image: np.ndarray | None, seconds: float) -> None: ...
    def lane_lost(self, lane: "Lane", array: NDArray, cause: MissingCause, message: str,
                  timed_out: bool) -> None: ...
    def lane_died(self, lane: "Lane", message: str, output: str) -> None: ...
    def lane_state(self, lane: "Lane") -> None: ...
    inputs_version: int

    def input_values(self) -> tuple[int, dict[str, Any]]: ...


@dataclass
class _InFlight:
    array: NDArray
    sent: float
    slot: shm.Segment | None = None


@dataclass
class _Child:
    proc: subprocess.Popen
    channel: wire.Channel
    known: set[int] = field(default_factory=set)  # segment ids the child has mapped
    params_version: int = -1
    retired_cursor: int = 0


class Lane:
    def __init__(self, spec: ChildSpec, index: int, owner: LaneOwner, depth: int = 2) -> None:
        self.spec = spec
        self.index = index
        self.owner = owner
        self.depth = depth
        self.state = LaneState.STOPPED
        self.log = logging.getLogger(f"ndflow.{spec.name}")
        self.pid = 0
        self._child: _Child | None = None
        self._cond = threading.Condition()
        self._submit_lock = threading.Lock()
        self._pending: collections.deque[_InFlight] = collections.deque()
        self._slots: list[shm.Segment | None] = [None] * depth
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=60)
        self._first = threading.Event()
        self._failures = 0  # deaths since the last good frame, for the back-off
        self._last_done = 0.0  # when the child last finished a frame (its timeout clock)
        self._out: dict[int, shm.Segment] = {}  # the child's output-image ring, by slot

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, wait: bool) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"{self.spec.name}-lane{self.index}")
        self._thread.start()
        if wait:
            self._first.wait(self.spec.start_timeout + 5)

    def close(self, timeout: float = 1.0) -> None:
        """Graceful (SHUTDOWN, then wait), then SIGTERM, then SIGKILL."""
        self._closing.set()
        child = self._tell(wire.SHUTDOWN)
        if child is not None:
            _stop_process(child.proc, timeout)
        if self._thread is not None:
            self._thread.join(timeout + 2)
        self._set_state(LaneState.STOPPED)

    def reload(self) -> None:
        self._tell(wire.RELOAD)

    def _tell(self, kind: bytes) -> "_Child | None":
        """Send a control message if a child is up; a child that just died gets nothing."""
        child = self._child
        if child is not None:
            try:
                child.channel.send(kind)
            except wire.ChannelClosed:
                pass
        return child

    # --- the frame path (worker threads) -----------------------------------------------------------
    def submit(self, array: NDArray) -> str | None:
        """Send `array` to the child. None when sent; otherwise why it could not be.
        Safe from several threads: frames enter the child in the order they are queued here."""
        data = array.data
        found = shm.find(data) if min(data.strides, default=0) >= 0 else None
        with self._submit_lock:
            with self._cond:
                while len(self._pending) >= self.depth and self.state is LaneState.RUNNING:
                    self._cond.wait(0.5)
                child = self._child
                if self.state is not LaneState.RUNNING or child is None:
                    return f"algorithm {LANE_STATES[self.state].lower()}"
                slot = self._free_slot(data.nbytes) if found is None else None
                self._pending.append(_InFlight(array, time.monotonic(), slot))
            if slot is not None:  # one copy, into a slot reserved for this frame
                view = slot.array(data.shape, data.dtype, writable=True)
                np.copyto(view, data)
                found = (slot, 0)
                strides = view.strides
            else:
                strides = data.strides
            header, fds = self._header(child, array, found[0], found[1], strides)
            try:
                self._send_params(child)
                self._send_forgets(child)
                child.channel.send(wire.FRAME, header, fds)
            except wire.ChannelClosed:
                pass  # the lane thread sees the death and fails the pending frame
        return None

    def _header(self, child: _Child, array: NDArray, seg: shm.Segment, offset: int,
                strides: tuple[int, ...]) -> tuple[dict[str, Any], list[int]]:
        """The FRAME message, with the segment's fd the first time this child sees it."""
        data = array.data
        fds: list[int] = []
        new: list[int] = []
        if seg.id not in child.known:
            child.known.add(seg.id)
            new.append(seg.id)
            fds.append(seg.fd)
        header = {
            "id": array.unique_id, "ts": array.timestamp, "ets": list(array.epics_ts),
            "seg": seg.id, "off": offset, "shape": list(data.shape), "strides": list(strides),
            "dtype": data.dtype.str, "color": _color_name(array.color_mode),
            "dims": [[d.size, d.offset, d.binning, d.reverse] for d in array.dims],
            "chan": list(array.channels),
            "tf": array.transform.ravel().tolist(),
            "attrs": {name: _jsonable(a.value) for name, a in array.attributes.items()},
            "new": new,
        }
        return header, fds

    def _free_slot(self, nbytes: int) -> shm.Segment:
        busy = {id(p.slot) for p in self._pending if p.slot is not None}
        for seg in self._slots:
            if seg is not None and id(seg) not in busy and len(seg) >= nbytes:
                return seg
        for i, seg in enumerate(self._slots):
            if seg is None or id(seg) not in busy:  # grow (or create) this one
                self._slots[i] = shm.Segment.create(nbytes, f"ndflow-{self.spec.name}")
                return self._slots[i]
        raise RuntimeError("no free slot")  # cannot happen: at most depth frames in flight

    def _send_params(self, child: _Child) -> None:
        """Input values, before the next frame, whenever they changed since the last send."""
        if self.owner.inputs_version == child.params_version:
            return
        version, values = self.owner.input_values()
        initial = child.params_version < 0
        child.params_version = version
        child.channel.send(wire.PARAMS, {"values": values, "initial": initial})

    def _send_forgets(self, child: _Child) -> None:
        if child.retired_cursor == len(shm.retired):
            return
        ids = [i for i in shm.retired[child.retired_cursor:] if i in child.known]
        child.retired_cursor = len(shm.retired)
        if ids:
            child.known.difference_update(ids)
            child.channel.send(wire.FORGET, {"ids": ids})

    # --- supervision (the lane's thread) ------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._closing.is_set():
            self._set_state(LaneState.STARTING)
            started = self._spawn()
            if started:
                reason, message = self._serve()
            else:
                reason, message = "start", "child did not start"
            self._bury(reason, message)
            self._first.set()
            if self._closing.is_set():
                break
            self._failures += 1
            delay = min(0.25 * 2 ** (self._failures - 1), 30.0)
            self._set_state(LaneState.RESTARTING)
            self._closing.wait(delay)

    def _spawn(self) -> bool:
        spec = self.spec
        parent_sock, child_sock = wire.socket_pair()
        settings = {
            "file": str(spec.file), "class": spec.class_name, "memory_mb": spec.memory_mb,
            "parent_pid": os.getpid(), "name": spec.name, "depth": self.depth,
            "ndflow_dir": ndflow.__path__[0], "plugins_dir": ndflow.plugins.__path__[0],
            "read_folders": list(spec.read_folders),
        }
        argv = [spec.python, "-u", str(CHILD_SCRIPT), str(child_sock.fileno()), json.dumps(settings)]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = _spawner().submit(
                subprocess.Popen, argv, pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                env=env).result()
        except OSError as exc:
            self.owner.lane_died(self, f"cannot start {spec.python}: {exc.strerror or exc}", "")
            parent_sock.close()
            return False
        finally:
            child_sock.close()
        self.pid = proc.pid
        self._output.clear()
        threading.Thread(target=self._read_output, args=(proc,), daemon=True,
                         name=f"{spec.name}-out{self.index}").start()
        self._child = _Child(proc, wire.Channel(parent_sock))
        return True

    def _serve(self) -> tuple[str, str]:
        """Read replies until the child dies or hangs: (reason, message)."""
        child = self._child
        assert child is not None
        poller = select.poll()
        poller.register(child.channel.fileno(), select.POLLIN)
        started = time.monotonic()
        watch = MemoryWatch(child.proc.pid, self.spec.memory_mb) if self.spec.memory_mb > 0 \
            else None
        tick = watch.interval_s if watch is not None else 0.5
        while not self._closing.is_set():
            if _exited(child.proc):  # a worker it forked may hold the socket open: no EOF
                return "died", ""
            with self._cond:
                head = self._pending[0] if self._pending else None
            now = time.monotonic()
            if head is not None:  # the child takes frames in turn: its clock starts then
                deadline = max(head.sent, self._last_done) + self.spec.frame_timeout
            elif self.state is LaneState.STARTING:
                deadline = started + self.spec.start_timeout
            else:
                deadline = now + 0.5
            if watch is not None and self.state is LaneState.RUNNING:
                over = watch.check(now)
                if over is not None:
                    _kill_group(child.proc)
                    where = f" while processing frame {head.array.unique_id}" if head else ""
                    return "memory", f"{over}; child killed{where}"
            if now >= deadline and (head is not None or self.state is LaneState.STARTING):
                _kill_group(child.proc)
                if head is not None:
                    return "timeout", (f"process() of frame {head.array.unique_id} took longer "
                                       f"than {self.spec.frame_timeout:g} s; child killed")
                return "start", f"no declarations within {self.spec.start_timeout:g} s"
            if not poller.poll(max(0.0, min(deadline - now, tick)) * 1000):
                continue
            try:
                kind, reply, fds = child.channel.recv()
            except wire.ChannelClosed:
                return "died", ""
            except Exception as exc:  # a reply that cannot be decoded: the child is not sane
                _kill_group(child.proc)
                return "protocol", f"unreadable reply from the child: {type(exc).__name__}: {exc}"
            if kind == wire.DONE:
                self._done(child, reply, fds)
            elif kind == wire.DECLARE:
                child.params_version = -1
                if watch is not None:
                    watch.set_baseline()  # loaded: the allowance comes on top of this
                self.owner.lane_declared(self, reply)
                self._set_state(LaneState.RUNNING)
                self._first.set()
            elif kind == wire.LOAD_ERROR:
                self.owner.lane_load_error(self, reply)
                if not reply.get("running"):
                    self._set_state(LaneState.FAILED)
                self._first.set()
        return "closing", ""

    def _done(self, child: _Child, reply: dict[str, Any], fds: list[int]) -> None:
        now = time.monotonic()
        with self._cond:
            entry = self._pending.popleft() if self._pending else None
            self._cond.notify_all()
        # frames are processed in turn: this one began when sent or when the one before ended
        began = max(entry.sent, self._last_done) if entry is not None else now
        self._last_done = now
        info = reply.get("image")
        if fds and info:
            self._out[info["slot"]] = shm.Segment.attach(fds[0], reply.get("out_segment", 0))
        if entry is None:
            return
        image = None
        if info and info["slot"] in self._out:
            image = self._out[info["slot"]].array(tuple(info["shape"]), info["dtype"])
        if reply.get("status") in ("ok", "warning", "veto"):  # a veto is a good frame
            self._failures = 0
        self.owner.lane_result(self, entry.array, reply, image, now - began)

    def _bury(self, reason: str, message: str) -> None:
        """The child is gone (or going): reap it and fail every frame it held."""
        child, self._child = self._child, None
        self._last_done = 0.0
        returncode = None
        if self._closing.is_set():
            reason = "closing"  # an exit we asked for is not a death
        if child is not None:
            child.channel.close()
            returncode = _stop_process(child.proc, 0.5 if reason != "closing" else 1.0)
        with self._cond:
            pending, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        self._slots = [None] * self.depth
        self._out = {}
        if reason == "closing":
            for entry in pending:
                self.owner.lane_lost(self, entry.array, MissingCause.PROCESSING_ERROR,
                                     "plugin shut down", False)
            return
        time.sleep(0.05)  # let the output reader catch the last lines (faulthandler's stack)
        if not message:
            message = f"child {self.pid} {_describe_exit(returncode)}"
            if pending:
                message += f" while processing frame {pending[0].array.unique_id}"
        output = "\n".join(self._output)
        self.owner.lane_died(self, message, output)
        for i, entry in enumerate(pending):
            timed_out = reason == "timeout" and i == 0
            cause = MissingCause.TIMEOUT if timed_out else MissingCause.PROCESSING_ERROR
            text = message if i == 0 else f"lost when the child was restarted ({message})"
            self.owner.lane_lost(self, entry.array, cause, text, timed_out)

    def _read_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            self.log.info("[%s pid %d] %s", self.spec.file.name, proc.pid, line)

    def _set_state(self, state: LaneState) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()
        self.owner.lane_state(self)

    @property
    def in_flight(self) -> int:
        return len(self._pending)


def _stop_process(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait for the child to exit, then SIGTERM it (an algorithm that handles SIGTERM may clean
    up), then SIGKILL; finally SIGKILL its whole process group, so nothing it started survives
    (a worker it never joined, a pool it never closed). The group is killed before the child is reaped: until then its pid, which is the
    group's id, cannot be reused by an unrelated process."""
    if not _exited(proc, timeout):
        try:
            proc.terminate()
        except OSError:
            pass
        _exited(proc, timeout)
    _kill_group(proc)
    return proc.wait()


def _exited(proc: subprocess.Popen, timeout: float = 0.0) -> bool:
    """Whether the child has exited (within `timeout` s), without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            return True
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.01, max(deadline - time.monotonic(), 0.0)))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child and every process in its group (it leads its own session)."""
    if proc.returncode is not None:  # reaped: its pid, hence the group id, may be reused
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # no such group left, or it changed hands (EPERM)
        try:
            proc.kill()
        except OSError:
            pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"died with {signal.Signals(-code).name}"
        except ValueError:
            return f"died with signal {-code}"
    return f"exited with code {code}"


def _color_name(index: int) -> str:
    return COLOR_MODES[index] if 0 <= index < len(COLOR_MODES) else "Mono"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value
    return str(value)


_SPAWNER: concurrent.futures.ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """One thread that lives as long as the IOC and forks every child (see module doc)."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ndflow-spawn")
        return _SPAWNER


def default_python() -> str:
    return sys.executable
