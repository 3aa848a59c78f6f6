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

Partial frames (detector modules, one per acquisition rank): the rank files hold module frames,
each row tagged by its NDAttributes ModuleIndex, ModuleOffsetX, ModuleOffsetY (the sim's). The
master's `/entry/data/data` is then the whole detector image (N, H, W): each module's rows are
mapped to the tile at its recorded offset, so the virtual dataset assembles the module files.
A frame with a module missing (in no file, or a missing row in its file) is a missing row of the
master with that module's cause, and reads FillValue whole. The NDAttributes columns are the
lowest module's (its timestamps: each module's rank stamps its own). The module offsets are attributes of
`/entry/data/data` (`module_offsets`: [module, x, y, width, height] rows) and the table
`/entry/ndflow/modules`.

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


#: the NDAttributes a module frame carries (drivers/sim.py): which module, where it goes
MODULE_ATTRS = ("ModuleIndex", "ModuleOffsetX", "ModuleOffsetY")


@dataclass
class RankFile:
    rank: int
    path: Path
    uids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    modules: np.ndarray | None = None  # each row's module (partial frames)


@dataclass
class MasterSummary:
    frames: int
    missing: int
    ranks: dict[int, int]  # frames per rank


def build_master(create: Callable[[Path], Any], path: Path, rank_files: list[tuple[int, Path]],
                 limit: int = 0, fill: float = 0.0,
                 grid: tuple[int, int] | None = None) -> MasterSummary:
    """Write the master file at `path` (opened with `create(path)`, which returns a writable
    h5py.File: the writer's own safe opener) over `rank_files` [(rank, file)]; at most `limit`
    frames (0: all), the first in unique-id order. `grid`: the detector's module grid (X, Y)
    when the files hold module frames (partial-frame dispatch)."""
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
            modules = f[f"{ATTRS}/ModuleIndex"][:n].astype(np.int64) \
                if f"{ATTRS}/ModuleIndex" in f else None
            sources.append((RankFile(rank, Path(file), uids[:n], modules), f))
        if grid is not None:
            return _write_partial(create, path, sources, limit, fill, grid)
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
        entry, data_group = _nexus_groups(out)
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
        _link_sources(out, entry.require_group("ndflow"), sources, path)
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


def _write_partial(create: Callable[[Path], Any], path: Path, sources: list, limit: int,
                   fill: float, grid: tuple[int, int]) -> MasterSummary:
    """The master over module files: each global row assembled from every module's row."""
    import h5py

    count = grid[0] * grid[1]
    rows: dict[int, dict[int, tuple[int, int]]] = {}  # uid -> module -> (source, row)
    offsets: dict[int, tuple[int, int]] = {}  # module -> (x, y) as recorded
    for s, (rf, f) in enumerate(sources):
        modules = rf.modules if rf.modules is not None else np.zeros(len(rf.uids), np.int64)
        columns = [f[f"{ATTRS}/{name}"][:len(rf.uids)] if f"{ATTRS}/{name}" in f else None
                   for name in ("ModuleOffsetX", "ModuleOffsetY")]
        status = f[f"{ATTRS}/NDArrayStatus"][:len(rf.uids)] if f"{ATTRS}/NDArrayStatus" in f \
            else np.zeros(len(rf.uids), np.int8)
        for row, (uid, module) in enumerate(zip(rf.uids, modules)):
            rows.setdefault(int(uid), {}).setdefault(int(module), (s, row))
            known = columns[0] is not None and columns[1] is not None
            if not status[row] and known and int(module) not in offsets:
                offsets[int(module)] = (int(columns[0][row]), int(columns[1][row]))
    first = sources[0][1]["/entry/data/data"] if sources else None
    tile = tuple(first.shape[1:]) if first is not None else (0, 0)
    dtype = first.dtype if first is not None else np.dtype("u2")
    h, w = tile[-2:] if len(tile) >= 2 else (0, 0)
    for module in range(count):  # a module no file has: where the grid puts it
        offsets.setdefault(module, ((module % grid[0]) * w, (module // grid[0]) * h))
    uids = sorted(rows)
    if uids:
        uids = list(range(uids[0], uids[-1] + 1))
    if limit:
        uids = uids[:limit]
    by_uid = _missing_entries(sources)
    timeout = STATUS_CODES[MissingCause.TIMEOUT]
    order: list[tuple[int, int | None, int]] = []  # attribute source: the lowest module's row
    overrides: dict[int, tuple[int, bytes, bytes]] = {}
    for uid in uids:
        present = rows.get(uid, {})
        for module in range(count):
            where = present.get(module)
            if where is None:
                overrides[uid] = (timeout, MissingCause.TIMEOUT.value.encode(),
                                  f"module {module} in no processing rank's file".encode())
                break
            s, row = where
            code = _status(sources[s][1], row)
            if code:
                cause, message = by_uid.get((s, uid), (b"unknown", b""))
                overrides[uid] = (code, cause, f"module {module}: ".encode() + message)
                break
        lowest = min(present) if present else None
        order.append((uid, *present[lowest]) if lowest is not None else (uid, None, -1))
    n = len(uids)
    gh = max(y for _, y in offsets.values()) + h
    gw = max(x for x, _ in offsets.values()) + w
    shape = (n, *tile[:-2], gh, gw)
    with create(path) as out:
        entry, data_group = _nexus_groups(out)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype, maxshape=shape)
        per_rank: dict[int, int] = {}
        for s, (rf, f) in enumerate(sources):
            name = os.path.relpath(rf.path, path.parent)
            vsource = h5py.VirtualSource(name, "/entry/data/data",
                                         shape=f["/entry/data/data"].shape, dtype=dtype)
            for module in range(count):
                x0, y0 = offsets[module]
                mapped = [(g, rows[uid][module][1]) for g, uid in enumerate(uids)
                          if uid not in overrides and rows[uid][module][0] == s]
                per_rank[rf.rank] = per_rank.get(rf.rank, 0) + len(mapped)
                for g0, g1, step, r0 in _runs(mapped):
                    span = (g1 - g0) // step + 1
                    where = (slice(g0, g1 + 1, step), *[slice(None)] * (len(tile) - 2),
                             slice(y0, y0 + h), slice(x0, x0 + w))
                    layout[where] = vsource[r0:r0 + span]
        dataset = data_group.create_virtual_dataset("data", layout, fillvalue=fill)
        dataset.attrs["signal"] = 1
        table = np.array([(m, *offsets[m], w, h) for m in range(count)], dtype=np.int64)
        dataset.attrs["module_offsets"] = table
        dataset.attrs["module_offsets_columns"] = "module, x, y, width, height"
        missing_rows = _attributes(out, sources, order, overrides, skip=MODULE_ATTRS)
        group = entry.require_group("ndflow")
        group.create_dataset("modules", data=table).attrs["columns"] = \
            "module, x, y, width, height"
        _link_sources(out, group, sources, path)
    return MasterSummary(n, missing_rows, per_rank)


def _nexus_groups(out: Any) -> tuple[Any, Any]:
    """The master's /entry (NXentry) and /entry/data (NXdata), as a single-process file has."""
    out.attrs["creator"] = "ndflow cluster master"
    entry = out.require_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    data_group = entry.require_group("data")
    data_group.attrs["NX_class"] = "NXdata"
    return entry, data_group


def _link_sources(out: Any, group: Any, sources: list, path: Path) -> None:
    """Name each rank's file (relative to the master) and copy the acquisitions' record from
    the first file that has one."""
    ranks = group.create_group("ranks")
    for rf, _ in sources:
        ranks.attrs[f"rank{rf.rank}"] = os.path.relpath(rf.path, path.parent)
    for _, f in sources:
        if "/entry/ndflow/acquisitions" in f:
            f.copy(f["/entry/ndflow/acquisitions"], out["/entry/ndflow"], "acquisitions")
            break


def _status(f: Any, row: int) -> int:
    column = f"{ATTRS}/NDArrayStatus"
    return int(f[column][row]) if column in f and row < f[column].shape[0] else 0


def _missing_entries(sources: list) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """(source, unique id) -> (cause, message) from each file's missing table."""
    out = {}
    for s, (_, f) in enumerate(sources):
        if "/entry/ndflow/missing" in f:
            for row in f["/entry/ndflow/missing"][:]:
                out[(s, int(row["unique_id"]))] = (bytes(row["cause"]), bytes(row["message"]))
    return out


def _attributes(out: Any, sources: list, order: list,
                overrides: dict[int, tuple[int, bytes, bytes]] | None = None,
                skip: tuple[str, ...] = ()) -> int:
    """The NDAttributes columns and the missing list, in global order; returns the number of
    missing rows. `overrides`: unique id -> (status code, cause, message) of rows missing for
    a reason the attribute source does not show (a module missing); `skip`: columns left
    out."""
    overrides = overrides or {}
    import h5py

    group = out.require_group(ATTRS)
    names: dict[str, Any] = {}
    for _, f in sources:
        if ATTRS in f:
            for name, dataset in f[ATTRS].items():
                if name not in skip:
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
        if uid in overrides:
            code, cause, message = overrides[uid]
            if "NDArrayStatus" in columns:
                columns["NDArrayStatus"][-1] = code
            missing.append((uid, cause, message[:120]))
        elif s is None:
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
