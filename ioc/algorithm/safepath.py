"""Open files under a trusted folder without ever leaving it: the one place path walking lives.

Why: any Channel Access client can write FilePath, FileName, FileTemplate and NDAttributesFile,
and a local user may be able to create links inside a data root (a shared /tmp). Checking a
path ("is its resolved form under the root?") and then opening it by name are two steps; the
folder can be swapped for a symlink in between, and the open then follows the link out. That
race wrote files outside the roots while TIFF1 saved (tests/test_paths.py).

How: the check and the open are one step. A path is first split lexically (no file system
access) into a trusted root plus the components below it. The root is opened as a directory,
then each component is opened relative to the descriptor of the folder above it with
O_NOFOLLOW|O_DIRECTORY, and finally the file relative to its folder's descriptor with
O_NOFOLLOW. A symlink anywhere below the root is refused, whatever it points to, because the
kernel checks each component at the moment it is used; nothing is ever looked up by its full
name again. Folders are created the same way (mkdirat, then opened with O_NOFOLLOW).

What is trusted: the roots themselves (the site's configuration, resolved once when it is
loaded) and the folders above them. Everything below a root is not.

Standard library only, POSIX only (`dir_fd` support); the IOC runs on Linux.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO or a device someone left under a root must not hang the caller;
#: the file is checked to be a regular file right after, and the flag dropped.
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class PathRefused(ValueError):
    """A path that may not be used; the message says why, for a user (one line, naming only the
    path the user gave, never a file's contents)."""


class NotAFolder(PathRefused):
    """A component of a folder path exists but is not a folder (a file, a device)."""


@dataclass(frozen=True)
class Location:
    """A path split into a trusted root and the components below it (no '.', '..' or '')."""

    root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    def __str__(self) -> str:
        return str(self.path)


def locate(path: str | Path, roots: Sequence[Path], what: str = "the data roots") -> Location:
    """Which of `roots` the absolute `path` lies under, by its text alone.

    '..' is collapsed lexically (as the text reads, not as the file system would resolve it).
    That is safe because the result is only ever opened by walking down from the root with
    links refused: the walk cannot reach anything the text does not name. The most specific
    root wins when roots nest."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        raise PathRefused(f"{text}: give an absolute path")
    normal = Path(os.path.normpath(text))
    best: Path | None = None
    for root in roots:
        if normal.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    if best is None:
        where = ", ".join(map(str, roots)) or "none configured"
        raise PathRefused(f"{text} is outside {what} ({where})")
    return Location(best, normal.relative_to(best).parts)


def open_root(root: Path) -> int:
    """A descriptor of a trusted root folder. The root's own path is configuration (resolved at
    start), so the folders above it are followed; the root itself must not have become a link."""
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise PathRefused(f"{root} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathRefused(f"{root} is not a folder (or has become a symbolic link)") from None
        raise PathRefused(f"{root}: {exc.strerror}") from None


def _refusal(parent_fd: int, name: str, shown: Path, exc: OSError,
             want_file: bool = False) -> PathRefused:
    """Why opening `name` (a folder, or a file if `want_file`) under `parent_fd` failed, in
    words (lstat tells a link from a file)."""
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return PathRefused(f"{shown} is a symbolic link: links under a root are not followed")
    if want_file and stat.S_ISDIR(mode):
        return PathRefused(f"{shown} is a folder, not a file")
    if not want_file and (exc.errno in (errno.ENOTDIR, errno.ELOOP) or
                          (mode and not stat.S_ISDIR(mode))):
        return NotAFolder(f"{shown} is not a folder")
    return PathRefused(f"{shown}: {exc.strerror}")


def open_folder(where: Location, create_from: int | None = None, mode: int = 0o777) -> int:
    """A descriptor of the folder `where`, reached one component at a time from its root.

    Components from index `create_from` on (None: none) are created when missing; a missing one
    before that raises FileNotFoundError naming the first folder that is missing. The caller
    closes the descriptor."""
    fd = open_root(where.root)
    shown = where.root
    try:
        for i, name in enumerate(where.parts):
            shown = shown / name
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_from is None or i < create_from:
                    raise FileNotFoundError(errno.ENOENT, "does not exist", str(shown)) from None
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile: opened (and checked) below like any other
                except OSError as exc:
                    raise PathRefused(f"cannot create {shown}: {exc.strerror}") from None
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refusal(fd, name, shown, exc) from None
            except OSError as exc:
                raise _refusal(fd, name, shown, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_file(where: Location, mode: int = 0o666) -> int:
    """A descriptor, open for reading and writing, of the regular file `where`: created, or an
    existing one truncated (as areaDetector overwrites a file name it is given again).

    The folder must exist (see `open_folder`). The last component is opened with O_NOFOLLOW, so
    a link planted there is refused. An existing file is truncated only after fstat shows it is
    a regular file with one link: a hard link to a file elsewhere (which O_NOFOLLOW cannot see)
    is refused untouched. The caller closes the descriptor."""
    if not where.parts:
        raise PathRefused(f"{where.root} is a folder, not a file name")
    folder = open_folder(Location(where.root, where.parts[:-1]))
    name = where.parts[-1]
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, mode, dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise _refusal(folder, name, where.path, exc, want_file=True) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PathRefused(f"{where.path} is not a regular file")
            if st.st_nlink != 1:
                raise PathRefused(f"{where.path} has other hard links: not overwritten")
            os.ftruncate(fd, 0)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(folder)


def read_file(where: Location, max_bytes: int) -> bytes:
    """The bytes of the regular file `where`, read without following links (as `create_file`).

    Refused: links, anything but a regular file (devices, FIFOs, /proc-like files that report
    size 0 but stream), and files over `max_bytes`. Messages never contain what was read."""
    if not where.parts:
        raise PathRefused(f"{where.root} is a folder, not a file")
    folder = open_folder(Location(where.root, where.parts[:-1]))
    name = where.parts[-1]
    try:
        try:
            fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _refusal(folder, name, where.path, exc, want_file=True) from None
    finally:
        os.close(folder)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"{where.path} is not a regular file")
        if st.st_size > max_bytes:
            raise PathRefused(f"{where.path} is larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # grew while read
                raise PathRefused(f"{where.path} is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """A name that opens exactly the file `fd` refers to, for libraries that take only names
    (HDF5's default driver). Linux's /proc/self/fd/N is a "magic link": opening it reaches the
    open file's inode directly, with no lookup of folder names, so no swap can redirect it."""
    name = f"/proc/self/fd/{fd}"
    if not os.path.exists(name):
        raise PathRefused("this system has no /proc/self/fd, needed to hand HDF5 a file "
                          "opened safely")
    return name


def same_file(fd_a: int, fd_b: int) -> bool:
    """Whether two descriptors refer to the same inode (device and inode number)."""
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def has_parent_parts(text: str) -> bool:
    """Whether a path's text has a '..' component (refused outright where names come from a
    client and are relative to a folder)."""
    return ".." in Path(text).parts


# --- reading what a folder holds (the FITS driver's watched folder) -------------------------------

class LinkRefused(PathRefused):
    """A symbolic link where a file was expected: refused, whatever it points to."""


def open_file_at(folder: int, name: str, shown: str | Path) -> int:
    """A read-only, blocking descriptor of the regular file `name` in the open folder `folder`.

    `name` is one component, opened relative to the folder's descriptor with O_NOFOLLOW: a
    symbolic link is refused (LinkRefused) at the moment of the open, so a file swapped for a
    link after it was listed is refused too. Anything but a regular file (a FIFO, a device, a
    folder) is refused (PathRefused); FileNotFoundError if it is gone. `shown` names the file in
    messages, which never contain what it holds. The caller closes the descriptor."""
    if not name or name in (".", "..") or "/" in name:
        raise PathRefused(f"{shown}: not a file name")
    try:
        fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=folder)
    except FileNotFoundError:
        raise
    except OSError as exc:
        refusal = _refusal(folder, name, Path(shown), exc, want_file=True)
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
        except OSError:
            is_link = exc.errno == errno.ELOOP
        if is_link:
            raise LinkRefused(f"{shown}: symbolic link refused") from None
        raise refusal from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefused(f"{shown} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(where: Location) -> int:
    """A read-only, blocking descriptor of the regular file `where`, reached from its root one
    component at a time with links refused (`open_folder`, then `open_file_at`): the check and
    the open are one step. A link as the file itself raises LinkRefused; a link in place of a
    folder on the way raises PathRefused (from `open_folder`). The caller closes it."""
    if not where.parts:
        raise PathRefused(f"{where.root} is a folder, not a file")
    folder = open_folder(Location(where.root, where.parts[:-1]))
    try:
        return open_file_at(folder, where.parts[-1], where.path)
    finally:
        os.close(folder)


@dataclass(frozen=True)
class Found:
    """An entry `find` reports: its components below the folder searched and its lstat."""

    parts: tuple[str, ...]
    stat: os.stat_result
    #: whether the whole pattern matched (False: a link in place of a folder the pattern would
    #: have searched, reported so the caller can say it was not followed)
    matched: bool = True

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.stat.st_mode)


def pattern_parts(pattern: str) -> tuple[str, ...]:
    """A glob's components: '/'-separated, '' and '.' dropped. '**' (a whole component) matches
    any number of folders, the others are `fnmatch` patterns matched case-sensitively."""
    return tuple(p for p in pattern.split("/") if p not in ("", "."))


def find(folder: int, pattern: str, max_depth: int = 32) -> list[Found]:
    """The regular files (and symbolic links) below the open folder `folder` whose path matches
    the glob `pattern` (as `pathlib.Path.glob` reads it: see `pattern_parts`).

    No name is ever looked up through a link: the listing is `os.scandir` on descriptors, each
    entry is lstat'ed, and a subfolder is entered by opening it relative to its parent's
    descriptor with O_NOFOLLOW. A link whose name matches is returned (its own lstat, never its
    target's) for the caller to refuse; a link in place of a folder the pattern would search is
    returned with `matched` False and not entered. Folders, FIFOs and devices are not returned.
    Entries that vanish or cannot be read while listed are skipped, as glob skips them."""
    pat = pattern_parts(pattern)
    found: list[Found] = []
    if pat:
        _find(folder, (), pattern_closure({0}, pat), pat, max_depth, found)
    return found


def pattern_closure(states: set[int], pat: tuple[str, ...]) -> frozenset[int]:
    """States (indices into `pat`) reachable without consuming a name: '**' matches nothing."""
    out: set[int] = set()
    todo = list(states)
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            if i < len(pat) and pat[i] == "**":
                todo.append(i + 1)
    return frozenset(out)


def _find(folder: int, below: tuple[str, ...], states: frozenset[int], pat: tuple[str, ...],
          depth_left: int, found: list[Found]) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name):
        name = entry.name
        deeper: set[int] = set()
        whole = False
        for i in states:
            if i >= len(pat):
                continue
            if pat[i] == "**":
                deeper.add(i)  # '**' takes this folder too
            elif fnmatch.fnmatchcase(name, pat[i]):
                if i + 1 == len(pat):
                    whole = True
                else:
                    deeper.add(i + 1)
        if not whole and not deeper:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        parts = below + (name,)
        if stat.S_ISLNK(st.st_mode):
            found.append(Found(parts, st, matched=whole))
        elif stat.S_ISREG(st.st_mode):
            if whole:
                found.append(Found(parts, st))
        elif stat.S_ISDIR(st.st_mode) and deeper and depth_left > 0:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=folder)
            except OSError:  # gone, unreadable, or swapped for a link since it was listed
                continue
            try:
                _find(child, parts, pattern_closure(deeper, pat), pat, depth_left - 1, found)
            finally:
                os.close(child)
