"""The master HDF5 file: the processing ranks' files seen as one, in global frame order.

Each processing rank's HDF5 writer writes its own file in ADCore's layout (plus ndflow's missing
rows: NDArrayStatus and `/entry/ndflow/missing`). When a capture ends the control rank reads
each rank file's `NDArrayUniqueId` column (which row holds which frame) and writes the master:

- `/entry/data/data`: a virtual dataset (N, H, W) in unique-id order, each row mapped to its
  rank file's row (relative file names, so the folder can be moved as a whole). Rows of one rank
  that fall at a fixed stride (round robin) are one strided mapping, not one per frame.
- `/entry/instrument/NDAttributes/<name>`: every attribute column, gathered in the same order.
- missing rows, exactly as the single-process writer records them: the row reads FillValue,
  NDArrayStatus holds the cause's code, `/entry/ndflow/missing` lists unique id, cause and
  message. A frame a rank lost (its queue was full) is in that rank's file as a missing row and
  is carried over; a frame in no rank's file (a hole in the unique ids: lost between ranks) gets a
  missing row of its own, cause timeout.
- `/entry/ndflow/ranks`: which file each rank wrote; `/entry/ndflow/acquisitions`: the
  effective parameter sets, copied from the first rank file that has them.

This is what h5py, ophyd-async's stream resource and Tiled read; nothing needs to know there was
more than one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..ndarray import MissingCause

ATTRS = "/entry/instrument/NDAttributes"
#: the single-process writer's NDArrayStatus codes (0 valid; i+1 for the i-th cause)
STATUS_CODES = {cause: i + 1 for i, cause in enumerate(MissingCause)}
MISSING_DTYPE = np.dtype([("unique_id", "i4"), ("cause", "S24"), ("message", "S120")])


@dataclass
class RankFile:
    rank: int
    path: Path
    uids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class MasterSummary:
    frames: int
    missing: int
    ranks: dict[int, int]  # frames per rank


def build_master(create: Callable[[Path], Any], path: Path, rank_files: list[tuple[int, Path]],
                 limit: int = 0, fill: float = 0.0) -> MasterSummary:
    """Write the master file at `path` (opened with `create(path)`, which returns a writable
    h5py.File: the writer's own safe opener) over `rank_files` [(rank, file)]; at most `limit`
    frames (0: all), the first in unique-id order."""
    import h5py

    sources: list[tuple[RankFile, h5py.File]] = []
    try:
        for rank, file in rank_files:
            try:
                f = h5py.File(file, "r")
            except OSError:
                continue  # a rank that wrote nothing: its frames show up as holes
            if "/entry/data/data" not in f:
                f.close()
                continue
            uids = f[f"{ATTRS}/NDArrayUniqueId"][:].astype(np.int64) \
                if f"{ATTRS}/NDArrayUniqueId" in f else np.zeros(0, np.int64)
            n = min(len(uids), f["/entry/data/data"].shape[0])
            sources.append((RankFile(rank, Path(file), uids[:n]), f))
        return _write(create, path, sources, limit, fill)
    finally:
        for _, f in sources:
            f.close()


def _write(create: Callable[[Path], Any], path: Path, sources: list, limit: int,
           fill: float) -> MasterSummary:
    import h5py

    # every (unique id, source index, row), in unique-id order
    entries = [(int(uid), s, row) for s, (rf, _) in enumerate(sources)
               for row, uid in enumerate(rf.uids)]
    entries.sort()
    order: list[tuple[int, int | None, int]] = []  # (uid, source or None for a hole, row)
    for uid, s, row in entries:
        if order and uid <= order[-1][0]:
            continue  # the same frame twice (cannot happen with one dispatcher): first kept
        if order:
            order += [(gap, None, -1) for gap in range(order[-1][0] + 1, uid)]
        order.append((uid, s, row))
    if limit:
        order = order[:limit]
    n = len(order)
    first = sources[0][1]["/entry/data/data"] if sources else None
    frame_shape = tuple(first.shape[1:]) if first is not None else (0, 0)
    dtype = first.dtype if first is not None else np.dtype("u2")
    with create(path) as out:
        out.attrs["creator"] = "ndflow cluster master"
        entry = out.require_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data_group = entry.require_group("data")
        data_group.attrs["NX_class"] = "NXdata"
        layout = h5py.VirtualLayout(shape=(n, *frame_shape), dtype=dtype,
                                    maxshape=(n, *frame_shape))
        per_rank: dict[int, int] = {}
        for s, (rf, f) in enumerate(sources):
            rows = [(g, row) for g, (_, src, row) in enumerate(order) if src == s]
            if not rows:
                continue
            per_rank[rf.rank] = len(rows)
            shape = f["/entry/data/data"].shape
            name = os.path.relpath(rf.path, path.parent)
            vsource = h5py.VirtualSource(name, "/entry/data/data", shape=shape, dtype=dtype)
            for g0, g1, step, r0 in _runs(rows):
                count = (g1 - g0) // step + 1
                layout[g0:g1 + 1:step] = vsource[r0:r0 + count]
        dataset = data_group.create_virtual_dataset("data", layout, fillvalue=fill)
        dataset.attrs["signal"] = 1
        missing_rows = _attributes(out, sources, order)
        ranks = entry.require_group("ndflow").create_group("ranks")
        for rf, _ in sources:
            ranks.attrs[f"rank{rf.rank}"] = os.path.relpath(rf.path, path.parent)
        for _, f in sources:
            if "/entry/ndflow/acquisitions" in f:
                f.copy(f["/entry/ndflow/acquisitions"], out["/entry/ndflow"], "acquisitions")
                break
    return MasterSummary(n, missing_rows, per_rank)


def _runs(rows: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Cut [(global row, rank row)] (both increasing) into runs (g0, g_last, step, r0) where
    the global rows go at a fixed step and the rank rows one by one."""
    runs = []
    i = 0
    while i < len(rows):
        g0, r0 = rows[i]
        j = i + 1
        step = rows[j][0] - g0 if j < len(rows) and rows[j][1] == r0 + 1 else 1
        while j < len(rows) and rows[j][1] == r0 + (j - i) and rows[j][0] - rows[j - 1][0] == step:
            j += 1
        runs.append((g0, rows[j - 1][0], step, r0))
        i = j
    return runs


def _attributes(out: Any, sources: list, order: list) -> int:
    """The NDAttributes columns and the missing list, in global order; returns the number of
    missing rows."""
    import h5py

    group = out.require_group(ATTRS)
    names: dict[str, Any] = {}
    for _, f in sources:
        if ATTRS in f:
            for name, dataset in f[ATTRS].items():
                names.setdefault(name, dataset)
    columns: dict[str, list] = {name: [] for name in names}
    cached = {(s, name): f[ATTRS][name][:] for s, (_, f) in enumerate(sources)
              if ATTRS in f for name in f[ATTRS]}
    timeout = STATUS_CODES[MissingCause.TIMEOUT]
    missing: list[tuple[int, bytes, bytes]] = []
    by_uid: dict[int, tuple] = {}
    for _, f in sources:
        if "/entry/ndflow/missing" in f:
            for row in f["/entry/ndflow/missing"][:]:
                by_uid[int(row["unique_id"])] = tuple(row)
    for uid, s, row in order:
        for name, template in names.items():
            values = cached.get((s, name)) if s is not None else None
            if values is not None and row < len(values):
                columns[name].append(values[row])
            elif name == "NDArrayUniqueId":
                columns[name].append(uid)
            elif name == "NDArrayStatus":
                columns[name].append(timeout)
            else:
                columns[name].append(_empty(template.dtype))
        status = columns["NDArrayStatus"][-1] if "NDArrayStatus" in columns else 0
        if s is None:
            missing.append((uid, MissingCause.TIMEOUT.value.encode(),
                            b"in no processing rank's file (lost between ranks)"))
        elif status:
            missing.append(by_uid.get(uid, (uid, b"unknown", b"")))
    for name, template in names.items():
        dataset = group.create_dataset(name, data=np.asarray(columns[name], dtype=template.dtype)
                                       if columns[name] else np.zeros(0, template.dtype),
                                       maxshape=(None,), chunks=True)
        for key, value in template.attrs.items():
            dataset.attrs[key] = value
    table = out.require_group("/entry/ndflow").create_dataset(
        "missing", data=np.array(missing, dtype=MISSING_DTYPE), maxshape=(None,), chunks=True)
    del table, h5py
    return len(missing)


def _empty(dtype: np.dtype) -> Any:
    if dtype.kind in "OSU":
        return b"" if dtype.kind == "S" else ""
    return np.zeros((), dtype)[()]
