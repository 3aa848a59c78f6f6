"""Where a file writer's files go: NDFile's path and name policy, and the only ways a format
gets a file.

- FilePath is checked (and created, as CreateDirectory says) when it is written, off the event
  loop; FilePathExists_RBV says whether it can be used.
- The file name is C `sprintf(FileTemplate, FilePath, FileName, FileNumber)`, with templates C
  would make undefined refused; FileNumber moves on after each file when AutoIncrement=Yes.
- A file is only ever written under the configured data roots (`data_roots`), whatever those
  PVs say, because anyone on the network can write them. Every folder and file is opened (or
  created) relative to a descriptor of its data root, one component at a time, with symbolic
  links refused (`ndflow.safepath`): the containment check and the open are one step. Formats
  get their file from `create_file` (a descriptor), `open_output` or `open_hdf5`, never by name.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from ndflow import safepath
from ndflow.component import PutRefused
from ndflow.safepath import Location, PathRefused

_CONVERSION = re.compile(r"%([-+ #0]*)(\d+|\*)?(?:\.(\d+|\*))?([hlL]*)([a-zA-Z%])")
_TEMPLATE_ARGS = ("s", "s", "d")


class WriteError(Exception):
    """A file could not be written; the message is what WriteMessage shows."""


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


def create_from(where: Location, depth: int) -> int:
    """The first component below the root that CreateDirectory=`depth` may create: N>0, the
    first N parts of the absolute path must exist; N<0, up to |N| parts above the file may be
    created. Anything at or above the data root must exist already."""
    total = len(where.root.parts) + len(where.parts)  # parts[0] is "/"
    must_exist = depth + 1 if depth > 0 else max(1, total + depth)
    return max(0, must_exist - len(where.root.parts))


class FilePathPolicy:
    """The FilePath/FileName/FileTemplate/FileNumber/CreateDirectory half of a FileWriter
    (a mixin of `file_writer.FileWriter`, which provides the component's values, `site`,
    `set`, `_fail` and `_off_loop`)."""

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
            first_new = create_from(where, depth) if create and depth else None
            try:
                os.close(safepath.open_folder(where, first_new))
            except FileNotFoundError as exc:
                if first_new is not None:
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

    def next_file(self, params: Mapping[str, Any], show: bool = True) -> Path:
        """The path of the next file, from FilePath, FileName, FileTemplate in `params` and
        the live FileNumber, checked against the data roots; shown on FullFileName_RBV (unless
        `show` is False: another writer's file, a cluster rank's)."""
        v = params
        if not v["FilePath"]:
            raise WriteError("FilePath is empty")
        # FileNumber is the live counter: the writer itself moves it on after each file
        name = format_file_name(v["FileTemplate"], v["FilePath"], v["FileName"],
                                self.values["FileNumber"])
        path = self._allowed(name).path
        if show:
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
