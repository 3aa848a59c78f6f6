"""examples/algorithms.yml as it is (issue 18, acceptance 2): with no put but the acquisition's,
each of the first three frames gives every example algorithm something real to report; and
the config's `values:` (initial PV values of the sim and of an algorithm's inputs) refuse a
mistake in one line."""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest
import scipy.ndimage
from caproto.sync import client as ca_sync

from conftest import NDFLOW, REPO, running_ioc
from test_acquisition import get, put
from test_readme import ioc_config

EXAMPLES = REPO / "examples" / "algorithms.yml"
NX = NY = 1024
SPOT = (400, 300)  # where the config puts the sim's peak


@pytest.fixture(scope="module")
def examples_ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    # 120 s: five algorithm children load one after the other, one of them importing pyFAI
    with running_ioc(ioc_config(EXAMPLES, folder), folder, timeout=120) as ioc:
        yield ioc


def frame(p: str, plugin: str, dtype) -> np.ndarray:
    return np.asarray(get(p + plugin + "ArrayData", count=NX * NY)).astype(dtype).reshape(NY, NX)


def test_the_first_three_frames_give_every_algorithm_a_result(examples_ioc):
    p = examples_ioc.prefix
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:WaitForPlugins", "Yes")
    background = None
    for n in (1, 2, 3):
        put(p + "cam1:Acquire", 1, timeout=30)
        assert get(p + "cam1:ArrayCounter_RBV") == n
        image = frame(p, "image1:", np.uint8)  # image1 serves the UInt8 frame as Int8
        # Py1: a finite centroid inside the frame, on the spot
        cx, cy = get(p + "Py1:CentroidX_RBV"), get(p + "Py1:CentroidY_RBV")
        assert 0 <= cx < NX and 0 <= cy < NY
        assert (cx, cy) == pytest.approx(SPOT, abs=0.5)
        # Py2: image2 is this frame minus the background it averaged from the first one
        if background is None:
            background = image.astype(np.float64)
        assert get(p + "Py2:BackgroundFrames_RBV") == 1
        expected = np.maximum(image.astype(np.float32) - background, 0.0).astype(np.float32)
        np.testing.assert_array_equal(frame(p, "image2:", np.float32), expected)
        assert get(p + "image2:UniqueId_RBV") == n
        # Py3: a converged Gaussian fit on the spot, its width the sim's
        assert get(p + "Py3:FitOk_RBV", as_string=True) == "Yes"
        assert (get(p + "Py3:CenterX_RBV"), get(p + "Py3:CenterY_RBV")) == \
            pytest.approx(SPOT, abs=0.5)
        assert get(p + "Py3:SigmaX_RBV") == pytest.approx(3, abs=0.3)
        assert get(p + "Py3:SigmaY_RBV") == pytest.approx(3, abs=0.3)
        # Py4: the star, with a finite half-flux diameter
        assert get(p + "Py4:Stars_RBV") >= 1
        hfd = get(p + "Py4:Hfd_RBV")
        assert math.isfinite(hfd) and 5 < hfd < 10  # below its HIGH limit: no alarm
        # Py5: pyFAI's I(r) about the spot is its radial profile: highest in the first bin,
        # down to the noise floor (mean 2) 15 px out; far out, in the corners, few pixels make
        # a bin and the solid-angle correction raises them
        radial_px = np.asarray(get(p + "Py5:Radial_RBV")) / 0.075
        intensity = np.asarray(get(p + "Py5:Intensity_RBV"))
        assert intensity[0] > 100 and np.argmax(intensity) == 0
        assert (intensity[(radial_px > 15) & (radial_px < 300)] < 3).all()
        assert get(p + "Py5:RingRadius_RBV") < radial_px[1]
        # Py6: the Gaussian-smoothed frame's peak, on numpy here (cupy where there is a GPU)
        assert get(p + "Py6:BackendUsed_RBV", as_string=True) in ("numpy", "cupy")
        smoothed = scipy.ndimage.gaussian_filter(image.astype(np.float32), 2.0, mode="nearest")
        assert get(p + "Py6:Peak_RBV") == pytest.approx(float(smoothed.max()), rel=1e-4)
        for plugin in ("Py1:", "Py2:", "Py3:", "Py4:", "Py5:", "Py6:"):
            assert get(p + plugin + "StatusMessage_RBV", as_string=True).startswith("loaded "), \
                plugin  # no frame had a problem to report
    log = examples_ioc.log()
    assert not re.search(r"\b(WARNING|ERROR)\b", log), log


def run_list_pvs(tmp_path, config: str) -> subprocess.CompletedProcess:
    path = tmp_path / "ioc.yml"
    path.write_text(config)
    return subprocess.run(NDFLOW + ["run", "--list-pvs", str(path)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("values, message", [
    ("{SimMod: Peaks}", "line 4: drivers[0].options: values: 'SimMod' is not a setpoint PV"),
    ("{simmode: Peaks}", "is not a setpoint PV of this component; did you mean SimMode?"),
    ("{SimMode: Spiral}", "values: SimMode: 'Spiral' is not one of ['LinearRamp'"),
    ("{PeakNumX: 1000}", "values: PeakNumX: 1000 above maximum, clamped to 100"),
    ("{Acquire: 1}", "values: Acquire acts when written; write it from a client"),
    ("{ArrayCounter_RBV: 3}", "'ArrayCounter_RBV' is not a setpoint PV of this component"),
])
def test_a_wrong_sim_value_is_one_line(tmp_path, values, message):
    done = run_list_pvs(tmp_path, "drivers:\n  - type: sim\n    port: SIM1\n"
                                  f"    options: {{values: {values}}}\n")
    assert done.returncode == 2, done.stdout[-500:]
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("values, message", [
    ("{CaptureFrame: 3}", "values: 'CaptureFrame' is not an input of background.py (inputs: "
                          "CaptureFrames, Enable, Offset, ClipNegative)"),
    ("{BackgroundMean_RBV: 3}", "'BackgroundMean_RBV' is not an input of background.py"),
    ("{CaptureFrames: -2}", "values: CaptureFrames: -2 below minimum, clamped to 0"),
    ("{Enable: Maybe}", "values: Enable: 'Maybe' is not one of ['No', 'Yes']"),
])
def test_a_wrong_algorithm_value_is_one_line(tmp_path, values, message):
    done = run_list_pvs(tmp_path, f"algorithm_folders: ['{REPO / 'examples' / 'algorithms'}']\n"
                        "drivers:\n  - {type: sim, port: SIM1}\nplugins:\n"
                        "  - {type: python, port: PY2, prefix: 'Py2:', input: SIM1,\n"
                        f"     options: {{file: background.py, values: {values}}}}}\n")
    assert done.returncode == 2, done.stdout[-500:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ndflow: ") and message in last, done.stderr
    assert "Traceback" not in done.stderr


def severity(name: str) -> int:
    return int(ca_sync.read(name, data_type="time", timeout=2).metadata.severity)


def test_what_the_readme_suggests_trying(examples_ioc):
    """README, "What to look at": the spot moved, widened, or gone."""
    p = examples_ioc.prefix
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:WaitForPlugins", "Yes")
    put(p + "cam1:PeakStartX", 600)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert get(p + "Py1:CentroidX_RBV") == pytest.approx(600, abs=0.5)
    moved = frame(p, "image2:", np.float32)  # the spot where it is now, not where it was
    assert moved[300, 600] > 150 and moved[300, 400] == 0
    assert get(p + "Py2:ResidualMean_RBV") == pytest.approx(1.0, abs=0.2)
    for width in ("PeakWidthX", "PeakWidthY"):
        put(p + "cam1:" + width, 5)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert get(p + "Py4:Fwhm_RBV") > 8 and get(p + "Py4:Hfd_RBV") > 10
    assert severity(p + "Py4:Fwhm_RBV") >= 1 and severity(p + "Py4:Hfd_RBV") >= 1
    put(p + "cam1:Gain", 0)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert get(p + "Py4:StatusMessage_RBV", as_string=True).endswith(
        ": no stars above threshold")
