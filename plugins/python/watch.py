"""Watching one algorithm file for changes with watchfiles (inotify), not by polling its stamp.

The file's folder is watched, not the file: an editor that saves by writing a new file and
renaming it over the old one replaces the inode a file watch would follow. Any change to the
file's path (written, replaced, deleted) calls `on_change` once the burst of events settles.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import watchfiles

log = logging.getLogger("ndflow.plugins.python")


class FileWatch:
    """A thread that calls `on_change()` whenever `path` changes, until `stop()`."""

    def __init__(self, path: Path, on_change: Callable[[], None], name: str,
                 loaded: tuple[int, int] | None = None) -> None:
        """`loaded`: the file's `stamp()` when it was read, so that a change made between the
        load and the watch's start is seen (default: now)."""
        self.path = Path(path).absolute()
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stamp = loaded if loaded is not None else stamp(self.path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _is_ours(self, change: watchfiles.Change, path: str) -> bool:
        return Path(path) == self.path

    def _run(self) -> None:
        first = True
        try:
            # yield_on_timeout: the first (empty) yield says the watch is in place; a change made
            # before then is caught by comparing the stamp taken when the file was loaded
            for changes in watchfiles.watch(self.path.parent, watch_filter=self._is_ours,
                                            stop_event=self._stop, recursive=False,
                                            debounce=400, step=50, rust_timeout=500,
                                            yield_on_timeout=True, raise_interrupt=False):
                if changes or (first and stamp(self.path) != self._stamp):
                    try:
                        self.on_change()
                    except Exception as exc:  # one failed reload must not end the watching
                        log.warning("%s: reload failed (%s: %s)", self.path,
                                    type(exc).__name__, exc)
                first = False
        except Exception as exc:  # the folder vanished, too many watches: say so, do not die
            if not self._stop.is_set():
                log.warning("%s: no longer watched for changes (%s: %s)", self.path,
                            type(exc).__name__, exc)


def stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of `path`, or None if it cannot be read."""
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None
