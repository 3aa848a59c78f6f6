"""The FITS driver's watched folder: which complete files matching the pattern are new.

Change notification (watchfiles' inotify backend) tells which names changed; only those are
looked at, so a poll costs nothing per file already in the folder. The whole folder is listed
only when the watch is set up: at start, when Folder or Pattern changes, when a subfolder
appears or goes, and when the folder itself comes back after it was gone.

Safety: the notifier is only a hint. It is given each folder explicitly and not recursively,
because it would follow a symbolic link below the root into the rest of the file system; the
folders are found by walking down from the data root's descriptor with links refused, as
`ndflow.safepath` does for files. Every name it reports is looked at again the same way (lstat
relative to its folder's descriptor, reached from the root with O_NOFOLLOW), and the driver opens
files only through `safepath`.

Memory: `seen` holds the files on disk that are not new (read already, or there before the
watch began); a file leaves it when it is deleted or moved away, and a full listing keeps only
what it found, so it is bounded by what the folder holds, not by what it ever held. A file
deleted and written again under the same name is a new file.

Owned by the driver's watcher thread: nothing here is locked.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from watchfiles import Change
from watchfiles._rust_notify import RustNotify

from ndflow.safepath import (Location, PathRefused, find, open_folder, pattern_closure,
                             pattern_parts)

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".filepart")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 32  # as safepath.find
MAX_LINKS_TOLD = 10_000
#: the notifier groups a burst of changes for at most this long before reporting them
DEBOUNCE_MS = 100
STEP_MS = 20  # how often a wait checks its stop event (a put's command, or shutdown)


@dataclass(frozen=True)
class Source:
    """A file to read: how it is named, and how it is opened."""

    path: Path  # LastFile_RBV, the FileName/FilePath attributes, the camera folder
    #: reached from its data root with links refused; None: opened by name (only files named on
    #: `ndflow replay`'s command line, which no client can choose)
    where: Location | None = None
    refused: str = ""  # why it may not be opened at all (it lies outside the data roots)


class Match:
    """Where a path below the folder stands against the pattern (safepath.find's reading of
    a glob: '**' is any number of folders, other parts `fnmatch`, case-sensitive)."""

    def __init__(self, pattern: str) -> None:
        self.parts = pattern_parts(pattern)

    def _closure(self, states: set[int]) -> frozenset[int]:
        return pattern_closure(states, self.parts)

    def _after(self, names: tuple[str, ...]) -> set[int]:
        """The pattern positions a folder reached through `names` may continue from."""
        states = self._closure({0})
        for name in names:
            deeper: set[int] = set()
            for i in states:
                if i >= len(self.parts):
                    continue
                if self.parts[i] == "**":
                    deeper.add(i)
                elif fnmatch.fnmatchcase(name, self.parts[i]) and i + 1 < len(self.parts):
                    deeper.add(i + 1)
            states = self._closure(deeper)
            if not states:
                break
        return states

    def file(self, parts: tuple[str, ...]) -> bool:
        """Whether a file at `parts` matches the whole pattern."""
        if not parts:
            return False
        last = parts[-1]
        return any(i + 1 == len(self.parts) and self.parts[i] != "**"
                   and fnmatch.fnmatchcase(last, self.parts[i])
                   for i in self._after(parts[:-1]))

    def folder(self, parts: tuple[str, ...]) -> bool:
        """Whether the pattern may look inside a folder at `parts`."""
        return bool(self._after(parts)) and len(parts) <= MAX_DEPTH


class FolderWatch:
    """One folder and pattern; `wait` reports the files that became complete (their size and
    modification time unchanged for `settle_s`), oldest first. `report` says a problem once."""

    def __init__(self, settle_s: float, report: Callable[[str], None],
                 force_polling: bool = False, poll_s: float = 0.2) -> None:
        self.settle_s = settle_s
        self._report = report
        #: network file systems: inotify sees no writes made on other hosts; the notifier then
        #: polls each watched folder (not recursively) every poll_s
        self._polling = (force_polling, max(1, int(poll_s * 1000)))
        self.folder: Path | None = None
        self.where: Location | None = None
        self.pattern = "**/*.fits*"
        self._match = Match(self.pattern)
        self.seen: set[Path] = set()
        #: files settling: path -> size, mtime, since when so, components below the folder
        self._pending: dict[Path, tuple[int, int, float, tuple[str, ...]]] = {}
        self._links_told: set[Path] = set()
        self._notify: RustNotify | None = None
        self._watched: set[Path] = set()
        self._identity: tuple[int, int] | None = None  # the folder's (device, inode) watched

    # --- what to watch (watcher thread: a put's command, or start) --------------------------------
    def retarget(self, folder: Path | None, where: Location | None, pattern: str,
                 present_are_new: bool = False) -> None:
        """Watch `folder` for `pattern` from now on. The files there now are not new, unless
        `present_are_new` (read_existing). A folder that cannot be watched yet is said by
        the next `wait`, and watched once it can be."""
        self.close()
        self.folder, self.where, self.pattern = folder, where, pattern
        self._match = Match(pattern)
        self._pending.clear()
        self._links_told.clear()
        if present_are_new:
            self.seen.clear()
        if folder is not None:
            try:
                self._rewatch(present_are_new)
            except (OSError, PathRefused):
                self.seen.clear()  # listed once it can be; what is there then is new

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        self._watched = set()
        self._identity = None

    # --- waiting ------------------------------------------------------------------------------------
    def wait(self, timeout_s: float, stop: threading.Event) -> list[Source]:
        """Wait up to `timeout_s` for changes (returning early when `stop` is set), then return
        the files that have become complete. Raises OSError or PathRefused when the folder
        cannot be watched (gone, unreadable, swapped for a link); `wait` tries again next time."""
        if self.folder is None or self.where is None:
            stop.wait(timeout_s)
            return []
        if self._notify is not None:
            try:
                same = self._same_folder()
            except BaseException:  # gone: its watch is over; set up again once it is back
                self.close()
                raise
            if not same:
                self.close()
        if self._notify is None:
            self._rewatch(True)
        notify = self._notify
        assert notify is not None
        changes = notify.watch(DEBOUNCE_MS, STEP_MS, max(1, int(timeout_s * 1000)), stop)
        if isinstance(changes, set) and self._apply(changes):
            self.close()
            self._rewatch(True)  # a subfolder came or went: watch the new set, list it
        return self._settled()

    # --- the watch ----------------------------------------------------------------------------------
    def _same_folder(self) -> bool:
        """Whether the folder watched is still the one its path names (cheap: a few opens)."""
        assert self.where is not None
        fd = open_folder(self.where)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return (st.st_dev, st.st_ino) == self._identity

    def _rewatch(self, present_are_new: bool) -> None:
        """Watch the folder and each subfolder the pattern may enter (found with links
        refused), then list the files: those not seen are new (pending) if
        `present_are_new`, else seen. The notifier starts before the listing, so nothing
        written meanwhile is missed."""
        assert self.folder is not None and self.where is not None
        folders, identity = self._folders()
        notify = RustNotify([str(f) for f in folders], False, *self._polling, False, True)
        self._notify, self._watched, self._identity = notify, set(folders), identity
        present = set()
        for path, st, parts in self._candidates():
            present.add(path)
            if present_are_new and path not in self.seen:
                self._consider(path, st, parts)
        if present_are_new:
            self.seen &= present
        else:
            self.seen = present
        self._pending = {p: v for p, v in self._pending.items() if p in present}

    def _folders(self) -> tuple[list[Path], tuple[int, int]]:
        """The folder and the subfolders below it the pattern may look into, walked from the
        root's descriptor with links refused; and the folder's (device, inode)."""
        assert self.folder is not None and self.where is not None
        fd = open_folder(self.where)
        try:
            st = os.fstat(fd)
            found = [self.folder]
            self._walk(fd, (), found)
        finally:
            os.close(fd)
        return found, (st.st_dev, st.st_ino)

    def _walk(self, fd: int, below: tuple[str, ...], found: list[Path]) -> None:
        try:
            entries = list(os.scandir(fd))
        except OSError:
            return
        for entry in entries:
            parts = below + (entry.name,)
            try:
                if not entry.is_dir(follow_symlinks=False) or not self._match.folder(parts):
                    continue
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # gone, unreadable, or swapped for a link since it was listed
                continue
            try:
                assert self.folder is not None
                found.append(self.folder.joinpath(*parts))
                self._walk(child, parts, found)
            finally:
                os.close(child)

    def _candidates(self) -> Iterator[tuple[Path, os.stat_result, tuple[str, ...]]]:
        """What the pattern matches in the folder now: regular files, and links named like one
        (read as refused); a link where the pattern would search a subfolder is said once."""
        assert self.folder is not None and self.where is not None
        fd = open_folder(self.where)
        try:
            found = find(fd, self.pattern)
        finally:
            os.close(fd)
        for entry in found:
            path = self.folder.joinpath(*entry.parts)
            if not entry.matched:
                self._tell_link(path, entry.parts)
                continue
            if _ignored(entry.parts[-1]):
                continue
            yield path, entry.stat, entry.parts

    def _source(self, parts: tuple[str, ...]) -> Source:
        assert self.folder is not None and self.where is not None
        return Source(self.folder.joinpath(*parts),
                      Location(self.where.root, self.where.parts + parts))

    def _tell_link(self, path: Path, parts: tuple[str, ...]) -> None:
        if path not in self._links_told and len(self._links_told) < MAX_LINKS_TOLD:
            self._links_told.add(path)  # not entered, and said once
            self._report(f"{'/'.join(parts)}: symbolic link refused (not followed)")

    # --- changes ------------------------------------------------------------------------------------
    def _apply(self, changes: set[tuple[int, str]]) -> bool:
        """Look at each name the notifier reported; True if the set of folders changed."""
        assert self.folder is not None
        folders_changed = False
        for change, text in sorted(changes, key=lambda c: c[1]):
            path = Path(text)
            try:
                parts = path.relative_to(self.folder).parts
            except ValueError:
                continue
            if not parts:  # the folder itself: deleted or moved, its watch is over
                folders_changed |= change == Change.deleted
                continue
            if ".." in parts:
                continue
            if change == Change.deleted:
                folders_changed |= path in self._watched
                self._forget(path)
                continue
            st = self._lstat(parts)
            if st is None:  # gone again already (a deleted event follows), or unreadable
                self._forget(path)
                folders_changed |= path in self._watched
                continue
            if stat.S_ISDIR(st.st_mode):
                folders_changed |= path not in self._watched and self._match.folder(parts)
            elif stat.S_ISLNK(st.st_mode) and not self._match.file(parts):
                if self._match.folder(parts):
                    self._tell_link(path, parts)
            elif (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and \
                    self._match.file(parts) and not _ignored(parts[-1]) and path not in self.seen:
                self._consider(path, st, parts)
        return folders_changed

    def _lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """The entry's own status, reached from the root with links refused; None if it
        cannot be (gone, or a link on the way)."""
        assert self.where is not None
        try:
            fd = open_folder(Location(self.where.root, self.where.parts + parts[:-1]))
        except (OSError, PathRefused):
            return None
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _forget(self, path: Path) -> None:
        """`path` is gone (a file, or a folder with whatever was below it)."""
        if path in self.seen or path in self._pending:
            self.seen.discard(path)
            self._pending.pop(path, None)
            return
        if path in self._watched:  # a folder: what was below it goes too
            self.seen = {p for p in self.seen if path not in p.parents}
            self._pending = {p: v for p, v in self._pending.items() if path not in p.parents}

    def _consider(self, path: Path, st: os.stat_result, parts: tuple[str, ...]) -> None:
        """A candidate changed: it is complete once it stays as it is now for settle_s."""
        state = (st.st_size, st.st_mtime_ns)  # the entry's own (lstat): a link is not read
        old = self._pending.get(path)
        if old is None or old[:2] != state:
            self._pending[path] = (*state, time.monotonic(), parts)

    def _settled(self) -> list[Source]:
        """The pending files unchanged for settle_s (looked at again now: a write the notifier
        did not report, through a mapping, must not slip through), oldest first."""
        now = time.monotonic()
        ready = []
        for path, (size, mtime, since, parts) in list(self._pending.items()):
            if now - since < self.settle_s:
                continue
            st = self._lstat(parts)
            if st is None:
                del self._pending[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._pending[path] = (st.st_size, st.st_mtime_ns, now, parts)
                continue
            del self._pending[path]
            self.seen.add(path)
            ready.append((mtime, str(path), self._source(parts)))
        return [source for *_, source in sorted(ready, key=lambda r: r[:2])]

    @property
    def waiting(self) -> bool:
        """Whether a file is settling (the caller then waits only a poll interval)."""
        return bool(self._pending)


def _ignored(name: str) -> bool:
    """Hidden files and the temporary names writers use before renaming into place."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)
