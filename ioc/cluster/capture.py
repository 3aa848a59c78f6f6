"""Capture on the control rank's file writer: one capture over every processing rank's writer.

Capture=1 is mirrored to the processing ranks' writers (each its own file, `<FileName>_r<rank>`),
the frames captured are counted over ranks (for partial frames: a frame is captured once every
module's ranks have it), and, for HDF5, when the capture ends the master file is written
(`master`): a virtual dataset over the rank files in global frame order, the whole detector
image assembled from the module files for partial frames.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..busy import finish
from ..component import Component, PutRefused
from ..ndarray import resolve
from ..transport import HANDLED
from .common import rank_file_name, writes_hdf5
from .master import build_master

if TYPE_CHECKING:
    from .control import ControlNode

log = logging.getLogger("ndflow.cluster")


class MasterCapture:
    """Capture on the control rank's file writer: mirrored to the processing ranks' writers
    (each its own file, `<FileName>_r<rank>`), the total counted over ranks, and, for HDF5,
    the master file written when the capture ends (ndflow.cluster.master)."""

    def __init__(self, node: "ControlNode", writer: Component) -> None:
        self.node = node
        self.writer = writer
        self.capturing = False
        self.done: Future | None = None
        self.path: Path | None = None
        self._ending: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the files the processing ranks write this capture to, for a master written when the
        #: IOC stops mid-capture (the ranks cannot answer then)
        self._rank_files: dict[int, Path] = {}

    async def put_capture(self, value: int) -> Any:
        self._loop = asyncio.get_running_loop()
        w = self.writer
        if not value:
            if not self.capturing and self._ending is None:
                return 0
            await self.stop()
            return HANDLED
        if w.values["FileWriteMode"] == 0:
            message = "Capture needs FileWriteMode Capture or Stream"
            w.set_many({"WriteStatus": 1, "WriteMessage": message})
            raise PutRefused(message)
        if self.capturing or self._ending is not None:  # the previous capture ends first
            await self.stop()
        self.path = None
        if writes_hdf5(w):
            try:  # the master's name, checked against the data roots; FullFileName_RBV
                self.path = w.next_file(dict(w.values))
            except Exception as exc:
                w.set_many({"WriteStatus": 1, "WriteMessage": str(exc)[:255]})
                raise PutRefused(str(exc)) from None
        w.set("NumCaptured_RBV", 0)
        self.node.aggregator.forget(w.port, "NumCaptured_RBV")
        answers = await self.node.ask(w, "Capture", 1)
        refused = {r: a for r, a in answers.items() if not a.get("ok")}
        if refused:
            rank, answer = sorted(refused.items())[0]
            self.node.mirror(w, "Capture", 0)
            message = f"rank {rank}: {answer.get('error') or 'capture refused'}"
            w.set_many({"WriteStatus": 1, "WriteMessage": message[:255]})
            raise PutRefused(message)
        w.set_many({"WriteStatus": 0, "WriteMessage": ""})
        self._rank_files = self._rank_file_names() if self.path is not None else {}
        self.capturing = True
        self.done = Future()
        w.set("Capture", 1)
        return await finish(self.done, w.publisher)

    def _rank_file_names(self) -> dict[int, Path]:
        """Each processing rank's file of the capture starting: its writer has the same path
        settings and file number as this one (the puts are mirrored) and its own FileName."""
        w = self.writer
        values = dict(w.values)
        names = {}
        for rank in self.node.workers:
            try:
                names[rank] = w.next_file(
                    {**values, "FileName": rank_file_name(values["FileName"], rank)}, show=False)
            except Exception:  # refused for this writer as for the rank's: it writes none
                continue
        return names

    def write_master_at_shutdown(self) -> None:
        """The IOC stops while this capture is on (SIGTERM, Ctrl-C), once every rank has shut
        its IOC down and closed its file (ndflow.cluster.run): write the master over what the
        rank files hold, so a capture cut short is still one file in frame order, its missing
        frames rows with their cause. Without this the rank files were left with no master."""
        if not self.capturing or self.path is None or not self._rank_files:
            return
        summary = self._build_master(self.path, sorted(self._rank_files.items()))
        self.capturing = False
        log.info("the IOC stops mid-capture: master file %s: %d frames (%d missing) from ranks "
                 "%s", self.path, summary.frames, summary.missing, summary.ranks)

    def _build_master(self, path: Path, files: list[tuple[int, Path]]) -> Any:
        """Write the master at `path` over the rank files, with the writer's NumCapture and
        FillValue; module files when frames are dispatched in parts and not assembled."""
        w = self.writer
        cluster = self.node.cluster
        grid = self.node.module_grid if cluster.partial and not cluster.assemble else None
        return build_master(lambda p: w.open_hdf5(p), path, files, w.values["NumCapture"],
                            float(w.values.get("FillValue", 0.0)), grid)

    def check_total(self) -> None:
        """Reports came in (MPI thread): end the capture once NumCapture frames are written."""
        w = self.writer
        limit = w.values["NumCapture"]
        if self.capturing and limit and w.values["NumCaptured_RBV"] >= limit and \
                self._loop is not None and self._ending is None:
            self._loop.call_soon_threadsafe(self._end_soon)

    def _end_soon(self) -> None:
        if self._ending is None and self.capturing:
            self._ending = asyncio.ensure_future(self._end())

    async def stop(self) -> None:
        """End the capture (once, whoever asks first: Capture=0 or the total reached)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        await asyncio.shield(self._ending)

    async def _end(self) -> None:
        """Stop every rank's capture (their queued frames are written first: DrainOnStop),
        write the master, and complete Capture=1's put."""
        w = self.writer
        done = self.done  # this capture's put: a Capture=1 after it gets its own
        try:
            answers = await self.node.ask(w, "Capture", 0, complete=True)
            self.capturing = False
            files = []
            for rank, answer in sorted(answers.items()):
                name = (answer.get("values") or {}).get("FullFileName_RBV", "")
                if not answer.get("ok"):
                    w.set_many({"WriteStatus": 1,
                                "WriteMessage": f"rank {rank}: {answer.get('error')}"[:255]})
                if name:
                    files.append((rank, Path(name)))
            if self.path is not None and files:
                path = self.path
                try:
                    summary = await asyncio.get_running_loop().run_in_executor(
                        None, self._build_master, path, files)
                    self.node.status.set("MasterFile_RBV", str(path)[:511])
                    w.set("NumCaptured_RBV", summary.frames)
                    log.info("master file %s: %d frames (%d missing) from ranks %s", path,
                             summary.frames, summary.missing, summary.ranks)
                except Exception as exc:
                    message = f"master file {path}: {type(exc).__name__}: {exc}"
                    log.error("%s", message)
                    w.set_many({"WriteStatus": 1, "WriteMessage": message[:255]})
            if w.values.get("AutoIncrement"):
                w.set("FileNumber", w.values["FileNumber"] + 1)
        finally:
            self.capturing = False
            self._ending = None
            w.set("Capture", 0)
            if w.publisher is not None:
                await w.publisher.drain()
            if done is not None:
                resolve(done)
