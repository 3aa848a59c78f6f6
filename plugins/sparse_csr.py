"""Sparse frames in HDF5, in Lima2's CSR layout (what NDFileHDF5 writes for a sparse port).

In the file's data group (`/entry/data`), instead of the dense `data` dataset:
- `index` (uint32): flat C-order pixel index of every kept pixel, frame after frame;
- `intensity` (the frame's element type): their values;
- `frame_ptr` (uint64, N+1 entries): the kept pixels of frame k are
  `index[frame_ptr[k]:frame_ptr[k+1]]` (a compressed-sparse-row pointer);
- with a radial background: `background_avg` and `background_std` (float32, N x bins), one row
  per frame, with the geometry (`centre_x`, `centre_y`, `radius_max`) as attributes.
The group's attributes say `frame_shape` and `sparse_layout`. A lost frame is a row with no
pixel and a NaN background (NDFileHDF5 records its cause as for dense files).

So plain h5py and numpy rebuild frame k:
    dense = np.zeros(frame_shape, dtype=intensity.dtype).reshape(-1)
    dense[index[p[k]:p[k+1]]] = intensity[p[k]:p[k+1]]
Written row by row as frames arrive (three or five resizes a frame, no pixels buffered).
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from ndflow.ndarray import NDArray, SparsePayload
from ndflow.plugins.file_writer import WriteError
from ndflow.sparse import INDEX_DTYPE

#: pixels per chunk of `index` / `intensity`
PIXEL_CHUNK = 1 << 16
LAYOUT = ("CSR (Lima2): the pixels of frame k are index[frame_ptr[k]:frame_ptr[k+1]] "
          "(flat C-order pixel index) with intensity[same]; other pixels are 0")


class CSRRows:
    """The CSR datasets of one open file, and the rows written so far."""

    def __init__(self, group: h5py.Group, first: SparsePayload,
                 filters: dict[str, Any]) -> None:
        self.shape = tuple(first.shape)
        self.dtype = first.dtype
        self.index = group.create_dataset(
            "index", shape=(0,), maxshape=(None,), chunks=(PIXEL_CHUNK,), dtype=INDEX_DTYPE,
            **filters)
        self.intensity = group.create_dataset(
            "intensity", shape=(0,), maxshape=(None,), chunks=(PIXEL_CHUNK,), dtype=self.dtype,
            **filters)
        self.frame_ptr = group.create_dataset(
            "frame_ptr", data=np.zeros(1, np.uint64), maxshape=(None,), chunks=(1024,))
        group.attrs["frame_shape"] = np.asarray(self.shape, dtype=np.int64)
        group.attrs["sparse_layout"] = LAYOUT
        self.hits = 0  # pixels written
        self.rows = 0
        profile = first.background
        self.geometry = None if profile is None else \
            (profile.centre, profile.radius_max, profile.nbins)
        self.avg = self.std = None
        if profile is not None:
            nbins = profile.nbins
            for name in ("background_avg", "background_std"):
                dataset = group.create_dataset(
                    name, shape=(0, nbins), maxshape=(None, nbins),
                    chunks=(max(1, min(64, (1 << 16) // nbins)), nbins), dtype=np.float32,
                    fillvalue=np.float32(np.nan))
                dataset.attrs["centre_x"], dataset.attrs["centre_y"] = profile.centre
                dataset.attrs["radius_max"] = profile.radius_max
                dataset.attrs["meaning"] = (
                    "radial background per frame: bin b covers radii [b, b+1) * radius_max / "
                    "bins from (centre_x, centre_y); pixels kept are above avg + k * std")
            self.avg, self.std = group["background_avg"], group["background_std"]

    @classmethod
    def create(cls, group: h5py.Group, first: NDArray, filters: dict[str, Any]) -> "CSRRows":
        assert first.sparse is not None
        return cls(group, first.sparse, filters)

    def write(self, array: NDArray) -> None:
        """Append `array` (sparse) as the next row."""
        sparse = array.sparse
        if sparse is None:
            raise WriteError(f"array {array.unique_id} is dense but the file holds sparse "
                                  "frames; start a new file")
        if tuple(sparse.shape) != self.shape or sparse.dtype != self.dtype:
            raise WriteError(
                f"array {array.unique_id} is {sparse.dtype}{tuple(sparse.shape)}, the file "
                f"{self.dtype}{self.shape}; start a new file")
        profile = sparse.background
        geometry = None if profile is None else \
            (profile.centre, profile.radius_max, profile.nbins)
        if geometry != self.geometry:
            raise WriteError(f"array {array.unique_id} has another radial background "
                                  "geometry than the file's first frame; start a new file")
        n = int(sparse.index.size)
        start, end = self.hits, self.hits + n
        if n:
            self.index.resize((end,))
            self.index[start:end] = sparse.index
            self.intensity.resize((end,))
            self.intensity[start:end] = sparse.intensity
        self._end_row(end)
        if profile is not None:
            row = self.rows - 1
            self.avg[row] = profile.avg
            self.std[row] = profile.std

    def write_missing(self) -> None:
        """A lost frame: a row with no pixel (and a NaN background)."""
        self._end_row(self.hits)

    def _end_row(self, end: int) -> None:
        self.rows += 1
        self.hits = end
        self.frame_ptr.resize((self.rows + 1,))
        self.frame_ptr[self.rows] = end
        if self.avg is not None:
            self.avg.resize((self.rows, self.avg.shape[1]))
            self.std.resize((self.rows, self.std.shape[1]))

    def datasets(self) -> tuple[Any, ...]:
        """Every dataset object (kept alive with an abandoned file)."""
        return (self.index, self.intensity, self.frame_ptr, self.avg, self.std)
