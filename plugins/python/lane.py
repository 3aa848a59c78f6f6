"""Lane: one algorithm child's frames in flight, and what its replies mean.

A worker thread hands a frame to `submit()`, which places it in shared memory (no copy when it
already lives in a segment, else one copy into one of the lane's slots), sends a FRAME message and
returns at once; up to `depth` frames are in flight, so copying the next frame overlaps the
child's work on this one. The lane's own thread (the supervisor's, see supervisor.py) reads the
replies and enforces the per-frame timeout and the memory limit; when the child dies, hangs,
crashes or grows past its memory limit, the frames it held are failed with the reason and the
supervisor restarts it with back-off.
"""

from __future__ import annotations

import collections
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ndflow import shm
from ndflow.adcore import COLOR_MODES
from ndflow.algorithm import wire
from ndflow.ndarray import MissingCause, NDArray

from .memwatch import MemoryWatch
from .supervisor import (LANE_STATES, ChildSpec, LaneState, Supervisor, default_python,
                         describe_exit, exited, kill_group)

__all__ = ["LANE_STATES", "ChildSpec", "Lane", "LaneOwner", "LaneState", "default_python"]


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
class _ChildState:
    """What the lane knows about the current child: reset with every start."""

    known: set[int] = field(default_factory=set)  # segment ids the child has mapped
    params_version: int = -1
    #: ids of segments closed since (appended from any thread, taken by the frame path)
    closed: collections.deque[int] = field(default_factory=collections.deque)


class Lane(Supervisor):
    def __init__(self, spec: ChildSpec, index: int, owner: LaneOwner, depth: int = 2) -> None:
        super().__init__(spec, index)
        self.owner = owner
        self.depth = depth
        self._known = _ChildState()
        self._submit_lock = threading.Lock()
        self._pending: collections.deque[_InFlight] = collections.deque()
        self._slots: list[shm.Segment | None] = [None] * depth
        self._last_done = 0.0  # when the child last finished a frame (its timeout clock)
        self._out: dict[int, shm.Segment] = {}  # the child's output-image ring, by slot
        self._unsubscribe = shm.on_closed(self._segment_closed)

    def _settings(self) -> dict:
        return {"depth": self.depth}

    def _state_changed(self) -> None:
        self.owner.lane_state(self)

    def _start_failed(self, message: str) -> None:
        self.owner.lane_died(self, message, "")

    def close(self, timeout: float = 1.0) -> None:
        super().close(timeout)
        self._unsubscribe()

    def _segment_closed(self, seg_id: int) -> None:
        """A segment of this process was closed (any thread): forget it before the next frame."""
        state = self._known
        if seg_id in state.known:
            state.closed.append(seg_id)

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
                channel, state = self.channel, self._known
                if self.state is not LaneState.RUNNING or channel is None:
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
            header, fds = self._header(state, array, found[0], found[1], strides)
            try:
                self._send_params(channel, state)
                self._send_forgets(channel, state)
                channel.send(wire.FRAME, header, fds)
            except wire.ChannelClosed:
                pass  # the lane thread sees the death and fails the pending frame
        return None

    def _header(self, state: _ChildState, array: NDArray, seg: shm.Segment, offset: int,
                strides: tuple[int, ...]) -> tuple[dict[str, Any], list[int]]:
        """The FRAME message, with the segment's fd the first time this child sees it."""
        data = array.data
        fds: list[int] = []
        new: list[int] = []
        if seg.id not in state.known:
            state.known.add(seg.id)
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

    def _send_params(self, channel: wire.Channel, state: _ChildState) -> None:
        """Input values, before the next frame, whenever they changed since the last send."""
        if self.owner.inputs_version == state.params_version:
            return
        version, values = self.owner.input_values()
        initial = state.params_version < 0
        state.params_version = version
        channel.send(wire.PARAMS, {"values": values, "initial": initial})

    def _send_forgets(self, channel: wire.Channel, state: _ChildState) -> None:
        ids = []
        while state.closed:
            seg_id = state.closed.popleft()
            if seg_id in state.known:
                ids.append(seg_id)
        if ids:
            state.known.difference_update(ids)
            channel.send(wire.FORGET, {"ids": ids})

    # --- replies (the supervising thread) -----------------------------------------------------------
    def _serve(self) -> tuple[str, str]:
        """Read replies until the child dies or hangs: (reason, message)."""
        proc, channel = self.proc, self.channel
        assert proc is not None and channel is not None
        self._known = _ChildState()
        poller = select.poll()
        poller.register(channel.fileno(), select.POLLIN)
        started = time.monotonic()
        watch = MemoryWatch(proc.pid, self.spec.memory_mb) if self.spec.memory_mb > 0 else None
        tick = watch.interval_s if watch is not None else 0.5
        while not self._closing.is_set():
            if exited(proc):  # a worker it forked may hold the socket open: no EOF
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
                    kill_group(proc)
                    where = f" while processing frame {head.array.unique_id}" if head else ""
                    return "memory", f"{over}; child killed{where}"
            if now >= deadline and (head is not None or self.state is LaneState.STARTING):
                kill_group(proc)
                if head is not None:
                    return "timeout", (f"process() of frame {head.array.unique_id} took longer "
                                       f"than {self.spec.frame_timeout:g} s; child killed")
                return "start", f"no declarations within {self.spec.start_timeout:g} s"
            if not poller.poll(max(0.0, min(deadline - now, tick)) * 1000):
                continue
            try:
                kind, reply, fds = channel.recv()
            except wire.ChannelClosed:
                return "died", ""
            except Exception as exc:  # a reply that cannot be decoded: the child is not sane
                kill_group(proc)
                return "protocol", f"unreadable reply from the child: {type(exc).__name__}: {exc}"
            if kind == wire.DONE:
                self._done(reply, fds)
            elif kind == wire.DECLARE:
                if not self._speaks_our_protocol(reply):
                    continue
                self._known.params_version = -1
                if watch is not None:
                    watch.set_baseline()  # loaded: the allowance comes on top of this
                self.owner.lane_declared(self, reply)
                self._set_state(LaneState.RUNNING)
                self._first.set()
            elif kind == wire.LOAD_ERROR:
                if self._speaks_our_protocol(reply):
                    self.owner.lane_load_error(self, reply)
                    if not reply.get("running"):
                        self._set_state(LaneState.FAILED)
                self._first.set()
        return "closing", ""

    def _speaks_our_protocol(self, reply: dict[str, Any]) -> bool:
        """A child of another protocol version is reported (one line naming both versions)
        and left unused: restarting it would not change its version."""
        mismatch = wire.version_mismatch(wire.PROTOCOL_VERSION, reply.get("protocol"))
        if mismatch is None:
            return True
        self.owner.lane_load_error(self, {"message": mismatch, "traceback": ""})
        self._set_state(LaneState.FAILED)
        self._first.set()
        return False

    def _done(self, reply: dict[str, Any], fds: list[int]) -> None:
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

    def _lost(self, reason: str, message: str, returncode: int | None, output: str) -> None:
        """The child is gone: fail every frame it held, with the reason."""
        self._last_done = 0.0
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
        if not message:
            message = f"child {self.pid} {describe_exit(returncode)}"
            if pending:
                message += f" while processing frame {pending[0].array.unique_id}"
        self.owner.lane_died(self, message, output)
        for i, entry in enumerate(pending):
            timed_out = reason == "timeout" and i == 0
            cause = MissingCause.TIMEOUT if timed_out else MissingCause.PROCESSING_ERROR
            text = message if i == 0 else f"lost when the child was restarted ({message})"
            self.owner.lane_lost(self, entry.array, cause, text, timed_out)

    @property
    def in_flight(self) -> int:
        return len(self._pending)


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
