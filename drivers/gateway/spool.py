"""The durable forward queue: every acknowledged upload is an entry on disk until the archive
has it.

Entries are `queue/<seq>.json`, their bytes `data/<seq>.data` (a hard link to the upload, or a
copy). An entry is written (fsync + atomic rename + fsync of the folder) before the camera is
told "226", so a crash or power cut cannot lose an acknowledged file; bytes without an entry at
start-up were never acknowledged and are deleted; an unreadable entry is set aside in
`rejected/` for an operator.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ndflow.reasons import one_line

CHUNK = 256 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    path: str  # relative to the incoming folder, "/"-separated
    size: int


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write + fsync + atomic rename + fsync of the folder: after return, a crash leaves
    either nothing or the whole file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent, directory=True)


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


class Spool:
    """Queue entries in `queue/<seq>.json`, their bytes in `data/<seq>.data`.

    Entries are kept in memory in sequence order too; the disk is the truth at start-up.
    A lock file stops two gateways from forwarding the same spool twice.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.rejected_dir = root / "rejected"
        self._entries: deque[SpoolEntry] = deque()
        self._next_seq = 1
        self._lock = threading.Lock()
        self._lock_file: int | None = None

    def open(self) -> list[str]:
        """Lock the spool and load what is on disk; returns one message per rejected entry."""
        for folder in (self.queue_dir, self.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"spool {self.root} is in use by another gateway") from None
        self._lock_file = fd
        return self._recover()

    def close(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    def _recover(self) -> list[str]:
        for tmp in [*self.queue_dir.glob("*.tmp"), *self.data_dir.glob("*.tmp")]:
            tmp.unlink(missing_ok=True)
        problems: list[str] = []
        entries: list[SpoolEntry] = []
        highest = 0
        for entry_file in self.queue_dir.glob("*.json"):
            try:
                raw = json.loads(entry_file.read_text())
                entry = SpoolEntry(int(raw["seq"]), str(raw["path"]), int(raw["size"]))
                if entry.seq != int(entry_file.stem) or not _safe_relative(entry.path):
                    raise ValueError("inconsistent entry")
                if not self.data_path(entry).is_file():
                    raise FileNotFoundError(f"{self.data_path(entry).name} missing")
            except (OSError, ValueError, KeyError, TypeError) as err:
                problems.append(self._reject(entry_file, err))
                continue
            entries.append(entry)
        entries.sort(key=lambda e: e.seq)
        queued = {e.seq for e in entries}
        for data in self.data_dir.glob("*.data"):
            seq = int(data.stem) if data.stem.isdigit() else 0
            highest = max(highest, seq)
            if seq not in queued:  # written before a crash, never acknowledged: not an upload
                data.unlink(missing_ok=True)
        for done in self.rejected_dir.glob("*"):
            stem = done.name.split(".", 1)[0]
            highest = max(highest, int(stem) if stem.isdigit() else 0)
        highest = max([highest, *queued])
        self._entries = deque(entries)
        self._next_seq = highest + 1
        return problems

    def _reject(self, entry_file: Path, err: BaseException) -> str:
        """Keep a bad entry (and its bytes) aside for an operator instead of deleting it."""
        self.rejected_dir.mkdir(exist_ok=True)
        for victim in (entry_file, self.data_dir / f"{entry_file.stem}.data"):
            if victim.exists():
                os.replace(victim, self.rejected_dir / victim.name)
        return (f"spool entry {entry_file} unreadable ({one_line(err)}); "
                f"moved to {self.rejected_dir}")

    def reject(self, entry: SpoolEntry) -> str:
        """Set aside an entry that cannot be forwarded (its bytes are gone)."""
        with self._lock:
            message = self._reject(self.queue_dir / f"{entry.seq:012d}.json",
                                   FileNotFoundError(f"{self.data_path(entry).name} missing"))
            self._entries.remove(entry)
            return message

    def data_path(self, entry: SpoolEntry) -> Path:
        return self.data_dir / f"{entry.seq:012d}.data"

    def add(self, source: Path, rel: str) -> SpoolEntry:
        """Queue the completed upload `source`; returns when the entry is durable."""
        with self._lock:  # seq order == order on disk == forwarding order
            seq = self._next_seq
            self._next_seq += 1
            data = self.data_dir / f"{seq:012d}.data"
            entry_file = self.queue_dir / f"{seq:012d}.json"
            try:
                self._keep_bytes(source, data)
                entry = SpoolEntry(seq, rel, data.stat().st_size)
                payload = {"seq": seq, "path": rel, "size": entry.size}
                _write_durably(entry_file, json.dumps(payload).encode())
            except BaseException:
                data.unlink(missing_ok=True)
                raise
            self._entries.append(entry)
            return entry

    def _keep_bytes(self, source: Path, data: Path) -> None:
        fsync_path(source)
        try:
            os.link(source, data)  # same inode: O(1), and already fsynced above
        except OSError:  # other filesystem, or links unsupported: copy
            tmp = data.with_name(data.name + ".tmp")
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, data)
        fsync_path(self.data_dir, directory=True)

    def head(self) -> SpoolEntry | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def remove(self, entry: SpoolEntry) -> None:
        """Forwarded: drop the entry (the atomic step), then its bytes."""
        with self._lock:
            (self.queue_dir / f"{entry.seq:012d}.json").unlink(missing_ok=True)
            fsync_path(self.queue_dir, directory=True)
            self.data_path(entry).unlink(missing_ok=True)
            if self._entries and self._entries[0] == entry:
                self._entries.popleft()
            else:
                self._entries.remove(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def count_queued_on_disk(spool: Path) -> int:
    return sum(1 for _ in (spool / "queue").glob("*.json")) if spool.is_dir() else 0
