"""ndflow.plugins.python.lane.Lane (supervision of one algorithm child) against a FAKE child.

The seam: `ChildSpec.python` is the interpreter the lane runs as
    <python> -u <child image> <socket fd> <JSON settings>
so a tiny executable script given as `python` becomes the child. It ignores the image, speaks the
real wire protocol on the fd, and behaves as the plan file (`ChildSpec.file`, passed through the
settings) tells it: one mode per start, so "crash, then behave" is one plan.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from ndflow.ndarray import MissingCause, NDArray
from ndflow.plugins.python.lane import ChildSpec, Lane, LaneState

pytestmark = pytest.mark.timeout(30)

FAKE_CHILD = r'''#!{python}
"""A fake algorithm child: argv = [this, "-u", image, fd, settings]."""
import importlib.util, json, mmap, os, signal, socket, sys, time, types
fd, settings = int(sys.argv[-2]), json.loads(sys.argv[-1])
plan = json.loads(open(settings["file"]).read())
with open(plan["log"], "a") as f:
    f.write(f"{os.getpid()}\n")
with open(plan["log"]) as f:
    starts = len(f.read().split())
modes = plan["per_start"]
mode = modes[min(starts - 1, len(modes) - 1)]
print(f"fake child {os.getpid()} start {starts} mode {mode}", flush=True)
if mode == "exit":
    sys.exit(5)  # dies before declaring anything (and before the slow numpy import)

if mode != "bad_reply":
    # Importing numpy costs 0.2-0.4 s on a busy host, and the messages this fake exchanges
    # carry no arrays: wire.py gets a stand-in that only satisfies its isinstance checks.
    stub = types.ModuleType("numpy")
    stub.ndarray = type("ndarray", (), {})
    stub.generic = type("generic", (), {})
    sys.modules["numpy"] = stub
# argv[-3] is the child image (a zip, /proc/self/fd/<n>); the real wire module is in it
import zipimport
spec = zipimport.zipimporter(os.path.join(sys.argv[-3], "ndflow", "algorithm")).find_spec("wire")
wire = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wire)
ch = wire.Channel(socket.socket(fileno=fd))
ppid = os.getppid()

def hang():  # never answer again, but do not outlive the test process
    while os.getppid() == ppid:
        time.sleep(0.05)
    os._exit(0)

def crash():
    print("boom: the algorithm crashed", flush=True)
    os._exit(3)

if mode != "silent":
    ch.send(wire.DECLARE, {"declarations": [], "class": "Fake", "loads": 1,
                           "python": sys.executable, "pid": os.getpid(),
                           "protocol": wire.PROTOCOL_VERSION})
segments = {}
frames = 0
while True:
    try:
        kind, h, fds = ch.recv()
    except wire.ChannelClosed:
        break
    if kind == wire.SHUTDOWN:
        break
    if kind != wire.FRAME:
        for x in fds:
            os.close(x)
        continue
    for seg_id, x in zip(h["new"], fds):
        segments[seg_id] = mmap.mmap(x, os.fstat(x).st_size)
        os.close(x)
    frames += 1
    assert h["dtype"] == "<u2" and h["strides"] == [2 * h["shape"][1], 2], h  # what frame() sends
    count = h["shape"][0] * h["shape"][1]
    pixels = memoryview(segments[h["seg"]])[h["off"]:h["off"] + 2 * count].cast("H")
    reply = {"id": h["id"], "status": "ok", "t": 0.0, "message": "", "attrs": {}, "remove": [],
             "outputs": {"sum": sum(pixels)}, "pid": os.getpid()}
    pixels.release()
    if mode == "hang":
        hang()
    elif mode == "crash":
        crash()
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "crash_on_second":
        if frames == 1:
            continue  # hold frame 1 without answering
        crash()
    elif mode == "ok_then_crash" and frames >= 2:
        crash()
    elif mode.startswith("sleep:"):
        time.sleep(float(mode.split(":")[1]))
    elif mode == "bad_reply":  # a reply the IOC cannot decode (a broken or hostile child)
        ch.sock.sendmsg([wire._LAST, wire._HEADER.pack(wire.DONE, 9) + b"{not json"])
        continue
    ch.send(wire.DONE, reply)
'''


class Owner:
    """Records every callback with its time; tests wait on them."""

    inputs_version = 0

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def _add(self, kind: str, **data: Any) -> None:
        with self.cond:
            self.events.append((time.monotonic(), kind, data))
            self.cond.notify_all()

    def input_values(self) -> tuple[int, dict[str, Any]]:
        return 0, {}

    def lane_declared(self, lane, reply):
        self._add("declared", pid=reply.get("pid"))

    def lane_load_error(self, lane, reply):
        self._add("load_error", reply=reply)

    def lane_result(self, lane, array, reply, image, seconds):
        self._add("result", id=array.unique_id, reply=reply)

    def lane_lost(self, lane, array, cause, message, timed_out):
        self._add("lost", id=array.unique_id, cause=cause, message=message, timed_out=timed_out)

    def lane_died(self, lane, message, output):
        self._add("died", message=message, output=output)

    def lane_state(self, lane):
        self._add("state", state=lane.state)

    # --- for the tests ---
    def matching(self, kind: str, **match: Any) -> list[tuple[float, dict[str, Any]]]:
        with self.cond:
            return [(t, d) for t, k, d in self.events
                    if k == kind and all(d.get(key) == v for key, v in match.items())]

    def wait(self, kind: str, n: int = 1, timeout: float = 2.0, **match: Any
             ) -> tuple[float, dict[str, Any]]:
        """The n-th event of `kind` whose data match; fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self.matching(kind, **match)
                if len(found) >= n:
                    return found[n - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [(round(t, 3), k, d) for t, k, d in self.events]
                    pytest.fail(f"no {kind} #{n} {match} within {timeout} s; events: {kinds}")
                self.cond.wait(left)

    def wait_frame(self, unique_id: int, timeout: float = 2.0) -> tuple[str, dict[str, Any]]:
        """("result" | "lost", data) for the frame, whichever comes first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, k, d in self.events:
                    if k in ("result", "lost") and d.get("id") == unique_id:
                        return k, d
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"frame {unique_id} neither done nor lost within {timeout} s")
                self.cond.wait(left)

    def states(self) -> list[tuple[float, LaneState]]:
        return [(t, d["state"]) for t, d in self.matching("state")]


def frame(i: int) -> NDArray:
    a = NDArray.from_numpy(np.arange(16, dtype=np.uint16).reshape(4, 4) + i)
    a.unique_id = i
    return a


def frame_sum(i: int) -> int:
    return int((np.arange(16, dtype=np.uint16) + i).sum())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def make_lane(tmp_path):
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_CHILD.replace("{python}", sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    lanes: list[Lane] = []

    def make(per_start: list[str], frame_timeout: float = 2.0, start_timeout: float = 3.0,
             depth: int = 2, start: bool = True, python: str | None = None
             ) -> tuple[Lane, Owner]:
        k = len(lanes)
        plan = tmp_path / f"plan{k}.json"
        plan.write_text(json.dumps({"per_start": per_start, "log": str(tmp_path / f"starts{k}")}))
        owner = Owner()
        spec = ChildSpec(name=f"LANE{k}", python=python or str(fake), file=plan, class_name="",
                         memory_mb=0, frame_timeout=frame_timeout, start_timeout=start_timeout)
        lane = Lane(spec, 0, owner, depth=depth)
        lanes.append(lane)
        if start:
            lane.start(wait=True)
        return lane, owner

    yield make
    for lane in lanes:
        lane.close(timeout=0.3)


def starts(tmp_path, k: int = 0) -> list[int]:
    path = tmp_path / f"starts{k}"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


# --- the happy path (checks the harness too) ------------------------------------------------------
def test_frame_goes_through_shared_memory_and_comes_back(make_lane, tmp_path):
    lane, owner = make_lane(["ok"])
    assert lane.state is LaneState.RUNNING
    _, declared = owner.wait("declared")
    assert declared["pid"] == lane.pid == starts(tmp_path)[0]
    for i in (1, 2, 3):
        assert lane.submit(frame(i)) is None
    for i in (1, 2, 3):
        _, r = owner.wait("result", id=i)
        assert r["reply"]["status"] == "ok"
        assert r["reply"]["outputs"]["sum"] == frame_sum(i)  # the child read our pixels
    assert lane.in_flight == 0
    pid = lane.pid
    lane.close(timeout=1.0)
    assert lane.state is LaneState.STOPPED
    assert gone(pid)
    assert not owner.matching("died") and not owner.matching("lost")
    assert lane.submit(frame(4)) == "algorithm stopped"


# --- per-frame timeout ----------------------------------------------------------------------------
def test_frame_timeout_fails_the_frame_and_restarts_the_child(make_lane, tmp_path):
    lane, owner = make_lane(["hang", "ok"], frame_timeout=0.2)
    first_pid = lane.pid
    t0 = time.monotonic()
    assert lane.submit(frame(1)) is None
    t_lost, lost = owner.wait("lost", id=1, timeout=3)
    assert 0.2 <= t_lost - t0 < 1.5
    assert lost["cause"] is MissingCause.TIMEOUT
    assert lost["timed_out"] is True
    assert lost["message"] == "process() of frame 1 took longer than 0.2 s; child killed"
    _, died = owner.wait("died")
    assert died["message"] == lost["message"]
    assert gone(first_pid)

    owner.wait("declared", n=2, timeout=3)  # a new child
    assert lane.pid != first_pid and starts(tmp_path) == [first_pid, lane.pid]
    assert lane.submit(frame(2)) is None
    _, r = owner.wait("result", id=2)
    assert r["reply"]["pid"] == lane.pid
    seq = [s for _, s in owner.states()]
    assert seq[-3:] == [LaneState.RESTARTING, LaneState.STARTING, LaneState.RUNNING]
    assert len(owner.matching("lost")) == 1


def test_start_timeout_kills_a_child_that_never_declares(make_lane, tmp_path):
    lane, owner = make_lane(["silent"], start_timeout=0.2, start=False)
    t0 = time.monotonic()
    lane.start(wait=False)
    # the child's pid, as the lane knows it (under load the child may be killed before it
    # has recorded its own start in the harness file)
    while not lane.pid and time.monotonic() - t0 < 1.0:
        time.sleep(0.001)
    pid = lane.pid
    t_died, died = owner.wait("died", timeout=3)
    assert died["message"] == "no declarations within 0.2 s"
    assert 0.2 <= t_died - t0 < 1.5
    deadline = time.monotonic() + 3  # killed with its group first, reaped just after
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(pid)
    owner.wait("state", state=LaneState.RESTARTING)
    assert not owner.matching("declared")


# --- crashes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, how", [("crash", "exited with code 3"),
                                       ("sigkill", "died with SIGKILL")])
def test_crash_fails_the_frame_with_the_reason_and_restarts(make_lane, tmp_path, mode, how):
    lane, owner = make_lane([mode, "ok"])
    first_pid = lane.pid
    assert lane.submit(frame(7)) is None
    _, lost = owner.wait("lost", id=7)
    assert lost["cause"] is MissingCause.PROCESSING_ERROR
    assert lost["timed_out"] is False
    assert lost["message"] == f"child {first_pid} {how} while processing frame 7"
    _, died = owner.wait("died")
    assert died["message"] == lost["message"]
    if mode == "crash":
        assert "boom: the algorithm crashed" in died["output"]  # its last words reach the owner
    assert gone(first_pid)
    if mode != "crash":
        return  # one restart check is enough (each costs the 0.25 s back-off)

    owner.wait("declared", n=2, timeout=3)
    assert lane.submit(frame(8)) is None
    _, r = owner.wait("result", id=8)
    assert r["reply"]["outputs"]["sum"] == frame_sum(8)
    assert r["reply"]["pid"] == lane.pid != first_pid


def test_every_frame_in_flight_is_accounted_for_when_the_child_dies(make_lane):
    lane, owner = make_lane(["crash_on_second", "ok"], depth=2)
    pid = lane.pid
    assert lane.submit(frame(1)) is None  # held by the child
    assert lane.submit(frame(2)) is None  # kills it
    _, l1 = owner.wait("lost", id=1)
    _, l2 = owner.wait("lost", id=2)
    first = f"child {pid} exited with code 3 while processing frame 1"
    assert l1["message"] == first
    assert l2["message"] == f"lost when the child was restarted ({first})"
    assert l1["cause"] is l2["cause"] is MissingCause.PROCESSING_ERROR
    assert not owner.matching("result")
    assert lane.in_flight == 0


def test_interpreter_that_cannot_start_is_reported_and_retried(make_lane, tmp_path):
    missing = str(tmp_path / "no-such-python")
    lane, owner = make_lane(["ok"], python=missing, start=False)
    lane.start(wait=False)
    _, died = owner.wait("died")
    assert died["message"].startswith(f"cannot start {missing}: ")
    assert "No such file" in died["message"]
    owner.wait("state", state=LaneState.RESTARTING)
    assert lane.submit(frame(1)) in ("algorithm restarting", "algorithm starting")
    owner.wait("died", n=2, timeout=2)  # tried again after the back-off


# --- back-off -------------------------------------------------------------------------------------
def test_backoff_doubles_between_restarts_and_resets_after_a_good_frame(make_lane, tmp_path):
    # start 1 and 2 die at once; start 3 processes one frame, then crashes; start 4 is fine
    lane, owner = make_lane(["exit", "exit", "ok_then_crash", "ok"], start=False)
    lane.start(wait=False)
    _, restarting = owner.wait("state", state=LaneState.RESTARTING)
    assert lane.submit(frame(99)) in ("algorithm restarting", "algorithm starting")
    owner.wait("declared", timeout=4)  # start 3
    assert lane.submit(frame(1)) is None
    owner.wait("result", id=1)  # a good frame...
    assert lane.submit(frame(2)) is None  # ...then a crash
    owner.wait("lost", id=2)
    owner.wait("declared", n=2, timeout=3)  # start 4

    # the back-off is the time from RESTARTING to the next STARTING
    states = owner.states()
    delays = [t2 - t1 for (t1, s1), (t2, s2) in zip(states, states[1:])
              if s1 is LaneState.RESTARTING and s2 is LaneState.STARTING]
    assert len(delays) == 3, states
    assert 0.25 <= delays[0] < 0.5
    assert 0.5 <= delays[1] < 0.8  # doubled
    assert 0.25 <= delays[2] < 0.5  # reset by the good frame (1.0 s otherwise)
    assert [d["message"] for _, d in owner.matching("died")][:2] == [
        f"child {pid} exited with code 5" for pid in starts(tmp_path)[:2]]
    assert len(starts(tmp_path)) == 4


# --- shutdown -------------------------------------------------------------------------------------
def test_close_kills_a_child_that_ignores_shutdown_and_fails_its_frames(make_lane):
    lane, owner = make_lane(["hang"], frame_timeout=10)
    pid = lane.pid
    assert lane.submit(frame(1)) is None
    time.sleep(0.1)  # the child is now stuck in process()
    t0 = time.monotonic()
    lane.close(timeout=0.1)
    assert time.monotonic() - t0 < 0.9  # SHUTDOWN ignored: SIGTERM after 0.1 s, not later
    assert lane.state is LaneState.STOPPED
    assert gone(pid)
    _, lost = owner.wait("lost", id=1)
    assert lost["message"] == "plugin shut down" and lost["timed_out"] is False
    assert not owner.matching("died")  # an exit we asked for is not a death
    assert owner.states()[-1][1] is LaneState.STOPPED


# --- bugs -----------------------------------------------------------------------------------------
def test_timeout_counts_processing_time_not_queueing_time(make_lane):
    # 0.2 s of margin both ways: today frame 2 ends >= 0.8 s after submit (deadline 0.6 s), so
    # even a starved lane thread cannot see its reply first; fixed, it has 0.6 s for 0.4 s
    lane, owner = make_lane(["sleep:0.4", "ok"], frame_timeout=0.6, depth=2)
    assert lane.submit(frame(1)) is None
    assert lane.submit(frame(2)) is None
    assert owner.wait_frame(1)[0] == "result"
    kind, data = owner.wait_frame(2, timeout=1.5)
    assert kind == "result", data


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_undecodable_reply_fails_the_frame_and_the_lane_keeps_working(make_lane):
    lane, owner = make_lane(["bad_reply", "ok"], depth=2)
    assert lane.submit(frame(1)) is None
    owner.wait_frame(1, timeout=0.5)  # accounted for, one way or the other
    ok = threading.Event()

    def more() -> None:  # the lane may be restarting its child: submit until it takes it
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if lane.submit(frame(2)) is None:
                ok.set()
                return
            time.sleep(0.05)

    threading.Thread(target=more, daemon=True).start()
    _, r = owner.wait("result", id=2, timeout=3)
    assert r["reply"]["status"] == "ok"

