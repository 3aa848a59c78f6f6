"""The Python algorithm plugin over Channel Access: example algorithms, live reload, faults,
SIGKILL clean-up, another virtual environment and worker ordering (issue 3 acceptance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import epics
import numpy as np
import psutil
import pytest
from caproto.sync import client as ca_sync

from conftest import REPO, IOCProcess, unique_prefix
from test_acquisition import get, put, wait_for

EXAMPLES = REPO / "examples" / "algorithms"
TEST_ALGORITHMS = REPO / "tests" / "algorithms"
NX, NY = 160, 120

LIVE_V1 = '''
from ndflow.algorithm import Algorithm, Input, Output

class Live(Algorithm):
    gain = Input(2.0)
    scaled = Output(float)

    def process(self, image, params, attributes, metadata):
        return {"scaled": float(image.mean()) * params.gain}
'''

LIVE_V2 = '''
from ndflow.algorithm import Algorithm, Input, Output

class Live(Algorithm):
    gain = Input(2.0)
    offset = Input(0.0)
    scaled = Output(float)

    def process(self, image, params, attributes, metadata):
        return {"scaled": float(image.mean()) * params.gain + params.offset}
'''


def python_plugin(port: str, prefix: str, file: str, upstream: str = "SIM1", **options) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in {"file": file, **options}.items())
    return (f"  - {{type: python, port: {port}, prefix: '{prefix}', input: {upstream}, "
            f"options: {{{opts}}}}}\n")


@pytest.fixture(scope="module")
def live_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("live")
    (folder / "live.py").write_text(LIVE_V1)
    return folder


@pytest.fixture(scope="module")
def ioc(tmp_path_factory, live_folder):
    """One IOC with an instance of every example and test algorithm."""
    config = (
        f"algorithm_folders: ['{EXAMPLES}', '{TEST_ALGORITHMS}', '{live_folder}']\n"
        f"screens_dir: '{live_folder / 'screens'}'\n"
        "drivers:\n"
        f"  - {{type: sim, port: SIM1, prefix: 'cam1:', options: {{max_size_x: {NX}, "
        f"max_size_y: {NY}, data_type: UInt16}}}}\n"
        "plugins:\n"
        "  - {type: stdarrays, port: Image1, prefix: 'image1:', input: SIM1, "
        "options: {data_type: UInt16}}\n"
        + python_plugin("PY1", "Py1:", "centroid.py")
        + python_plugin("PY2", "Py2:", "background.py")
        + "  - {type: stdarrays, port: Image2, prefix: 'image2:', input: PY2, "
          "options: {data_type: Float32}}\n"
        + python_plugin("PY3", "Py3:", "gaussfit.py")
        + python_plugin("PY4", "Py4:", "focus.py")
        # memory_mb is resident memory, which grows as fast as pages are written (about 100
        # MB/s on a loaded VM): the limit must be reached well before the timeout
        + python_plugin("FAULT", "Fault:", "faulty.py", timeout_s=4.0, memory_mb=100)
        + python_plugin("LIVE", "Live:", "live.py")
        + python_plugin("ORDER", "Order:", "slow_mean.py", workers=2)
        + python_plugin("REC", "Rec:", "recorder.py", upstream="ORDER")
        + python_plugin("STAMP", "Stamp:", "stamp.py")
        + python_plugin("CHECK", "Check:", "check_stamp.py", upstream="STAMP")
    )
    proc = IOCProcess(config, tmp_path_factory.mktemp("ioc"), unique_prefix())
    proc.wait_ready(timeout=60)
    p = proc.prefix
    for plugin in ("image1:", "Py1:", "Py2:", "image2:", "Py3:", "Py4:", "Fault:", "Live:",
                   "Order:", "Rec:", "Stamp:", "Check:"):
        put(p + plugin + "EnableCallbacks", "Enable")
    put(p + "cam1:WaitForPlugins", "Yes")
    put(p + "cam1:AcquireTime", 0.001)
    put(p + "cam1:AcquirePeriod", 0.0)
    yield proc
    proc.stop()


def acquire(p: str, frames: int = 1) -> None:
    put(p + "cam1:ImageMode", "Single" if frames == 1 else "Multiple")
    put(p + "cam1:NumImages", frames)
    put(p + "cam1:Acquire", 1, timeout=30)


def frame(p: str) -> np.ndarray:
    data = get(p + "image1:ArrayData", count=NX * NY)
    return np.asarray(data, dtype=np.uint16).reshape(NY, NX)


def test_centroid_outputs_match_numpy(ioc):
    p = ioc.prefix
    put(p + "Py1:Threshold", 3000)
    assert get(p + "Py1:Threshold_RBV") == 3000
    put(p + "cam1:GainX", 20)
    put(p + "cam1:GainY", 30)
    acquire(p)
    image = frame(p).astype(float)
    weights = np.where(image > 3000, image, 0.0)
    total = weights.sum()
    cx = (weights.sum(axis=0) * np.arange(NX)).sum() / total
    cy = (weights.sum(axis=1) * np.arange(NY)).sum() / total
    assert get(p + "Py1:Count_RBV") == int((image > 3000).sum())
    assert get(p + "Py1:Total_RBV") == pytest.approx(total)
    assert get(p + "Py1:CentroidX_RBV") == pytest.approx(cx)
    assert get(p + "Py1:CentroidY_RBV") == pytest.approx(cy)
    assert get(p + "Py1:ChildState_RBV", as_string=True) == "Running"
    assert get(p + "Py1:PluginType_RBV") == "NDPluginPython"
    # alarm limits declared in the file reach the PV
    assert get(p + "Py1:SigmaX_RBV.HIGH") == 200.0
    assert get(p + "Py1:SigmaX_RBV.HIHI") == 400.0


def test_background_subtraction_output_image_goes_downstream(ioc):
    p = ioc.prefix
    put(p + "cam1:SimMode", "LinearRamp")
    put(p + "Py2:Offset", 0.5)
    put(p + "Py2:CaptureFrames", 1)
    acquire(p)
    background = frame(p).astype(np.float64)
    assert get(p + "Py2:BackgroundFrames_RBV") == 1
    acquire(p)
    current = frame(p).astype(np.float64)
    expected = np.maximum(current.astype(np.float32) - background + 0.5, 0.0).astype(np.float32)
    out = np.asarray(get(p + "image2:ArrayData", count=NX * NY), dtype=np.float32)
    assert get(p + "image2:DataType_RBV", as_string=True) == "Float32"
    np.testing.assert_array_equal(out.reshape(NY, NX), expected)
    assert get(p + "Py2:ResidualMean_RBV") == pytest.approx(expected.mean(dtype=np.float64))
    assert get(p + "image2:UniqueId_RBV") == get(p + "image1:UniqueId_RBV")


def peaks(p: str, width: int, num: tuple[int, int] = (1, 1), start: tuple[int, int] = (80, 60),
          step: int = 48, height: int = 25) -> None:
    for name, value in [("SimMode", "Peaks"), ("PeakNumX", num[0]), ("PeakNumY", num[1]),
                        ("PeakStartX", start[0]), ("PeakStartY", start[1]),
                        ("PeakStepX", step), ("PeakStepY", step), ("PeakWidthX", width),
                        ("PeakWidthY", width), ("PeakVariation", 0), ("GainX", height),
                        ("GainY", height), ("Gain", 1)]:
        put(p + "cam1:" + name, value)


def test_gaussian_fit_finds_the_simulated_peak(ioc):
    p = ioc.prefix
    peaks(p, width=7, start=(70, 55))
    put(p + "cam1:PeakWidthY", 5)
    acquire(p)
    image = frame(p).astype(np.float64)
    assert get(p + "Py3:FitOk_RBV", as_string=True) == "Yes"
    assert get(p + "Py3:CenterX_RBV") == pytest.approx(70, abs=0.2)
    assert get(p + "Py3:CenterY_RBV") == pytest.approx(55, abs=0.2)
    assert get(p + "Py3:SigmaX_RBV") == pytest.approx(7, rel=0.03)
    assert get(p + "Py3:SigmaY_RBV") == pytest.approx(5, rel=0.03)
    profile = get(p + "Py3:ProfileX_RBV")
    np.testing.assert_allclose(profile[:NX], image.sum(axis=0))


def severity(name: str) -> int:
    return int(ca_sync.read(name, data_type="time", timeout=2).metadata.severity)


def test_focus_figure_of_merit_grows_with_defocus_and_alarms(ioc):
    p = ioc.prefix
    fwhm = {}
    for width in (2, 3, 5):
        peaks(p, width, num=(3, 2), start=(24, 24))
        acquire(p)
        assert get(p + "Py4:Stars_RBV") == 6
        fwhm[width] = get(p + "Py4:Fwhm_RBV")
        if width == 2:
            assert severity(p + "Py4:Fwhm_RBV") == 0
    assert fwhm[2] < fwhm[3] < fwhm[5]
    assert fwhm[2] == pytest.approx(2.3548 * 2, rel=0.1)
    assert fwhm[3] == pytest.approx(2.3548 * 3, rel=0.1)
    assert fwhm[5] > 8.0  # past the HIGH limit the file declares
    assert severity(p + "Py4:Fwhm_RBV") >= 1
    assert get(p + "Py4:Fwhm_RBV.HIGH") == 8.0


def test_status_message_describes_the_latest_frame(ioc):
    """Issue 18: no message outlives the condition that caused it; the log has a line when the
    condition begins and one when it ends, not one per frame."""
    p = ioc.prefix
    status = p + "Py4:StatusMessage_RBV"
    peaks(p, 2, num=(3, 2), start=(24, 24))
    put(p + "cam1:Gain", 0)  # an empty frame: no stars
    acquire(p, 3)
    last = get(p + "image1:UniqueId_RBV")
    first = last - 2
    assert wait_for(lambda: get(status, as_string=True) ==
                    f"frame {last}: no stars above threshold (since frame {first})"), \
        get(status, as_string=True)
    put(p + "cam1:Gain", 1)
    acquire(p)
    assert wait_for(lambda: get(status, as_string=True) == f"frame {last + 1}: OK"), \
        get(status, as_string=True)
    acquire(p)  # stays: it says when the frames became fine again
    assert get(p + "image1:UniqueId_RBV") == last + 2
    assert get(status, as_string=True) == f"frame {last + 1}: OK"
    log = [line for line in ioc.log().splitlines() if "ndflow.PY4: frame" in line]
    assert log[-2:] == [log[-2][:24] + f"WARNING ndflow.PY4: frame {first}: no stars above "
                        "threshold", log[-1][:24] + f"INFO ndflow.PY4: frame {last + 1}: OK "
                        "again (after: no stars above threshold)"], log


def wait_running(p: str, plugin: str) -> None:
    assert wait_for(lambda: get(p + plugin + "ChildState_RBV", as_string=True) == "Running",
                    timeout=15), get(p + plugin + "LastError_RBV")


@pytest.mark.parametrize("fault, counter, message", [
    ("Exception", "FramesFailed_RBV", "ValueError: deliberate failure"),
    ("Exit", "FramesFailed_RBV", "exited with code 1"),
    ("Segfault", "FramesFailed_RBV", "died with SIGSEGV"),
    ("Hang", "FramesTimedOut_RBV", "took longer than 4 s"),
    ("Memory", "FramesFailed_RBV", "MemoryError"),
    ("Write", "FramesFailed_RBV", "shared read-only"),
])
def test_fault_is_reported_and_the_next_frame_processed(ioc, fault, counter, message):
    p = ioc.prefix + "Fault:"
    wait_running(ioc.prefix, "Fault:")
    before = get(p + counter)
    ok_before = get(p + "FramesOK_RBV")
    put(p + "Fault", fault)
    acquire(ioc.prefix)
    assert wait_for(lambda: get(p + counter) == before + 1, timeout=10)
    assert message in get(p + "LastError_RBV", as_string=True)
    if fault == "Exception":
        assert "faulty.py" in get(p + "Traceback_RBV", as_string=True)
    if fault == "Write":  # the shared frame was not changed: image1 shows its pixels
        assert frame(ioc.prefix).max() > 0
    if fault == "Segfault":  # faulthandler's report comes back as the traceback
        assert "Segmentation fault" in get(p + "Traceback_RBV", as_string=True)
    put(p + "Fault", "None")
    wait_running(ioc.prefix, "Fault:")
    acquire(ioc.prefix)
    assert wait_for(lambda: get(p + "FramesOK_RBV") == ok_before + 1, timeout=10)
    assert get(p + "Mean_RBV") == pytest.approx(frame(ioc.prefix).mean())
    assert get(ioc.prefix + "cam1:DetectorState_RBV", as_string=True) == "Idle"


def test_restarts_are_counted(ioc):
    # runs after the fault tests: Exit, Segfault, Hang and Memory-free restarts happened
    assert get(ioc.prefix + "Fault:Restarts_RBV") >= 3


def ca_exists(name: str) -> bool:
    """A fresh search with caproto's client (pyepics would keep an old circuit's channel)."""
    try:
        ca_sync.read(name, timeout=1.0)
        return True
    except (TimeoutError, ca_sync.CaprotoTimeoutError):
        return False


def pva_exists(name: str) -> bool:
    """A fresh pvAccess search (a new client context each time: nothing cached)."""
    from p4p.client.thread import Context
    with Context("pva", nt=False) as ctxt:
        try:
            ctxt.get(name, timeout=1.0)
            return True
        except TimeoutError:
            return False


def test_live_reload_adds_and_withdraws_pvs(ioc, live_folder):
    p = ioc.prefix + "Live:"
    acquire(ioc.prefix)
    mean = frame(ioc.prefix).mean()
    assert get(p + "Scaled_RBV") == pytest.approx(2 * mean)
    assert not ca_exists(p + "Offset")

    screen = live_folder / "screens" / "LIVE.bob"
    assert "$(P)$(R)Gain_RBV" in screen.read_text()
    assert "$(P)$(R)Offset" not in screen.read_text()
    assert not pva_exists(p + "Offset")
    (live_folder / "live.py").write_text(LIVE_V2)
    assert wait_for(lambda: ca_exists(p + "Offset"), timeout=5)
    assert wait_for(lambda: pva_exists(p + "Offset_RBV"), timeout=5)  # over PVA too
    assert wait_for(lambda: "$(P)$(R)Offset" in screen.read_text(), timeout=5)
    put(p + "Offset", 7.5)
    acquire(ioc.prefix)
    mean = frame(ioc.prefix).mean()
    assert wait_for(lambda: get(p + "Scaled_RBV") == pytest.approx(2 * mean + 7.5))

    (live_folder / "live.py").write_text(LIVE_V1)
    assert wait_for(lambda: not ca_exists(p + "Offset"), timeout=5)
    assert not ca_exists(p + "Offset_RBV")
    assert wait_for(lambda: not pva_exists(p + "Offset_RBV"), timeout=5)
    assert wait_for(lambda: "$(P)$(R)Offset" not in screen.read_text(), timeout=5)

    loads = get(p + "Loads_RBV")
    ok = get(p + "FramesOK_RBV")
    (live_folder / "live.py").write_text(LIVE_V1.replace("def process", "def process(:"))
    assert wait_for(lambda: "SyntaxError" in get(p + "LastError_RBV", as_string=True),
                    timeout=5)
    assert "previous version still running" in get(p + "LastError_RBV", as_string=True)
    acquire(ioc.prefix)
    mean = frame(ioc.prefix).mean()
    assert wait_for(lambda: get(p + "FramesOK_RBV") == ok + 1)
    assert get(p + "Scaled_RBV") == pytest.approx(2 * mean)
    assert get(p + "Loads_RBV") == loads
    assert get(p + "ChildState_RBV", as_string=True) == "Running"


def test_generated_screens_name_only_served_pvs(ioc, live_folder):
    """Each algorithm instance's own screen carries its R, so it opens with P alone (every
    screen of the default IOC is checked in test_screens)."""
    folder = live_folder / "screens"
    screens = [folder / f"{port}.bob" for port in ("PY1", "PY2", "PY3", "PY4", "FAULT", "LIVE")]
    for path in screens:
        root = ET.parse(path).getroot()
        assert root.tag == "display" and root.get("version") == "2.0.0"
        r = root.findtext("macros/R")
        pvs = {w.findtext("pv_name") for w in root.iter("widget") if w.findtext("pv_name")}
        for pv in pvs:
            name = pv.replace("$(P)", ioc.prefix).replace("$(R)", r)
            # pyepics' caget takes the connection's time off `timeout`: keep it above
            # connection_timeout, or a slow connection makes it negative (a warning, and None)
            value = epics.caget(name, timeout=8, connection_timeout=3, as_string=True)
            assert value is not None, (path.name, name)


def test_output_images_reach_the_next_stage_intact(ioc):
    """Up to pipeline_depth frames are in flight per child: an image must not be overwritten
    by the next frame's while the IOC copies it out."""
    p = ioc.prefix
    checked = get(p + "Check:Checked_RBV", use_monitor=False)
    acquire(p, 40)  # WaitForPlugins: every stage is done when this returns
    assert get(p + "Check:Checked_RBV", use_monitor=False) >= checked + 20  # some may drop
    assert get(p + "Check:Torn_RBV", use_monitor=False) == 0


def test_two_workers_keep_unique_id_order(ioc):
    p = ioc.prefix
    put(p + "Order:NumThreads", 2)
    assert get(p + "Order:NumThreads_RBV") == 2
    start = get(p + "Rec:Received_RBV")
    put(p + "cam1:ArrayCounter", 0)
    acquire(p, 24)
    assert wait_for(lambda: get(p + "Rec:Received_RBV") >= min(start + 24, 256), timeout=10)
    ids = list(get(p + "Rec:Ids_RBV"))[-24:]
    assert ids == list(range(1, 25))
    assert get(p + "Rec:Workers_RBV") == 2  # both children did work
    assert get(p + "Order:DisorderedArrays_RBV") == 0


def test_sigkill_leaves_no_child_and_no_segment(start_ioc, tmp_path):
    before = {n for n in os.listdir("/dev/shm") if "ndflow" in n}
    config = (f"algorithm_folders: ['{EXAMPLES}']\n"
              "drivers:\n  - {type: sim, port: SIM1, prefix: 'cam1:'}\n"
              "plugins:\n" + python_plugin("PY1", "Py1:", "centroid.py", workers=2))
    proc = start_ioc(config, prefix=unique_prefix())
    p = proc.prefix
    put(p + "Py1:EnableCallbacks", "Enable")
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(p + "Py1:FramesOK_RBV") > 3, timeout=10)
    children = psutil.Process(proc.proc.pid).children(recursive=True)
    assert len(children) == 2
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, [c.cmdline() for c in alive]
    assert {n for n in os.listdir("/dev/shm") if "ndflow" in n} <= before


def test_sigterm_while_algorithms_are_busy_stops_without_a_traceback(start_ioc):
    """SIGTERM (or Ctrl-C) while the children are in process(): the IOC closes their channels
    as it stops, and a child whose answer meets a closed channel ends quietly, as one whose
    receive does. Before, each busy child's ChannelClosed traceback landed in the IOC log."""
    config = (f"algorithm_folders: ['{EXAMPLES}']\n"
              "drivers:\n  - {type: sim, port: SIM1, prefix: 'cam1:'}\n"
              "plugins:\n" + "".join(python_plugin(f"PY{i}", f"Py{i}:", "azimuthal.py")
                                    for i in (1, 2, 3)))
    proc = start_ioc(config, prefix=unique_prefix())
    p = proc.prefix
    for i in (1, 2, 3):
        put(p + f"Py{i}:EnableCallbacks", "Enable")
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: all(get(p + f"Py{i}:FramesOK_RBV") > 3 for i in (1, 2, 3)),
                    timeout=30)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    log = proc.log()
    assert "shut down" in log
    assert "Traceback" not in log and "ChannelClosed" not in log, log[-4000:]


def test_algorithm_in_another_virtual_environment(start_ioc, tmp_path):
    """A venv holding only numpy (linked from ours: no network needed) runs the child."""
    venv = tmp_path / "numpy-only"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    numpy_dir = Path(np.__file__).parent
    for entry in numpy_dir.parent.iterdir():
        if entry.name == "numpy" or entry.name.startswith("numpy.libs") or (
                entry.name.startswith("numpy-") and entry.name.endswith(".dist-info")):
            (site / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import scipy"], capture_output=True)
    assert check.returncode != 0  # really another environment
    config = (f"algorithm_folders: ['{TEST_ALGORITHMS}']\n"
              "drivers:\n  - {type: sim, port: SIM1, prefix: 'cam1:', options: "
              "{max_size_x: 64, max_size_y: 32}}\n"
              "plugins:\n"
              "  - {type: stdarrays, port: Image1, prefix: 'image1:', input: SIM1}\n"
              + python_plugin("PY1", "Py1:", "whoami.py", python=str(python)))
    proc = start_ioc(config, prefix=unique_prefix())
    p = proc.prefix
    put(p + "Py1:EnableCallbacks", "Enable")
    put(p + "image1:EnableCallbacks", "Enable")
    put(p + "cam1:WaitForPlugins", "Yes")
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: get(p + "Py1:FramesOK_RBV") == 1)
    assert get(p + "Py1:Prefix_RBV", as_string=True) == str(venv)
    assert get(p + "Py1:HasScipy_RBV", as_string=True) == "No"
    data = np.asarray(get(p + "image1:ArrayData", count=64 * 32), dtype=np.uint8)
    assert get(p + "Py1:Mean_RBV") == pytest.approx(data.mean())
    assert get(p + "Py1:Python_RBV", as_string=True) == str(python)


@pytest.mark.parametrize("file, folders, expected", [
    ("../../../etc/hosts", f"['{EXAMPLES}']", "outside the algorithm folders"),
    ("/etc/hosts", f"['{EXAMPLES}']", "outside the algorithm folders"),
    ("centroid.py", "[]", "no algorithm_folders configured"),
    ("nonexistent.py", f"['{EXAMPLES}']", "no file 'nonexistent.py'"),
])
def test_algorithm_files_load_only_from_the_configured_folders(tmp_path, file, folders,
                                                                expected):
    config = tmp_path / "bad.yml"
    config.write_text(f"algorithm_folders: {folders}\n"
                      "drivers:\n  - {type: sim, port: SIM1}\n"
                      "plugins:\n" + python_plugin("PY1", "Py1:", file))
    result = subprocess.run([sys.executable, "-m", "ndflow.cli", "run", str(config),
                             "--list-pvs"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugins[0].options" in lines[0] and expected in lines[0]
