"""Table1: Stats values, a profile and an algorithm's outputs saved per frame beside HDF1's
images in one file, a lost frame as a row with its cause, an EPICS_PV attribute and a logged
PV, the effective parameters; and bad input on Table1's PVs.

A real IOC (sim -> Stats -> Python algorithm -> Table1, and sim -> HDF1), driven with pyepics;
the file is read back with h5py.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import epics
import h5py
import numpy as np
import pytest

import ndflow
from conftest import running_ioc
from test_acquisition import get, put, ramp, wait_for

NX, NY = 64, 48
FRAMES = 20
FAIL_ON = 7  # the algorithm fails this frame: a missing frame, "processing error"

ALGORITHM = f'''
import numpy as np
from ndflow.algorithm import Algorithm, Input, Output, Result, Status


class TableProbe(Algorithm):
    fail_on = Input({FAIL_ON})
    first_delay = Input(0.0, low=0.0, high=3.0, units="s")
    mean = Output(float)
    peak = Output(float)
    column_sums = Output(float, length={NX})

    def process(self, image, params, attributes, metadata):
        if metadata.unique_id == 1 and params.first_delay:
            import time
            time.sleep(params.first_delay)
        if metadata.unique_id == params.fail_on:
            return Result(status=Status.ERROR, message="probe refuses this frame")
        f = image.astype(np.float64)
        return {{"mean": float(f.mean()), "peak": float(f.max()),
                "column_sums": f.sum(axis=0)}}
'''


def config(root: Path, algorithms: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        algorithm_folders: ["{algorithms}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SIM1}}
          - {{type: python, port: PY1, prefix: "Py1:", input: STATS1,
             options: {{file: probe.py}}}}
          - {{type: table, port: TABLE1, prefix: "Table1:", input: PY1}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    root = folder / "data"
    root.mkdir()
    algorithms = folder / "algorithms"
    algorithms.mkdir()
    (algorithms / "probe.py").write_text(ALGORITHM)
    with running_ioc(config(root, algorithms), folder, ready="Py1:FramesOK_RBV") as ioc:
        ioc.root = root
        yield ioc


def temperature_xml(prefix: str) -> str:
    pv = f"{prefix}cam1:Temperature_RBV"
    return ('<Attributes>'
            f'<Attribute name="Temp" type="EPICS_PV" source="{pv}" datatype="DOUBLE"/>'
            f'<Attribute name="TempPVA" type="EPICS_PV" source="pva://{pv}" '
            'datatype="DOUBLE"/></Attributes>')


def arm(p: str, root: Path, name: str) -> None:
    """Camera, Stats, HDF1 and Table1 ready for FRAMES frames into one file `name`."""
    put(p + "cam1:Acquire", 0)
    for key, value in [("ImageMode", "Multiple"), ("NumImages", FRAMES), ("WaitForPlugins", "Yes"),
                       ("AcquireTime", 0.001), ("AcquirePeriod", 0.05), ("Gain", 1.0),
                       ("SimMode", "LinearRamp"), ("Reset", 1), ("ArrayCounter", 0)]:
        put(p + "cam1:" + key, value)
    for key in ("ComputeStatistics", "ComputeProfiles", "ComputeHistogram"):
        put(p + "Stats1:" + key, "Yes")
    put(p + "Stats1:HistSize", 16)
    put(p + "Stats1:HistMax", 200)
    for plugin in ("HDF1:", "Table1:"):
        put(p + plugin + "Capture", 0)
        for key, value in [("FileWriteMode", "Stream"), ("NumCapture", FRAMES),
                           ("AutoIncrement", "No"), ("FileNumber", 1), ("LazyOpen", "Yes"),
                           ("FilePath", str(root)), ("FileName", name),
                           ("FileTemplate", "%s%s_%3.3d.h5")]:
            put(p + plugin + key, value)


def test_table_beside_images_in_one_file(ioc):
    p, root = ioc.prefix, ioc.root
    put(p + "cam1:Temperature", 20.0)
    put(p + "cam1:NDAttributesFile", temperature_xml(p))
    assert get(p + "cam1:NDAttributesStatus") == 0, get(p + "cam1:StatusMessage_RBV",
                                                         as_string=True)
    arm(p, root, "shared")
    put(p + "Table1:LogPVs", f"{p}cam1:Temperature_RBV")
    put(p + "Table1:LogPeriod", 0.0)
    # the monitor connects (a frame never waits for it)
    assert wait_for(lambda: get(p + "Table1:LogPVsConnected_RBV") == 1, timeout=20)
    for plugin in ("HDF1:", "Table1:"):
        put(p + plugin + "Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1 and get(p + "Table1:Capture_RBV"))

    def warm_up() -> None:  # the temperature changes while the frames are taken
        for t in (21.0, 22.0, 23.0):
            time.sleep(0.25)
            epics.caput(p + "cam1:Temperature", t, wait=True)
    changer = threading.Thread(target=warm_up)
    changer.start()
    put(p + "cam1:Acquire", 1, timeout=30)
    changer.join()
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0 and
                    get(p + "Table1:Capture_RBV") == 0, timeout=20), \
        get(p + "Table1:WriteMessage", as_string=True)
    assert get(p + "Table1:WriteStatus") == 0, get(p + "Table1:WriteMessage", as_string=True)
    path = root / "shared_001.h5"
    assert get(p + "Table1:FullFileName_RBV", as_string=True) == str(path)
    assert get(p + "HDF1:FullFileName_RBV", as_string=True) == str(path)

    with h5py.File(path, "r") as f:
        # HDF1's images, all FRAMES, equal to the formula
        images = f["/entry/data/data"][()]
        assert images.shape == (FRAMES, NY, NX)
        for n in range(FRAMES):
            np.testing.assert_array_equal(images[n], ramp(NX, NY, frame=n + 1))
        t = f["/entry/table"]
        ids = t["uniqueId"][()]
        assert ids.tolist() == list(range(1, FRAMES + 1))  # one row per uniqueId, none left out
        status, cause = t["status"][()], t["cause"].asstr()[()]
        lost = FAIL_ON - 1
        assert status[lost] != 0 and cause[lost] == "processing error"
        assert "probe refuses" in t["message"].asstr()[lost]
        assert (np.delete(status, lost) == 0).all()
        v, arrays = t["values"], t["arrays"]
        for n in range(FRAMES):
            frame = ramp(NX, NY, frame=n + 1)
            if n == lost:  # the lost frame's row: no values, its cause says why
                assert np.isnan(v["MeanValue"][n]) and np.isnan(v["mean"][n])
                assert t["lengths/ProfileAverageX"][n] == 0
                continue
            # Stats, against numpy
            assert v["MeanValue"][n] == pytest.approx(frame.mean(), rel=1e-12)
            assert v["Total"][n] == pytest.approx(frame.sum(), rel=1e-12)
            assert v["MinValue"][n] == frame.min() and v["MaxValue"][n] == frame.max()
            assert v["SigmaValue"][n] == pytest.approx(frame.std(), rel=1e-9)
            # a profile (1-D): the average of each column
            np.testing.assert_allclose(arrays["ProfileAverageX"][n], frame.mean(axis=0),
                                       rtol=1e-12)
            assert t["lengths/ProfileAverageX"][n] == NX
            assert t["lengths/Histogram"][n] == 16
            assert arrays["Histogram"][n].sum() == NX * NY
            # the algorithm's outputs, scalar and array
            assert v["mean"][n] == pytest.approx(frame.mean(), rel=1e-12)
            assert v["peak"][n] == frame.max()
            np.testing.assert_allclose(arrays["column_sums"][n], frame.sum(axis=0))
        # the EPICS_PV attribute: a temperature each frame, over CA and over PVA, rising
        temps = np.delete(v["Temp"][()], lost)
        assert set(temps) <= {20.0, 21.0, 22.0, 23.0} and (np.diff(temps) >= 0).all(), temps
        assert temps[-1] > temps[0], temps
        np.testing.assert_array_equal(np.delete(v["TempPVA"][()], lost) >= 20.0, True)
        # the asynchronous log: every change, timestamped
        log = t["logs"][f"{p}cam1:Temperature_RBV"]
        assert log.attrs["pv"] == f"{p}cam1:Temperature_RBV"
        logged = log["value"][()].tolist()
        assert [20.0, 21.0, 22.0, 23.0] == sorted(set(logged)) and logged == sorted(logged)
        times = log["time"][()]
        assert (np.diff(times) >= 0).all() and abs(times[-1] - time.time()) < 60
        # static metadata, once per file
        assert t.attrs["ndflow_version"] == ndflow.__version__
        assert "TABLE1" in json.loads(t.attrs["config"])["plugins"][2].values()
        assert json.loads(t.attrs["detector"])["frame_shape"] == [NY, NX]
        # per acquisition: the effective parameter sets and times
        (acq_id, record), = t["acquisitions"].items()
        driver = json.loads(record.attrs["driver"])
        assert driver["NumImages"] == FRAMES and driver["AcquirePeriod"] == 0.05
        assert "STATS1" in json.loads(record.attrs["pipeline"])
        assert record.attrs["frames"] == FRAMES
        started, stopped = record.attrs["start_time"], record.attrs["stop_time"]
        # Acquire=1 .. the last frame: 20 frames 0.05 s apart
        assert (FRAMES - 1) * 0.05 * 0.9 <= stopped - started < 60
        assert started <= record.attrs["first_frame_time"] <= record.attrs["last_frame_time"]
        assert acq_id in f["/entry/ndflow/acquisitions"]  # HDF1's record of the same
    put(p + "cam1:NDAttributesFile", "")
    put(p + "Table1:LogPVs", "")


def test_a_late_table_joins_the_file_the_images_closed(ioc):
    """The table writer is behind a slow algorithm: HDF1 has written its frames and closed the
    file before Table1 gets its first row. Table1 adds its group to that file (same
    acquisition) instead of truncating it."""
    p, root = ioc.prefix, ioc.root
    arm(p, root, "late")
    put(p + "Py1:QueueSize", FRAMES + 5)
    put(p + "Py1:FirstDelay", 3.0)
    try:
        for plugin in ("HDF1:", "Table1:"):
            put(p + plugin + "Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1 and
                        get(p + "Table1:Capture_RBV"))
        epics.caput(p + "cam1:Acquire", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, timeout=20)
        assert get(p + "Table1:NumCaptured_RBV") == 0  # the images are closed, no row yet
        assert wait_for(lambda: get(p + "Table1:Capture_RBV") == 0, timeout=30)
        assert wait_for(lambda: get(p + "cam1:AcquireBusy") == 0, timeout=20)
    finally:
        put(p + "Py1:FirstDelay", 0.0)
    assert get(p + "Table1:WriteStatus") == 0, get(p + "Table1:WriteMessage", as_string=True)
    with h5py.File(root / "late_001.h5", "r") as f:
        images = f["/entry/data/data"][()]
        assert images.shape == (FRAMES, NY, NX)
        np.testing.assert_array_equal(images[-1], ramp(NX, NY, frame=FRAMES))
        assert f["/entry/table/uniqueId"][()].tolist() == list(range(1, FRAMES + 1))


def test_separate_files_when_names_differ(ioc):
    p, root = ioc.prefix, ioc.root
    arm(p, root, "images")
    put(p + "Table1:FileName", "results")
    # the temperature sampled every 0.2 s over pvAccess (p4p's client inside the IOC)
    put(p + "Table1:LogPVs", f"pva://{p}cam1:Temperature_RBV")
    put(p + "Table1:LogPeriod", 0.2)
    assert wait_for(lambda: get(p + "Table1:LogPVsConnected_RBV") == 1, timeout=20)
    put(p + "cam1:Temperature", 24.5)
    time.sleep(1.0)  # the monitor's update of 24.5 arrives
    for plugin in ("HDF1:", "Table1:"):
        put(p + plugin + "Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1 and get(p + "Table1:Capture_RBV"))
    put(p + "cam1:Acquire", 1, timeout=30)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0 and
                    get(p + "Table1:Capture_RBV") == 0, timeout=20)
    with h5py.File(root / "images_001.h5", "r") as f:
        assert "table" not in f["entry"] and f["/entry/data/data"].shape[0] == FRAMES
    with h5py.File(root / "results_001.h5", "r") as f:
        assert "data" not in f["entry"] and f["/entry/table/uniqueId"].shape == (FRAMES,)
        log = f["/entry/table/logs"][f"pva:__{p}cam1:Temperature_RBV"]
        times, values = log["time"][()], log["value"][()]
        assert (values == 24.5).all() and len(values) >= 4  # 20 frames at 0.05 s: >= 1 s
        assert np.diff(times)[1:].min() >= 0.15  # the first is the value at the open
    # a misspelt name never connects, and the readback says so
    put(p + "Table1:LogPVs", f"{p}cam1:Temperature_RBV {p}cam1:NoSuchPV")
    time.sleep(2.5)
    assert get(p + "Table1:LogPVsConnected_RBV") == 1
    put(p + "Table1:LogPVs", "")
    assert wait_for(lambda: get(p + "Table1:LogPVsConnected_RBV") == 0)
    put(p + "Table1:LogPeriod", 0.0)


@pytest.mark.parametrize("pv, value", [
    ("LogPeriod", float("nan")), ("LogPeriod", float("inf")), ("GroupName", "x" * 10_000), ("GroupName", "../up"),
    ("GroupName", "data"), ("GroupName", ""), ("LogPVs", "A" * 10_000),
    ("LogPVs", "bad name;with space\x01"), ("LogPVs", " ".join(f"PV{i}" for i in range(40))),
    ("NumFramesFlush", -5)])
def test_bad_values_are_refused(ioc, pv, value):
    p = ioc.prefix
    before = get(p + "Table1:" + pv, as_string=True)
    assert epics.caput(p + "Table1:" + pv, value, wait=True, timeout=5) in (1, -1, None)
    assert get(p + "Table1:" + pv, as_string=True) == before  # refused: unchanged
    assert get(p + "Table1:PortName_RBV", as_string=True) == "TABLE1"  # still serving


@pytest.mark.parametrize("value, held", [(-1.0, 0.0), (1e300, 3600.0)])
def test_log_period_is_held_in_its_range(ioc, value, held):
    """As a record's DRVL/DRVH: an out-of-range LogPeriod is clamped, not taken."""
    p = ioc.prefix
    put(p + "Table1:LogPeriod", value)
    assert get(p + "Table1:LogPeriod") == held
    put(p + "Table1:LogPeriod", 0.0)


def test_paths_outside_the_data_root_are_refused(ioc):
    p, root = ioc.prefix, ioc.root
    arm(p, root, "../../escape")
    put(p + "Table1:FileName", "../../escape")
    put(p + "Table1:Capture", 1, wait=False)
    put(p + "cam1:NumImages", 2)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert wait_for(lambda: get(p + "Table1:WriteStatus") == 1)
    assert "outside" in get(p + "Table1:WriteMessage", as_string=True)
    assert not list(root.parent.parent.glob("escape*")) and not list(root.parent.glob("escape*"))
    assert epics.caput(p + "Table1:FilePath", "/etc/" + "a" * 10_000, wait=True) in (1, -1, None)
    assert get(p + "Table1:FilePathExists_RBV") == 0
    put(p + "Table1:Capture", 0)
    put(p + "HDF1:Capture", 0)
