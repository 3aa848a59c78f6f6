"""The engine, seen by a CA client: frozen parameters, acquisitions decoupled from processing,
AcquireBusy, deferred processing, and the effective pipeline set in the HDF5 file.

The IOC loads two test plugins from tests/engine_plugins.py (a config names them
`engine_plugins:<Class>`): TwiceReader reads its Level parameter twice per frame with a pause
between, Slow takes Seconds per frame. Files go to a tmp data root and are read back with h5py.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import epics
import h5py
import numpy as np
import pytest

from conftest import REPO, running_ioc
from test_acquisition import get, put, wait_for

NX, NY = 32, 24


def config(root: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt8}}}}
        plugins:
          - {{type: "engine_plugins:TwiceReader", port: TWICE1, prefix: "Twice1:", input: SIM1,
             enabled: true, queue_size: 200}}
          - {{type: "engine_plugins:Slow", port: SLOW1, prefix: "Slow1:", input: SIM1,
             enabled: false, queue_size: 200}}
          - {{type: roi, port: ROI1, prefix: "ROI1:", input: SIM1, enabled: false,
             queue_size: 100}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: TWICE1, enabled: true,
             queue_size: 200}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    root = folder / "data"
    root.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(REPO / "tests"))  # where engine_plugins lives
    try:
        with running_ioc(config(root), folder) as ioc:
            ioc.root = root
            yield ioc
    finally:
        mp.undo()


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in (("ImageMode", "Multiple"), ("AcquireTime", 0.0), ("AcquirePeriod", 0.0),
                        ("WaitForPlugins", "No"), ("DeferredProcessing", "Off"),
                        ("ArrayCallbacks", "Enable")):
        put(p + "cam1:" + name, value)
    for plugin in ("Twice1:", "Slow1:", "ROI1:", "HDF1:"):
        put(p + plugin + "EnableCallbacks", "Disable")
    assert wait_for(lambda: get(p + "cam1:ProcessingPending_RBV") == 0, 20)
    return p


def stream(p: str, ioc, name: str, frames: int) -> Path:
    put(p + "HDF1:EnableCallbacks", "Enable")
    for field, value in (("FilePath", str(ioc.root)), ("FileName", name),
                         ("FileTemplate", "%s%s_%3.3d.h5"), ("FileWriteMode", "Stream"),
                         ("NumCapture", frames), ("AutoIncrement", "Yes")):
        put(p + "HDF1:" + field, value)
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1)
    return ioc.root


def written(p: str) -> Path:
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, 30), "capture did not end"
    return Path(get(p + "HDF1:FullFileName_RBV", as_string=True))


# --- frozen parameters --------------------------------------------------------------------------

def test_a_put_applies_from_exactly_one_frame_and_is_recorded_in_the_file(ioc, p):
    """Level changes 25 times while frames flow; each frame read it twice, 2 ms apart."""
    frames = 300
    put(p + "Twice1:EnableCallbacks", "Enable")
    put(p + "Twice1:Level", 0.0)
    put(p + "Twice1:Pause", 0.002)
    stream(p, ioc, "frozen", frames)
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:AcquirePeriod", 0.004)
    put(p + "cam1:Acquire", 1, wait=False)
    for level in range(1, 26):
        time.sleep(0.03)
        put(p + "Twice1:Level", float(level))
    path = written(p)
    put(p + "cam1:Acquire", 0)
    with h5py.File(path) as f:
        attrs = f["entry/instrument/NDAttributes"]
        first, second = attrs["LevelFirst"][:], attrs["LevelSecond"][:]
        ids = attrs["NDArrayUniqueId"][:]
        record = f["entry/ndflow/acquisitions"]
        (acq_id,) = list(record)
        pipeline = json.loads(record[acq_id].attrs["pipeline"])
        driver = json.loads(record[acq_id].attrs["driver"])
    assert len(first) == frames
    np.testing.assert_array_equal(first, second)  # never a torn frame
    assert np.all(np.diff(first) >= 0)  # a change never reverts: it applies from one frame on
    assert len(np.unique(first)) >= 10  # and the changes did reach frames
    # The file records which Level TWICE1 used from which frame, and the driver's frozen set.
    changes = {c["from_unique_id"]: c["params"]["Level"] for c in pipeline["TWICE1"]
               if "Level" in c["params"]}
    for uid, level in zip(ids, first):
        applied = max(u for u in changes if u <= uid)
        assert changes[applied] == level, (uid, level, applied, changes[applied])
    assert driver["AcquirePeriod"] == pytest.approx(0.004) and driver["ImageMode"] == 2
    effective = json.loads(get(p + "Twice1:EffectiveParams_RBV", as_string=True))
    assert effective["params"]["Level"] == 25.0


# --- acquisition decoupled from processing ------------------------------------------------------

def test_next_acquisitions_start_while_the_first_is_still_processed(ioc, p):
    put(p + "Slow1:EnableCallbacks", "Enable")
    put(p + "Slow1:Seconds", 0.05)
    put(p + "HDF1:NDArrayPort", "SLOW1")
    try:
        # As in ADCore, a stream file takes its layout (and attributes) from the last array
        # the writer received: give it one from SLOW1 first.
        put(p + "HDF1:EnableCallbacks", "Enable")
        put(p + "cam1:NumImages", 1)
        counter = get(p + "HDF1:ArrayCounter_RBV")
        put(p + "cam1:Acquire", 1)
        assert wait_for(lambda: get(p + "HDF1:ArrayCounter_RBV") == counter + 1)
        stream(p, ioc, "decoupled", 15)
        put(p + "cam1:NumImages", 5)
        states = []
        monitor = epics.PV(p + "cam1:ProcessingState_RBV")
        monitor.add_callback(lambda value, **_: states.append(value))
        assert monitor.wait_for_connection(5) and wait_for(lambda: states, 5)
        ids = []
        started = time.monotonic()
        for _ in range(3):
            put(p + "cam1:Acquire", 1)  # completes when the detector is done
            ids.append(get(p + "cam1:AcquisitionId_RBV"))
            assert get(p + "cam1:AcquireBusy") == 0  # WaitForPlugins=No: done at acquisition end
        acquired_in = time.monotonic() - started
        # 15 frames x 50 ms are still in SLOW1 when the third acquisition has ended
        assert acquired_in < 0.5, acquired_in
        assert get(p + "Slow1:QueueFree") < 200
        assert get(p + "cam1:ProcessingPending_RBV") >= 1
        assert get(p + "cam1:ProcessingState_RBV", as_string=True) == "Acquisition done"
        path = written(p)
        assert wait_for(lambda: get(p + "cam1:ProcessingState_RBV", as_string=True)
                        == "Processing done", 10)
        assert wait_for(lambda: get(p + "cam1:ProcessingPending_RBV") == 0)
        running, acquired, processed = 0, 1, 2  # Running, Acquisition done, Processing done
        assert wait_for(lambda: states[-1:] == [processed], 5), states
        monitor.clear_callbacks()
        # each acquisition: running -> acquisition done; the latest -> processing done
        assert states[-7:] == [running, acquired] * 3 + [processed], states
    finally:
        put(p + "HDF1:NDArrayPort", "TWICE1")
    with h5py.File(path) as f:
        tags = f["entry/instrument/NDAttributes/AcquisitionId"][:]
        record = f["entry/ndflow/acquisitions"]
        assert sorted(int(k) for k in record) == ids
        assert [record[str(i)].attrs["frames"] for i in ids] == [5, 5, 5]
    assert list(tags) == [ids[0]] * 5 + [ids[1]] * 5 + [ids[2]] * 5


def test_wait_for_plugins_keeps_acquire_busy_until_processed(ioc, p):
    put(p + "Slow1:EnableCallbacks", "Enable")
    put(p + "Slow1:Seconds", 0.05)
    put(p + "cam1:NumImages", 8)
    put(p + "cam1:WaitForPlugins", "Yes")
    busy = []
    monitor = epics.PV(p + "cam1:AcquireBusy")
    monitor.add_callback(lambda value, **_: busy.append(value))
    time.sleep(0.2)
    started = time.monotonic()
    put(p + "cam1:Acquire", 1)
    took = time.monotonic() - started
    assert took >= 8 * 0.05 * 0.9, took  # completion waited for SLOW1's 8 frames
    assert get(p + "Slow1:ArrayCounter_RBV") >= 8
    assert get(p + "cam1:AcquireBusy") == 0
    assert get(p + "cam1:ProcessingState_RBV", as_string=True) == "Processing done"
    assert wait_for(lambda: busy[-2:] == [1, 0], 5), busy
    monitor.clear_callbacks()

    # A put-callback on AcquireBusy itself waits too, as on ADCore's busy record.
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(p + "cam1:AcquireBusy") == 1, 5)
    started = time.monotonic()
    put(p + "cam1:AcquireBusy", 1)
    assert time.monotonic() - started > 0.1
    assert get(p + "cam1:ProcessingState_RBV", as_string=True) == "Processing done"


def test_deferred_processing_sends_50_frames_after_the_acquisition(ioc, p):
    put(p + "ROI1:EnableCallbacks", "Enable")
    before = get(p + "ROI1:ArrayCounter_RBV")
    put(p + "cam1:NumImages", 50)
    put(p + "cam1:AcquirePeriod", 0.005)
    put(p + "cam1:DeferredProcessing", "Until released")
    put(p + "cam1:Acquire", 1)  # WaitForPlugins=No: the acquisition is over, nothing processed
    assert get(p + "cam1:DeferredFrames_RBV") == 50
    assert get(p + "ROI1:ArrayCounter_RBV") == before
    assert get(p + "cam1:ProcessingState_RBV", as_string=True) == "Acquisition done"
    put(p + "cam1:ReleaseFrames", 1)
    assert wait_for(lambda: get(p + "ROI1:ArrayCounter_RBV") == before + 50, 10)
    assert wait_for(lambda: get(p + "cam1:DeferredFrames_RBV") == 0)
    assert wait_for(lambda: get(p + "cam1:ProcessingState_RBV", as_string=True)
                    == "Processing done")

    # Until done, with WaitForPlugins: the put completes once the held frames are processed.
    put(p + "cam1:DeferredProcessing", "Until done")
    put(p + "cam1:WaitForPlugins", "Yes")
    put(p + "cam1:Acquire", 1)
    assert get(p + "ROI1:ArrayCounter_RBV") == before + 100
    assert get(p + "ROI1:DroppedArrays") == 0
    assert get(p + "cam1:DeferredFrames_RBV") == 0


# --- every frame accounted for ------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["Drop", "Block"])
def test_every_frame_has_a_row_dropped_at_the_writers_own_queue_or_not(ioc, p, policy):
    """An unpaced driver outruns HDF1 (queue of 2, zlib 9). Drop: frames lost at HDF1's own
    queue still get their row, with the cause. Block: the driver waits, every row is data."""
    frames = 300
    put(p + "HDF1:NDArrayPort", "SIM1")
    try:
        put(p + "HDF1:QueueSize", 2)
        put(p + "HDF1:LossPolicy", policy)
        put(p + "HDF1:Compression", "zlib")
        put(p + "HDF1:ZLevel", 9)
        put(p + "HDF1:EnableCallbacks", "Enable")
        put(p + "cam1:NumImages", 1)
        put(p + "cam1:Acquire", 1)  # one frame from SIM1 gives the file its layout
        assert wait_for(lambda: get(p + "HDF1:QueueFree") == 2)
        dropped_before = get(p + "HDF1:DroppedArrays")
        received_before = get(p + "HDF1:FramesReceived_RBV")
        stream(p, ioc, f"accounted_{policy}", frames)
        put(p + "cam1:NumImages", frames)
        first = get(p + "cam1:ArrayCounter_RBV") + 1
        put(p + "cam1:Acquire", 1)
        path = written(p)
        dropped = get(p + "HDF1:DroppedArrays") - dropped_before
        received = get(p + "HDF1:FramesReceived_RBV") - received_before
    finally:
        put(p + "HDF1:Compression", "None")
        put(p + "HDF1:QueueSize", 200)
        put(p + "HDF1:LossPolicy", "Drop")
        put(p + "HDF1:NDArrayPort", "TWICE1")
    with h5py.File(path) as f:
        attrs = f["entry/instrument/NDAttributes"]
        ids, status = attrs["NDArrayUniqueId"][:], attrs["NDArrayStatus"][:]
        missing = f["entry/ndflow/missing"][:]
        meaning = attrs["NDArrayStatus"].attrs["meaning"]
    assert received == frames
    assert get(p + "cam1:FramesLost_RBV") == dropped  # what a scan checks
    assert list(ids) == list(range(first, first + frames))  # a row for every frame, in order
    lost = ids[status != 0]
    assert sorted(missing["unique_id"]) == sorted(lost)
    assert all(c == b"overrun/dropped" for c in missing["cause"])
    assert len(lost) == dropped
    if policy == "Drop":
        assert dropped > 0, "the writer kept up: the test proves nothing"
        code = [int(part.split()[0]) for part in meaning.split("; ")
                if "overrun/dropped" in part]
        assert set(status[status != 0]) == set(code)
    else:
        assert dropped == 0 and not len(lost)
