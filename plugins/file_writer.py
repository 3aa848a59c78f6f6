"""NDPluginFile: what every file-writing plugin shares (NDFile.template's PVs and modes).

Three modules: `capture_modes` (Single/Capture/Stream, as tables, and the Capture and WriteFile
puts), `file_path` (FilePath/FileName/FileTemplate/FileNumber, CreateDirectory, the data-root
checks, and the only ways a format gets a file), and this one (the PVs, and opening, writing and
closing a file with the failures reported). Capture and WriteFile are busy records: a
put-callback of 1 completes when the capture or the write is over.

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
parameters the base froze for them (`frame_settings`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Mapping

from ndflow.busy import Busy
from ndflow.component import PutRefused
from ndflow.ndarray import NDArray
from ndflow.params import INT32_MAX, R, RW, W, Param, bool_param, enum_param, int_param, \
    string_param, text_param
from ndflow.plugin import Plugin
from ndflow.reasons import reason

from .capture_modes import CAPTURE, SINGLE, STREAM, CaptureMachine, CaptureModes, Mode, \
    _MarkedInbox
from .file_path import FilePathPolicy, WriteError, format_file_name

__all__ = ["CAPTURE", "NDFILE", "SINGLE", "STREAM", "FileWriter", "Mode", "RateLimitedLog",
           "WriteError", "format_file_name"]

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

#: a writer logs a data-path error (or a note) at most once per this many seconds, per topic
_LOG_INTERVAL = 5.0


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


class FileWriter(CaptureModes, FilePathPolicy, Plugin):
    """Base of every file writer: the NDFile PVs, the three modes (`capture_modes`), the path
    policy and safety rules (`file_path`), and opening, writing and closing a file."""

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
        self._state_lock = threading.Lock()  # _buffer and _capture_state: never held across I/O
        self._buffer: list[NDArray] = []
        self._capture_state = CaptureMachine()  # frames are taken (Capture or Stream mode)
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
        return self.frame_settings

    def _off_loop(self, fn: Any, *args: Any) -> asyncio.Future:
        """Run a put's file work in this writer's I/O thread, after the puts before it; the
        put awaits the result, so the event loop serves other clients meanwhile."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix=f"{self.port}-io")
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

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
        path = self.next_file(params)
        # the acquisition the file opens for: writers of one acquisition may share an HDF5
        # file (open_hdf5, ndflow.plugins.h5share)
        self._opening_acquisition = first.acquisition.id if first.acquisition else None
        self._open_params = params  # what open_file sees too (Nexus: one array or rows)
        try:
            self.open_file(path, first)
        except WriteError:
            raise
        except Exception as exc:  # OSError, or h5py's own types for OS problems
            raise WriteError(f"cannot open {path}: {reason(exc)}") from None
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
                             f"{self.values['FullFileName_RBV']}: {reason(exc)}") from None

    def _close(self, abandon: bool = False) -> None:
        """Close the open file (abandon: after a failed write, see `abandon_file`)."""
        if not self._open:
            return
        self._open = False
        try:
            self.abandon_file() if abandon else self.close_file()
        except Exception as exc:
            self._error(f"closing {self.values['FullFileName_RBV']}: {reason(exc)}")
        self.on_closed(time.monotonic() - self._opened_at, self._bytes)
        self._file_finished()

    def on_closed(self, seconds: float, nbytes: int) -> None:
        """A file was closed after `seconds` holding `nbytes` of array data."""

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
        super().shutdown()  # the frames queued are processed first
        try:
            self._save_held_at_shutdown()
        except Exception as exc:  # never stops the IOC's shutdown
            self.log.error("%s: the captured arrays could not be written at shutdown: %s",
                           self.port, exc)
        if self._io is not None:
            self._io.shutdown(wait=False)
        with self._lock:
            self._close()


class OneArrayFileWriter(FileWriter):
    """A format with one array per file, written through one open file (TIFF, JPEG): the file
    is created under its data root's descriptor (links refused, see open_output) and the
    format writes to the open file, never to its name."""

    multiple_arrays = False
    compression_aware = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._fh: BinaryIO | None = None

    def open_file(self, path: Path, first: NDArray) -> None:
        self._fh = self.open_output(path)

    def close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
