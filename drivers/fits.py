"""ADFITS-style driver: each FITS file that appears in a watched folder (or is given in a list)
becomes one frame, its header keywords the frame's NDAttributes.

A file is read only once it is complete: its size and modification time have not changed for
`settle_s` (writers that rename a finished file into place are seen at once). Each file is
read once. Acquire works as for any areaDetector driver: while acquiring, each ready file is
the next frame (Single: one file; Multiple: NumImages files; Continuous: until stopped), paced
by AcquirePeriod; files that arrive while idle wait in order. A file that cannot give a frame
(empty, truncated, not FITS, a table) is counted on FilesFailed_RBV, shown on LastError_RBV and
passed down the graph as a missing frame with that cause, and the driver carries on.

Security: the folder, whether from the config or a CA put on `Folder`, must lie under the
IOC's data roots, so no client can make the driver read elsewhere.

The watcher thread owns the folder, the pattern and what was seen: a `Folder` or `Pattern` put is
checked off the event loop and handed to the watcher, which applies it between two scans (and
lists the files already there, which are not new); the put completes once it has, while the
event loop serves other clients. No lock is held across a scan.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from ndflow import __version__
from ndflow.adcore import AD_BASE, NDARRAY_BASE, data_type_index
from ndflow.component import PutRefused
from ndflow.config import Site
from ndflow.driver import CONTINUOUS, Driver, FrameContext
from ndflow.graph import PortGraph
from ndflow.ndarray import EPICS_EPOCH_OFFSET, AttrSource, MissingCause, NDArray, NDAttribute
from ndflow.params import R, RW, ParamTable, int_param, string_param, text_param

from .fits_file import FITSError, read_fits
from .fits_gateway import GATEWAY_PARAMS, GatewayOptions, build_gateway
from .ftp_gateway import IngestGateway

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".filepart")

FITS_PARAMS = (
    text_param("Folder", 256, "", RW, group="FITS",
               doc="watched folder (under a data root); empty: none"),
    string_param("Pattern", "**/*.fits*", RW, group="FITS",
                 doc="glob below the folder; ** includes subfolders (one per camera)"),
    string_param("HDU", "auto", RW, group="FITS",
                 doc="auto (first image), a number or an EXTNAME"),
    int_param("FilesSeen_RBV", 0, R, group="FITS", doc="complete files found"),
    int_param("FilesRead_RBV", 0, R, group="FITS", doc="files that gave a frame"),
    int_param("FilesFailed_RBV", 0, R, group="FITS", doc="files that could not be read"),
    int_param("FilesQueued_RBV", 0, R, group="FITS", doc="files waiting to be read"),
    text_param("LastFile_RBV", 256, "", R, group="FITS"),
    text_param("LastError_RBV", 256, "", R, group="FITS"),
)


class FITSOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field("", description="watched folder (relative to the config; under a data "
                                        "root)")
    pattern: str = Field("**/*.fits*", description="glob of the files to read below the folder")
    files: list[str] = Field(default_factory=list,
                             description="files read in this order at start (relative to the "
                                         "config; under a data root)")
    hdu: str = Field("auto", description="auto, an HDU number or an EXTNAME")
    camera_keyword: str = Field("CAMERA", description="header keyword naming the camera")
    settle_s: float = Field(0.5, ge=0, description="a file is complete once unchanged this long")
    poll_s: float = Field(0.2, gt=0, le=10, description="folder scan interval")
    read_existing: bool = Field(False, description="also read files present at start")
    acquire_at_start: bool = Field(False, description="start Continuous acquisition at start, "
                                                      "so files flow with no client")
    gateway: GatewayOptions | None = Field(None, description="an FTP ingest gateway: cameras "
                                           "upload to it, files are forwarded and read")


class FITSDriver(Driver):
    screen = "FITSDriver"
    PARAMS = (NDARRAY_BASE, AD_BASE, FITS_PARAMS)
    kind = "fits"
    Options = FITSOptions
    manufacturer = "FITS files"
    model = "ADFITS"
    driver_version = __version__

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 options: FITSOptions | None = None, site: Site | None = None,
                 **kw: Any) -> None:
        self.site = site
        self.options = options or FITSOptions()  # before the base declares the parameters
        super().__init__(port, prefix, graph, pool_bytes, **kw)
        self.values.update({"Pattern": self.options.pattern, "HDU": self.options.hdu,
                            "ImageMode": CONTINUOUS, "AcquireTime": 0.0, "AcquirePeriod": 0.0,
                            "SDKVersion_RBV": _astropy_version()})
        self._ready: queue.Queue[Path] = queue.Queue()
        self._seen: set[Path] = set()
        self._pending: dict[Path, tuple[int, int, float]] = {}  # path -> size, mtime, since
        # owned by the watcher thread once it runs (before: by the thread that starts it)
        self._folder: Path | None = None
        self._pattern: str = self.values["Pattern"]
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()  # a command is waiting, or quit
        self._watcher: threading.Thread | None = None
        self._quit = threading.Event()
        if self.options.folder:
            self._folder = self._allowed(self.options.folder, "folder")
            self.values["Folder"] = str(self._folder)
        self._listed = [self._allowed(f, "files") for f in self.options.files]
        self.gateway: IngestGateway | None = None
        self._gateway_dirs: tuple[Path, Path] | None = None
        gw = self.options.gateway
        if gw is not None:
            gw.address()  # a malformed listen address is a config error now
            incoming = self._allowed(gw.incoming, "gateway.incoming")
            if incoming == self._folder:
                raise ValueError("gateway.incoming is read through the gateway; do not also "
                                 "watch it as folder")
            self._gateway_dirs = (incoming, self._allowed(gw.spool, "gateway.spool"))

    def declare(self) -> ParamTable:
        table = super().declare()
        if self.options.gateway is not None:
            for p in GATEWAY_PARAMS:
                table.params[p.name] = p
        return table

    # --- folders -----------------------------------------------------------------------------------
    def _allowed(self, path: str, key: str) -> Path:
        base = self.site.base_dir if self.site is not None else Path.cwd()
        full = (base / Path(path).expanduser())
        if self.site is None:
            return full.resolve()
        try:
            return self.site.data_path(full)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None

    async def put_Folder(self, value: str) -> str:
        if not value:
            await self._in_watcher(lambda: self._set_folder(None))
            return ""
        loop = asyncio.get_running_loop()
        folder = await loop.run_in_executor(None, self._check_folder, value)  # stat, off loop
        await self._in_watcher(lambda: self._set_folder(folder))
        return str(folder)

    def _check_folder(self, value: str) -> Path:
        try:
            folder = self._allowed(value, "Folder")
        except ValueError as exc:
            raise PutRefused(str(exc)) from None
        if not folder.is_dir():
            raise PutRefused(f"Folder {value}: no such folder")
        return folder

    async def put_Pattern(self, value: str) -> str:
        if not value or value.startswith("/") or ".." in Path(value).parts:
            raise PutRefused(f"Pattern {value!r}: give a glob below the folder, e.g. *.fits")
        await self._in_watcher(lambda: self._set_pattern(value))
        return value

    def _set_folder(self, folder: Path | None) -> None:
        """Watch `folder` from now on; the files in it now are not new (watcher thread)."""
        present = self._candidates(folder, self._pattern) if folder is not None else []
        self._folder = folder
        self._pending.clear()
        self._seen.update(present)
        self.message(f"watching {folder}" if folder else "not watching a folder")

    def _set_pattern(self, pattern: str) -> None:
        """Look for `pattern` from now on; files it matches now are not new (watcher thread)."""
        if self._folder is not None:
            self._seen.update(self._candidates(self._folder, pattern))
        self._pattern = pattern

    def _baseline(self, folder: Path | None, pattern: str) -> None:
        if folder is not None:
            self._seen.update(self._candidates(folder, pattern))

    def _in_watcher(self, fn: Callable[[], None]) -> asyncio.Future:
        """Run `fn` in the watcher thread between two scans (or, with no watcher running, in
        an executor thread); a future the put awaits, so the event loop never waits."""
        loop = asyncio.get_running_loop()
        watcher = self._watcher
        if watcher is None or not watcher.is_alive() or self._quit.is_set():
            return loop.run_in_executor(None, fn)
        future = loop.create_future()

        def command() -> None:
            try:
                fn()
            except BaseException as exc:  # the put fails with the reason
                loop.call_soon_threadsafe(_settle, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, None)

        self._commands.put(command)
        self._wake.set()
        return future

    # --- the watcher -------------------------------------------------------------------------------
    def enqueue(self, paths: Iterable[Path]) -> None:
        """Read these files next, in this order (the replay API and the config's list)."""
        for path in paths:
            self._ready.put(Path(path))
            self.increment("FilesSeen_RBV")
        self.set("FilesQueued_RBV", self._ready.qsize())

    def go_offline(self) -> None:
        """Batch replay drives this driver: no folder watching, no acquisition of its own."""
        self.options.acquire_at_start = False
        self._gateway_dirs = None
        self._listed = []
        self._set_folder(None)

    def start(self) -> None:
        super().start()
        if self._folder is not None and not self.options.read_existing:
            self._baseline(self._folder, self._pattern)
        self.enqueue(self._listed)
        if self._gateway_dirs is not None:
            self._start_gateway(*self._gateway_dirs)
        self._watcher = threading.Thread(target=self._watch, name=f"{self.port}-watch",
                                         daemon=True)
        self._watcher.start()
        if self.options.acquire_at_start:
            self.set("ImageMode", CONTINUOUS)
            self._begin()

    def _start_gateway(self, incoming: Path, spool: Path) -> None:
        """Passwords are resolved here, not at construction, so `ndflow replay` and `ndflow
        screens` need no secrets. A failure (a password missing, the port taken, the spool
        locked by another gateway) is reported and the driver keeps reading its folder."""
        gw = self.options.gateway
        base = self.site.base_dir if self.site is not None else Path.cwd()
        try:
            self.gateway = build_gateway(gw, base, incoming, spool,
                                         deliver=lambda path: self.enqueue([path]),
                                         publish=self.set_if_changed)
            self.gateway.start()
        except (OSError, ValueError, RuntimeError) as exc:
            self.gateway = None
            reason = getattr(exc, "strerror", None) or exc
            text = f"FTP gateway on {gw.listen} not started: {reason}"
            self.set("FTPLastError_RBV", text[:255])
            self._report(text)
            return
        self.message(f"FTP gateway listening on {gw.listen}")

    def shutdown(self) -> None:
        self._quit.set()
        self._wake.set()
        if self.gateway is not None:
            self.gateway.stop()
        super().shutdown()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch(self) -> None:
        while True:
            self._wake.wait(self.options.poll_s)
            self._wake.clear()
            self._run_commands()  # after clear(): a command queued meanwhile is not missed
            if self._quit.is_set():
                return
            try:
                ready = self._scan()
            except OSError as exc:  # the folder vanished or went unreadable: say so, keep going
                self._report(f"cannot scan {self._folder}: {exc.strerror or exc}")
                continue
            if ready:
                self.enqueue(ready)

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _scan(self) -> list[Path]:
        folder = self._folder
        if folder is None:
            return []
        now = time.monotonic()
        ready = []
        for path in self._candidates(folder, self._pattern):
            if path in self._seen:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            state = (st.st_size, st.st_mtime_ns)
            size, mtime, since = self._pending.get(path, (-1, -1, now))
            if (size, mtime) != state:
                self._pending[path] = (*state, now)
            elif now - since >= self.options.settle_s:
                del self._pending[path]
                self._seen.add(path)
                ready.append((st.st_mtime_ns, path))
        return [path for _, path in sorted(ready)]

    @staticmethod
    def _candidates(folder: Path, pattern: str) -> list[Path]:
        return [p for p in folder.glob(pattern)
                if p.is_file() and not p.name.startswith(".")
                and not p.name.endswith(PARTIAL_SUFFIXES)]

    # --- frames ------------------------------------------------------------------------------------
    def produce_frame(self, ctx: FrameContext) -> NDArray | None:
        while not ctx.stopped:
            try:
                path = self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
            self.set("FilesQueued_RBV", self._ready.qsize())
            return self.frame_of(path)
        return None

    def frame_of(self, path: Path) -> NDArray:
        """The frame of one file, or a missing frame saying why there is none."""
        self.set("LastFile_RBV", str(path)[-255:])
        try:
            fits = read_fits(path, self.values["HDU"], self.options.camera_keyword)
        except FITSError as exc:
            self.increment("FilesFailed_RBV")
            self._report(str(exc), log=False)  # the missing frame is logged with its cause
            return NDArray.missing(MissingCause.INPUT_ERROR, str(exc))
        out = self.pool.alloc(fits.data.shape, fits.dtype)
        if out is None:
            self.increment("FilesFailed_RBV")
            self._report(f"{path.name}: pool limit {self.pool.max_bytes / 2**20:.0f} MB reached")
            return NDArray.missing(MissingCause.NO_MEMORY, f"{path.name}: pool limit reached")
        out[...] = fits.data  # the one copy, byte order converted on the way into the pool
        frame = NDArray.from_numpy(out)
        for key, (value, comment) in fits.header.items():
            frame.attributes[key] = NDAttribute(key, value, comment, AttrSource.DRIVER,
                                                "FITS header")
        for key, value, text in (("FileName", path.name, "FITS file name"),
                                 ("FilePath", str(path), "FITS file path"),
                                 ("CameraId", fits.camera, "camera that took the frame"),
                                 ("FITSHDU", fits.hdu, "HDU the image came from")):
            frame.attributes[key] = NDAttribute(key, value, text, AttrSource.DRIVER, "FITS file")
        if fits.time is not None:  # the frame's time is when it was taken, not when read
            frame.timestamp = fits.time - EPICS_EPOCH_OFFSET
        ny, nx = fits.data.shape
        self.set_if_changed({"DataType": data_type_index(fits.dtype),
                             "MaxSizeX_RBV": nx, "MaxSizeY_RBV": ny, "SizeX": nx, "SizeY": ny})
        self.increment("FilesRead_RBV")
        return frame

    def _report(self, text: str, log: bool = True) -> None:
        self.set("LastError_RBV", text[:255])
        self.message(text, logging.WARNING, log)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _astropy_version() -> str:
    import astropy
    return f"astropy {astropy.__version__}"
