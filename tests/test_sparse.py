"""Sparse frames through a real IOC (issue 15 item 2, acceptance 2).

Peaks frames with a noise background go through `Sparse1:` into an HDF5 writer (Lima2's CSR
layout) while a second writer saves the dense frames of the same acquisition. The CSR datasets
are read with plain h5py + numpy (no ndflow code) and must rebuild the dense frames above the
threshold exactly. Stats on the sparse port (densified by the plugin base) must equal numpy on
the thresholded frame; the Densify mode must give that frame back; bad puts are refused.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from epics import ca, dbr

from conftest import ioc_with_data_root
from test_acquisition import Monitor, get, image, put, wait_for
from test_file_writers import put_status, refused

NX, NY = 128, 96
THRESHOLD = 60.0


def config(root) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: sparse, port: SPARSE1, prefix: "Sparse1:", input: SIM1, enabled: true}}
          - {{type: sparse, port: DENSE1, prefix: "Dense1:", input: SPARSE1, enabled: true}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, enabled: true}}
          - {{type: hdf5, port: FileHDF2, prefix: "HDF2:", input: SPARSE1, enabled: true}}
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SPARSE1, enabled: true,
             options: {{xsize: {NX}, ysize: {NY}, hist_size: 16, nchans: 16}}}}
          - {{type: stdarrays, port: IMAGE1, prefix: "image1:", input: SIM1,
             options: {{data_type: Float64, nelm: {NX * NY}}}}}
          - {{type: stdarrays, port: IMAGE2, prefix: "image2:", input: DENSE1,
             options: {{data_type: Float64, nelm: {NX * NY}}}}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with ioc_with_data_root(tmp_path_factory, "sparse", config) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Multiple"), ("NumImages", 1), ("WaitForPlugins", "Yes"),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1000.0),
                        ("SimMode", "Peaks"), ("Noise", 80.0), ("PeakStartX", 20),
                        ("PeakStartY", 15), ("PeakNumX", 3), ("PeakNumY", 2),
                        ("PeakStepX", 40), ("PeakStepY", 50), ("PeakWidthX", 4),
                        ("PeakWidthY", 6), ("PeakVariation", 30.0)]:
        put(p + "cam1:" + name, value)
    for name, value in [("Mode", "Threshold"), ("Threshold", THRESHOLD), ("SigmaK", 3.0),
                        ("CenterX", 64.0), ("CenterY", 48.0), ("NumBins", 16)]:
        put(p + "Sparse1:" + name, value)
    put(p + "Dense1:Mode", "Densify")
    for plugin in ("HDF1:", "HDF2:"):
        put(p + plugin + "Capture", 0)
        put(p + plugin + "FilePath", str(ioc.root))
        put(p + plugin + "FileTemplate", "%s%s_%3.3d.h5")
        put(p + plugin + "FileWriteMode", "Stream")
        put(p + plugin + "AutoSave", "No")
        # the file's layout comes from its first frame, not the last one before Capture=1
        put(p + plugin + "LazyOpen", "Yes")
    return p


def capture_both(p: str, n: int, name: str) -> tuple[str, str]:
    """Stream n frames into HDF1 (dense, SIM1) and HDF2 (sparse, SPARSE1) at once."""
    monitors = {}
    for plugin, suffix in (("HDF1:", "dense"), ("HDF2:", "sparse")):
        put(p + plugin + "FileName", f"{name}_{suffix}")
        put(p + plugin + "NumCapture", n)
        monitors[plugin] = Monitor.of(p + plugin + "Capture_RBV")
        put(p + plugin + "Capture", 1, wait=False)
    for m in monitors.values():
        assert wait_for(lambda: m.value == 1)
    put(p + "cam1:NumImages", n)
    put(p + "cam1:Acquire", 1)
    for m in monitors.values():
        assert wait_for(lambda: m.value == 0, timeout=20)
    return (get(p + "HDF1:FullFileName_RBV", as_string=True),
            get(p + "HDF2:FullFileName_RBV", as_string=True))


def read_plain(path: str) -> dict:
    """The CSR file read by a fresh interpreter with h5py and numpy only."""
    code = textwrap.dedent(f"""
        import h5py, numpy as np, pickle, sys
        with h5py.File({path!r}, "r") as f:
            g = f["/entry/data"]
            out = {{k: g[k][()] for k in g}}
            out["frame_shape"] = tuple(g.attrs["frame_shape"])
            out["ids"] = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
        sys.stdout.buffer.write(pickle.dumps(out))
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    import pickle
    return pickle.loads(run.stdout)


def rebuild(csr: dict) -> np.ndarray:
    """Every frame of a CSR file, with numpy only."""
    ptr, index, intensity = csr["frame_ptr"], csr["index"], csr["intensity"]
    frames = np.zeros((ptr.size - 1, int(np.prod(csr["frame_shape"]))), intensity.dtype)
    for k in range(ptr.size - 1):
        frames[k, index[ptr[k]:ptr[k + 1]]] = intensity[ptr[k]:ptr[k + 1]]
    return frames.reshape(ptr.size - 1, *csr["frame_shape"])


def test_threshold_to_hdf5_csr_rebuilds_the_thresholded_frames(ioc, p):
    dense_path, sparse_path = capture_both(p, 20, "peaks")
    with h5py.File(dense_path, "r") as f:
        dense = f["/entry/data/data"][()]
        dense_ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
    csr = read_plain(sparse_path)
    assert "data" not in csr, "a sparse file holds no dense dataset"
    assert csr["index"].dtype == np.uint32 and csr["frame_ptr"].dtype == np.uint64
    assert csr["intensity"].dtype == np.uint16
    assert csr["frame_ptr"].size == 21 and csr["frame_ptr"][0] == 0
    assert csr["frame_shape"] == (NY, NX) and dense.shape == (20, NY, NX)
    np.testing.assert_array_equal(csr["ids"], dense_ids)
    expected = np.where(dense > THRESHOLD, dense, 0)
    kept = (dense > THRESHOLD).reshape(20, -1).sum(axis=1)
    assert 0 < kept.min() and kept.max() < NX * NY  # noise crosses it, not everywhere
    np.testing.assert_array_equal(np.diff(csr["frame_ptr"]), kept)
    np.testing.assert_array_equal(rebuild(csr), expected)
    # the last frame's read-backs
    n = int(kept[-1])
    assert wait_for(lambda: get(p + "Sparse1:NumPixels_RBV") == n)
    assert get(p + "Sparse1:CompressionFactor_RBV") == pytest.approx(NX * NY * 2 / (n * 6),
                                                                     rel=1e-3)
    # a plugin's NDArrayBase PVs describe its input (ADCore): downstream of Sparse1 they show
    # the dense layout and the bytes the sparse frame holds (index 4 + intensity 2 per pixel)
    for plugin in ("HDF2:", "Stats1:"):
        assert wait_for(lambda: get(p + plugin + "CompressedSize_RBV") == n * 6)
        assert get(p + plugin + "ArraySize0_RBV") == NX
        assert get(p + plugin + "ArraySize1_RBV") == NY
        assert get(p + plugin + "ArraySize_RBV") == NX * NY * 2


def test_radial_mode_stores_the_profile_and_keeps_pixels_above_it(ioc, p):
    put(p + "Sparse1:Mode", "Radial")
    put(p + "Sparse1:SigmaK", 2.0)
    dense_path, sparse_path = capture_both(p, 5, "radial")
    with h5py.File(dense_path, "r") as f:
        dense = f["/entry/data/data"][()].astype(np.float64)
    with h5py.File(sparse_path, "r") as f:
        g = f["/entry/data"]
        avg, std = g["background_avg"][()], g["background_std"][()]
        cx, cy = g["background_avg"].attrs["centre_x"], g["background_avg"].attrs["centre_y"]
        rmax = g["background_avg"].attrs["radius_max"]
        csr = {k: g[k][()] for k in ("index", "intensity", "frame_ptr")}
        csr["frame_shape"] = tuple(g.attrs["frame_shape"])
    assert avg.shape == (5, 16) and (cx, cy) == (64.0, 48.0)
    y, x = np.mgrid[:NY, :NX]
    bins = np.minimum(np.floor(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) * 16 / rmax), 15)
    bins = bins.astype(int)
    rebuilt = rebuild(csr)
    for k in range(5):
        means = np.array([dense[k][bins == b].mean() for b in range(16)])
        np.testing.assert_allclose(avg[k], means, rtol=1e-5)
        cut = (avg[k].astype(np.float64) + 2.0 * std[k].astype(np.float64))[bins]
        np.testing.assert_array_equal(rebuilt[k], np.where(dense[k] > cut, dense[k], 0))
    put(p + "Sparse1:Mode", "Threshold")


def test_a_frame_that_does_not_fit_the_open_sparse_file_is_reported(ioc, p):
    put(p + "cam1:Acquire", 1)  # a threshold frame (no profile) is the last input
    put(p + "HDF2:LazyOpen", "No")  # so the file opens for it at Capture=1
    put(p + "Sparse1:Mode", "Radial")
    try:
        capture_both(p, 3, "mismatch")
    finally:
        put(p + "Sparse1:Mode", "Threshold")
    assert get(p + "HDF2:WriteStatus") == 1
    assert "start a new file" in get(p + "HDF2:WriteMessage", as_string=True)


def test_stats_and_densify_on_the_sparse_port_equal_numpy_on_the_thresholded_frame(ioc, p):
    put(p + "HDF1:EnableCallbacks", 0)
    put(p + "HDF2:EnableCallbacks", 0)
    try:
        put(p + "cam1:Acquire", 1)
        uid = get(p + "cam1:UniqueId_RBV")
        assert wait_for(lambda: get(p + "Stats1:UniqueId_RBV") == uid)
        assert wait_for(lambda: get(p + "image2:UniqueId_RBV") == uid)
        assert get(p + "image1:UniqueId_RBV") == uid
        img = image(p)
        thresholded = np.where(img > THRESHOLD, img, 0.0)
        assert wait_for(lambda: get(p + "Stats1:Total_RBV") == pytest.approx(thresholded.sum()))
        assert get(p + "Stats1:MaxValue_RBV") == thresholded.max()
        assert get(p + "Stats1:MinValue_RBV") == 0.0
        assert get(p + "Stats1:MeanValue_RBV") == pytest.approx(thresholded.mean())
        assert get(p + "Stats1:Sigma_RBV") == pytest.approx(thresholded.std(), rel=1e-3)
        dims = [get(p + f"image2:ArraySize{i}_RBV") for i in range(2)]
        densified = np.asarray(get(p + "image2:ArrayData", count=NX * NY)).reshape(NY, NX)
        assert dims == [NX, NY]
        np.testing.assert_array_equal(densified, thresholded)
    finally:
        put(p + "HDF1:EnableCallbacks", 1)
        put(p + "HDF2:EnableCallbacks", 1)


def string_put_status(pv: str, text: str) -> int | None:
    """A put-callback's CA status for a DBR_STRING put (at most 40 bytes, as CA carries)."""
    chid = ca.create_channel(pv, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=5), f"cannot connect {pv}"
    result: dict[str, int] = {}

    def done(args) -> None:
        result["status"] = args.status
    callback = dbr.make_callback(done, dbr.event_handler_args)
    raw = (ctypes.c_char * 40)(*text.encode()[:39])
    assert ca.libca.ca_array_put_callback(dbr.STRING, 1, chid, raw, callback,
                                          ctypes.py_object(0)) == dbr.ECA_NORMAL
    ca.flush_io()
    deadline = time.monotonic() + 10
    while "status" not in result and time.monotonic() < deadline:
        ca.poll(evt=1e-3, iot=0.01)
    return result.get("status")


@pytest.mark.parametrize("name, value", [
    ("Threshold", float("nan")), ("Threshold", float("inf")), ("Threshold", "x" * 10_000),
    ("Threshold", ""), ("Mode", 9), ("Mode", "Sideways"), ("NumBins", 1e12),
    ("SigmaK", float("nan")), ("CenterX", "centre"), ("DensifyFill", -1)])
def test_bad_puts_are_refused_and_leave_the_value(ioc, p, name, value):
    before = get(p + f"Sparse1:{name}_RBV")
    pv = p + f"Sparse1:{name}"
    status = string_put_status(pv, value) if isinstance(value, str) else put_status(pv, value)
    assert refused(status)
    assert get(p + f"Sparse1:{name}_RBV") == before


@pytest.mark.parametrize("name, value, stored", [
    ("NumBins", 0, 1), ("NumBins", 10 ** 6, 65536), ("SigmaK", -5.0, 0.0),
    ("CenterX", 1e300, 1e6)])
def test_out_of_range_puts_are_clamped(ioc, p, name, value, stored):
    put(p + f"Sparse1:{name}", value)
    assert get(p + f"Sparse1:{name}_RBV") == stored


def test_radial_on_a_colour_frame_is_a_counted_processing_error(ioc, p):
    put(p + "Sparse1:Mode", "Radial")
    put(p + "cam1:ColorMode", "RGB1")
    try:
        errors = get(p + "Stats1:ArrayCounter_RBV")
        put(p + "cam1:Acquire", 1)
        assert wait_for(lambda: "2-D" in get(p + "Sparse1:StatusMessage_RBV", as_string=True))
        # the placeholder reaches Stats, which counts it without computing anything
        assert wait_for(lambda: get(p + "Stats1:ArrayCounter_RBV") == errors + 1)
    finally:
        put(p + "cam1:ColorMode", "Mono")
        put(p + "Sparse1:Mode", "Threshold")
    put(p + "cam1:Acquire", 1)  # and the next frame goes through
    uid = get(p + "cam1:UniqueId_RBV")
    assert wait_for(lambda: get(p + "Stats1:UniqueId_RBV") == uid)
