"""Supervision of one algorithm child process: start it, read its output, restart it with back-off
when it dies, and stop it gracefully, then by force, with everything it started.

The child leads its own session and process group, so whatever it starts (a multiprocessing
pool, a subprocess) is in that group: a timeout, a memory kill and a stop end the whole group,
and nothing the algorithm started outlives its child.

Children are started from one long-lived spawner thread because PR_SET_PDEATHSIG fires when the
*thread* that forked the child exits, not only the process.

The child runs `ndflow.algorithm.child` from an image made once per IOC process
(`child_image`): a zip of `ndflow/algorithm` with a `__main__`, held in an anonymous sealed memfd and run as
`<python> /proc/self/fd/<n>`. It is the child's sys.path entry for ndflow, and holds nothing else
of ndflow, so the child imports the standard library, numpy and that package, under any
interpreter, with or without ndflow installed. Like the frames' segments it has no name on
disk: no exit of the IOC, SIGKILL included, leaves it behind. What a lane does with the child's
messages is `lane.Lane`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ndflow.algorithm
from ndflow.algorithm import wire

#: the image's __main__: what `<python> /proc/self/fd/<n>` runs
MAIN = "import sys\n\nfrom ndflow.algorithm.child import main\n\nsys.exit(main())\n"


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


class Supervisor:
    """Keeps one child running until closed. A subclass reads the child's messages (`_serve`,
    returning why it stopped) and settles what the child held when it is gone (`_lost`)."""

    def __init__(self, spec: ChildSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.state = LaneState.STOPPED
        self.log = logging.getLogger(f"ndflow.{spec.name}")
        self.pid = 0
        self.proc: subprocess.Popen | None = None
        self.channel: wire.Channel | None = None
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=60)
        self._first = threading.Event()
        self._failures = 0  # deaths since the last good frame, for the back-off

    # --- what a subclass provides ------------------------------------------------------------------
    def _settings(self) -> dict:
        """Extra settings for the child (beyond the file, class and protocol)."""
        return {}

    def _serve(self) -> tuple[str, str]:
        raise NotImplementedError

    def _lost(self, reason: str, message: str, returncode: int | None, output: str) -> None:
        """The child is gone; `reason` is "closing" for an exit that was asked for."""

    def _state_changed(self) -> None:
        """The state moved (from the supervising thread, or close())."""

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self, wait: bool) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"{self.spec.name}-lane{self.index}")
        self._thread.start()
        if wait:
            self._first.wait(self.spec.start_timeout + 5)

    def close(self, timeout: float = 1.0) -> None:
        """Graceful (SHUTDOWN, then wait), then SIGTERM, then SIGKILL."""
        self._closing.set()
        proc = self.proc if self._tell(wire.SHUTDOWN) else None
        if proc is not None:
            stop_process(proc, timeout)
        if self._thread is not None:
            self._thread.join(timeout + 2)
        self._set_state(LaneState.STOPPED)

    def reload(self) -> None:
        self._tell(wire.RELOAD)

    def _tell(self, kind: bytes) -> bool:
        """Send a control message if a child is up (a child that just died gets nothing);
        whether there was one."""
        channel = self.channel
        if channel is None:
            return False
        try:
            channel.send(kind)
        except wire.ChannelClosed:
            pass
        return True

    def _set_state(self, state: LaneState) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()
        self._state_changed()

    # --- the supervising thread ---------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._closing.is_set():
            self._set_state(LaneState.STARTING)
            if self._spawn():
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
        try:
            image = child_image()
        except OSError as exc:
            self._start_failed(f"cannot build the algorithm child's image: {exc.strerror or exc}")
            return False
        parent_sock, child_sock = wire.socket_pair()
        settings = {"file": str(spec.file), "class": spec.class_name, "memory_mb": spec.memory_mb,
                    "parent_pid": os.getpid(), "name": spec.name,
                    "protocol": wire.PROTOCOL_VERSION, "read_folders": list(spec.read_folders),
                    **self._settings()}
        argv = [spec.python, "-u", f"/proc/self/fd/{image}", str(child_sock.fileno()),
                json.dumps(settings)]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = _spawner().submit(
                subprocess.Popen, argv, pass_fds=[child_sock.fileno(), image],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                env=env).result()
        except OSError as exc:
            self._start_failed(f"cannot start {spec.python}: {exc.strerror or exc}")
            parent_sock.close()
            return False
        finally:
            child_sock.close()
        self.pid = proc.pid
        self._output.clear()
        threading.Thread(target=self._read_output, args=(proc,), daemon=True,
                         name=f"{spec.name}-out{self.index}").start()
        self.proc, self.channel = proc, wire.Channel(parent_sock)
        return True

    def _start_failed(self, message: str) -> None:
        """The interpreter could not be started at all (a subclass reports it)."""
        self.log.warning("%s", message)

    def _bury(self, reason: str, message: str) -> None:
        """The child is gone (or going): reap it, then let the subclass settle what it held."""
        proc, channel = self.proc, self.channel
        self.proc = self.channel = None
        returncode = None
        if self._closing.is_set():
            reason = "closing"  # an exit we asked for is not a death
        if channel is not None:
            channel.close()
        if proc is not None:
            returncode = stop_process(proc, 0.5 if reason != "closing" else 1.0)
        if reason != "closing":
            time.sleep(0.05)  # let the output reader catch the last lines (faulthandler's stack)
        self._lost(reason, message, returncode, "\n".join(self._output))

    def _read_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            self.log.info("[%s pid %d] %s", self.spec.file.name, proc.pid, line)


# --- processes ------------------------------------------------------------------------------------

def stop_process(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait for the child to exit, then SIGTERM it (an algorithm that handles SIGTERM may clean
    up), then SIGKILL; finally SIGKILL its whole process group, so nothing it started survives
    (a worker it never joined, a pool it never closed). The group is killed before the child is
    reaped: until then its pid, which is the group's id, cannot be reused by an unrelated
    process."""
    if not exited(proc, timeout):
        try:
            proc.terminate()
        except OSError:
            pass
        exited(proc, timeout)
    kill_group(proc)
    return proc.wait()


def exited(proc: subprocess.Popen, timeout: float = 0.0) -> bool:
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


def kill_group(proc: subprocess.Popen) -> None:
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


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"died with {signal.Signals(-code).name}"
        except ValueError:
            return f"died with signal {-code}"
    return f"exited with code {code}"


_SPAWNER: concurrent.futures.ThreadPoolExecutor | None = None
_IMAGE: int | None = None
_LOCK = threading.Lock()


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """One thread that lives as long as the IOC and forks every child (see module doc)."""
    global _SPAWNER
    with _LOCK:
        if _SPAWNER is None:
            _SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ndflow-spawn")
        return _SPAWNER


def child_image() -> int:
    """The fd of the child's image (see the module doc), made on first use and kept open for the
    life of the IOC; sealed, so no child can change what the next one runs."""
    global _IMAGE
    with _LOCK:
        if _IMAGE is None:
            view = memoryview(image_bytes())
            fd = os.memfd_create("ndflow-algorithm-child",
                                 os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                while view:
                    view = view[os.write(fd, view):]
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK |
                            fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            except OSError:
                os.close(fd)
                raise
            _IMAGE = fd
        return _IMAGE


def image_bytes() -> bytes:
    """The zip: `__main__.py`, `ndflow/__init__.py` (ndflow as the child sees it),
    and `ndflow/algorithm/*.py`."""
    package = Path(ndflow.algorithm.__file__).resolve().parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as image:
        image.writestr("__main__.py", MAIN)
        image.writestr("ndflow/__init__.py",
                       '"""ndflow as an algorithm child sees it: ndflow.algorithm only."""\n'
                       f"__version__ = {ndflow.__version__!r}\n")
        for source in sorted(package.glob("*.py")):
            image.write(source, f"ndflow/algorithm/{source.name}")
    return buffer.getvalue()


def default_python() -> str:
    return sys.executable
