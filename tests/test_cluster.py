"""Scale-out on MPI (issue 14): `mpiexec -n 3 ndflow run <config>` is one IOC of three ranks.

Real parts only: MPICH's mpiexec starts the ranks, pyepics and ophyd-async talk CA to the
control rank on loopback, and the files the ranks and the control rank write are read back with
h5py. Each IOC runs in its own process group, killed whole at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from epics import ca

from conftest import CA_ENV, CA_PORTS, _ports_in_use, pva_env, unique_prefix
from test_acquisition import ramp, wait_for, wrap

REPO = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
EXAMPLE = (REPO / "examples" / "cluster.yml").read_text()
UINT16, MONO, LINEAR_RAMP = 3, 0, 0
DROPPED_CODE = 2  # NDArrayStatus of a frame lost to a full queue (MissingCause order)

pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")


class ClusterIOC:
    """`mpiexec -n N ndflow run CONFIG` as a user starts it, in a process group of its own."""

    def __init__(self, config: str, folder: Path, ranks: int = 3,
                 more: tuple[int, Path] | None = None) -> None:
        """`more`: (ranks, config file) started after the first `ranks` (mpiexec's MPMD
        form, `-n 2 ndflow run a.yml : -n 1 ndflow run b.yml`)."""
        self.prefix = unique_prefix()
        self.port = next(p for p in CA_PORTS if p not in _ports_in_use)
        _ports_in_use.add(self.port)
        path = folder / "cluster.yml"
        path.write_text(config)
        env = {**os.environ, **CA_ENV, "EPICS_CA_SERVER_PORT": str(self.port),
               "EPICS_CAS_SERVER_PORT": str(self.port), **pva_env(self.port)}
        self.log_path = folder / "cluster.log"
        self._log = open(self.log_path, "w")
        run = [sys.executable, "-m", "ndflow.cli", "run"]
        args = [str(MPIEXEC), "-n", str(ranks), *run, str(path), "--prefix", self.prefix]
        if more is not None:
            args += [":", "-n", str(more[0]), *run, str(more[1]), "--prefix", self.prefix]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mpiexec exited with {self.proc.returncode}:\n{self.log()}")
            chid = ca.create_channel(self.prefix + "Cluster:NumRanks_RBV", connect=False,
                                     auto_cb=False)
            connected = ca.connect_channel(chid, timeout=0.5)
            ca.clear_channel(chid)
            if connected:
                return
        raise RuntimeError(f"cluster IOC not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        """SIGTERM to the whole group (mpiexec and every rank), SIGKILL if it lingers. The
        ranks run under hydra's proxy in process groups of their own: they are found as
        mpiexec's descendants first, and any still alive at the end is killed too."""
        import psutil
        try:
            ranks = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            ranks = []
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        try:  # ranks left behind by a launcher that died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        gone, alive = psutil.wait_procs(ranks, timeout=10)
        for proc in alive:
            proc.kill()
        self._log.close()
        _ports_in_use.discard(self.port)


def _channel(pv: str):
    chid = ca.create_channel(pv, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=15), f"cannot connect {pv}"
    return chid


def put(pv: str, value, wait: bool = True) -> None:
    assert ca.put(_channel(pv), value, wait=wait, timeout=30) == 1, f"put {pv}={value!r}"


def get(pv: str, as_string: bool = False):
    value = ca.get(_channel(pv), as_string=as_string, timeout=5)
    assert value is not None, f"cannot read {pv}"
    return value


def config(**cluster: object) -> str:
    """examples/cluster.yml with some cluster keys changed."""
    text = EXAMPLE
    for key, value in cluster.items():
        lines = [line for line in text.splitlines() if line.startswith(f"  {key}:")]
        assert lines, key
        text = text.replace(lines[0], f"  {key}: {value}")
    return text


@pytest.fixture(scope="module")
def round_robin(tmp_path_factory):
    ioc = ClusterIOC(EXAMPLE, tmp_path_factory.mktemp("rr"))
    try:
        ioc.wait_ready()
        yield ioc
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def setup_camera(p: str, size_x: int = 1024, size_y: int = 1024,
                 acquire_time: float = 0.01) -> None:
    put(p + "cam1:Acquire", 0)
    for name, value in [("SizeX", size_x), ("SizeY", size_y), ("MinX", 0), ("MinY", 0),
                        ("DataType", UINT16), ("ColorMode", MONO), ("SimMode", LINEAR_RAMP),
                        ("Gain", 1.0), ("GainX", 1.0), ("GainY", 1.0), ("Noise", 0.0),
                        ("AcquireTime", acquire_time), ("AcquirePeriod", 0.0), ("ArrayCounter", 0),
                        ("Reset", 1)]:
        put(p + "cam1:" + name, value)


def capture(p: str, folder: Path, name: str, frames: int, extra: dict | None = None,
            acquire_time: float = 0.01, acquire_period: float = 0.0) -> Path:
    """Stream `frames` frames into HDF1 through the cluster; returns the master file."""
    setup_camera(p, acquire_time=acquire_time)
    put(p + "cam1:AcquirePeriod", acquire_period)
    for plugin in ("Stats1:", "HDF1:"):
        put(p + plugin + "EnableCallbacks", 1)
    for key, value in [("FilePath", str(folder) + "/"), ("FileName", name),
                       ("FileTemplate", "%s%s.h5"), ("FileWriteMode", 2), ("NumCapture", frames),
                       ("AutoIncrement", 0), *(extra or {}).items()]:
        put(p + "HDF1:" + key, value)
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1, 20)
    put(p + "cam1:ImageMode", 1)
    put(p + "cam1:NumImages", frames)
    put(p + "cam1:Acquire", 1)  # completes when the driver is done
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 60), "capture did not end"
    return folder / f"{name}.h5"


def check_frames(path: Path, frames: int, acquire_time: float = 0.01) -> np.ndarray:
    """The master holds `frames` rows in uniqueId order; valid rows equal the sim formula.
    Returns NDArrayStatus."""
    inc = int(round(acquire_time * 1000))  # (UInt16)(Gain 1 * AcquireTime * 1000)
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.is_virtual and data.shape == (frames, 1024, 1024)
        assert data.dtype == np.uint16
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        np.testing.assert_array_equal(ids, np.arange(1, frames + 1))
        status = f["/entry/instrument/NDAttributes/NDArrayStatus"][:]
        for row in range(frames):
            if status[row] == 0:
                np.testing.assert_array_equal(
                    data[row], wrap(ramp(1024, 1024, inc=inc, frame=int(ids[row])), "u2"),
                    err_msg=f"row {row}")
        return status


def run_continuous_then_stop(p: str, above: int) -> int:
    """Acquire in Continuous mode until ArrayCounter passes `above`, stop from the control
    rank: Acquire ends and no frame comes after; the counter where it stopped."""
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") > above, 10)
    put(p + "cam1:Acquire", 0)
    assert wait_for(lambda: get(p + "cam1:AcquireBusy") == 0, 10)
    stopped_at = get(p + "cam1:ArrayCounter_RBV")
    time.sleep(0.5)
    assert get(p + "cam1:ArrayCounter_RBV") == stopped_at
    return stopped_at


def test_ophyd_async_count_writes_a_master_file_in_unique_id_order(round_robin, tmp_path):
    """Acceptance 1: SimDetector + HDF writer count([det], num=20) through three ranks."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd_async.core import StaticFilenameProvider, StaticPathProvider
    from ophyd_async.epics.adcore import ADWriterFactory, NDStatsIO
    from ophyd_async.epics.adsimdetector import SimDetector

    p = round_robin.prefix
    setup_camera(p)
    folder = tmp_path / "scan"
    folder.mkdir()
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    async def make() -> SimDetector:
        provider = StaticPathProvider(StaticFilenameProvider("ndflow_count"), folder)
        det = SimDetector(p, ADWriterFactory.hdf(provider), name="det",
                          plugins={"stats": NDStatsIO(p + "Stats1:")})
        await det.connect(timeout=10)
        return det

    det = asyncio.run_coroutine_threadsafe(make(), RE.loop).result(30)
    put(p + "Stats1:EnableCallbacks", 1)
    RE(count([det], num=20))
    assert docs[-1][1]["exit_status"] == "success"
    resources = [doc for name, doc in docs if name == "stream_resource"]
    uri = resources[0]["uri"]
    master = Path(uri.removeprefix("file://localhost").removeprefix("file://"))
    assert master == folder / "ndflow_count.h5"
    assert get(p + "HDF1:FullFileName_RBV", as_string=True) == str(master)
    datums = [doc for name, doc in docs if name == "stream_datum"]
    assert datums[-1]["indices"]["stop"] == 20
    status = check_frames(master, 20)
    assert not status.any()
    with h5py.File(master) as f:  # the NDAttributes came along, in the same order
        assert "ColorMode" in f["/entry/instrument/NDAttributes"]
        ts = f["/entry/instrument/NDAttributes/NDArrayTimeStamp"][:]
        assert (np.diff(ts) > 0).all()
        assert len(f["/entry/ndflow/missing"]) == 0
    # each processing rank wrote its own half: round robin over ranks 1, 2, one frame each
    # acquisition (a step scan), the rotation going on across acquisitions
    halves = []
    for rank in (1, 2):
        with h5py.File(folder / f"ndflow_count_r{rank}.h5") as f:
            ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
            assert (np.diff(ids) == 2).all() and len(ids) == 10
            halves.append(set(ids))
    assert halves[0] | halves[1] == set(range(1, 21))
    put(p + "Stats1:EnableCallbacks", 0)


def test_aggregated_counters_are_the_sums_of_the_per_rank_ones(round_robin, tmp_path):
    """Acceptance 5 (counts): the control rank's PVs show the sums of the ranks' PVs."""
    p = round_robin.prefix
    put(p + "Stats1:ArrayCounter", 0)
    put(p + "HDF1:DroppedArrays", 0)
    master = capture(p, tmp_path, "sums", 12)
    check_frames(master, 12)

    def sums_agree() -> bool:
        for name in ("Stats1:ArrayCounter_RBV", "Stats1:DroppedArrays_RBV",
                     "HDF1:ArrayCounter_RBV", "HDF1:DroppedArrays_RBV",
                     "Stats1:FramesReceived_RBV"):
            ranks = [get(f"{p}R{r}:{name}") for r in (1, 2)]
            if get(p + name) != sum(ranks):
                return False
        return True
    assert wait_for(sums_agree, 5)
    assert get(p + "Stats1:ArrayCounter_RBV") == 12
    assert get(p + "R1:Stats1:ArrayCounter_RBV") == get(p + "R2:Stats1:ArrayCounter_RBV") == 6
    # the status readbacks come from the rank with the latest frame: Stats of frame 12
    inc = 10
    assert wait_for(lambda: get(p + "Stats1:UniqueId_RBV") == 12, 5)
    expected = wrap(ramp(1024, 1024, inc=inc, frame=12), "u2").astype(np.float64).mean()
    assert get(p + "Stats1:MeanValue_RBV") == pytest.approx(expected)
    assert get(p + "Cluster:FramesMissing_RBV") == 0
    assert get(p + "Cluster:FramesInOrder_RBV") == get(p + "Cluster:FramesDispatched_RBV")


def test_a_frame_dropped_on_a_rank_is_a_missing_row_in_order(round_robin, tmp_path):
    """Acceptance 4: the ranks' writers have a queue of one and a slow compression, and frames
    come every 2 ms (250/s to each rank, faster than zlib level 9 writes a 2 MB frame), so
    frames find their queue full; each is a missing row with its cause, in its place."""
    p = round_robin.prefix
    put(p + "HDF1:DroppedArrays", 0)
    put(p + "HDF1:QueueSize", 1)
    try:
        master = capture(p, tmp_path, "drops", 20,
                         {"Compression": 3, "ZLevel": 9, "FillValue": 7},  # zlib
                         acquire_time=0.002)
    finally:
        put(p + "HDF1:QueueSize", 20)
        put(p + "HDF1:Compression", 0)
    status = check_frames(master, 20, acquire_time=0.002)
    dropped = np.flatnonzero(status)
    assert len(dropped) > 0, "no frame was dropped: the writers kept up"
    assert (status[dropped] == DROPPED_CODE).all()
    with h5py.File(master) as f:
        missing = f["/entry/ndflow/missing"][:]
        assert list(missing["unique_id"]) == list(dropped + 1)  # in order, with their cause
        assert {c.decode() for c in missing["cause"]} == {"overrun/dropped"}
        assert all(b"queue full" in m for m in missing["message"])
        assert (f["/entry/data/data"][int(dropped[0])] == 7).all()  # FillValue
    assert wait_for(lambda: get(p + "HDF1:DroppedArrays_RBV") == len(dropped) ==
                    get(p + "R1:HDF1:DroppedArrays_RBV") + get(p + "R2:HDF1:DroppedArrays_RBV"),
                    5)


def test_credit_dispatch_delivers_every_frame_once(tmp_path):
    """Acceptance 2 (credit): the least busy rank gets the next frame; every frame is in the
    master exactly once, in order."""
    ioc = ClusterIOC(config(dispatch="credit", credits=2), tmp_path)
    try:
        ioc.wait_ready()
        p = ioc.prefix
        assert get(p + "Cluster:Dispatch_RBV", as_string=True) == "credit"
        master = capture(p, tmp_path, "credit", 20)
        assert not check_frames(master, 20).any()
        per_rank = []
        for rank in (1, 2):
            with h5py.File(tmp_path / f"credit_r{rank}.h5") as f:
                per_rank.append(set(f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]))
        assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[0] | per_rank[1] == \
            set(range(1, 21))
        assert per_rank[0] and per_rank[1]
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def test_credit_dispatch_gives_a_slow_rank_fewer_frames_and_order_is_kept(tmp_path):
    """Acceptance 2 (slow rank): rank 2's algorithm takes 300 ms a frame, rank 1's 1 ms (the
    same config but for that value, launched MPMD-style); with credit dispatch rank 2 gets
    fewer frames, and the master still holds every frame once, in order."""
    fast = config(dispatch="credit", credits=4) + (
        f"algorithm_folders: [{REPO / 'tests' / 'algorithms'}]\n")
    fast = fast.replace("plugins:\n", "plugins:\n  - {type: python, port: PY1, prefix: 'Py1:', "
                        "input: SIM1, loss_policy: block, options: {file: slow_process.py, "
                        "values: {Seconds: 0.001}}}\n")
    slow = fast.replace("Seconds: 0.001", "Seconds: 0.3")
    (tmp_path / "slow.yml").write_text(slow)
    ioc = ClusterIOC(fast, tmp_path, ranks=2, more=(1, tmp_path / "slow.yml"))
    try:
        ioc.wait_ready()
        p = ioc.prefix
        put(p + "cam1:WaitForPlugins", 1)
        master = capture(p, tmp_path, "slow", 30)
        assert not check_frames(master, 30).any()
        counts = {}
        for rank in (1, 2):
            with h5py.File(tmp_path / f"slow_r{rank}.h5") as f:
                counts[rank] = len(f["/entry/instrument/NDAttributes/NDArrayUniqueId"])
        assert counts[1] + counts[2] == 30
        assert counts[2] < counts[1] - 4, counts  # round robin would give 15 each
        assert get(p + "R2:Py1:ArrayCounter_RBV") == counts[2]
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def rank_process(ioc: ClusterIOC, rank: int):
    """The process of MPI rank `rank` in the IOC's process group (psutil)."""
    import psutil
    for proc in psutil.Process(ioc.proc.pid).children(recursive=True):
        try:
            if "ndflow.cli" in proc.cmdline() and proc.environ().get("PMI_RANK") == str(rank):
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no process for rank {rank}")


def test_a_rank_that_stops_answering_is_reported_and_its_frames_become_missing(tmp_path):
    """Faults: rank 2 is stopped (SIGSTOP); the frames it was sent time out after the window
    and become missing frames of the acquisition; Cluster:SilentRanks_RBV names it; credit
    dispatch sends the rest to rank 1; Acquire's put-completion (WaitForPlugins) does not wait
    for the silent rank."""
    ioc = ClusterIOC(config(dispatch="credit", credits=2, window_s=1.0), tmp_path)
    stopped = None
    try:
        ioc.wait_ready()
        p = ioc.prefix
        setup_camera(p, 256, 256)
        put(p + "Stats1:EnableCallbacks", 1)
        stopped = rank_process(ioc, 2)
        stopped.suspend()
        put(p + "cam1:ImageMode", 1)
        put(p + "cam1:NumImages", 10)
        put(p + "cam1:WaitForPlugins", 1)
        began = time.monotonic()
        put(p + "cam1:Acquire", 1)  # completes once rank 2 is given up on (30 s at most)
        assert time.monotonic() - began < 15, "Acquire waited for the silent rank"
        assert get(p + "cam1:AcquireBusy") == 0
        assert wait_for(lambda: get(p + "Cluster:SilentRanks_RBV", as_string=True) == "2", 10)
        assert get(p + "Cluster:RanksAnswering_RBV") == 1
        # every frame is either processed by rank 1 or missing (rank 2 got 1 or 2: credits)
        assert wait_for(lambda: get(p + "Cluster:FramesInOrder_RBV") == 10, 5)
        missing = get(p + "Cluster:FramesMissing_RBV")
        assert 1 <= missing <= 2
        assert wait_for(lambda: get(p + "R1:Stats1:ArrayCounter_RBV") == 10 - missing, 5)
        assert get(p + "cam1:FramesLost_RBV") == missing  # on the acquisition, with its cause
        stopped.resume()
        stopped = None
        assert wait_for(lambda: get(p + "Cluster:SilentRanks_RBV", as_string=True) == "", 10)
        assert wait_for(lambda: get(p + "Cluster:FramesLate_RBV") == missing, 5)
    finally:
        if stopped is not None:
            stopped.resume()
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def test_roles_naming_ranks_mpiexec_did_not_start_are_one_line_errors(tmp_path):
    path = tmp_path / "cluster.yml"
    path.write_text(EXAMPLE)
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "ndflow.cli", "run",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("ndflow:")]
    assert lines and all(line == lines[0] for line in lines), out.stderr
    assert "cluster.processing[1]: rank 2, but mpiexec started 2 ranks (0..1)" in lines[0]
    line_of_key = EXAMPLE.splitlines().index("  processing: [1, 2]") + 1
    assert f"line {line_of_key}:" in lines[0]
    assert "Traceback" not in out.stderr + out.stdout


def test_an_acquisition_rank_other_than_the_control_rank_runs_the_driver(tmp_path):
    """One acquisition rank that is not the control rank and also processes (rank 1), round
    robin over itself (no MPI hop) and rank 2: puts reach its driver, Acquire's put-completion
    waits for both ranks' plugins, the master holds every frame in order, and Acquire=0 stops
    a continuous acquisition there."""
    ioc = ClusterIOC(config(acquisition="[1]"), tmp_path)
    try:
        ioc.wait_ready()
        p = ioc.prefix
        put(p + "cam1:WaitForPlugins", 1)
        master = capture(p, tmp_path, "remote", 10)
        assert not check_frames(master, 10).any()
        for rank, ids in ((1, [1, 3, 5, 7, 9]), (2, [2, 4, 6, 8, 10])):
            with h5py.File(tmp_path / f"remote_r{rank}.h5") as f:
                assert list(f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]) == ids
        assert get(p + "cam1:ArrayCounter_RBV") == 10  # the acquisition rank's counter
        assert get(p + "HDF1:ArrayCounter_RBV") == 10  # WaitForPlugins: both ranks done
        assert get(p + "Cluster:FramesInOrder_RBV") == 10
        put(p + "cam1:ImageMode", 2)  # continuous, stopped from the control rank
        run_continuous_then_stop(p, above=12)
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def test_a_killed_job_leaves_no_shared_memory_behind(tmp_path):
    """MPICH names its shared memory of a host (/dev/shm/mpich_shm_*) and removes the name only
    in MPI_Finalize: every rank removes it once all have it open (ndflow.cluster.shm_names), so
    a job whose ranks are all SIGKILLed leaves no file (the memory goes with the processes)."""
    ioc = ClusterIOC(EXAMPLE, tmp_path)
    try:
        ioc.wait_ready()
        segments = set()
        for rank in range(3):
            maps = Path(f"/proc/{rank_process(ioc, rank).pid}/maps").read_text()
            mapped = {line.split(maxsplit=5)[5] for line in maps.splitlines()
                      if "/dev/shm/mpich_shm_" in line}
            assert mapped, f"rank {rank} maps no MPICH shared memory:\n{maps}"
            assert all(path.endswith(" (deleted)") for path in mapped), mapped
            segments |= {path.removesuffix(" (deleted)") for path in mapped}
        for rank in range(3):
            rank_process(ioc, rank).kill()
    finally:
        ioc.stop()
    assert not [path for path in segments if Path(path).exists()]


def test_ctrl_c_mid_capture_leaves_a_master_over_the_rank_files(tmp_path):
    """Ctrl-C (SIGINT to mpiexec's group) while a Stream capture runs without end: every rank
    closes its file, and the control rank, once all have shut down, writes the master over
    them: one file, the frames in uniqueId order, their pixels the sim's. Before, the rank
    files were left with no master."""
    ioc = ClusterIOC(EXAMPLE, tmp_path)
    try:
        ioc.wait_ready()
        p = ioc.prefix
        setup_camera(p)
        put(p + "cam1:AcquirePeriod", 0.02)
        put(p + "HDF1:EnableCallbacks", 1)
        for key, value in [("FilePath", str(tmp_path) + "/"), ("FileName", "cut"),
                           ("FileTemplate", "%s%s.h5"), ("FileWriteMode", 2), ("NumCapture", 0),
                           ("AutoIncrement", 0)]:
            put(p + "HDF1:" + key, value)
        put(p + "HDF1:Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1, 20)
        put(p + "cam1:ImageMode", 2)
        put(p + "cam1:Acquire", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:NumCaptured_RBV") >= 20, 20)
        os.killpg(ioc.proc.pid, signal.SIGINT)
        assert ioc.proc.wait(timeout=30) == 0, ioc.log()[-3000:]
    finally:
        ioc.stop()
    log = ioc.log()
    assert "the IOC stops mid-capture: master file" in log, log[-3000:]
    with h5py.File(tmp_path / "cut.h5") as f:
        rows = f["/entry/data/data"].shape[0]
    written = 0
    for rank in (1, 2):
        with h5py.File(tmp_path / f"cut_r{rank}.h5") as f:
            written += f["/entry/data/data"].shape[0]
    assert rows >= 20 and rows >= written
    status = check_frames(tmp_path / "cut.h5", rows)
    assert (status == 0).sum() == written  # every frame a rank wrote; any other row a hole
    assert "Traceback" not in log, log
