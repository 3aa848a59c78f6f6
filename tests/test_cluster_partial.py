"""Partial-frame dispatch (issue 14, acceptance 3): a detector of 2x2 modules over four
acquisition ranks, each module's frames written by its own rank, the master file assembling
the whole detector image.

The IOC is real (`mpiexec -n 5 ndflow run`, pyepics on loopback, files read back with h5py);
the master-file and config checks below it need no MPI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ndflow.cluster.config import check_modules, check_roles
from ndflow.cluster.master import STATUS_CODES, build_master
from ndflow.config import ConfigError, parse_config
from ndflow.drivers.fits import FITSDriver
from ndflow.drivers.sim import SimDetector
from ndflow.ndarray import FrameStatus, MissingCause
from test_acquisition import ramp, wait_for, wrap
from test_cluster import MPIEXEC, ClusterIOC, get, put, rank_process
from test_cluster_acq import hdf_capture

ATTRS = "/entry/instrument/NDAttributes"
WIDTH, HEIGHT = 64, 48
UINT16, LINEAR_RAMP = 3, 0

PARTIAL = f"""\
# 2x2 modules over four acquisition-with-processing ranks; rank 0 serves the PVs
prefix: "13SIM1:"
transports: [ca]
data_roots: ["/tmp"]
cluster:
  control: 0
  acquisition: [1, 2, 3, 4]
  processing: [1, 2, 3, 4]
drivers:
  - type: sim
    port: SIM1
    prefix: "cam1:"
    options: {{max_size_x: {WIDTH}, max_size_y: {HEIGHT}, data_type: UInt16, modules: [2, 2]}}
plugins:
  - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1}}
"""


def frame(uid: int, inc: int = 10) -> np.ndarray:
    """The single-process sim frame `uid` (LinearRamp, Gain 1, AcquireTime 0.01: inc 10)."""
    return wrap(ramp(WIDTH, HEIGHT, inc=inc, frame=uid), "u2")


# --- the whole IOC under mpiexec ----------------------------------------------------------------
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_four_module_ranks_give_a_master_file_with_the_whole_sim_frame(tmp_path):
    """Acceptance 3: each acquisition rank makes one module; its rank's writer writes it; the
    master's /entry/data/data is the single-process frame, pixel for pixel, in uniqueId
    order; Acquire's put-completion (WaitForPlugins) covers the four ranks."""
    ioc = ClusterIOC(PARTIAL, tmp_path, ranks=5)
    frames = 5
    try:
        ioc.wait_ready()
        p = ioc.prefix
        assert get(p + "Cluster:AcquisitionRanks_RBV", as_string=True) == "1 2 3 4"
        for name, value in [("DataType", UINT16), ("SimMode", LINEAR_RAMP), ("Gain", 1.0),
                            ("AcquireTime", 0.01), ("AcquirePeriod", 0.0), ("ArrayCounter", 0),
                            ("WaitForPlugins", 1), ("ImageMode", 1), ("NumImages", frames),
                            ("Reset", 1)]:
            put(p + "cam1:" + name, value)
        for key, value in [("FilePath", str(tmp_path) + "/"), ("FileName", "det"),
                           ("FileTemplate", "%s%s.h5"), ("FileWriteMode", 2),
                           ("NumCapture", frames), ("AutoIncrement", 0)]:
            put(p + "HDF1:" + key, value)
        put(p + "HDF1:Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1, 20)
        put(p + "cam1:Acquire", 1)  # completes once every rank's plugins have the frames
        assert get(p + "cam1:ArrayCounter_RBV") == frames
        assert [get(f"{p}R{r}:cam1:ArrayCounter_RBV") for r in (1, 2, 3, 4)] == [frames] * 4
        assert get(p + "HDF1:ArrayCounter_RBV") == 4 * frames  # module frames, summed
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 30), "capture did not end"
        assert get(p + "Cluster:FramesInOrder_RBV") == frames
        assert get(p + "Cluster:FramesMissing_RBV") == 0
        master = tmp_path / "det.h5"
        assert get(p + "HDF1:FullFileName_RBV", as_string=True) == str(master)
        with h5py.File(master) as f:
            data = f["/entry/data/data"]
            assert data.is_virtual and data.shape == (frames, HEIGHT, WIDTH)
            ids = f[f"{ATTRS}/NDArrayUniqueId"][:]
            np.testing.assert_array_equal(ids, np.arange(1, frames + 1))
            assert not f[f"{ATTRS}/NDArrayStatus"][:].any()
            for row in range(frames):
                np.testing.assert_array_equal(data[row], frame(int(ids[row])),
                                              err_msg=f"row {row}")
            assert (np.diff(f[f"{ATTRS}/NDArrayTimeStamp"][:]) > 0).all()
            offsets = {tuple(r[:3]) for r in data.attrs["module_offsets"]}
            assert offsets == {(0, 0, 0), (1, 32, 0), (2, 0, 24), (3, 32, 24)}
        for rank, (x0, y0) in zip((1, 2, 3, 4), ((0, 0), (32, 0), (0, 24), (32, 24))):
            with h5py.File(tmp_path / f"det_r{rank}.h5") as f:  # one module's file
                assert f["/entry/data/data"].shape == (frames, 24, 32)
                assert set(f[f"{ATTRS}/ModuleOffsetX"][:]) == {x0}
                assert set(f[f"{ATTRS}/ModuleOffsetY"][:]) == {y0}
                np.testing.assert_array_equal(f["/entry/data/data"][0],
                                              frame(1)[y0:y0 + 24, x0:x0 + 32])
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


TWO_MODULES = f"""\
# 2x1 modules: ranks 1 and 2 make modules 0 and 1, ranks 3 and 4 write them; rank 0 serves the PVs
prefix: "13SIM1:"
transports: [ca]
data_roots: ["/tmp"]
cluster:
  control: 0
  acquisition: [1, 2]
  processing: [3, 4]
  window_s: 1.0
drivers:
  - type: sim
    port: SIM1
    prefix: "cam1:"
    options: {{max_size_x: {WIDTH}, max_size_y: {HEIGHT}, data_type: UInt16, modules: [2, 1]}}
plugins:
  - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1}}
"""


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_a_silent_module_rank_gives_its_module_file_missing_rows_and_the_capture_ends(tmp_path):
    """The rank making module 1 is stopped (SIGSTOP) mid-acquisition. The frames it owes go to
    module 1's processing rank as missing rows tagged with the module's attributes, so that
    rank's capture reaches NumCapture on its own; they become missing while rank 1 goes on (the
    in-order count passes them before the acquisition ends); the master holds every frame in
    order: whole sim frames until then, missing rows naming module 1 and the stopped rank
    after."""
    ioc = ClusterIOC(TWO_MODULES, tmp_path, ranks=5)
    frames, stopped = 60, None
    try:
        ioc.wait_ready()
        p = ioc.prefix
        for name, value in [("DataType", UINT16), ("SimMode", LINEAR_RAMP), ("Gain", 1.0),
                            ("AcquireTime", 0.01), ("AcquirePeriod", 0.1), ("ArrayCounter", 0),
                            ("WaitForPlugins", 1), ("ImageMode", 1), ("NumImages", frames),
                            ("Reset", 1)]:
            put(p + "cam1:" + name, value)
        hdf_capture(p, tmp_path, "mod", frames)
        rank2 = rank_process(ioc, 2)
        put(p + "cam1:Acquire", 1, wait=False)
        assert wait_for(lambda: get(p + "R2:cam1:ArrayCounter_RBV") >= 5, 10)
        rank2.suspend()
        stopped = rank2
        assert wait_for(lambda: get(p + "Cluster:SilentRanks_RBV", as_string=True) == "2", 10)
        assert wait_for(lambda: get(p + "Cluster:FramesInOrder_RBV") > 20, 10)
        assert get(p + "R1:cam1:ArrayCounter_RBV") < frames  # while rank 1 still acquires
        assert wait_for(lambda: get(p + "cam1:AcquireBusy") == 0, 15), "Acquire did not end"
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 20), "capture did not end"
        with h5py.File(tmp_path / "mod_r4.h5") as f:  # module 1's file: every frame's row
            assert list(f[f"{ATTRS}/NDArrayUniqueId"][:]) == list(range(1, frames + 1))
            assert set(f[f"{ATTRS}/ModuleIndex"][:]) == {1}
            assert set(f[f"{ATTRS}/ModuleOffsetX"][:]) == {32}
        with h5py.File(tmp_path / "mod.h5") as f:
            data = f["/entry/data/data"]
            assert data.shape == (frames, HEIGHT, WIDTH)
            ids = [int(u) for u in f[f"{ATTRS}/NDArrayUniqueId"][:]]
            assert ids == list(range(1, frames + 1))
            status = f[f"{ATTRS}/NDArrayStatus"][:]
            lost = [u for u, s in zip(ids, status) if s]
            assert lost and lost == list(range(lost[0], frames + 1)), lost  # from its stop on
            assert lost[0] > 5
            for row, uid in enumerate(ids):
                if not status[row]:
                    np.testing.assert_array_equal(data[row], frame(uid), err_msg=f"row {row}")
            missing = f["/entry/ndflow/missing"][:]
            assert [int(u) for u in missing["unique_id"]] == lost
            assert set(missing["message"]) == {
                b"module 1: acquisition rank 2 stopped answering"}
        assert get(p + "Cluster:FramesInOrder_RBV") == frames
        rank2.resume()
        stopped = None
    finally:
        if stopped is not None:
            stopped.resume()
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


# --- the master over module files (no MPI) ------------------------------------------------------
def module_file(path: Path, module: int, uids: list[int], dropped: set[int] = frozenset()) -> Path:
    """Module `module` (2x2 grid of 32x24 tiles) of frames `uids`, as a rank's HDF5 writer
    lays it out, with the sim's module attributes."""
    x0, y0 = (module % 2) * 32, (module // 2) * 24
    with h5py.File(path, "w") as f:
        data = f.create_dataset("/entry/data/data", shape=(len(uids), 24, 32), dtype="u2")
        for row, uid in enumerate(uids):
            if uid not in dropped:
                data[row] = frame(uid)[y0:y0 + 24, x0:x0 + 32]
        f[f"{ATTRS}/NDArrayUniqueId"] = np.array(uids, "i4")
        f[f"{ATTRS}/NDArrayStatus"] = np.array(
            [STATUS_CODES[MissingCause.DROPPED] if u in dropped else 0 for u in uids], "i1")
        f[f"{ATTRS}/ModuleIndex"] = np.full(len(uids), module, "i4")
        f[f"{ATTRS}/ModuleOffsetX"] = np.full(len(uids), x0, "i4")
        f[f"{ATTRS}/ModuleOffsetY"] = np.full(len(uids), y0, "i4")
        missing = np.array([(u, b"overrun/dropped", b"FileHDF1 queue full")
                            for u in sorted(dropped)],
                           dtype=[("unique_id", "i4"), ("cause", "S24"), ("message", "S120")])
        f.create_dataset("/entry/ndflow/missing", data=missing, maxshape=(None,))
    return path


def test_a_frame_with_a_module_missing_is_a_missing_row_with_its_cause(tmp_path):
    files = [(m + 1, module_file(tmp_path / f"m_r{m + 1}.h5", m, [1, 2, 3, 4],
                                 dropped={3} if m == 2 else set())) for m in range(4)]
    files[3] = (4, module_file(tmp_path / "m_r4.h5", 3, [1, 2, 4]))  # frame 3 never came
    files[1] = (2, module_file(tmp_path / "m_r2.h5", 1, [1, 3, 4]))  # frame 2 never came
    summary = build_master(lambda p: h5py.File(p, "w"), tmp_path / "m.h5", files, fill=7,
                           grid=(2, 2))
    assert summary.frames == 4 and summary.missing == 2
    with h5py.File(tmp_path / "m.h5") as f:
        data = f["/entry/data/data"]
        assert data.shape == (4, HEIGHT, WIDTH)
        np.testing.assert_array_equal(data[0], frame(1))
        np.testing.assert_array_equal(data[3], frame(4))
        assert (data[1] == 7).all() and (data[2] == 7).all()  # a missing row reads FillValue
        status = f[f"{ATTRS}/NDArrayStatus"][:]
        assert list(status) == [0, STATUS_CODES[MissingCause.TIMEOUT],
                                STATUS_CODES[MissingCause.DROPPED], 0]
        missing = f["/entry/ndflow/missing"][:]
        assert list(missing["unique_id"]) == [2, 3]
        assert missing["message"][0] == b"module 1 in no processing rank's file"
        assert missing["message"][1] == b"module 2: FileHDF1 queue full"
        assert "ModuleOffsetX" not in f[ATTRS]  # per module: in module_offsets instead


# --- config errors: one line naming the key and its line ----------------------------------------
def roles(text: str, size: int = 5, driver: Any = SimDetector):
    config, lines = parse_config(text, "c.yml")
    check_roles(config.cluster, size, lines)
    check_modules(config.cluster, tuple(config.drivers[0].options.get("modules", (1, 1))),
                  lines, driver)


def test_bad_module_grids_and_module_maps_are_one_line_errors():
    roles(PARTIAL)
    with pytest.raises(ConfigError, match=r"^c.yml line 7: cluster.acquisition: 3 acquisition "
                                          r"ranks, but the driver has 4 modules \(2x2, more"):
        roles(PARTIAL.replace("[1, 2, 3, 4]", "[1, 2, 3]"), size=4)
    # a driver without modules: the four acquisition ranks share whole frames (issue 14's "M
    # acquisition + N processing" with full frames), no longer refused
    roles(PARTIAL.replace("modules: [2, 2]", "modules: [1, 1]"))
    with pytest.raises(ConfigError, match=r"line 7: cluster.acquisition: rank 0 is the control "
                                          r"rank: with several acquisition ranks sharing whole"):
        roles(PARTIAL.replace("modules: [2, 2]", "modules: [1, 1]").replace(
            "acquisition: [1, 2, 3, 4]", "acquisition: [0, 1, 2, 3, 4]"))
    with pytest.raises(ConfigError, match=r"line 7: cluster.acquisition\[3\]: rank 4, but "
                                          r"mpiexec started 4 ranks"):
        roles(PARTIAL.replace("processing: [1, 2, 3, 4]", "processing: [1, 2, 3]"), size=4)
    with pytest.raises(ConfigError, match=r"line 8: cluster.processing: processing rank 4 gets "
                                          r"no module's frames"):
        roles(PARTIAL.replace("acquisition: [1, 2, 3, 4]", "acquisition: [1, 2, 3]"))
    mapped = PARTIAL.replace("  processing: [1, 2, 3, 4]\n",
                             "  processing: [1, 2, 3, 4]\n  module_ranks: [[1], [2], [3, 4]]\n")
    with pytest.raises(ConfigError, match=r"line 9: cluster.module_ranks: 3 entries, but 4 "
                                          r"acquisition ranks"):
        roles(mapped)
    bad_rank = PARTIAL.replace("  processing: [1, 2, 3, 4]\n",
                               "  processing: [1, 2, 3, 4]\n  module_ranks: [[1], [2], [3], [0]]\n")
    with pytest.raises(ConfigError, match=r"line 9: cluster.module_ranks\[3\]\[0\]: rank 0 is "
                                          r"not a processing rank"):
        roles(bad_rank)
    with pytest.raises(ConfigError, match=r"line 7: cluster.acquisition: Value error, a rank is "
                                          r"listed twice"):
        parse_config(PARTIAL.replace("[1, 2, 3, 4]\n  processing", "[1, 1, 3, 4]\n  processing"))


def test_several_acquisition_ranks_sharing_whole_frames_need_a_driver_that_can():
    """A FITS driver on two acquisition ranks would make every file on each rank (each
    numbering it as its share): refused with one line naming the driver and the key."""
    shared = PARTIAL.replace("modules: [2, 2]", "modules: [1, 1]")
    roles(shared)  # the sim shares them
    with pytest.raises(ConfigError, match=r"^c.yml line 7: cluster.acquisition: 4 acquisition "
                                          r"ranks sharing whole frames, but the fits driver "
                                          r"cannot share them"):
        roles(shared, driver=FITSDriver)
    roles(PARTIAL.replace("modules: [2, 2]", "modules: [1, 1]").replace(
        "acquisition: [1, 2, 3, 4]", "acquisition: [1]"), driver=FITSDriver)  # one: fine


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_more_modules_than_acquisition_ranks_stops_mpiexec_with_one_line(tmp_path):
    """The grid is known once the IOC is built: every rank says the same one line, no
    traceback, and mpiexec fails."""
    path = tmp_path / "one.yml"
    path.write_text(PARTIAL.replace("[1, 2, 3, 4]", "[1]"))
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "ndflow.cli", "run",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("ndflow:")]
    assert len(lines) == 2 and lines[0] == lines[1], out.stderr
    assert lines[0] == (f"ndflow: {path} line 7: cluster.acquisition: 1 acquisition rank, but "
                        "the driver has 4 modules (2x2, more modules than ranks): each "
                        "acquisition rank produces one module")
    assert "Traceback" not in out.stderr + out.stdout


def test_a_module_grid_that_does_not_divide_the_sensor_is_a_one_line_error():
    from ndflow.server import IOC

    config, lines = parse_config(PARTIAL.replace("modules: [2, 2]", "modules: [5, 2]"), "c.yml")
    with pytest.raises(ConfigError) as error:
        IOC(config, lines, transports=[])
    assert str(error.value).startswith("c.yml line 13: drivers[0].options.modules: ")
    assert "5 modules do not divide the sensor's 64 pixels across X" in str(error.value)
    assert "\n" not in str(error.value)


SHARED = PARTIAL.replace("acquisition: [1, 2, 3, 4]", "acquisition: [1, 2]").replace(
    "processing: [1, 2, 3, 4]", "processing: [3, 4]\n  module_ranks: [[3, 4], [3, 4]]\n"
    "  dispatch: credit\n  credits: 2").replace("modules: [2, 2]", "modules: [2, 1]")


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_acquisition_ranks_send_their_modules_to_shared_processing_ranks(tmp_path):
    """M acquisition + N processing: ranks 1 and 2 only acquire (the left and right halves),
    ranks 3 and 4 only process, each taking frames of both modules by credit; the frames cross
    MPI, each rank's file mixes the modules, and the master is still the whole frame."""
    ioc = ClusterIOC(SHARED, tmp_path, ranks=5)
    frames = 8
    try:
        ioc.wait_ready()
        p = ioc.prefix
        for name, value in [("DataType", UINT16), ("SimMode", LINEAR_RAMP), ("Gain", 1.0),
                            ("AcquireTime", 0.01), ("AcquirePeriod", 0.05), ("ArrayCounter", 0),
                            ("WaitForPlugins", 1), ("ImageMode", 1), ("NumImages", frames),
                            ("Reset", 1)]:
            put(p + "cam1:" + name, value)
        for key, value in [("FilePath", str(tmp_path) + "/"), ("FileName", "shared"),
                           ("FileTemplate", "%s%s.h5"), ("FileWriteMode", 2),
                           ("NumCapture", frames), ("AutoIncrement", 0)]:
            put(p + "HDF1:" + key, value)
        put(p + "HDF1:Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1, 20)
        put(p + "cam1:Acquire", 1)  # paced: a capture ended at 8 module frames would miss 4
        assert get(p + "cam1:ArrayCounter_RBV") == frames
        assert get(p + "R3:HDF1:ArrayCounter_RBV") + get(p + "R4:HDF1:ArrayCounter_RBV") == \
            2 * frames
        # where each module's frames went reached the control rank's ordering
        assert wait_for(lambda: get(p + "Cluster:FramesInOrder_RBV") == frames, 5)
        assert get(p + "Cluster:FramesDispatched_RBV") == 2 * frames
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 30), "capture did not end"
        with h5py.File(tmp_path / "shared.h5") as f:
            data = f["/entry/data/data"]
            assert data.shape == (frames, HEIGHT, WIDTH)
            assert not f[f"{ATTRS}/NDArrayStatus"][:].any()
            for row in range(frames):
                np.testing.assert_array_equal(data[row], frame(row + 1), err_msg=f"row {row}")
        for rank in (3, 4):
            with h5py.File(tmp_path / f"shared_r{rank}.h5") as f:
                modules = f[f"{ATTRS}/ModuleIndex"][:]
                np.testing.assert_array_equal(f[f"{ATTRS}/ModuleOffsetX"][:], 32 * modules)
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


def test_assembly_needs_every_module_on_the_same_ranks_in_the_same_order():
    roles(ASSEMBLED.replace("modules: [2, 1]", "modules: [2, 2]").replace(
        "acquisition: [1, 2]", "acquisition: [1, 2, 3, 4]").replace("[3]", "[5]"), size=6)
    with pytest.raises(ConfigError, match=r"line 9: cluster.assemble: every module's frames "
                                          r"must reach the same processing ranks"):
        roles(ASSEMBLED.replace("assemble: true", "assemble: true\n  dispatch: credit"),
              size=4)
    with pytest.raises(ConfigError, match=r"cluster.assemble: every module's"):
        roles(ASSEMBLED.replace("[3]", "[3, 4]").replace(
            "assemble: true", "assemble: true\n  module_ranks: [[3, 4], [4, 3]]"), size=5)


def test_which_processing_ranks_serve_which_module():
    """module_ranks' defaults: an acquisition rank that processes keeps its module; the others
    share the ranks that only process, round robin; a map overrides both."""
    def cluster(acquisition: str, processing: str, extra: str = ""):
        text = PARTIAL.replace("acquisition: [1, 2, 3, 4]", f"acquisition: {acquisition}")
        text = text.replace("processing: [1, 2, 3, 4]", f"processing: {processing}{extra}")
        return parse_config(text)[0].cluster

    c = cluster("[1, 2, 3, 4]", "[1, 2, 3, 4]")
    assert [c.targets(a, 5) for a in (1, 2, 3, 4)] == [[1], [2], [3], [4]]
    assert c.feeders(3, 5) == [3] and c.module_of(3) == 2
    c = cluster("[1, 2]", "[3, 4, 5, 6]")
    assert [c.targets(a, 7) for a in (1, 2)] == [[3, 5], [4, 6]]
    assert c.module_groups(7) == [[3, 5], [4, 6]]
    c = cluster("[1, 2, 3]", "[4]")
    assert [c.targets(a, 5) for a in (1, 2, 3)] == [[4], [4], [4]]
    assert c.feeders(4, 5) == [1, 2, 3]
    c = cluster("[1, 2]", "[3, 4]", "\n  module_ranks: [[4, 3], [3]]")
    assert [c.targets(a, 5) for a in (1, 2)] == [[4, 3], [3]]
    assert c.feeders(3, 5) == [1, 2] and c.feeders(4, 5) == [1]
    whole = cluster("[1]", "[1, 2]")
    assert not whole.partial and whole.module_of(1) is None and whole.targets(1, 3) == [1, 2]


def sim_frames(module: int | None, count: int, **values) -> list:
    """`count` frames of a 2x2-module sim (in-process, the driver's own code), whole or one
    module's."""
    import threading

    from ndflow.driver import FrameContext
    from ndflow.drivers.sim import SimDetector, SimOptions
    from ndflow.graph import PortGraph
    from ndflow.ndarray import Acquisition

    sim = SimDetector("SIM1", "cam1:", PortGraph(), options=SimOptions(
        max_size_x=WIDTH, max_size_y=HEIGHT, data_type="UInt16", modules=(2, 2)))
    sim.module = module
    params = {**sim.values, "AcquireTime": 0.0, **values}
    sim.prepare(params)
    acquisition = Acquisition(1, params)
    out = []
    for i in range(count):
        frame = sim.produce_frame(FrameContext(acquisition, i, threading.Event()))
        frame.stamp(i + 1)
        frame.acquisition = acquisition
        out.append(frame)
    return out


@pytest.mark.parametrize("values", [{}, {"ReverseX": 1, "BinX": 2, "ReverseY": 1}])
def test_modules_assembled_on_a_processing_rank_are_the_whole_sim_frame(values):
    """cluster.assemble: the tiles at their offsets, dims and transform of the whole frame; a
    frame that never came whole is missing, with the modules it lacked."""
    from ndflow.cluster.assembly import Assembler
    from ndflow.pool import ArrayPool

    whole = sim_frames(None, 3, **values)
    modules = [sim_frames(m, 3, **values) for m in range(4)]
    assembler = Assembler(4, ArrayPool(0), rank=3)
    done = []
    for i in range(3):
        for m in (2, 0, 3, 1) if i < 2 else (0, 1):  # frame 3 lacks modules 2 and 3
            result = assembler.add(modules[m][i])
            if result is not None:
                done.append(result)
    assert [f.unique_id for f in done] == [1, 2]
    for got, expected in zip(done, whole):
        np.testing.assert_array_equal(got.data, expected.data)
        assert got.dims == expected.dims
        np.testing.assert_array_equal(got.transform, expected.transform)
        assert "ModuleIndex" not in got.attributes
    [lost] = assembler.flush(1)
    assert lost.unique_id == 3 and not lost.valid
    assert lost.status == FrameStatus(MissingCause.TIMEOUT, "modules 2, 3 never reached rank 3")


ASSEMBLED = PARTIAL.replace("acquisition: [1, 2, 3, 4]", "acquisition: [1, 2]").replace(
    "processing: [1, 2, 3, 4]", "processing: [3]\n  assemble: true").replace(
    "modules: [2, 2]", "modules: [2, 1]")


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_a_processing_rank_assembles_the_modules_into_whole_frames(tmp_path):
    """cluster.assemble: rank 3 gets the left half from rank 1 and the right half from rank 2
    and its plugins see whole frames: its file holds the single-process frames."""
    ioc = ClusterIOC(ASSEMBLED, tmp_path, ranks=4)
    frames = 4
    try:
        ioc.wait_ready()
        p = ioc.prefix
        for name, value in [("DataType", UINT16), ("SimMode", LINEAR_RAMP), ("Gain", 1.0),
                            ("AcquireTime", 0.01), ("AcquirePeriod", 0.0), ("ArrayCounter", 0),
                            ("WaitForPlugins", 1), ("ImageMode", 1), ("NumImages", frames),
                            ("Reset", 1)]:
            put(p + "cam1:" + name, value)
        for key, value in [("FilePath", str(tmp_path) + "/"), ("FileName", "whole"),
                           ("FileTemplate", "%s%s.h5"), ("FileWriteMode", 2),
                           ("NumCapture", frames), ("AutoIncrement", 0)]:
            put(p + "HDF1:" + key, value)
        put(p + "HDF1:Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1, 20)
        put(p + "cam1:Acquire", 1)
        assert get(p + "HDF1:ArrayCounter_RBV") == frames  # whole frames
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 30), "capture did not end"
        for name in ("whole_r3.h5", "whole.h5"):
            with h5py.File(tmp_path / name) as f:
                data = f["/entry/data/data"]
                assert data.shape == (frames, HEIGHT, WIDTH), name
                for row in range(frames):
                    np.testing.assert_array_equal(data[row], frame(row + 1),
                                                  err_msg=f"{name} row {row}")
    finally:
        ioc.stop()
    assert "Traceback" not in ioc.log(), ioc.log()


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec (pip install ndflow[mpi])")
def test_ctrl_c_during_an_acquisition_ends_every_rank_cleanly(tmp_path):
    """SIGINT to mpiexec's process group (a Ctrl-C) while frames flow between five ranks: every
    rank finalizes MPI and exits 0, so hydra kills none of them. Messages still on their way
    when a rank stops are dropped with the IOC's own communicator; on COMM_WORLD they made
    MPI_Finalize fail and hydra SIGKILL the job (exit code 9) in 8 of 10 such stops."""
    ioc = ClusterIOC(SHARED, tmp_path, ranks=5)
    try:
        ioc.wait_ready()
        p = ioc.prefix
        for name, value in [("ImageMode", 2), ("AcquireTime", 0.001), ("AcquirePeriod", 0.005)]:
            put(p + "cam1:" + name, value)
        put(p + "cam1:Acquire", 1, wait=False)
        assert wait_for(lambda: get(p + "Cluster:FramesDispatched_RBV") > 20, 10)
        os.killpg(ioc.proc.pid, signal.SIGINT)
        returncode = ioc.proc.wait(timeout=20)
    finally:
        ioc.stop()
    log = ioc.log()
    assert returncode == 0, log[-3000:]
    assert "BAD TERMINATION" not in log and "MPI_Finalize failed" not in log, log[-3000:]
    assert "Traceback" not in log, log
