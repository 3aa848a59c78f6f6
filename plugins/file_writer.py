"""NDPluginFile: what every file-writing plugin shares (NDFile.template's PVs and modes).

Modes, as ADCore's NDPluginFile:
- Single: with AutoSave=Yes every array is written to its own file; WriteFile=1 writes the last
  array received.
- Capture: Capture=1 keeps arrays in memory until NumCapture are held, then (AutoSave=Yes, or at
  WriteFile=1) writes them all to one file.
- Stream: Capture=1 opens a file (at the first array with LazyOpen=Yes) and writes each array as
  it arrives, until NumCapture arrays (0 = no limit) or Capture=0.
Capture and WriteFile are busy records: a put-callback of 1 completes when the capture or the write
is over. The file name is C `sprintf(FileTemplate, FilePath, FileName, FileNumber)`; FileNumber
increments after each file when AutoIncrement=Yes.

Stopping (ndflow's DrainOnStop, Yes by default): ADCore's Capture=0 closes the file at once, and the
frames still waiting in the plugin's queue are lost (ADCore#469). With DrainOnStop=Yes, Capture=0
puts a mark in the queue behind the frames (and placeholders) already in it; the worker writes
them, reaches the mark, and only then stops the capture and closes the file (Capture mode: writes
the buffer), so every frame that reached the writer before Capture=0 is in the file. The put
completes then; frames that arrive after it are not taken. With No, Capture=0 stops at once
(ADCore). NumCapture=0 in Capture mode holds frames until memory is full: the first frame the
pools or the IOC's memory budget refuse ends the capture (with its row), as a full buffer does.

What ndflow adds: a file is only ever written under the configured data roots (`data_roots`),
whatever FilePath, FileName or FileTemplate say, because anyone on the network can write those
PVs. Every output folder and file is opened (or created) relative to a descriptor of its data
root, one component at a time, with symbolic links refused (`ndflow.safepath`): the containment
check and the open are one step, so swapping a folder for a link while a writer saves cannot
lead it out. Formats get their file from `create_file` (a descriptor), `open_output` or
`open_hdf5`, never by name. A refused path, a template that does not take (string, string,
integer) in that order, or an I/O error (permission, disk full) sets WriteStatus/WriteMessage,
closes what was open so the frames already written stay readable, and leaves the IOC serving.
Missing frames (placeholders for lost arrays) reach the writer too; `write_missing` records them.

Errors: a put that cannot do what it asks (a FilePath that is outside the data roots, missing or
a link, a Capture=1 that cannot start, a WriteFile that fails) is refused: the client gets the
reason as a put error (PutRefused), WriteStatus/WriteMessage show it, and the log has one line,
rate-limited per PV. A refused FilePath is still stored, as ADCore stores it (with
FilePathExists_RBV=0), so a client that ignores put errors cannot write into the folder it meant
to leave. Errors of the data path (a write failing at every frame) are logged at most once per
writer every few seconds, with the count of those held back.

Locking (DESIGN.md 3, "Ports own their work"): no CA put waits for a write. `_lock` is the file's
lock, held across file I/O by the worker and by the thread a put hands its I/O to (Capture,
WriteFile and the FilePath checks run, in the order the puts came, in the writer's one I/O thread
while the event loop awaits them; a draining Capture=0 in the worker, at its mark, and a
Capture=1 waits for it; HDF5's FlushNow in an executor); the event loop never takes it.
`_state_lock` guards the capture buffer and whether a capture is on, is never held across I/O,
and is all that FreeCapture and the stopping half of Capture=0 take. Frames are written with the
parameters the base froze for them (`frame_params`).
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Mapping

from ndflow import safepath
from ndflow.busy import Busy, finish
from ndflow.component import PutRefused
from ndflow.transport import HANDLED
from ndflow.ndarray import MissingCause, NDArray
from ndflow.sparse import densify_array
from ndflow.params import INT32_MAX, R, RW, W, Param, bool_param, enum_param, int_param, \
    string_param, text_param
from ndflow.plugin import Inbox, Plugin
from ndflow.safepath import Location, PathRefused

SINGLE, CAPTURE, STREAM = 0, 1, 2

NDFILE: tuple[Param, ...] = (
    text_param("FilePath", 256, "", RW, group="File", doc="folder; stored with a trailing '/'"),
    bool_param("FilePathExists_RBV", "No", "Yes", 0, R, group="File"),
    int_param("CreateDirectory", 0, RW, group="File",
              doc="0: never; N>0: the first N path parts must exist; N<0: create up to |N| "
                  "levels above the file"),
    text_param("FileName", 256, "", RW, group="File"),
    int_param("FileNumber", 1, RW, also_setpoint=True, group="File"),
    bool_param("AutoIncrement", "No", "Yes", 1, RW, group="File"),
    text_param("FileTemplate", 256, "%s%s_%3.3d.dat", RW, group="File",
               doc="C printf format taking FilePath, FileName, FileNumber in that order"),
    text_param("FullFileName_RBV", 512, "", R, group="File"),
    bool_param("AutoSave", "No", "Yes", 0, RW, group="File"),
    bool_param("WriteFile", "Done", "Write", 0, RW, coalesce=False, also_setpoint=True,
               group="File"),
    bool_param("ReadFile", "Done", "Read", 0, RW, group="File"),
    enum_param("FileFormat", ("Undefined", "Invalid"), 0, RW, rbv_choices=("netCDF", "Undefined"),
               group="File"),
    enum_param("FileWriteMode", ("Single", "Capture", "Stream"), 0, RW, group="File"),
    bool_param("Capture", "Done", "Capture", 0, RW, coalesce=False, also_setpoint=True,
               group="File"),
    int_param("NumCapture", 1, RW, low=0, high=INT32_MAX, group="File",
              doc="frames per capture; 0 = no limit (Stream: until Capture=0; Capture: until "
                  "memory is full, see the IOC's memory budget)"),
    int_param("NumCaptured_RBV", 0, R, group="File"),
    bool_param("FreeCapture", "Done", "Free", 0, W, group="File"),
    bool_param("DeleteDriverFile", "No", "Yes", 0, RW, group="File"),
    enum_param("WriteStatus", ("Write OK", "Write error"), 0, R, group="File"),
    text_param("WriteMessage", 256, "", R, group="File"),
    bool_param("LazyOpen", "No", "Yes", 0, RW, group="File"),
    string_param("TempSuffix", "", RW, group="File"),
    # ndflow: ADCore's Capture=0 loses the frames still queued (ADCore#469)
    bool_param("DrainOnStop", "No", "Yes", 1, RW, group="File",
               doc="Yes: Capture=0 completes once the frames queued before it are written, "
                   "then the file closes. No: stop at once; queued frames are not written "
                   "(ADCore)"),
)

#: an Inbox item: a function run in line with the frames (see _MarkedInbox)
_MARK = "mark"
#: a writer logs a data-path error (or a note) at most once per this many seconds, per topic
_LOG_INTERVAL = 5.0

_CONVERSION = re.compile(r"%([-+ #0]*)(\d+|\*)?(?:\.(\d+|\*))?([hlL]*)([a-zA-Z%])")
_TEMPLATE_ARGS = ("s", "s", "d")


class WriteError(Exception):
    """A file could not be written; the message is what WriteMessage shows."""


class _MarkedInbox(Inbox):
    """The plugin's Inbox, plus marks: a function queued in line, behind every frame and
    placeholder already queued, that the worker runs when it gets there (as it runs a
    between_frames command: `get` hands it over as a callable)."""

    def mark(self, fn: Any) -> None:
        self.put(_MARK, fn)

    def get(self, timeout: float) -> Any:
        item = super().get(timeout)
        if isinstance(item, tuple) and item[0] == _MARK:
            return item[1]
        return item


class RateLimitedLog:
    """One line per topic every `interval` seconds at `level`; the lines held back meanwhile
    are counted in the next one, so something failing (or clamped) at every frame cannot
    flood the log."""

    def __init__(self, logger: logging.Logger, level: int,
                 interval: float = _LOG_INTERVAL) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def line(self, topic: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            since = self._since.get(topic)
            if since is not None and now - since < self.interval:
                self._held[topic] = self._held.get(topic, 0) + 1
                return
            held = self._held.pop(topic, 0)
            self._since[topic] = now
        if held:
            text += f" ({held} more like it in the last {self.interval:.0f} s not logged)"
        self.logger.log(self.level, "%s", text)


def format_file_name(template: str, path: str, name: str, number: int) -> str:
    """sprintf(template, path, name, number), refusing what C would make undefined."""
    kinds = []
    for match in _CONVERSION.finditer(template):
        conv = match.group(5)
        if conv == "%":
            continue
        if "*" in (match.group(2) or "", match.group(3) or ""):
            raise WriteError(f"FileTemplate {template!r}: '*' widths are not supported")
        if conv in "sdiuxXo":
            kinds.append("s" if conv == "s" else "d")
        else:
            raise WriteError(f"FileTemplate {template!r}: %{conv} is not allowed "
                             "(use %s for the path and name, %d for the number)")
    if kinds != list(_TEMPLATE_ARGS[: len(kinds)]):
        raise WriteError(f"FileTemplate {template!r} must take at most FilePath (%s), FileName "
                         f"(%s) and FileNumber (%d), in that order")
    # Python's % takes C's flags, widths, precisions and h/l/L modifiers with the same meaning.
    return template % (path, name, number)[: len(kinds)]


class FileWriter(Plugin):
    """Base of HDF5 and TIFF: the NDFile PVs, the three modes and the safety rules above."""

    PARAMS = (*Plugin.PARAMS, NDFILE)
    #: the extension the default FileTemplate uses
    extension: ClassVar[str] = ".dat"
    #: False: one array per file (TIFF); Capture and Stream then write one file per array
    multiple_arrays: ClassVar[bool] = True
    compression_aware = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        # One worker, as ADCore's NDPluginFile: rows go in order, and a DrainOnStop mark is
        # reached only once every frame before it is written
        kw["max_threads"] = 1
        super().__init__(*args, **kw)
        self.values["FileTemplate"] = f"%s%s_%3.3d{self.extension}"
        self._lock = threading.RLock()  # the open file: held across I/O, never on the loop
        self._state_lock = threading.Lock()  # _buffer and _capturing: never held across I/O
        self._buffer: list[NDArray] = []
        self._capturing = False  # frames are taken (Capture or Stream mode)
        self._early_missing: list[NDArray] = []  # lost before the Stream file could open
        self._open = False
        self._open_params: Mapping[str, Any] = self.values  # what the open file was opened with
        self._capture = Busy()  # Capture=1 put-callbacks, completed when the capture ends
        self._io: ThreadPoolExecutor | None = None  # puts' file work, one at a time, in order
        self._opened_at = 0.0
        self._bytes = 0
        self._inbox = _MarkedInbox()  # before start(): no worker serves the base's yet
        self._capture_puts = 0  # Capture puts so far: each one's number (see put_Capture)
        self._capture_seq = 0  # the number of the put that started the capture on (or last on)
        self._stopped_at = 0  # the number of the latest Capture=0 that has taken effect
        self._in_line_ops: set[Future] = set()  # Capture puts' work queued in line, pending
        self._errors = RateLimitedLog(self.log, logging.ERROR)
        self.notes = RateLimitedLog(self.log, logging.WARNING)  # a format's clamps at open

    # --- what a format provides -------------------------------------------------------------------
    def open_file(self, path: Path, first: NDArray) -> None:
        """Create the file for arrays shaped like `first`."""
        raise NotImplementedError

    def write_array(self, array: NDArray) -> None:
        raise NotImplementedError

    def write_missing(self, array: NDArray) -> None:
        """Record a lost frame (a placeholder: no data). By default nothing is written."""

    def close_file(self) -> None:
        raise NotImplementedError

    def flush_file(self) -> None:
        """Make what was written visible to readers (FlushNow)."""

    async def put_FlushNow(self, value: int) -> int:
        """For the writers that declare FlushNow (HDF5, Table): flush in an executor, under the
        file's lock, never in the event loop."""
        if value:
            await asyncio.get_running_loop().run_in_executor(None, self._flush_locked)
        return 0

    def _flush_locked(self) -> None:
        with self._lock:
            if self._open:
                try:
                    self.flush_file()
                except Exception as exc:
                    self._error(f"flushing {self.values['FullFileName_RBV']}: {exc}")

    def abandon_file(self) -> None:
        """Give up on a file whose write failed, without the usual close (see HDF5)."""
        self.close_file()

    def _params(self) -> Mapping[str, Any]:
        """The parameters the current frame is written with (the base's snapshot)."""
        return self.frame_params

    def _off_loop(self, fn: Any, *args: Any) -> asyncio.Future:
        """Run a put's file work in this writer's I/O thread, after the puts before it; the
        put awaits the result, so the event loop serves other clients meanwhile."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix=f"{self.port}-io")
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # --- FilePath and names (the folder is checked and created off the event loop) ------------
    async def put_FilePath(self, value: str) -> str:
        path = value if value.endswith("/") or not value else value + "/"
        if not path:  # no folder: nothing can be written until one is given (not an error)
            self.set("FilePathExists_RBV", 0)
            return path
        reason = await self._off_loop(self._check_path, path, True)
        if reason is not None:
            # Stored all the same, as ADCore stores it (FilePathExists_RBV=0): a client that
            # does not look at put errors (pyepics' caput) must not go on writing into the
            # folder it meant to leave. Then refused: the client gets the reason, the log one
            # line (rate-limited per PV by handle_put).
            param = self.params["FilePath"]
            self.values["FilePath"] = path
            self.params_version += 1
            await self._publish_readbacks(param, path, None)
            raise PutRefused(reason)
        return path

    async def put_CreateDirectory(self, value: int) -> int:
        self.values["CreateDirectory"] = value
        if self.values["FilePath"]:
            reason = await self._off_loop(self._check_path, self.values["FilePath"], True)
            if reason is not None:  # the value is fine; the folder is still unusable
                self.message(reason, logging.WARNING)  # rate-limited: said within the put
        return value

    def _check_path(self, path: str, create: bool) -> str | None:
        """Set FilePathExists_RBV (and WriteStatus/WriteMessage when refused); create it if
        asked. The folder is reached (and created) from its data root's descriptor, links
        refused. Returns why the folder cannot be used, or None; logs nothing (the put that
        asked says it, rate-limited)."""
        reason = None
        try:
            where = self._allowed(path)
            depth = self.values["CreateDirectory"]
            create_from = _create_from(where, depth) if create and depth else None
            try:
                os.close(safepath.open_folder(where, create_from))
            except FileNotFoundError as exc:
                if create_from is not None:
                    reason = (f"cannot create {where.path}: {exc.filename} does not exist "
                              f"(CreateDirectory={depth})")
                else:
                    reason = f"FilePath {path} does not exist" + (
                        "" if depth else " (set CreateDirectory to create it)")
            except safepath.NotAFolder as exc:
                reason = f"FilePath {path} does not exist ({exc})"
            except PathRefused as exc:
                reason = f"FilePath {path} refused: {exc}"
            except OSError as exc:
                reason = f"FilePath {path}: {exc.strerror}"
        except WriteError as exc:
            reason = str(exc)
        self.set("FilePathExists_RBV", int(reason is None))
        if reason is not None:
            self._fail(reason)
        elif self.values["WriteStatus"]:
            self.set_many({"WriteStatus": 0, "WriteMessage": ""})
        return reason

    def _allowed(self, path: str | Path) -> Location:
        """Where `path` is: a data root and the components below it (by its text alone; it is
        opened through `ndflow.safepath`, never by name)."""
        site = self.site
        try:
            if site is None:
                raise PathRefused("no data_roots configured; file writers write only under "
                                  "those")
            return site.locate(path)
        except PathRefused as exc:
            raise WriteError(str(exc)) from None

    def _next_file(self, params: Mapping[str, Any]) -> Path:
        v = params
        if not v["FilePath"]:
            raise WriteError("FilePath is empty")
        # FileNumber is the live counter: the writer itself moves it on after each file
        name = format_file_name(v["FileTemplate"], v["FilePath"], v["FileName"],
                                self.values["FileNumber"])
        path = self._allowed(name).path
        self.set("FullFileName_RBV", str(path)[:511])
        return path

    # --- the output file: the only way a format gets one ------------------------------------------
    def create_file(self, path: Path) -> int:
        """A descriptor (read/write) of the new or truncated regular file `path`, created
        relative to its folder's descriptor, reached from its data root's descriptor one
        component at a time with links refused (`ndflow.safepath`). A format writes through
        this descriptor (or `open_hdf5`), never by the name. The caller closes it."""
        where = self._allowed(path)
        try:
            return safepath.create_file(where)
        except FileNotFoundError as exc:
            raise WriteError(f"cannot open {path}: {exc.filename or 'its folder'} does not "
                             "exist") from None
        except PathRefused as exc:
            raise WriteError(f"cannot open {path}: {exc}") from None

    def open_output(self, path: Path) -> BinaryIO:
        """`create_file` as a buffered binary file object (read/write) whose `name` is `path`,
        for libraries that write to file objects and want a name (tifffile)."""
        fd = self.create_file(path)
        try:
            raw = io.FileIO(fd, "r+b", closefd=True)
        except BaseException:
            os.close(fd)
            raise
        raw.name = str(path)  # shown only; nothing reopens it by name
        return io.BufferedRandom(raw)

    def open_hdf5(self, path: Path, **kw: Any) -> Any:
        """`h5py.File(..., "w", **kw)` on the file `create_file` made, for HDF5's own (sec2)
        driver, which takes only a name: it is handed /proc/self/fd/N, which opens the inode
        behind our descriptor with no folder lookup, and after the open fstat confirms that the
        descriptor HDF5 holds is that inode. (h5py's file-object driver would avoid the name,
        but sends every HDF5 read and write through Python, and SWMR is specified for the
        POSIX drivers; this way SWMR, speed and HDF5's own errno reports stay as they were.)
        Writers given the same path share one file (`ndflow.plugins.h5share`): the result is
        an h5py.File whose close() gives back this writer's share."""
        from ndflow.plugins import h5share

        # Several writers may target one file (HDF1's images and Table1's rows): the registry
        # creates it once, later writers join it, the last close closes it (h5share).
        where = self._allowed(path)
        try:
            return h5share.open_shared(
                str(where), self.port, getattr(self, "_opening_acquisition", None),
                str(kw.get("libver", "earliest")),
                lambda: self._hdf5_at(path, self.create_file(path), "w", None, **kw),
                lambda accept: self._hdf5_at(path, self._existing_file(where), "r+", accept,
                                             **kw))
        except h5share.SharedFileError as exc:
            raise WriteError(f"cannot open {path}: {exc}") from None

    def _existing_file(self, where: Location) -> int:
        """A descriptor of the existing regular file `where` (links refused), for reopening a
        shared file read-write (the open of /proc/self/fd/N sets the access mode)."""
        try:
            return safepath.open_file(where)
        except (FileNotFoundError, PathRefused) as exc:
            raise WriteError(f"cannot reopen {where.path}: {exc}") from None

    @staticmethod
    def _hdf5_at(path: Path, fd: int, mode: str, accept: Any, **kw: Any) -> Any:
        """h5py.File(mode) on the file behind descriptor `fd` (closed here), checked to be it;
        None if `accept(fd)` refuses it (a shared file replaced since it was closed)."""
        import h5py

        try:
            if accept is not None and not accept(fd):
                return None
            try:
                name = safepath.fd_path(fd)
            except PathRefused as exc:
                raise WriteError(f"cannot open {path}: {exc}") from None
            file = h5py.File(name, mode, **kw)
            try:
                if not safepath.same_file(fd, file.id.get_vfd_handle()):
                    raise WriteError(f"cannot open {path}: HDF5 opened another file")
            except BaseException:
                file.close()
                raise
            return file
        finally:
            os.close(fd)

    def _file_finished(self) -> None:
        if self._open_params["AutoIncrement"]:
            self.set("FileNumber", self.values["FileNumber"] + 1)

    def _fail(self, message: str) -> None:
        """Show a failure on WriteStatus/WriteMessage and StatusMessage_RBV, without logging
        it (a put refusing with it is logged by handle_put)."""
        self.set_many({"WriteStatus": 1, "WriteMessage": message[:255]})
        self.message(message, log=False)

    def _error(self, message: str) -> None:
        """A failure of the data path (or of work a put handed over and does not refuse for):
        shown as `_fail` does, and logged at most once per few seconds."""
        self._fail(message)
        self._errors.line("write", message)

    # --- writing --------------------------------------------------------------------------------------
    def _write_files(self, arrays: list[NDArray], params: Mapping[str, Any],
                     log: bool = True) -> str | None:
        """Write `arrays` to one file (or one file each), reporting failure on the PVs (file
        lock held); returns the failure, or None. `log`=False: the caller (a put that refuses
        with it) has it said."""
        if not arrays:
            return None
        report = self._error if log else self._fail
        valid = [a for a in arrays if a.valid]
        if not valid:
            message = f"none of the {len(arrays)} captured arrays is valid: no file written"
            report(message)
            return message
        groups = [arrays] if self.multiple_arrays else [[a] for a in valid]
        try:
            for group in groups:
                self._open_for(next(a for a in group if a.valid), params)
                for array in group:
                    self._write_one(array)
                self._close()
        except WriteError as exc:
            report(str(exc))
            self._close()
            return str(exc)
        return None

    def _open_for(self, first: NDArray, params: Mapping[str, Any]) -> None:
        path = self._next_file(params)
        # the acquisition the file opens for: writers of one acquisition may share an HDF5
        # file (open_hdf5, ndflow.plugins.h5share)
        self._opening_acquisition = first.acquisition.id if first.acquisition else None
        self._open_params = params  # what open_file sees too (Nexus: one array or rows)
        try:
            self.open_file(path, first)
        except WriteError:
            raise
        except Exception as exc:  # OSError, or h5py's own types for OS problems
            raise WriteError(f"cannot open {path}: {_os_reason(exc)}") from None
        self._open = True
        self._open_params = params
        self._opened_at = time.monotonic()
        self._bytes = 0
        self.set_many({"WriteStatus": 0, "WriteMessage": ""})

    def _write_one(self, array: NDArray) -> None:
        try:
            if array.valid:
                self.write_array(array)
                self._bytes += array.compressed_size
            else:
                self.write_missing(array)
        except WriteError:
            raise
        except Exception as exc:
            self._close(abandon=True)
            raise WriteError(f"writing array {array.unique_id} to "
                             f"{self.values['FullFileName_RBV']}: {_os_reason(exc)}") from None

    def _close(self, abandon: bool = False) -> None:
        """Close the open file (abandon: after a failed write, see `abandon_file`)."""
        if not self._open:
            return
        self._open = False
        try:
            self.abandon_file() if abandon else self.close_file()
        except Exception as exc:
            self._error(f"closing {self.values['FullFileName_RBV']}: {_os_reason(exc)}")
        self.on_closed(time.monotonic() - self._opened_at, self._bytes)
        self._file_finished()

    def on_closed(self, seconds: float, nbytes: int) -> None:
        """A file was closed after `seconds` holding `nbytes` of array data."""

    # --- the data path (worker thread) -----------------------------------------------------------
    def process(self, array: NDArray) -> None:
        self._handle_array(array)
        return None

    def process_missing(self, array: NDArray) -> None:
        self._handle_array(array)
        return None

    def _handle_array(self, array: NDArray) -> None:
        params = self._params()
        mode = params["FileWriteMode"]
        if mode == SINGLE:
            if params["AutoSave"] and array.valid:
                with self._lock:
                    self._write_files([array], params)
            return
        if mode == CAPTURE:
            with self._state_lock:
                if not self._capturing:
                    return
                self._buffer.append(array)
                held = len(self._buffer)
                self.set("NumCaptured_RBV", held)
                limit = params["NumCapture"]
                # NumCapture=0: as many as memory holds. The first frame refused for memory
                # (the buffer holds the pool, or the IOC's budget is reached) ends it, with
                # its row: placeholders cost no pixels but would pile up without end.
                memory_full = not limit and array.status.missing is MissingCause.NO_MEMORY
                if not memory_full and (not limit or held < limit):
                    return
                self._capturing = False  # full: this capture ends with this array
                kept = sum(1 for a in self._buffer if a.valid)
                arrays = self._take_buffer() if params["AutoSave"] else []
            if memory_full:
                self.message(f"Capture ended: memory full with {kept} frames held (NumCapture 0 "
                             f"holds what memory allows; {array.status.message or 'no memory'})",
                             logging.WARNING)
            with self._lock:  # the buffer is out of reach of FreeCapture while written
                self._write_files(arrays, params)
                self._end_capture()
            return
        with self._lock:
            if self._capturing:  # Capture=0 clears it before it waits for this lock
                self._stream(array, params)

    def _stream(self, array: NDArray, params: Mapping[str, Any]) -> None:
        if not array.valid and not self._open:
            # No file to take the row yet (its shape and type come from a real array).
            if self.multiple_arrays:
                self._early_missing.append(array)
            else:
                self.message(f"array {array.unique_id} lost ({array.status.missing.value}): "
                             "no file for it", logging.WARNING)
            return
        rows = [array]
        try:
            if not self._open or not self.multiple_arrays:
                self._close()
                self._open_for(array, params)
                rows = self._early_missing + rows
                self._early_missing = []
            for row in rows:
                self._write_one(row)
                self.increment("NumCaptured_RBV")
        except WriteError as exc:
            self._error(str(exc))
            self._close()
            self._end_capture()
            return
        if params["NumCapture"] and self.values["NumCaptured_RBV"] >= params["NumCapture"]:
            self._close()
            self._end_capture()

    def _take_buffer(self) -> list[NDArray]:
        """The captured arrays, leaving an empty buffer (state lock held)."""
        arrays, self._buffer = self._buffer, []
        return arrays

    def _end_capture(self) -> None:
        with self._state_lock:
            self._capturing = False
        self.set("Capture", 0)
        self._capture.release()

    # --- busy records (event-loop thread; file work in an executor, awaited) ---------------------
    # Capture puts run in two lanes: the I/O thread (starts, and stops without DrainOnStop), and
    # in line with the frames, through the worker (a DrainOnStop stop; and a start put while an
    # in-line stop is pending, so that it begins right behind it and takes the frames that come
    # after its put). Each put has a number, in the order the puts came, so the lanes cannot
    # undo each other: a stop ends only a capture an earlier put started, and a start does not
    # begin once a later stop has taken effect.
    async def put_Capture(self, value: int) -> Any:
        self._capture_puts += 1
        seq = self._capture_puts
        if not value:
            if self.values["DrainOnStop"] and self._running and self._workers:
                return await self._drain_then_stop(seq)
            with self._state_lock:  # no frame is taken from now on
                self._capturing = False
                self._stopped_at = seq
                arrays = self._take_buffer() if self.values["FileWriteMode"] == CAPTURE and \
                    self.values["AutoSave"] else []
            # completes once the file is written and closed, as in ADCore
            await self._off_loop(self._stop_capture, arrays, seq)
            return HANDLED
        if self.values["FileWriteMode"] == SINGLE:
            message = "Capture needs FileWriteMode Capture or Stream"
            self._fail(message)
            raise PutRefused(message)
        # This capture's own completion, armed before it starts (it may end at once) and
        # installed by the start, so the end of a capture before it cannot complete this put.
        busy = Busy()
        waiting = busy.arm()
        if self._in_line_ops:  # a stop still draining: begin right behind it
            outcome = await asyncio.shield(asyncio.wrap_future(
                self._in_line(self._begin_capture, busy, seq)))
        else:
            outcome = await self._off_loop(self._begin_capture, busy, seq)
        if outcome is not True:
            busy.release()
            if outcome is None:  # a later Capture=0 took effect first: over before it began
                return HANDLED
            raise PutRefused(outcome or "the capture could not start")
        return await finish(waiting, self.publisher)

    def _in_line(self, fn: Any, *args: Any) -> Future:
        """Run `fn(*args)` in the worker, in line behind the frames queued now (a mark); its
        result in the returned future, which stays in `_in_line_ops` until done."""
        result: Future = Future()
        self._in_line_ops.add(result)
        result.add_done_callback(self._in_line_ops.discard)

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # the put that waits says it
                result.set_exception(exc)
        self._inbox.mark(run)
        return result

    async def _drain_then_stop(self, seq: int) -> Any:
        """Capture=0 with DrainOnStop: a mark goes into the queue behind the frames already in
        it; the worker writes them, then stops the capture when it reaches the mark (Capture
        mode: writes the buffer with AutoSave) and closes the file. The put completes then.
        Frames queued after the mark find the capture over and are not taken."""
        def stop() -> None:
            with self._state_lock:
                self._stopped_at = max(self._stopped_at, seq)
                if self._capture_seq > seq:  # a capture a later put started: not ours to end
                    return
                self._capturing = False
                arrays = self._take_buffer() if self.values["FileWriteMode"] == CAPTURE \
                    and self.values["AutoSave"] else []
            self._stop_capture(arrays, seq)
        return await finish(self._in_line(stop), self.publisher)

    def _start_capture(self, busy: Busy) -> bool:
        """Start a capture now (the reason on WriteMessage if it cannot)."""
        return self._begin_capture(busy, self._capture_puts) is True

    def _begin_capture(self, busy: Busy, seq: int) -> bool | str | None:
        """Start the capture put number `seq`: True; the reason it cannot start (the put
        refuses with it, and WriteMessage shows it); None if a later Capture=0 has already
        taken effect (nothing to start)."""
        with self._lock:
            with self._state_lock:
                if self._stopped_at > seq:
                    return None
                self._capturing = False
                self._buffer = []
                self._capture_seq = seq
            self._close()
            self._early_missing = []
            self.set("NumCaptured_RBV", 0)
            v = dict(self.values)  # a put's work: the values as the client left them
            mode = v["FileWriteMode"]
            failure = ""
            last = self._last_input
            if mode == STREAM:
                failure = self._check_path(v["FilePath"], create=True) or ""
            if not failure and mode == STREAM and not v["LazyOpen"] and last is not None and \
                    last.valid and self.multiple_arrays:
                try:
                    self._open_for(last if self.sparse_aware else densify_array(last), v)
                except WriteError as exc:
                    failure = str(exc)
                    self._fail(failure)
            if failure:
                self._end_capture()  # a capture running until now has ended too
                return failure
            previous, self._capture = self._capture, busy
            previous.release()  # a capture running until now restarts, as in ADCore
            self.set("Capture", 1)
            with self._state_lock:
                self._capturing = True
            return True

    def _stop_capture(self, arrays: list[NDArray], seq: int | None = None) -> None:
        """The end of the capture Capture=0 put number `seq` stops (None: whichever is on):
        write what it held, close the file. A capture a later put started is left alone."""
        with self._lock:
            if seq is not None and self._capture_seq > seq:
                return
            self._write_files(arrays, dict(self.values))
            self._close()
            self._end_capture()

    async def put_WriteFile(self, value: int) -> Any:
        if not value:
            return 0
        self.set("WriteFile", 1)
        try:
            failure = await self._off_loop(self._write_now)
        finally:
            self.set("WriteFile", 0)
        if failure is not None:
            raise PutRefused(failure)
        return HANDLED

    def _write_now(self) -> str | None:
        """WriteFile's work (I/O thread): the failure, or None."""
        v = dict(self.values)
        mode = v["FileWriteMode"]
        failure: str | None
        if mode == CAPTURE:
            with self._state_lock:
                arrays = self._take_buffer()
            with self._lock:
                return self._write_files(arrays, v, log=False)
        if mode == SINGLE:
            last = self._last_input
            if last is None or not last.valid:
                failure = "WriteFile: no array received yet"
            else:
                with self._lock:
                    # the last input as received: densified here for a dense-only format
                    last = last if self.sparse_aware else densify_array(last)
                    return self._write_files([last], v, log=False)
        else:
            failure = "WriteFile does nothing in Stream mode (use Capture)"
        self._fail(failure)
        return failure

    def put_FreeCapture(self, value: int) -> int:
        if value:
            with self._state_lock:  # never held across a write: answers at once
                self._buffer = []
            self.set("NumCaptured_RBV", 0)
        return 0

    def put_ReadFile(self, value: int) -> int:
        if value:
            message = f"{self.plugin_type}: reading files back is not supported"
            self._fail(message)
            raise PutRefused(message)
        return 0

    def put_FileFormat(self, value: int) -> int:
        if value:
            message = "FileFormat: only the first choice is supported"
            self._fail(message)
            raise PutRefused(message)
        return 0

    def shutdown(self) -> None:
        super().shutdown()
        if self._io is not None:
            self._io.shutdown(wait=False)
        with self._lock:
            self._close()


def _create_from(where: Location, depth: int) -> int:
    """The first component below the root that CreateDirectory=`depth` may create: N>0, the
    first N parts of the absolute path must exist; N<0, up to |N| parts above the file may be
    created. Anything at or above the data root must exist already."""
    total = len(where.root.parts) + len(where.parts)  # parts[0] is "/"
    must_exist = depth + 1 if depth > 0 else max(1, total + depth)
    return max(0, must_exist - len(where.root.parts))


def _os_reason(exc: BaseException) -> str:
    """A short cause for an I/O failure, naming disk-full plainly."""
    err = getattr(exc, "errno", None)
    if err is None:  # HDF5 puts the errno inside its message
        found = re.search(r"errno = (\d+)", str(exc))
        err = int(found.group(1)) if found else None
        if err is not None and err not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return os.strerror(err)
    if err in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"disk full or file too large ({errno.errorcode[err]})"
    text = getattr(exc, "strerror", None) or str(exc)
    for cause in (exc.__cause__, exc.__context__):
        if cause is not None and getattr(cause, "errno", None) in (errno.ENOSPC, errno.EFBIG):
            return f"disk full or file too large ({errno.errorcode[cause.errno]})"
    return text
