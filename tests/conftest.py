"""Test harness: real ndflow IOC processes on loopback, a private CA port per test session.

The CA environment is set before any client library loads libca, so pyepics, ophyd and
ophyd-async all talk to our IOC on 127.0.0.1 and a port no other run uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

# pyepics uses epicscorelibs' libca, as ophyd and aioca do. Import it before anything imports
# epics.ca, or ophyd's import warns that it had no effect.
import epicscorelibs.path.pyepics  # noqa: F401,E402

from ndflow import ports  # noqa: E402
from ndflow.ports import free_port  # noqa: E402


#: under pytest-xdist each worker takes its ports from its own range, so two workers (separate
#: processes that each pick ports here) never pick the same one
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw-1")[2:] or -1)
_next_port = 20000 + 3000 * _WORKER if _WORKER >= 0 else None


def _candidate() -> int:
    global _next_port
    if _next_port is None:  # one process: any free port the kernel gives
        return free_port()
    _next_port += 7
    return _next_port


def free_port_pair() -> int:
    """A port free for both TCP and UDP, with port+1 free too (repeater/beacons), from this
    worker's range."""
    return ports.free_port_pair(candidate=_candidate)


# Several IOCs may run at once (a module's shared IOC and a test's own), each on its own port;
# the client searches all of them.
CA_PORTS = []
while len(CA_PORTS) < 4:
    port = free_port_pair()
    if all(abs(port - other) > 1 for other in CA_PORTS):
        CA_PORTS.append(port)
CA_PORT = CA_PORTS[0]
CA_ENV = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in CA_PORTS),
    "EPICS_CA_SERVER_PORT": str(CA_PORT),
    "EPICS_CAS_SERVER_PORT": str(CA_PORT),
    "EPICS_CA_REPEATER_PORT": str(CA_PORT + 1),
    "EPICS_CAS_BEACON_PORT": str(CA_PORT + 1),
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_MAX_ARRAY_BYTES": "200000000",
    "EPICS_CA_CONN_TMO": "5",
}
# pvAccess: each IOC serves PVA on its own TCP port, and all of them answer searches on one UDP
# port, as the servers of one host all answer on 5076: a server passes a unicast search on to
# the others on its port by local multicast (224.0.0.128). Not a UDP port per IOC: pvAccessCPP
# (pvapy, pvapy-hpc-consumer) keeps one entry per IP address of EPICS_PVA_ADDR_LIST, whatever
# its port, so it would search only the first IOC's port and never find the others' PVs.
PVA_PORTS: list[int] = []
while len(PVA_PORTS) < len(CA_PORTS):
    port = free_port_pair()
    if all(abs(port - other) > 1 for other in CA_PORTS + PVA_PORTS):
        PVA_PORTS.append(port)
PVA_SEARCH_PORT = PVA_PORTS[0] + 1
CA_ENV.update({
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{PVA_SEARCH_PORT}",
    "EPICS_PVA_BROADCAST_PORT": str(PVA_SEARCH_PORT),
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
})
os.environ.update(CA_ENV)


def pva_env(ca_port: int) -> dict[str, str]:
    """The pvAccess server ports of the IOC that serves CA on `ca_port`: its own TCP port, the
    session's search port."""
    port = PVA_PORTS[CA_PORTS.index(ca_port)]
    return {"EPICS_PVAS_SERVER_PORT": str(port),
            "EPICS_PVAS_BROADCAST_PORT": str(PVA_SEARCH_PORT)}

REPO = Path(__file__).resolve().parent.parent
NDFLOW = [sys.executable, "-m", "ndflow.cli"]


_ports_in_use: set[int] = set()


def _die_with_parent() -> None:
    """Runs in the IOC's process before exec: the kernel sends it SIGTERM when the test process
    dies, so an IOC is never left behind by a pytest that was killed (timeout, ^C twice), which
    teardown cannot cover. Linux only; elsewhere a no-op."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class IOCProcess:
    """`ndflow run` in a child process, as a user starts it."""

    def __init__(self, config: str | None, tmp_path: Path, prefix: str = "13SIM1:",
                 extra: list[str] | None = None, cwd: str | Path | None = None) -> None:
        self.prefix = prefix
        self._keeper: Any = None  # a channel that keeps the CA circuit open: see wait_ready
        self.port = next(p for p in CA_PORTS if p not in _ports_in_use)
        _ports_in_use.add(self.port)
        env = {**os.environ, **CA_ENV, "EPICS_CA_SERVER_PORT": str(self.port),
               "EPICS_CAS_SERVER_PORT": str(self.port), **pva_env(self.port)}
        args = list(NDFLOW) + ["run"]
        if config is not None:
            path = tmp_path / "ioc.yml"
            path.write_text(config)
            args.append(str(path))
        else:
            # The default config writes its screens under ~: here none are written. Nobody reads
            # them (test_screens and test_readme start the default IOC with their own screens
            # folder and check it), and 268 screens cost each start ~4 s of CPU.
            args += ["--screens", ""]
        args += ["--prefix", prefix] + (extra or [])
        self.log_path = tmp_path / "ioc.log"
        self._log = open(self.log_path, "w")
        # cwd: the folder the IOC starts in (None: this process's), e.g. "/" to show that
        # nothing is read relative to it
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, preexec_fn=_die_with_parent)

    def wait_ready(self, pv_suffix: str = "cam1:Acquire_RBV", timeout: float = 60) -> None:
        # 60 s: the default IOC (6,000 PVs over two transports, 200 screens) starts in ~8 s on
        # a quiet machine, several times that with both test workers busy
        # Low-level libca calls: they leave nothing in pyepics' PV cache, which ophyd's
        # shim would otherwise pick up as a plain epics.PV.
        #
        # Before its channel is cleared, a second channel to the same IOC is opened and kept
        # until stop(). libca shuts a circuit down when its last channel is cleared, and a
        # search reply that arrives meanwhile installs the next channel on that dying circuit
        # (cac::transferChanToVirtCircuit uses the circuit even when findOrCreateVirtCircuit
        # found it not alive); once the circuit is gone the channel is searched again only when
        # the 10 s disconnect governor fires. So the test's first caput right after the ready
        # check failed with "cannot connect" (5 s), now and then, under load. The kept channel
        # is the record's NAME field, which no test opens: pyepics shares one channel per name,
        # and clearing one that a test's monitor also uses frees that monitor's subscription
        # under it (a segfault when the monitor is collected later).
        from epics import ca
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOC exited with {self.proc.returncode}:\n{self.log()}")
            chid = ca.create_channel(self.prefix + pv_suffix, connect=False, auto_cb=False)
            connected = ca.connect_channel(chid, timeout=0.5)
            if connected:
                keeper = ca.create_channel(self.prefix + pv_suffix + ".NAME", connect=False,
                                           auto_cb=False)
                if ca.connect_channel(keeper, timeout=5):
                    self._keeper = keeper
                else:
                    ca.clear_channel(keeper)
            ca.clear_channel(chid)
            if connected:
                return
        raise RuntimeError(f"IOC not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self._keeper is not None:  # see wait_ready
            from epics import ca
            ca.clear_channel(self._keeper)
            self._keeper = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        _ports_in_use.discard(self.port)
        return self.proc.returncode


@contextmanager
def running_ioc(config: str | None, folder: Path, timeout: float = 60,
                ready: str = "cam1:Acquire_RBV") -> Iterator[IOCProcess]:
    """An IOC for a module's tests (its own prefix); on exit, its log must hold no traceback."""
    ioc = IOCProcess(config, folder, unique_prefix())
    try:
        ioc.wait_ready(ready, timeout=timeout)
        yield ioc
        assert "Traceback" not in ioc.log(), ioc.log()
    finally:
        ioc.stop()


@contextmanager
def ioc_with_data_root(tmp_path_factory: Any, name: str, config_of: Any,
                       **kw: Any) -> Iterator[IOCProcess]:
    """A module's IOC whose config takes its data root (`config_of(root)`): the root is
    `<folder>/data`, kept on the process as `.root` and the folder as `.folder`."""
    folder = tmp_path_factory.mktemp(name)
    root = folder / "data"
    root.mkdir()
    with running_ioc(config_of(root), folder, **kw) as ioc:
        ioc.root, ioc.folder = root, folder
        yield ioc


@pytest.fixture
def start_ioc(tmp_path):
    """Start an IOC from YAML text (None = the default IOC); stopped after the test."""
    started: list[IOCProcess] = []

    def start(config: str | None = None, prefix: str = "13SIM1:", ready: str = "cam1:Acquire_RBV",
              extra: list[str] | None = None, cwd: str | Path | None = None) -> IOCProcess:
        ioc = IOCProcess(config, tmp_path, prefix, extra, cwd)
        started.append(ioc)
        ioc.wait_ready(ready)
        return ioc

    yield start
    for ioc in started:
        ioc.stop()


_prefix_counter = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def default_ioc(tmp_path_factory):
    """The default IOC (`ndflow run`), shared by a module's tests, with its own PV prefix so
    channels cached by the client from an earlier module cannot alias it."""
    prefix = f"T{os.getpid() % 1000}M{next(_prefix_counter)}:"
    ioc = IOCProcess(None, tmp_path_factory.mktemp("ioc"), prefix)
    try:
        ioc.wait_ready()
        yield ioc
    finally:  # an IOC that did not get ready is stopped too, never left behind
        ioc.stop()


def unique_prefix() -> str:
    return f"T{os.getpid() % 1000}U{next(_prefix_counter)}:"
