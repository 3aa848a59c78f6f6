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
IOC's data roots, so no client can make the driver read elsewhere, and nothing below a root is
looked up through a symbolic link (a local user may be able to plant one there). The folder is
opened from its data root's descriptor one component at a time with O_NOFOLLOW
(`ndflow.safepath`) whenever it is listed; it is listed with `os.scandir` on that descriptor
and names are matched against Pattern with `fnmatch` (no glob, which follows links); each file
is opened relative to its folder's descriptor with O_NOFOLLOW and handed to astropy as an open
file. A link named like a FITS file is counted as a bad file ("symbolic link refused"); a link
in place of a subfolder is not entered; the folder swapped for a link stops the watch with that
reason.
The config's file list and the FTP gateway's uploads (under a data root) are opened the same
way; only files named on `ndflow replay`'s command line are opened by name.

The folder is watched with change notification (watchfiles), not listed at every poll:
`fits_watch.FolderWatch` looks only at the names that changed. The watcher thread owns it: a
`Folder` or `Pattern` put is checked off the event loop and handed to the watcher, which applies
it between two waits (the files already there are not new); the put completes once it has, while
the event loop serves other clients. No lock is held across a listing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
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
from ndflow.pool import NoMemory
from ndflow.safepath import LinkRefused, Location, NotAFolder, PathRefused, open_folder
from ndflow.safepath import open_file as open_safely

from .fits_file import FITSError, FITSFrame, read_fits
from .fits_gateway import GATEWAY_PARAMS, GatewayOptions, build_gateway
from .fits_watch import FolderWatch, Source
from .gateway import IngestGateway

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
    poll_s: float = Field(0.2, gt=0, le=10, description="how often settling files are looked "
                                                        "at (the folder itself is not re-listed)")
    force_polling: bool = Field(False, description="poll the folder instead of inotify (network "
                                                   "file systems written from other hosts)")
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
        self._ready: queue.Queue[Source] = queue.Queue()
        # owned by the watcher thread once it runs (before: by the thread that starts it)
        self._folder: Path | None = None
        self._where: Location | None = None  # the folder, as opened: its root and components
        self._files = FolderWatch(self.options.settle_s, self._report,
                                  self.options.force_polling, self.options.poll_s)
        self._scan_error = ""  # the last watch failure reported (each is reported once)
        self._pattern: str = self.values["Pattern"]
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()  # a command is waiting, or quit
        self._watcher: threading.Thread | None = None
        self._quit = threading.Event()
        if self.options.folder:
            self._folder = self._allowed(self.options.folder, "folder")
            self._where = self._locate(self._folder, folder=True)
            self.values["Folder"] = str(self._folder)
        self._listed = [self._source(self._allowed(f, "files")) for f in self.options.files]
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

    def _locate(self, path: Path, folder: bool = False) -> Location:
        """`path` (absolute, checked by `_allowed`) as a data root and the components below it,
        to be opened one at a time with links refused (PathRefused if under no root). Without
        a site (a driver built by hand) the folder itself, or the file's folder, is the root."""
        if self.site is None:
            return Location(path, ()) if folder else Location(path.parent, (path.name,))
        return self.site.locate(path)

    def _source(self, path: Path) -> Source:
        """A file under a data root (the config's list, a gateway upload), opened safely."""
        try:
            return Source(path, self._locate(path))
        except PathRefused as exc:
            return Source(path, refused=str(exc))

    async def put_Folder(self, value: str) -> str:
        if not value:
            await self._in_watcher(lambda: self._set_folder(None))
            return ""
        loop = asyncio.get_running_loop()
        folder, where = await loop.run_in_executor(None, self._check_folder, value)  # off loop
        await self._in_watcher(lambda: self._set_folder(folder, where))
        return str(folder)

    def _check_folder(self, value: str) -> tuple[Path, Location]:
        """The folder `value` names, if it lies under a data root and can be opened from it
        with no link on the way (it is opened again the same way at every scan)."""
        try:
            folder = self._allowed(value, "Folder")
        except ValueError as exc:
            raise PutRefused(str(exc)) from None
        try:
            where = self._locate(folder, folder=True)
            os.close(open_folder(where))
        except FileNotFoundError:
            raise PutRefused(f"Folder {value}: no such folder") from None
        except NotAFolder:
            raise PutRefused(f"Folder {value}: not a folder") from None
        except PathRefused as exc:
            raise PutRefused(f"Folder {value}: {exc}") from None
        except OSError as exc:
            raise PutRefused(f"Folder {value}: {exc.strerror or exc}") from None
        return folder, where

    async def put_Pattern(self, value: str) -> str:
        if not value or value.startswith("/") or ".." in Path(value).parts:
            raise PutRefused(f"Pattern {value!r}: give a glob below the folder, e.g. *.fits")
        await self._in_watcher(lambda: self._set_pattern(value))
        return value

    def _set_folder(self, folder: Path | None, where: Location | None = None,
                    present_are_new: bool = False) -> None:
        """Watch `folder` from now on; the files in it now are not new (watcher thread)."""
        if folder is not None and where is None:
            where = self._locate(folder, folder=True)
        self._folder, self._where = folder, where
        self._scan_error = ""
        self._files.retarget(folder, where, self._pattern, present_are_new)
        self.message(f"watching {folder}" if folder else "not watching a folder")

    def _set_pattern(self, pattern: str) -> None:
        """Look for `pattern` from now on; files it matches now are not new (watcher thread)."""
        self._pattern = pattern
        self._files.retarget(self._folder, self._where, pattern)

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
        """Read these files next, in this order, opened by name: the replay API, for files
        named on `ndflow replay`'s command line (no client can reach it)."""
        self._enqueue(Source(Path(path)) for path in paths)

    def _enqueue(self, sources: Iterable[Source]) -> None:
        for source in sources:
            self._ready.put(source)
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
        if self._folder is not None:
            self._files.retarget(self._folder, self._where, self._pattern,
                                 present_are_new=self.options.read_existing)
        self._enqueue(self._listed)
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
                                         deliver=self._deliver,
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

    def _deliver(self, path: Path) -> None:
        """A completed upload, under the gateway's incoming folder (a data root's): opened from
        the root like a watched file, so a link planted in that folder is refused too."""
        self._enqueue([self._source(Path(path))])

    def shutdown(self) -> None:
        self._quit.set()
        self._wake.set()
        if self.gateway is not None:
            self.gateway.stop()
        super().shutdown()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._files.close()

    def _watch(self) -> None:
        while True:
            self._wake.clear()
            self._run_commands()  # after clear(): a command queued meanwhile wakes the wait
            if self._quit.is_set():
                return
            try:
                ready = self._files.wait(self.options.poll_s, self._wake)
            except (OSError, PathRefused, RuntimeError) as exc:
                # the folder vanished, went unreadable or was swapped for a link, or inotify
                # refused (watchfiles raises a RuntimeError: the watch limit, a watcher error):
                # say so (once per reason, not at every poll) and keep going; a notifier that
                # failed keeps its error, so the next wait makes a new one
                if isinstance(exc, RuntimeError):
                    self._files.close()
                reason = getattr(exc, "strerror", None) or str(exc)
                text = f"cannot scan {self._folder}: {reason}"
                if text != self._scan_error:
                    self._scan_error = text
                    self._report(text)
                self._wake.wait(self.options.poll_s)
                continue
            self._scan_error = ""
            if ready:
                self._enqueue(ready)

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    # --- frames ------------------------------------------------------------------------------------
    def produce_frame(self, ctx: FrameContext) -> NDArray | None:
        while not ctx.stopped:
            try:
                source = self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
            self.set("FilesQueued_RBV", self._ready.qsize())
            return self.frame_of(source)
        return None

    def _read(self, source: Source) -> FITSFrame:
        """The FITS image of `source`; FITSError (naming the file, never quoting it) if none."""
        path, name = source.path, source.path.name
        hdu, keyword = self.values["HDU"], self.options.camera_keyword
        if source.refused:
            raise FITSError(f"{name}: {source.refused}")
        if source.where is None:
            return read_fits(path, hdu, keyword)
        try:
            fd = open_safely(source.where)
        except LinkRefused:
            raise FITSError(f"{name}: symbolic link refused (links are not followed)") from None
        except FileNotFoundError:
            raise FITSError(f"{name}: gone before it was read") from None
        except PathRefused as exc:
            raise FITSError(f"{name}: {exc}") from None
        except OSError as exc:
            raise FITSError(f"{name}: {exc.strerror or type(exc).__name__}") from None
        with os.fdopen(fd, "rb") as f:
            return read_fits(path, hdu, keyword, fileobj=f)

    def frame_of(self, source: Source) -> NDArray:
        """The frame of one file, or a missing frame saying why there is none."""
        path = source.path
        self.set("LastFile_RBV", str(path)[-255:])
        try:
            fits = self._read(source)
        except FITSError as exc:
            self.increment("FilesFailed_RBV")
            self._report(str(exc), log=False)  # the missing frame is logged with its cause
            return NDArray.missing(MissingCause.INPUT_ERROR, str(exc))
        try:
            out = self.output_buffer(fits.data.shape, fits.dtype)
        except NoMemory as exc:  # the driver base puts the placeholder in the frame's place
            self.increment("FilesFailed_RBV")
            self._report(f"{path.name}: {exc}")
            raise NoMemory(f"{path.name}: {exc}") from None
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
