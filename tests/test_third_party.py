"""Third-party processing in Python algorithms (issue 15, item 6), on a real IOC over CA:
pyFAI azimuthal integration of a ring image, a CuPy/numpy filter, an algorithm with its own
multiprocessing pool under the timeout and at stop, and the resident-memory limit."""

from __future__ import annotations

import math
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import scipy.ndimage

from conftest import REPO, running_ioc, unique_prefix
from test_acquisition import get, put, wait_for

pytest.importorskip("pyFAI", reason="pyFAI is the examples extra: pip install -e .[examples]")

EXAMPLES = REPO / "examples" / "algorithms"
TEST_ALGORITHMS = REPO / "tests" / "algorithms"
NX, NY = 320, 256
# the ring drawn by tests/algorithms/ring.py, and the geometry given to azimuthal.py
CENTER = (150.3, 120.7)
RADIUS = 80.0  # px
DISTANCE, PIXEL, WAVELENGTH = 100.0, 75.0, 1.0  # mm, um, Angstrom


def plugin(port: str, prefix: str, file: str, upstream: str = "SIM1", **options) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in {"file": file, **options}.items())
    return (f"  - {{type: python, port: {port}, prefix: '{prefix}', input: {upstream}, "
            f"options: {{{opts}}}}}\n")


def config(root: Path) -> str:
    geometry = (f"{{Distance: {DISTANCE}, PixelSize: {PIXEL}, BeamCenterX: {CENTER[0]}, "
                f"BeamCenterY: {CENTER[1]}, Wavelength: {WAVELENGTH}, Bins: 400}}")
    return (
        f"algorithm_folders: ['{EXAMPLES}', '{TEST_ALGORITHMS}']\n"
        f"data_roots: ['{root}']\n"
        f"screens_dir: '{root.parent / 'screens'}'\n"
        "drivers:\n"
        f"  - {{type: sim, port: SIM1, prefix: 'cam1:', options: {{max_size_x: {NX}, "
        f"max_size_y: {NY}, data_type: UInt16}}}}\n"
        "plugins:\n"
        "  - {type: stdarrays, port: Image1, prefix: 'image1:', input: SIM1, "
        "options: {data_type: UInt16}}\n"
        + plugin("RING", "Ring:", "ring.py",
                 values=f"{{CenterX: {CENTER[0]}, CenterY: {CENTER[1]}, Radius: {RADIUS}}}")
        # importing pyFAI takes 2-4 s, far more on a busy host: room to start
        + plugin("AZIM", "Azim:", "azimuthal.py", upstream="RING", values=geometry,
                 start_timeout_s=120)
        + "  - {type: table, port: TABLE1, prefix: 'Table1:', input: AZIM}\n"
        + plugin("GPU", "Gpu:", "gpu_filter.py")
        + "  - {type: stdarrays, port: Image2, prefix: 'image2:', input: GPU, "
          "options: {data_type: Float32}}\n"
        + plugin("POOL", "Pool:", "pool_hang.py", timeout_s=3.0)
        + plugin("HOG", "Hog:", "hog.py", memory_mb=300, timeout_s=20.0)
        + "  - {type: hdf5, port: FileHDF1, prefix: 'HDF1:', input: HOG}\n"
    )


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("third_party")
    root = folder / "data"
    root.mkdir()
    # children load one after the other before the IOC serves, and importing pyFAI alone
    # takes 3 s on a quiet host, 30 s on a busy one
    with running_ioc(config(root), folder, timeout=240) as proc:
        p = proc.prefix
        for name in ("image1:", "Ring:", "Azim:", "Table1:", "Gpu:", "image2:", "Pool:", "Hog:",
                     "HDF1:"):
            put(p + name + "EnableCallbacks", "Enable")
        put(p + "cam1:WaitForPlugins", "Yes")
        put(p + "cam1:AcquireTime", 0.001)
        put(p + "cam1:AcquirePeriod", 0.0)
        proc.root = root
        yield proc


def acquire(p: str, wait: bool = True) -> None:
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:Acquire", 1, wait=wait, timeout=30)


def processed(p: str, plugin_: str, before: int) -> bool:
    return wait_for(lambda: get(p + plugin_ + "FramesOK_RBV") > before, timeout=20)


# --- pyFAI ---------------------------------------------------------------------------------------
def ring_radius_px(two_theta: float) -> float:
    return DISTANCE * math.tan(two_theta) / (PIXEL / 1000.0)


def expected_position(unit: str) -> float:
    """Where the ring is, in `unit`, from the geometry (independently of azimuthal.py)."""
    r_mm = RADIUS * PIXEL / 1000.0
    two_theta = math.atan(r_mm / DISTANCE)
    if unit == "r_mm":
        return r_mm
    if unit == "2th_deg":
        return math.degrees(two_theta)
    wavelength = WAVELENGTH / 10 if unit == "q_nm^-1" else WAVELENGTH
    return 4 * math.pi / wavelength * math.sin(two_theta / 2)


def to_two_theta(unit: str, value: float) -> float:
    if unit == "r_mm":
        return math.atan(value / DISTANCE)
    if unit == "2th_deg":
        return math.radians(value)
    wavelength = WAVELENGTH / 10 if unit == "q_nm^-1" else WAVELENGTH
    return 2 * math.asin(value * wavelength / (4 * math.pi))


@pytest.mark.parametrize("unit", ["q_nm^-1", "q_A^-1", "2th_deg", "r_mm"])
def test_pyfai_finds_the_ring_within_one_bin(ioc, unit):
    p = ioc.prefix
    put(p + "Azim:Unit", unit)
    before = get(p + "Azim:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Azim:", before), get(p + "Azim:LastError_RBV", as_string=True)
    radial = np.asarray(get(p + "Azim:Radial_RBV"))
    intensity = np.asarray(get(p + "Azim:Intensity_RBV"))
    assert radial.size == intensity.size == 400
    step = radial[1] - radial[0]
    assert np.allclose(np.diff(radial), step, rtol=1e-6)  # uniform bins
    want = expected_position(unit)
    position = get(p + "Azim:RingPosition_RBV")
    assert abs(position - want) <= step, (position, want, step)
    assert abs(radial[np.argmax(intensity)] - want) <= step  # the profile peaks there too
    # the radius on the detector, within the width of one bin at the ring
    bin_px = ring_radius_px(to_two_theta(unit, want + step)) - RADIUS
    assert abs(get(p + "Azim:RingRadius_RBV") - RADIUS) <= bin_px, bin_px
    assert get(p + "Azim:MaskedPixels_RBV") == 0


def test_the_table_writer_saves_i_of_q_per_frame(ioc):
    p, frames = ioc.prefix, 3
    put(p + "Azim:Unit", "q_nm^-1")
    for key, value in [("FileWriteMode", "Stream"), ("NumCapture", frames), ("AutoIncrement", "No"),
                       ("FileNumber", 1), ("LazyOpen", "Yes"), ("FilePath", str(ioc.root)),
                       ("FileName", "azim"), ("FileTemplate", "%s%s_%3.3d.h5")]:
        put(p + "Table1:" + key, value)
    put(p + "Table1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "Table1:Capture_RBV") == 1)
    put(p + "cam1:ArrayCounter", 0)
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", frames)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert wait_for(lambda: get(p + "Table1:Capture_RBV") == 0, timeout=20), \
        get(p + "Table1:WriteMessage", as_string=True)
    radial = np.asarray(get(p + "Azim:Radial_RBV"))
    with h5py.File(ioc.root / "azim_001.h5", "r") as f:
        t = f["/entry/table"]
        assert t["uniqueId"][()].tolist() == [1, 2, 3]
        intensity = t["arrays/intensity"][()]
        np.testing.assert_allclose(t["arrays/radial"][()], np.tile(radial, (frames, 1)))
        ring = t["values/ring_radius"][()]
    assert intensity.shape == (frames, 400)
    np.testing.assert_allclose(intensity, np.tile(intensity[0], (frames, 1)))  # the same ring
    np.testing.assert_allclose(intensity[-1], get(p + "Azim:Intensity_RBV"), rtol=1e-12)
    want = expected_position("q_nm^-1")
    assert abs(radial[np.argmax(intensity[0])] - want) <= radial[1] - radial[0]
    assert np.all(np.abs(ring - RADIUS) < 1.0)


def ring_image() -> np.ndarray:
    y, x = np.mgrid[0:NY, 0:NX]
    r = np.hypot(x + 0.5 - CENTER[0], y + 0.5 - CENTER[1])
    return (1000.0 * np.exp(-0.5 * ((r - RADIUS) / 1.5) ** 2) + 10.0).astype(np.float32)


def test_masks_from_a_file_in_the_data_root_and_from_a_threshold(ioc):
    p = ioc.prefix
    put(p + "Azim:Unit", "r_mm")
    mask = np.zeros((NY, NX), np.uint8)
    mask[:, NX // 2:] = 1  # the right half is "bad"
    path = ioc.root / "half.npy"
    np.save(path, mask)
    put(p + "Azim:MaskFile", str(path))
    before = get(p + "Azim:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Azim:", before), get(p + "Azim:LastError_RBV", as_string=True)
    assert get(p + "Azim:MaskedPixels_RBV") == mask.sum()
    assert abs(get(p + "Azim:RingRadius_RBV") - RADIUS) < 1.0
    # pixels at or above the threshold leave too, frame by frame
    put(p + "Azim:MaskThreshold", 500)
    before = get(p + "Azim:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Azim:", before)
    assert get(p + "Azim:MaskedPixels_RBV") == int(((ring_image() >= 500) | (mask != 0)).sum())
    put(p + "Azim:MaskThreshold", 0)
    put(p + "Azim:MaskFile", "")


@pytest.mark.parametrize("name, reason", [
    ("/etc/hostname", "is outside the IOC's folders"),
    ("{root}/../../escape.npy", "is outside the IOC's folders"),
    ("{root}/link.npy", "symbolic link"),
    ("{root}/nothing.npy", "no such file"),
    ("{root}/half.txt", "give a .npy or .tif file"),
])
def test_a_mask_file_outside_the_folders_is_refused_and_the_frame_fails(ioc, name, reason):
    p = ioc.prefix
    outside = ioc.root.parent.parent / "escape.npy"  # above the config file's folder too
    np.save(outside, np.zeros((NY, NX), np.uint8))
    if not (ioc.root / "link.npy").is_symlink():
        (ioc.root / "link.npy").symlink_to(outside)
    (ioc.root / "half.txt").write_text("1")
    failed = get(p + "Azim:FramesFailed_RBV")
    put(p + "Azim:MaskFile", name.format(root=ioc.root))
    acquire(p)
    assert wait_for(lambda: get(p + "Azim:FramesFailed_RBV") == failed + 1, timeout=20)
    assert reason in get(p + "Azim:LastError_RBV", as_string=True)
    assert "Traceback" not in get(p + "Azim:StatusMessage_RBV", as_string=True)
    put(p + "Azim:MaskFile", "")
    before = get(p + "Azim:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Azim:", before)


# --- CuPy or numpy -------------------------------------------------------------------------------
def test_gpu_example_runs_on_numpy_here_and_says_so(ioc):
    p = ioc.prefix
    put(p + "Gpu:Backend", "CPU")
    put(p + "Gpu:Sigma", 2.5)
    before = get(p + "Gpu:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Gpu:", before), get(p + "Gpu:LastError_RBV", as_string=True)
    assert get(p + "Gpu:BackendUsed_RBV", as_string=True) == "numpy"
    assert get(p + "Gpu:Device_RBV", as_string=True) == "CPU"
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY), np.uint16).reshape(NY, NX)
    smoothed = np.asarray(get(p + "image2:ArrayData", count=NX * NY), np.float32).reshape(NY, NX)
    expected = scipy.ndimage.gaussian_filter(image.astype(np.float32), 2.5, mode="nearest",
                                             truncate=4.0)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5, atol=1e-3)
    assert get(p + "Gpu:Peak_RBV") == pytest.approx(float(expected.max()), rel=1e-5)


def has_gpu() -> str | None:
    """None if CuPy sees a CUDA device here, else why not."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (the GPU path needs CuPy and a CUDA device)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:  # no driver
        return f"CuPy cannot use CUDA here: {exc}"
    return None


def test_gpu_example_asked_for_a_gpu_without_one_warns_and_uses_numpy(ioc):
    if has_gpu() is None:
        pytest.skip("this host has a GPU: the fallback is not taken")
    p = ioc.prefix
    put(p + "Gpu:Backend", "GPU")
    before = get(p + "Gpu:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Gpu:", before)
    assert get(p + "Gpu:BackendUsed_RBV", as_string=True) == "numpy"
    assert "no GPU" in get(p + "Gpu:StatusMessage_RBV", as_string=True)
    put(p + "Gpu:Backend", "Auto")


def test_gpu_example_runs_on_the_gpu_when_there_is_one(ioc):
    why_not = has_gpu()
    if why_not is not None:
        pytest.skip(why_not)
    p = ioc.prefix
    put(p + "Gpu:Backend", "GPU")
    put(p + "Gpu:Sigma", 2.5)
    before = get(p + "Gpu:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Gpu:", before), get(p + "Gpu:LastError_RBV", as_string=True)
    assert get(p + "Gpu:BackendUsed_RBV", as_string=True) == "cupy"
    image = np.asarray(get(p + "image1:ArrayData", count=NX * NY), np.uint16).reshape(NY, NX)
    smoothed = np.asarray(get(p + "image2:ArrayData", count=NX * NY), np.float32).reshape(NY, NX)
    expected = scipy.ndimage.gaussian_filter(image.astype(np.float32), 2.5, mode="nearest",
                                             truncate=4.0)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-4, atol=1e-2)
    put(p + "Gpu:Backend", "Auto")


# --- multiprocessing inside an algorithm ---------------------------------------------------------
def algorithm_child(ioc, plugin_: str) -> psutil.Process:
    """The child of `plugin_`: the parent of the workers its WorkerPids output names."""
    pids = [int(x) for x in get(ioc.prefix + plugin_ + "WorkerPids_RBV") if x]
    assert pids
    child = psutil.Process(pids[0]).parent()
    assert child is not None and child.ppid() == ioc.proc.pid
    return child


def test_a_hung_algorithm_with_a_pool_is_killed_with_all_its_workers(ioc):
    p = ioc.prefix
    put(p + "Pool:Mode", "Pool")
    before = get(p + "Pool:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Pool:", before), get(p + "Pool:LastError_RBV", as_string=True)
    assert get(p + "Pool:Mean_RBV") == pytest.approx(
        np.asarray(get(p + "image1:ArrayData", count=NX * NY), np.uint16).mean())
    child = algorithm_child(ioc, "Pool:")
    timed_out = get(p + "Pool:FramesTimedOut_RBV")
    put(p + "Pool:Mode", "Hang")
    acquire(p, wait=False)
    # the old pool's 2 workers and the hung frame's 2 new ones (and its helper threads)
    assert wait_for(lambda: len(child.children(recursive=True)) >= 4, timeout=10)
    tree = [child] + child.children(recursive=True)
    assert wait_for(lambda: get(p + "Pool:FramesTimedOut_RBV") == timed_out + 1, timeout=15)
    assert "took longer than 3 s" in get(p + "Pool:LastError_RBV", as_string=True)
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, [(q.pid, q.cmdline()) for q in alive]
    # a new child takes the next frame
    put(p + "Pool:Mode", "Pool")
    assert wait_for(lambda: get(p + "Pool:ChildState_RBV", as_string=True) == "Running", 15)
    before = get(p + "Pool:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Pool:", before)
    assert algorithm_child(ioc, "Pool:").pid != child.pid


def test_stopping_the_ioc_leaves_no_process_an_algorithm_started(start_ioc, tmp_path):
    """The algorithm starts a non-daemonic process it never joins: the child cannot exit by
    itself (multiprocessing waits for it), so the stop ends the whole process group."""
    config = (f"algorithm_folders: ['{TEST_ALGORITHMS}']\n"
              f"screens_dir: '{tmp_path / 'screens'}'\n"
              "drivers:\n  - {type: sim, port: SIM1, prefix: 'cam1:'}\n"
              "plugins:\n" + plugin("POOL", "Pool:", "pool_hang.py",
                                    values="{Mode: Orphan}"))
    ioc = start_ioc(config, prefix=unique_prefix())
    p = ioc.prefix
    put(p + "Pool:EnableCallbacks", "Enable")
    put(p + "cam1:WaitForPlugins", "Yes")
    before = get(p + "Pool:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Pool:", before), get(p + "Pool:LastError_RBV", as_string=True)
    child = algorithm_child(ioc, "Pool:")
    tree = [child] + child.children(recursive=True)
    assert len(tree) >= 4  # the child, 2 pool workers, the orphan
    ioc.stop()
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, [(q.pid, q.cmdline()) for q in alive]


# --- the resident-memory limit -------------------------------------------------------------------
def test_past_its_memory_limit_the_child_is_killed_and_the_frame_fails_readably(ioc):
    """memory_mb 300: the algorithm writes 2 GB. Frame 1 is fine; frame 2 is the leak: the child
    is killed, the frame is a missing row in the HDF5 file with the reason, and the IOC goes on."""
    p = ioc.prefix
    put(p + "Hog:Mode", "None")
    failed, restarts = get(p + "Hog:FramesFailed_RBV"), get(p + "Hog:Restarts_RBV")
    put(p + "cam1:ArrayCounter", 0)
    for name, value in [("FilePath", str(ioc.root)), ("FileName", "hog"),
                        ("FileTemplate", "%s%s_%3.3d.h5"), ("FileWriteMode", "Capture"),
                        ("NumCapture", 2), ("AutoSave", "Yes")]:
        put(p + "HDF1:" + name, value)
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1)
    acquire(p)  # frame 1: fine
    put(p + "Hog:Mode", "Grow")
    started = time.monotonic()
    acquire(p)  # frame 2: grows until killed
    assert wait_for(lambda: get(p + "Hog:FramesFailed_RBV") == failed + 1, timeout=20)
    assert time.monotonic() - started < 15  # killed by the limit, not by the 20 s timeout
    assert get(p + "Hog:Restarts_RBV") == restarts + 1
    error = get(p + "Hog:LastError_RBV", as_string=True)
    assert "MemoryError: resident memory" in error and "over the limit of" in error, error
    assert "memory_mb 300" in error and "while processing frame 2" in error, error
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, timeout=15)
    with h5py.File(get(p + "HDF1:FullFileName_RBV", as_string=True)) as f:
        ids = list(f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:])
        missing = f["/entry/ndflow/missing"][:]
    assert ids == [1, 2]
    assert list(missing["unique_id"]) == [2]
    assert missing["cause"][0].decode() == "processing error"
    assert missing["message"][0].decode().startswith("MemoryError: resident memory")
    # the IOC goes on: the next frame is processed by a new child
    put(p + "Hog:Mode", "None")
    assert wait_for(lambda: get(p + "Hog:ChildState_RBV", as_string=True) == "Running", 15)
    before = get(p + "Hog:FramesOK_RBV")
    acquire(p)
    assert processed(p, "Hog:", before)
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"


def test_address_space_a_gpu_library_would_reserve_is_not_refused(ioc):
    """64 GB of address space and an untouched 8 GB array, under memory_mb 300: RLIMIT_AS
    refused this; only resident memory counts now."""
    p = ioc.prefix
    assert wait_for(lambda: get(p + "Hog:ChildState_RBV", as_string=True) == "Running", 15)
    put(p + "Hog:Mode", "Reserve")
    before, failed = get(p + "Hog:FramesOK_RBV"), get(p + "Hog:FramesFailed_RBV")
    acquire(p)
    assert processed(p, "Hog:", before), get(p + "Hog:LastError_RBV", as_string=True)
    assert get(p + "Hog:Held_RBV") == 72 * 1024
    assert get(p + "Hog:FramesFailed_RBV") == failed
    put(p + "Hog:Mode", "None")
