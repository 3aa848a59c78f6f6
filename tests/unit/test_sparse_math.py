"""Sparse maths (ndflow.sparse) against plain numpy written out independently, the NDArray
sparse payload (sizes, derive), the plugin base densifying for plugins without sparse support,
the Sparse plugin's process() and the CSR rows NDFileHDF5 writes, read back with plain h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ndflow.graph import PortGraph
from ndflow.ndarray import NDArray, SparsePayload
from ndflow.plugin import Plugin
from ndflow.plugins.sparse import DENSIFY, RADIAL, Sparse
from ndflow.plugins.sparse_csr import CSRRows
from ndflow.sparse import compression_factor, densify, densify_array, radial_bins, \
    radial_profile, sparsify, sparsify_radial

RNG = np.random.default_rng(3)
DTYPES = ("u1", "u2", "i4", "f4", "f8")


def frame(dtype: str, shape=(37, 53)) -> np.ndarray:
    values = RNG.integers(0, 120, shape)
    values[RNG.random(shape) < 0.05] += 2000 if dtype != "u1" else 130
    return values.astype(dtype)


def reference_radial(img: np.ndarray, cx: float, cy: float, nbins: int, k: float):
    """Explicit loops over bins: which pixels a per-bin mean + k sigma cut keeps."""
    ny, nx = img.shape
    corners = [np.hypot(x - cx, y - cy) for x in (0, nx - 1) for y in (0, ny - 1)]
    rmax = max(corners)
    yy, xx = np.mgrid[:ny, :nx]
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    b = np.floor(r * nbins / rmax).astype(int)
    b[b >= nbins] = nbins - 1
    avg = np.zeros(nbins, np.float32)
    std = np.zeros(nbins, np.float32)
    keep = np.zeros(img.shape, bool)
    for i in range(nbins):
        sel = b == i
        if not sel.any():
            continue
        vals = img[sel].astype(np.float64)
        avg[i], std[i] = vals.mean(), vals.std()
        cut = np.float64(avg[i]) + k * np.float64(std[i])
        keep[sel] = vals > cut
    return keep, avg, std, rmax


# --- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold_keeps_exactly_the_pixels_above(dtype):
    img = frame(dtype)
    index, intensity = sparsify(img, 100)
    assert index.dtype == np.uint32 and intensity.dtype == img.dtype
    rows, cols = np.nonzero(img > 100)
    assert np.array_equal(index, rows * img.shape[1] + cols)
    assert np.array_equal(intensity, img[rows, cols])
    rebuilt = densify(SparsePayload(index, intensity, img.shape))
    assert rebuilt.dtype == img.dtype
    assert np.array_equal(rebuilt, np.where(img > 100, img, 0))


def test_threshold_is_strict_and_skips_nan():
    img = np.array([[0.0, 1.0, np.nan], [2.0, np.inf, -1.0]])
    index, intensity = sparsify(img, 1.0)
    assert index.tolist() == [3, 4] and intensity.tolist() == [2.0, np.inf]
    assert sparsify(img, 0)[0].tolist() == [1, 3, 4]


def test_non_contiguous_input_uses_c_order():
    img = frame("u2").T  # a transposed view
    index, intensity = sparsify(img, 50)
    expected = np.flatnonzero(np.ascontiguousarray(img) > 50)
    assert np.array_equal(index, expected)
    assert np.array_equal(densify(SparsePayload(index, intensity, img.shape)),
                          np.where(img > 50, img, 0))


def test_empty_and_full_selection():
    img = frame("u2")
    index, intensity = sparsify(img, 1e9)
    assert index.size == 0
    assert not densify(SparsePayload(index, intensity, img.shape)).any()
    index, intensity = sparsify(img, -1)
    assert index.size == img.size
    assert np.array_equal(densify(SparsePayload(index, intensity, img.shape)), img)


@pytest.mark.parametrize("dtype", ("u2", "f4", "i4"))
@pytest.mark.parametrize("centre,nbins,k", [((26.0, 18.0), 8, 2.0), ((0.0, 0.0), 20, 1.0),
                                             ((-10.5, 60.25), 3, 0.5), ((26, 18), 1, 3.0)])
def test_radial_cut_against_an_explicit_loop(dtype, centre, nbins, k):
    img = frame(dtype)
    keep, avg, std, rmax = reference_radial(img, *centre, nbins, k)
    index, intensity, profile = sparsify_radial(img, centre, nbins, k)
    assert profile.nbins == nbins and profile.centre == (float(centre[0]), float(centre[1]))
    assert profile.radius_max == pytest.approx(rmax)
    assert profile.avg.dtype == np.float32 and profile.std.dtype == np.float32
    np.testing.assert_allclose(profile.avg, avg, rtol=1e-6)
    np.testing.assert_allclose(profile.std, std, rtol=1e-5, atol=1e-5)
    assert np.array_equal(index, np.flatnonzero(keep))
    assert np.array_equal(intensity, img.reshape(-1)[keep.reshape(-1)])


def test_radial_profile_leaves_out_nan_and_counts_every_pixel_once():
    img = frame("f8")
    img[3, 4] = np.nan
    profile = radial_profile(img, (10, 10), 5)
    assert np.isfinite(profile.avg).all() and np.isfinite(profile.std).all()
    bins, counts, _ = radial_bins(img.shape, (10.0, 10.0), 5)
    assert counts.sum() == img.size and bins.size == img.size
    assert not bins.flags.writeable


def test_radial_needs_2d_and_bins():
    with pytest.raises(ValueError, match="2-D"):
        sparsify_radial(np.zeros((2, 3, 4)), (0, 0), 4, 1.0)
    with pytest.raises(ValueError, match="at least 1"):
        sparsify_radial(np.zeros((3, 4)), (0, 0), 0, 1.0)


def test_densify_with_background_fills_the_bin_means():
    img = frame("u2")
    index, intensity, profile = sparsify_radial(img, (20, 15), 6, 2.0)
    payload = SparsePayload(index, intensity, img.shape, profile)
    bins, _, _ = radial_bins(img.shape, profile.centre, 6)
    expected = np.rint(profile.avg.astype(np.float64)[bins]).astype("u2").reshape(img.shape)
    expected.reshape(-1)[index] = intensity
    assert np.array_equal(densify(payload, with_background=True), expected)
    assert np.array_equal(densify(payload), np.where(
        np.isin(np.arange(img.size), index).reshape(img.shape), img, 0))


def test_densify_refuses_an_index_outside_the_frame_and_a_wrong_out():
    bad = SparsePayload(np.array([12], np.uint32), np.array([1], np.uint8), (3, 4))
    with pytest.raises(ValueError, match="outside"):
        densify(bad)
    good = SparsePayload(np.array([1], np.uint32), np.array([7], np.uint8), (3, 4))
    with pytest.raises(ValueError, match="densify into"):
        densify(good, out=np.zeros((4, 3), np.uint8))
    out = np.full((3, 4), 9, np.uint8)
    assert densify(good, out=out) is out and out.sum() == 7


def test_payload_sizes_and_compression_factor():
    img = frame("u2", (100, 100))
    index, intensity = sparsify(img, 1000)
    payload = SparsePayload(index, intensity, img.shape)
    assert payload.dense_nbytes == img.nbytes
    assert payload.nbytes == index.size * (4 + 2)
    assert compression_factor(payload) == pytest.approx(img.nbytes / (index.size * 6))


# --- the NDArray and the plugin base ----------------------------------------------------------


def sparse_array(img: np.ndarray, threshold: float = 100) -> NDArray:
    index, intensity = sparsify(img, threshold)
    dense = NDArray.from_numpy(img, unique_id=7)
    return dense.derive(intensity, sparse=SparsePayload(index, intensity, img.shape))


def test_ndarray_reports_dense_layout_and_bytes_held():
    img = frame("u2")
    array = sparse_array(img)
    assert [d.size for d in array.dims] == [img.shape[1], img.shape[0]]
    assert array.valid and array.dtype == np.uint16
    assert array.nbytes == img.nbytes
    assert array.compressed_size == array.sparse.index.nbytes + array.sparse.intensity.nbytes
    assert array.derive(array.data).sparse is array.sparse  # same payload: kept
    assert array.derive(np.zeros(3)).sparse is None  # other data: a new, dense frame
    assert array.derive(None).sparse is None
    dense = densify_array(array)
    assert dense.sparse is None and dense.unique_id == 7
    assert np.array_equal(dense.data, np.where(img > 100, img, 0))


class Recorder(Plugin):
    seen: list

    def process(self, array):
        self.seen.append(array)
        return array


class SparseRecorder(Recorder):
    sparse_aware = True


@pytest.mark.parametrize("cls,sparse_in", [(Recorder, False), (SparseRecorder, True)])
def test_plugin_base_densifies_unless_declared(cls, sparse_in):
    plugin = cls("REC", "Rec:", PortGraph(), blocking=True, enabled=True)
    plugin.seen = []
    img = frame("u2")
    plugin.receive(sparse_array(img))
    (got,) = plugin.seen
    assert (got.sparse is not None) is sparse_in
    if not sparse_in:  # what a dense-only plugin (Stats, ROI, TIFF) reads
        assert np.array_equal(got.data, np.where(img > 100, img, 0))


def test_roi_and_stats_on_a_sparse_port_work_on_the_thresholded_frame():
    """Real ROI and Stats plugins (dense-only) fed a sparse frame through the base."""
    from ndflow.plugins.roi import ROI
    from ndflow.plugins.stats import Stats
    graph = PortGraph()
    roi = ROI("ROI1", "ROI1:", graph, enabled=True, blocking=True)
    stats = Stats("STATS1", "Stats1:", graph, enabled=True, blocking=True)
    sink = SparseRecorder("SINK", "SINK:", graph, enabled=True, blocking=True)
    sink.seen = []
    for component in (roi, stats, sink):
        graph.add(component)
    graph.connect(sink, "ROI1")
    for name, value in dict(MinX=5, SizeX=20, MinY=3, SizeY=10, BinX=2).items():
        roi.values[name] = value  # as a put leaves them
        roi.after_put(roi.params[name], value)
    roi.params_version += 1
    img = frame("u2")
    array = sparse_array(img)
    roi.receive(array)
    stats.receive(array)
    thresholded = np.where(img > 100, img, 0)
    (out,) = sink.seen
    assert out.sparse is None  # ROI's output is dense: it densified its input
    region = thresholded[3:13, 5:25].astype(np.uint32)
    assert np.array_equal(out.data, (region[:, 0::2] + region[:, 1::2]).astype(np.uint16))
    assert stats.values["Total"] == pytest.approx(thresholded.sum())
    assert stats.values["MaxValue"] == thresholded.max()
    assert stats.values["MeanValue"] == pytest.approx(thresholded.mean())


# --- the Sparse plugin's process() --------------------------------------------------------------


def sparse_plugin(**values) -> Sparse:
    plugin = Sparse("SPARSE1", "Sparse1:", PortGraph())
    plugin.values.update(values)
    plugin.freeze()
    return plugin


def test_plugin_threshold_radial_and_densify_round_trip():
    img = frame("u2")
    plugin = sparse_plugin(Threshold=100.0)
    out = plugin.process(NDArray.from_numpy(img, unique_id=3))
    assert out.unique_id == 3 and out.sparse.background is None
    assert np.array_equal(densify(out.sparse), np.where(img > 100, img, 0))
    assert plugin.values["NumPixels_RBV"] == int((img > 100).sum())
    assert plugin.values["CompressionFactor_RBV"] == pytest.approx(
        img.nbytes / out.compressed_size)
    assert out.attributes["SparseNumPixels"].value == int((img > 100).sum())

    radial = sparse_plugin(Mode=RADIAL, CenterX=20.0, CenterY=10.0, NumBins=7, SigmaK=1.5)
    out2 = radial.process(NDArray.from_numpy(img))
    keep, *_ = reference_radial(img, 20.0, 10.0, 7, 1.5)
    assert np.array_equal(out2.sparse.index, np.flatnonzero(keep))
    assert out2.sparse.background.nbins == 7

    back = sparse_plugin(Mode=DENSIFY).process(out)
    assert back.sparse is None and np.array_equal(back.data, np.where(img > 100, img, 0))
    dense_in = NDArray.from_numpy(img)
    assert sparse_plugin(Mode=DENSIFY).process(dense_in) is dense_in
    filled = sparse_plugin(Mode=DENSIFY, DensifyFill=1).process(out2)
    assert np.array_equal(filled.data, densify(out2.sparse, with_background=True))
    assert filled.data[~np.isin(np.arange(img.size), out2.sparse.index).reshape(img.shape)].any()


def test_plugin_radial_refuses_a_colour_frame():
    with pytest.raises(ValueError, match="2-D"):
        sparse_plugin(Mode=RADIAL).process(NDArray.from_numpy(np.zeros((4, 5, 3), np.uint8)))


# --- CSR rows in HDF5 -------------------------------------------------------------------------------


def test_csr_rows_read_back_with_plain_h5py(tmp_path):
    frames = [frame("u2") for _ in range(5)]
    arrays = [sparse_array(f) for f in frames]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        rows = CSRRows.create(f.require_group("entry/data"), arrays[0], {})
        for i, array in enumerate(arrays):
            rows.write_missing() if i == 2 else rows.write(array)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        g = f["entry/data"]
        ptr, index, intensity = g["frame_ptr"][()], g["index"][()], g["intensity"][()]
        shape = tuple(g.attrs["frame_shape"])
    assert ptr.size == 6 and ptr[0] == 0 and index.dtype == np.uint32
    for k, img in enumerate(frames):
        dense = np.zeros(shape, intensity.dtype).reshape(-1)
        dense[index[ptr[k]:ptr[k + 1]]] = intensity[ptr[k]:ptr[k + 1]]
        expected = np.zeros_like(img) if k == 2 else np.where(img > 100, img, 0)
        assert np.array_equal(dense.reshape(shape), expected)
