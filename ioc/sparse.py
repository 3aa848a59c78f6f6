"""Sparse frames: the maths (pure functions on numpy arrays) behind Lima2's sparse formats.

A sparse frame keeps only the pixels worth keeping of a dense frame: their flat C-order index
(uint32, as Lima2's HDF5 `index`) and their values in the frame's own element type (`intensity`).
Two ways to choose them:
- `sparsify(dense, threshold)`: the pixels strictly above a threshold (Lima2's plain sparse
  frame, XPCS: threshold 0 keeps the non-zero pixels).
- `sparsify_radial(dense, centre, nbins, k)`: the pixels above a radial background, mean + k
  sigma of their radius bin around `centre` (Lima2 SMX style, where the Bragg peaks stand out of
  the powder rings). The profile (mean and sigma per bin, float32) is returned with the pixels,
  and the cut is made against the float32 values returned, so anyone holding the profile can
  tell exactly why each pixel was kept. One pass, no sigma clipping: the peaks take part in
  their bin's statistics, which matters little when a bin holds many pixels.

`densify` rebuilds the dense frame: zeros (or the radial background) plus the kept pixels. The
plugin base densifies a sparse frame for a plugin that has not declared sparse support, so a
plugin never reads the intensity list as if it were an image.

The radius map of a geometry (shape, centre, bins) is computed once and cached: per frame, the
radial cut costs two weighted bincounts and a gather from a table of one value per bin (about
15 ms for 1024x1024 here, against 1 ms for a plain threshold: bench/sparse.py).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from .ndarray import NDArray, RadialProfile, SparsePayload

INDEX_DTYPE = np.dtype(np.uint32)  # Lima2: uint32 in HDF5 (int32 in its Tango stream)
MAX_PIXELS = int(np.iinfo(INDEX_DTYPE).max)


def _flat(dense: np.ndarray) -> np.ndarray:
    if dense.size > MAX_PIXELS:
        raise ValueError(f"a frame of {dense.size} pixels is too big for a uint32 pixel index")
    return dense.reshape(-1)  # a view when contiguous, else a C-order copy


def sparsify(dense: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(index, intensity) of the pixels of `dense` strictly above `threshold` (NaN never is)."""
    flat = _flat(dense)
    index = np.flatnonzero(flat > threshold)
    return index.astype(INDEX_DTYPE), flat[index]


class RadialGeometry(NamedTuple):
    """What a (shape, centre, bins) geometry precomputes once for every frame."""

    bins: np.ndarray  # intp (what bincount and take use without a conversion), flat, C order
    counts: np.ndarray  # pixels per bin
    radius_max: float


@functools.lru_cache(maxsize=4)
def radial_geometry(shape: tuple[int, int], centre: tuple[float, float], nbins: int
                    ) -> RadialGeometry:
    """The bins of a (ny, nx) frame. Radii are measured from pixel centres (x, y integer) to
    `centre` (x, y); bin = floor(r * nbins / radius_max), equally wide from 0 to the farthest
    corner (which joins the last bin), so every pixel has one. Cached and read-only: the same
    geometry serves every frame."""
    if nbins < 1:
        raise ValueError(f"the number of radius bins must be at least 1, not {nbins}")
    ny, nx = shape
    cx, cy = centre
    radius_max = max(math.sqrt((x - cx) ** 2 + (y - cy) ** 2)
                     for x in (0, nx - 1) for y in (0, ny - 1))
    radius_max = radius_max if radius_max > 0 else 1.0
    y, x = np.ogrid[:ny, :nx]
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    bins = np.minimum(np.floor(radius * nbins / radius_max), nbins - 1).astype(np.intp)
    bins = bins.reshape(-1)
    counts = np.bincount(bins, minlength=nbins)
    bins.flags.writeable = False
    counts.flags.writeable = False
    return RadialGeometry(bins, counts, radius_max)


def radial_bins(shape: tuple[int, int], centre: tuple[float, float], nbins: int
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """(bin of every pixel, flat; pixels per bin; radius_max): see `radial_geometry`."""
    g = radial_geometry(tuple(shape), (float(centre[0]), float(centre[1])), int(nbins))
    return g.bins, g.counts, g.radius_max


def _profile(dense: np.ndarray, centre: tuple[float, float], nbins: int
             ) -> tuple[RadialProfile, RadialGeometry]:
    if dense.ndim != 2:
        raise ValueError(f"a radial background needs a 2-D frame, not {dense.ndim}-D")
    centre = (float(centre[0]), float(centre[1]))
    g = radial_geometry(dense.shape, centre, int(nbins))
    bins, counts = g.bins, g.counts
    values = dense.reshape(-1).astype(np.float64)
    if dense.dtype.kind == "f" and not np.isfinite(values).all():
        finite = np.isfinite(values)  # rare: leave the non-finite values out
        bins, values = bins[finite], values[finite]
        counts = np.bincount(bins, minlength=nbins)
    sums = np.bincount(bins, weights=values, minlength=nbins)
    squares = np.bincount(bins, weights=np.multiply(values, values, out=values),
                          minlength=nbins)
    n = np.maximum(counts, 1)
    avg = sums / n
    std = np.sqrt(np.maximum(squares / n - avg * avg, 0.0))
    profile = RadialProfile(centre, g.radius_max, avg.astype(np.float32),
                            std.astype(np.float32))
    return profile, g


def radial_profile(dense: np.ndarray, centre: tuple[float, float], nbins: int
                   ) -> RadialProfile:
    """Mean and standard deviation (population) of the values per radius bin, float32. Non-
    finite values (float frames) are left out; an empty bin has mean 0 and sigma 0."""
    return _profile(dense, centre, nbins)[0]


def radial_cut(profile: RadialProfile, k: float) -> np.ndarray:
    """The value a pixel must exceed in each bin: mean + k sigma, from the float32 profile."""
    return profile.avg.astype(np.float64) + float(k) * profile.std.astype(np.float64)


def sparsify_radial(dense: np.ndarray, centre: tuple[float, float], nbins: int, k: float
                    ) -> tuple[np.ndarray, np.ndarray, RadialProfile]:
    """(index, intensity, profile) of the pixels of a 2-D `dense` strictly above mean + k sigma
    of their radius bin around `centre` (x, y)."""
    profile, g = _profile(dense, centre, nbins)
    flat = _flat(dense)
    index = np.flatnonzero(flat > radial_cut(profile, k)[g.bins])
    return index.astype(INDEX_DTYPE), flat[index], profile


def background_image(profile: RadialProfile, shape: tuple[int, int]) -> np.ndarray:
    """The profile's mean drawn over a frame (float64): every pixel gets its bin's mean."""
    bins, _, _ = radial_bins(tuple(shape), profile.centre, profile.nbins)
    return profile.avg.astype(np.float64)[bins].reshape(shape)


def densify(sparse: SparsePayload, with_background: bool = False,
            out: np.ndarray | None = None) -> np.ndarray:
    """The dense frame: zeros, or the radial background's mean (`with_background`, cast to the
    element type: integers rounded and clipped to the type's range), with the kept pixels scattered in.
    `out` (the dense shape and type) is filled instead of a new array."""
    shape = tuple(sparse.shape)
    if out is None:
        out = np.zeros(shape, dtype=sparse.dtype)
    elif out.shape != shape or out.dtype != sparse.dtype:
        raise ValueError(f"densify into {out.dtype}{out.shape}, the frame is "
                         f"{sparse.dtype}{shape}")
    else:
        out[...] = 0
    if with_background and sparse.background is not None:
        if len(shape) != 2:
            raise ValueError("a radial background needs a 2-D frame")
        back = background_image(sparse.background, shape)
        if out.dtype.kind in "iu":
            info = np.iinfo(out.dtype)
            back = np.clip(np.rint(back), info.min, info.max)
        np.copyto(out, back, casting="unsafe")
    if sparse.index.size:
        if int(sparse.index.max()) >= out.size:
            raise ValueError(f"pixel index {int(sparse.index.max())} outside a frame of "
                             f"{out.size} pixels")
        out.reshape(-1)[sparse.index] = sparse.intensity
    return out


def compression_factor(sparse: SparsePayload) -> float:
    """Dense bytes over the bytes the sparse frame holds (index, intensity, profile)."""
    return sparse.dense_nbytes / max(sparse.nbytes, 1)


def densify_array(array: NDArray, with_background: bool = False) -> NDArray:
    """The dense NDArray of a sparse one (same identity, dims and attributes); a dense array
    is returned as it is."""
    if array.sparse is None:
        return array
    return array.derive(densify(array.sparse, with_background), sparse=None)
