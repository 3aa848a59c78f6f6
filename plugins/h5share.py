"""One HDF5 file, several writers: open by path, refcounted, one owner of the h5py handle.

Why: HDF1 (images in `/entry/data`) and Table1 (per-frame results in `/entry/table`) may be
pointed at the same file name. Two `h5py.File(name, "w")` calls on one path would truncate each
other, and h5py's `File.close()` closes every object of the file (HDF5's "strong" close), so a
writer that closes would pull the datasets out from under the other. So every HDF5 file a writer
opens goes through this registry, keyed by its path under the data root (the text the writers
resolve with `Site.locate`, the same for every writer): the first writer creates the file, a
later one joins it, each gets a `SharedH5File` (a real `h5py.File` on the same file) whose
`close()` only gives back its share; the registry closes the file when the last share is back.
Writers that target different paths get different files, as before.

Joining a file that was just closed: the writers of one acquisition do not finish together (a
Table behind a slow algorithm opens its file after HDF1 has written all its frames and closed).
The registry remembers the last files it closed (path, inode, the acquisitions they hold and
who wrote them). A writer that opens such a path for one of those acquisitions, and did not
write that file itself, reopens it read-write (its group is added beside the others) instead of
truncating it; the inode must still be the one closed, so a file replaced meanwhile is not
touched. Anything else (another acquisition, the same writer again) creates the file anew, as
areaDetector overwrites a name it is given again.

Locking: `SharedFile.lock` is held by the registry while it opens, joins and closes, and by a
writer around a block of rows and its flushes. h5py serialises each HDF5 call with its own
global lock, so writers that touch disjoint groups cannot corrupt the file even without it; the
lock keeps a writer's multi-call updates (resize every column, then fill the rows) in one piece
against another writer's flush and against the close.

SWMR: a file in SWMR mode cannot get new groups or datasets, so a writer cannot join it (the
message says to give it its own file); a writer that asks for SWMR (libver "latest") cannot join
a file created without it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import h5py

#: how many closed files are remembered for a late writer of the same acquisition to join
REMEMBERED = 64


class SharedFileError(Exception):
    """A writer cannot use the file at this path; the message says why, for a user."""


@dataclass(eq=False)
class SharedFile:
    """One open HDF5 file and the writers holding it."""

    key: str
    file: h5py.File  # the one handle whose close() really closes the file
    libver: str
    owners: dict[str, int] = field(default_factory=dict)  # writer -> shares held
    acquisitions: set[int] = field(default_factory=set)
    writers: set[str] = field(default_factory=set)  # every writer that held it
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def refs(self) -> int:
        return sum(self.owners.values())


@dataclass(frozen=True)
class _Closed:
    inode: tuple[int, ...]  # device, inode, size and mtime after the close
    acquisitions: frozenset[int]
    writers: frozenset[str]
    libver: str


class SharedH5File(h5py.File):
    """A writer's view of a shared file: an ordinary h5py.File (groups, datasets, attrs, flush,
    swmr_mode), except that `close()` gives back this writer's share instead of closing the
    file for everyone."""

    def __init__(self, shared: SharedFile, owner: str, registry: "Registry") -> None:
        super().__init__(shared.file.id)  # another identifier of the same open file
        self.shared = shared
        self.owner = owner
        self._registry = registry
        self._released = False

    @property
    def lock(self) -> threading.RLock:
        return self.shared.lock

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._registry.release(self.shared, self.owner)


Opener = Callable[[], h5py.File]
#: opens the existing file read-write if `accept(fd)` says the descriptor is the file meant,
#: else returns None (the check is made before HDF5 opens it: its open changes the mtime)
Reopener = Callable[[Callable[[int], bool]], "h5py.File | None"]


class Registry:
    """The open shared files of this process, by path (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the tables below; never held across HDF5 I/O
        self._open: dict[str, SharedFile] = {}
        self._closed: OrderedDict[str, _Closed] = OrderedDict()
        self._creating = threading.Lock()  # held by the one writer making or reopening a file

    def open(self, key: str, owner: str, acquisition: int | None, libver: str,
             create: Opener, reopen: Reopener) -> SharedH5File:
        """The file at `key` for `owner`: joined if open, reopened if a writer of the same
        acquisition just closed it (and `owner` did not write it), else made with `create`.
        `reopen` opens the existing file read-write (it must be the inode remembered)."""
        while True:
            joined = self._join(key, owner, acquisition, libver)
            if joined is not None:
                return joined
            # one writer at a time makes or reopens a file: a second h5py.File(path, "w")
            # while the first is open fails ("unable to truncate a file which is already
            # open"), which a Table and an HDF1 opening one name together used to hit
            with self._creating:
                with self._lock:
                    if key in self._open:  # another writer made it first: join it
                        continue
                    closed = self._closed.get(key)
                return self._create(key, owner, acquisition, libver, closed, create, reopen)

    def _join(self, key: str, owner: str, acquisition: int | None,
              libver: str) -> SharedH5File | None:
        """A share of the open file at `key`; None if it is not open."""
        while True:
            with self._lock:
                shared = self._open.get(key)
            if shared is None:
                return None
            with shared.lock:
                with self._lock:
                    if self._open.get(key) is not shared:
                        continue  # closed meanwhile: look again
                    self._check_join(shared, owner, libver)
                    shared.owners[owner] = shared.owners.get(owner, 0) + 1
                    shared.writers.add(owner)
                    if acquisition is not None:
                        shared.acquisitions.add(acquisition)
                return SharedH5File(shared, owner, self)

    def _create(self, key: str, owner: str, acquisition: int | None, libver: str,
                closed: _Closed | None, create: Opener, reopen: Reopener) -> SharedH5File:
        """The file at `key` made anew, or reopened if a writer of the same acquisition just
        closed it (`_creating` held)."""
        rejoin = (closed is not None and acquisition is not None
                  and acquisition in closed.acquisitions and owner not in closed.writers
                  and libver == closed.libver)
        file = None
        if rejoin:  # only if it is still the file closed (not one made since under its name)
            file = reopen(lambda fd: _identity(fd) == closed.inode)
        if file is None:
            rejoin = False
            file = create()
        shared = SharedFile(key, file, libver, {owner: 1},
                            set(closed.acquisitions) if rejoin and closed else set(),
                            set(closed.writers) | {owner} if rejoin and closed else {owner})
        if acquisition is not None:
            shared.acquisitions.add(acquisition)
        with self._lock:
            self._open[key] = shared
            self._closed.pop(key, None)
        return SharedH5File(shared, owner, self)

    @staticmethod
    def _check_join(shared: SharedFile, owner: str, libver: str) -> None:
        others = ", ".join(sorted(shared.owners)) or "another writer"
        if shared.file.swmr_mode:
            raise SharedFileError(f"the file is open in SWMR mode by {others}: {owner} cannot "
                                  "add its group (give it its own file, or SWMRMode Off)")
        if libver == "latest" and shared.libver != "latest":
            raise SharedFileError(f"the file was opened without SWMR support by {others}; "
                                  "SWMR needs its own file")

    def note_acquisition(self, shared: SharedFile, acquisition: int) -> None:
        with self._lock:
            shared.acquisitions.add(acquisition)

    def release(self, shared: SharedFile, owner: str) -> None:
        """`owner` gives back one share; the last one closes the file."""
        with shared.lock:
            with self._lock:
                held = shared.owners.get(owner, 0)
                if held <= 1:
                    shared.owners.pop(owner, None)
                else:
                    shared.owners[owner] = held - 1
                if shared.refs or self._open.get(shared.key) is not shared:
                    return
                # stays in _open until closed: a writer opening it meanwhile waits for
                # shared.lock (held here), then finds it closed and remembered
                try:  # a descriptor kept across the close: the identity of the file as closed
                    kept = os.dup(shared.file.id.get_vfd_handle())
                except (OSError, ValueError):
                    kept = None
            try:
                shared.file.close()
            finally:
                inode = None
                if kept is not None:
                    inode = _identity(kept)
                    os.close(kept)
            with self._lock:
                del self._open[shared.key]
                if inode is not None:
                    self._closed[shared.key] = _Closed(inode, frozenset(shared.acquisitions),
                                                       frozenset(shared.writers),
                                                       shared.libver)
                    self._closed.move_to_end(shared.key)
                    while len(self._closed) > REMEMBERED:
                        self._closed.popitem(last=False)

    def holders(self, key: str) -> dict[str, int]:
        """Who holds the file at `key` now (for tests and messages)."""
        with self._lock:
            shared = self._open.get(key)
            return dict(shared.owners) if shared is not None else {}


def _identity(fd: int) -> tuple[int, ...]:
    """Device, inode, size and modification time: a file deleted and another made under the
    same name may get the same inode number, not also the same size and time."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


#: the registry every writer of this process uses
REGISTRY = Registry()


def open_shared(key: str, owner: str, acquisition: int | None, libver: str,
                create: Opener, reopen: Reopener) -> SharedH5File:
    return REGISTRY.open(key, owner, acquisition, libver, create, reopen)


def file_lock(file: Any) -> Any:
    """The lock to hold around a block of writes to `file` (a SharedH5File's, or a fresh one
    for any other h5py.File)."""
    return getattr(file, "lock", None) or threading.RLock()
