"""Batch replay: archived files pushed through an IOC's plugin graph with no Channel Access
server, for algorithm development away from the telescope.

The IOC is built from the same config and runs the same code: each file is one Acquire of the
file-reading driver, written through the same put path a CA client uses, and completes (with
WaitForPlugins) when every plugin, Python algorithms included, has processed it. After each file
each plugin's result parameters (`Component.result_params()`: an algorithm's outputs, or
whatever a third-party plugin names) are read into one table row, a column per parameter named
as its PV below the IOC prefix (`Focus:Hfd_RBV`). Every plugin has
its callbacks enabled (replay exists to run them); file writers still write only when
captured; the driver's folder watching and FTP gateway stay off.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from . import registry
from .component import Component
from .config import IOCConfig, LineMap
from .driver import SINGLE, Driver
from .plugin import Plugin

log = logging.getLogger("ndflow.replay")


@runtime_checkable
class FileSource(Protocol):
    """A driver that turns files into frames (the FITS driver)."""

    def enqueue(self, paths: Iterable[Path]) -> None: ...

    def go_offline(self) -> None:
        """Stop watching folders and starting acquisitions on its own: replay drives it."""


class ReplayError(Exception):
    """A config that cannot replay files; the message says what to change."""


@dataclass
class ReplaySummary:
    files: int = 0
    frames: int = 0
    missing: Counter = field(default_factory=Counter)  # cause -> files
    algorithm_failures: Counter = field(default_factory=Counter)  # plugin prefix -> files
    seconds: float = 0.0
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        rate = self.files / self.seconds if self.seconds else 0.0
        parts = [f"{self.files} files in {self.seconds:.1f} s ({rate:.1f}/s): "
                 f"{self.frames} frames"]
        parts += [f"{n} {cause}" for cause, n in self.missing.items()]
        parts += [f"{prefix} failed on {n}" for prefix, n in self.algorithm_failures.items()]
        return ", ".join(parts)


def replay(config: IOCConfig, files: list[Path], lines: LineMap | None = None,
           table: Path | None = None,
           progress: Callable[[int, int, Path], None] | None = None) -> ReplaySummary:
    """Push `files` through the IOC `config` describes; return the per-file outputs. `table`
    (.csv, or .h5/.hdf5) receives one row per file."""
    from .server import IOC

    ioc = IOC(config, lines, transports=[])  # nothing is served while replaying
    try:
        summary = asyncio.run(_run(ioc, files, progress))
    finally:
        ioc.shutdown()
    if table is not None:
        write_table(table, summary)
    return summary


async def _run(ioc: Any, files: list[Path],
               progress: Callable[[int, int, Path], None] | None) -> ReplaySummary:
    sources = [d for d in ioc.drivers if isinstance(d, FileSource)]
    if not sources:
        kinds = ", ".join(sorted({d.kind for d in ioc.drivers}))
        readers = ", ".join(file_source_types()) or "none installed"
        raise ReplayError(f"replay needs a driver that reads files (type: {readers}); "
                          f"this config has: {kinds}")
    driver: Driver = sources[0]  # type: ignore[assignment]
    driver.go_offline()  # type: ignore[attr-defined]
    # result parameters per plugin, fixed at start: they are the table's columns
    algorithms = {p: names for p in ioc.plugins if (names := list(p.result_params()))}
    started = asyncio.Event()
    serving = asyncio.create_task(ioc.run(started, serve=False))
    await started.wait()
    try:
        for plugin in ioc.plugins:
            await put(plugin, "EnableCallbacks", 1)
        for name, value in (("ImageMode", SINGLE), ("WaitForPlugins", 1), ("AcquirePeriod", 0.0),
                            ("ArrayCallbacks", 1)):
            await put(driver, name, value)
        summary = ReplaySummary(columns=["file", "unique_id", "status"] + [
            column(p, name) for p, names in algorithms.items() for name in names])
        begun = time.monotonic()
        for i, path in enumerate(files):
            failed_before = {p.port: _failures(p) for p in algorithms}
            driver.enqueue([path])  # type: ignore[attr-defined]
            await put(driver, "Acquire", 1)  # completes when every plugin is done with it
            summary.rows.append(_row(path, driver, algorithms, failed_before, summary))
            if progress is not None:
                progress(i + 1, len(files), path)
        summary.seconds = time.monotonic() - begun
        summary.files = len(files)
        return summary
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def put(component: Component, name: str, value: Any) -> None:
    """Write a parameter through the CA put path (hooks, clamping, readbacks)."""
    await component.handle_put(component.params[name], value)


def column(plugin: Plugin, name: str) -> str:
    """A table column: the output's PV name without the IOC prefix, as a user knows it."""
    return f"{plugin.prefix}{name}"


def file_source_types() -> list[str]:
    """The registered driver types that read files (replay can drive them)."""
    names = []
    for name in registry.available("drivers"):
        try:
            cls = registry.load("drivers", name)
        except Exception:  # a broken third-party entry point is not this error's subject
            continue
        if isinstance(cls, type) and all(callable(getattr(cls, m, None))
                                         for m in ("enqueue", "go_offline")):
            names.append(name)
    return names


def _failures(plugin: Plugin) -> int:
    return sum(int(plugin.values.get(k, 0)) for k in ("FramesFailed_RBV", "FramesTimedOut_RBV"))


def _row(path: Path, driver: Driver, algorithms: dict[Plugin, list[str]],
         failed_before: dict[str, int], summary: ReplaySummary) -> dict[str, Any]:
    status = driver.last_frame_status
    row: dict[str, Any] = {"file": str(path), "unique_id": driver.values["ArrayCounter"]}
    if status.valid:
        summary.frames += 1
        row["status"] = "ok"
    else:
        cause = status.missing.value if status.missing else "missing"
        summary.missing[cause] += 1
        row["status"] = f"{cause}: {status.message}"
    for plugin, names in algorithms.items():
        failed = _failures(plugin) > failed_before[plugin.port]
        if failed:
            summary.algorithm_failures[plugin.prefix] += 1
        ok = status.valid and not failed
        for name in names:
            row[column(plugin, name)] = plugin.values.get(name) if ok else None
    return row


def write_table(path: Path, summary: ReplaySummary) -> None:
    """One row per file: CSV, or one HDF5 dataset per column (NaN / "" where no value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".h5", ".hdf5"):
        _write_hdf5(path, summary)
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=summary.columns)
        writer.writeheader()
        for row in summary.rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _write_hdf5(path: Path, summary: ReplaySummary) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        group = f.create_group("replay")
        group.attrs["columns"] = summary.columns
        for column in summary.columns:
            values = [row.get(column) for row in summary.rows]
            if all(isinstance(v, (int, float)) or v is None for v in values):
                data = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            else:
                data = np.array(["" if v is None else str(v) for v in values],
                                dtype=h5py.string_dtype())
            group.create_dataset(column.replace("/", "_"), data=data)
