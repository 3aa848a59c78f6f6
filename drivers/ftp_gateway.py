"""FTP ingest gateway: cameras upload here; each file is queued durably, forwarded to an
upstream archive over FTP, and handed to a local consumer.

Why the design looks like this:
- The queue entry is written (fsync + atomic rename) *before* pyftpdlib answers "226 Transfer
  complete", so once a camera is told a file arrived, a crash or power cut cannot lose it.
- The bytes to forward are a hard link (or copy) in the spool, so a consumer that moves or
  deletes the incoming file cannot lose the forward. A re-upload over the same name gets a new
  inode first (see `_IngestFS.open`) so it never truncates a queued file.
- The forwarder sends entries strictly in sequence order, to a temporary name then renames it,
  so the archive never shows a partial file and a retry after a crash overwrites instead of
  duplicating.
- Uploads whose data connection is reset are discarded: stock pyftpdlib treats a TCP reset like
  the end of the file, which would forward a truncated image.

This module is deliberately free of ndflow imports: the ndflow component wraps it and maps
`GatewayCounters` to PVs. Tested against pyftpdlib 2.x; `_IngestDTPHandler` uses a few of
pyftpdlib's private DTPHandler attributes (`_closed`, `_resp`), covered by the tests.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import ftplib
import json
import logging
import os
import posixpath
import queue
import shutil
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.log import logger as pyftpdlib_logger
from pyftpdlib.servers import ThreadedFTPServer

log = logging.getLogger("ndflow.ftp")

USER_PERMS = "elmw"  # cd, list, mkdir, store: no read-back, delete, rename or append
CHUNK = 256 * 1024
PART_SUFFIX = ".part"  # remote temporary name while a file is being stored upstream
# Errors that mean the client vanished mid-transfer, not that it finished sending.
_PEER_ABORT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT}


@dataclass(frozen=True)
class Upstream:
    """The archive FTP server that every upload is forwarded to."""

    host: str
    port: int = 21
    user: str = "anonymous"
    password: str = field(default="", repr=False)
    directory: str = "/"  # remote folder files go into; camera subfolders are recreated below
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("upstream host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"upstream port {self.port} is not in 1..65535")
        if self.timeout_s <= 0:
            raise ValueError(f"upstream timeout_s must be > 0, got {self.timeout_s}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class UpstreamState(enum.Enum):
    """Values are the strings an operator sees on a PV."""

    UNKNOWN = "Unknown"
    CONNECTED = "Connected"
    DOWN = "Down"


@dataclass(frozen=True)
class GatewayCounters:
    """A consistent snapshot; `queued` is the number of entries on disk waiting to go upstream,
    `last_file` the relative path of the last completed upload."""

    uploads: int
    forwarded: int
    queued: int
    failures: int
    upstream: UpstreamState
    last_error: str
    last_file: str


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _describe(err: BaseException) -> str:
    """A short, single-line reason for a network/FTP error (no traceback, no password)."""
    if isinstance(err, socket.timeout):
        return "timed out"
    if isinstance(err, EOFError):
        return "connection closed by server"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return _one_line(err) or type(err).__name__


def _fsync_path(path: Path, directory: bool = False) -> None:
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
    _fsync_path(path.parent, directory=True)


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


# --------------------------------------------------------------------------------------------
# Spool: the durable forward queue
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    path: str  # relative to the incoming folder, "/"-separated
    size: int


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
        return (f"spool entry {entry_file} unreadable ({_one_line(err)}); "
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
        _fsync_path(source)
        try:
            os.link(source, data)  # same inode: O(1), and already fsynced above
        except OSError:  # other filesystem, or links unsupported: copy
            tmp = data.with_name(data.name + ".tmp")
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, data)
        _fsync_path(self.data_dir, directory=True)

    def head(self) -> SpoolEntry | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def remove(self, entry: SpoolEntry) -> None:
        """Forwarded: drop the entry (the atomic step), then its bytes."""
        with self._lock:
            (self.queue_dir / f"{entry.seq:012d}.json").unlink(missing_ok=True)
            _fsync_path(self.queue_dir, directory=True)
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


# --------------------------------------------------------------------------------------------
# pyftpdlib customisation
# --------------------------------------------------------------------------------------------

class _IngestFS(AbstractedFS):
    def open(self, filename: str, mode: str):  # type: ignore[override]
        """Writing over a file that is still hard-linked into the spool must not change the
        queued bytes: give the file a fresh inode first."""
        if any(c in mode for c in "wa+") and os.path.isfile(filename):
            if os.stat(filename).st_nlink > 1:
                if "w" in mode:
                    os.unlink(filename)
                else:  # append / resume: keep the content, on a private copy
                    tmp = filename + ".ndflow-cow"
                    shutil.copy2(filename, tmp)
                    os.replace(tmp, filename)
        return super().open(filename, mode)


class _IngestDTPHandler(DTPHandler):
    """Data channel that commits an upload before "226" and treats a reset as an abort."""

    _peer_aborted = False

    def recv(self, buffer_size: int) -> bytes:
        if not self.receive:
            return super().recv(buffer_size)
        try:
            data = self.socket.recv(buffer_size)
        except OSError as err:
            if err.errno in _PEER_ABORT_ERRNOS:
                self._peer_aborted = True
                self.handle_close()
                return b""
            return super().recv(buffer_size)  # retry/other errors: pyftpdlib's own handling
        if not data:
            self.handle_close()
        return data

    def handle_close(self) -> None:
        if self._peer_aborted and not self._closed:
            self.transfer_finished = False
            self.cmd_channel.upload_problem = "data connection reset by client"
            self._resp = ("426 Connection reset; upload discarded.", pyftpdlib_logger.info)
            self.close()
            return
        super().handle_close()

    def close(self) -> None:
        if (not self._closed and self.receive and self.transfer_finished
                and self.file_obj is not None and not self.file_obj.closed):
            try:
                self.file_obj.close()
                problem = self.cmd_channel.commit_upload(self.file_obj.name)
            except OSError as err:
                problem = f"cannot write upload: {_describe(err)}"
            except Exception as err:  # a bug: keep the session, refuse the file loudly
                log.exception("committing upload %s failed", self.file_obj.name)
                problem = f"internal error: {type(err).__name__}"
            if problem:
                self.transfer_finished = False
                self.cmd_channel.upload_problem = problem
                self._resp = (f"451 Upload not stored: {problem}.", pyftpdlib_logger.info)
        super().close()


class _IngestHandler(FTPHandler):
    """Per-session control channel; `gateway` is set on the per-gateway subclass."""

    gateway: "IngestGateway"
    abstracted_fs = _IngestFS
    dtp_handler = _IngestDTPHandler
    banner = "ndflow FTP ingest gateway ready."
    upload_problem = ""

    def _who(self) -> str:
        return f"{self.username or '?'}@{self.remote_ip}"

    def commit_upload(self, file: str) -> str:
        return self.gateway._commit_upload(Path(file), self._who())

    def on_file_received(self, file: str) -> None:
        self.gateway._upload_received(Path(file))

    def on_incomplete_file_received(self, file: str) -> None:
        problem, self.upload_problem = self.upload_problem or "transfer aborted", ""
        self.gateway._upload_incomplete(Path(file), self._who(), problem)

    def on_login_failed(self, username: str, password: str) -> None:
        log.warning("login refused for user %r from %s", username, self.remote_ip)

    def log_exception(self, instance: object) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # network trouble is routine, not a bug: one line
            log.warning("FTP session %s: %s", self._who(), _describe(err))
        else:
            super().log_exception(instance)


class _GatewayFTPServer(ThreadedFTPServer):
    """pyftpdlib keeps the stop flag and lock on the class, so stopping one server would stop
    every other server in the process (e.g. the archive in the same test): make them ours."""

    poll_timeout = 0.2

    def __init__(self, address: tuple[str, int], handler: type[FTPHandler]) -> None:
        self._exit = threading.Event()
        self._lock = threading.Lock()
        super().__init__(address, handler, ioloop=IOLoop())


# --------------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------------

class _UpstreamFailure(Exception):
    pass


class _Stopped(Exception):
    pass


@contextmanager
def _stage(what: str) -> Iterator[None]:
    try:
        yield
    except ftplib.all_errors as err:
        raise _UpstreamFailure(f"{what}: {_describe(err)}") from None


class IngestGateway:
    """FTP server for cameras + durable forwarder to an upstream archive + local delivery.

    Threads: the FTP acceptor (one more per camera session), a forwarder, a delivery thread
    (calls `deliver` one file at a time, in completion order, so a slow consumer never stalls
    a camera) and a notifier (calls `on_change` with the latest snapshot, coalescing bursts,
    never under a lock).
    """

    def __init__(self, *, host: str, port: int, users: dict[str, str], incoming: Path,
                 spool: Path, upstream: Upstream | None,
                 deliver: Callable[[Path], None] | None = None,
                 retry_s: float = 1.0, max_retry_s: float = 30.0,
                 on_change: Callable[[GatewayCounters], None] | None = None,
                 keepalive_s: float = 30.0, login_failure_delay_s: float = 3.0) -> None:
        if not users:
            raise ValueError("no FTP users configured for the ingest gateway")
        if "anonymous" in users:
            raise ValueError("user 'anonymous' is not allowed: anonymous login is disabled")
        if retry_s <= 0 or max_retry_s < retry_s:
            raise ValueError(f"need 0 < retry_s <= max_retry_s, got {retry_s}, {max_retry_s}")
        incoming = Path(incoming)
        incoming.mkdir(parents=True, exist_ok=True)
        self._incoming = incoming.resolve()
        spool_dir = Path(spool).resolve()
        if spool_dir == self._incoming or self._incoming in spool_dir.parents:
            raise ValueError(f"spool {spool_dir} must not be inside the FTP folder "
                             f"{self._incoming}: cameras could write into it")
        self._host, self._port = host, port
        self._users = dict(users)
        self._upstream = upstream
        self._spool_dir = spool_dir
        self._spool = Spool(spool_dir) if upstream is not None else None
        self._deliver = deliver
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._keepalive_s = keepalive_s
        self._login_failure_delay_s = login_failure_delay_s
        self._on_change = on_change

        self._lock = threading.Lock()  # counters and lifecycle
        self._uploads = self._forwarded = self._failures = 0
        self._state = UpstreamState.UNKNOWN
        self._last_error = ""
        self._last_file = ""
        self._idle_queued = 0 if upstream is not None else count_queued_on_disk(spool_dir)

        self._started = self._stopped = False
        self._stopping = threading.Event()
        self._work = threading.Event()  # new queue entry (or stop) for the forwarder
        self._dirty = threading.Event()  # counters changed since the last on_change
        self._deliveries: queue.Queue[Path | None] = queue.Queue()
        self._server: _GatewayFTPServer | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._ftp: ftplib.FTP | None = None  # forwarder's connection; only that thread uses it
        self._data_conn: socket.socket | None = None
        self._remote_dirs: set[str] = set()
        self._last_ok = 0.0

    # ---- public API ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool, listen, start the threads; returns once the port is listening."""
        with self._lock:
            if self._started:
                raise RuntimeError("gateway already started (create a new one to restart)")
            self._started = True
        if self._spool is not None:
            for problem in self._spool.open():
                log.error("%s", problem)
                self._count(failures=1, error=problem)
            if len(self._spool):
                log.info("spool %s: %d file(s) waiting to be forwarded",
                         self._spool_dir, len(self._spool))
        elif self._idle_queued:
            log.warning("spool %s holds %d unforwarded file(s) but no upstream is configured",
                        self._spool_dir, self._idle_queued)
        try:
            self._server = _GatewayFTPServer((self._host, self._port), self._handler_class())
        except OSError as err:
            if self._spool is not None:
                self._spool.close()
            raise OSError(err.errno, f"FTP gateway cannot listen on {self._host}:{self._port}: "
                                     f"{err.strerror}") from None
        except BaseException:
            if self._spool is not None:
                self._spool.close()
            raise
        self._spawn("ftp-server", self._serve)
        if self._on_change is not None:
            self._spawn("ftp-notify", self._notify_loop)
        if self._deliver is not None:
            self._spawn("ftp-deliver", self._deliver_loop)
        if self._upstream is not None:
            self._spawn("ftp-forward", self._forward_loop)
        host, port = self.address
        log.info("FTP ingest gateway listening on %s:%d, folder %s, upstream %s",
                 host, port, self._incoming,
                 self._upstream.address if self._upstream else "none")
        self._notify()

    def stop(self) -> None:
        """Stop serving, let the consumer take what was already received, and close the
        upstream connection; whatever is still queued stays on disk for the next start."""
        with self._lock:
            if not self._started or self._stopped:
                self._stopped = True
                return
            self._stopped = True
        self._stopping.set()
        self._work.set()
        self._join("ftp-server", 10.0)  # closes the camera sessions: partial uploads dropped
        self._deliveries.put(None)
        self._join("ftp-deliver", 30.0)
        self._abort_upstream_io()
        self._join("ftp-forward", (self._upstream.timeout_s if self._upstream else 0) + 5.0)
        self._notify()
        self._join("ftp-notify", 5.0)
        if self._spool is not None:
            self._spool.close()
        log.info("FTP ingest gateway stopped")

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return (self._host, self._port)
        host, port = self._server.address
        return (host, port)

    def counters(self) -> GatewayCounters:
        with self._lock:  # queued and forwarded change together (see _forward_loop)
            queued = len(self._spool) if self._spool is not None else self._idle_queued
            return GatewayCounters(self._uploads, self._forwarded, queued, self._failures,
                                   self._state, self._last_error, self._last_file)

    # ---- threads and bookkeeping -----------------------------------------------------------

    def _handler_class(self) -> type[_IngestHandler]:
        authorizer = DummyAuthorizer()
        for user, password in self._users.items():
            authorizer.add_user(user, password, str(self._incoming), perm=USER_PERMS)
        return type("IngestHandler", (_IngestHandler,), {
            "gateway": self, "authorizer": authorizer,
            "auth_failed_timeout": self._login_failure_delay_s,
        })

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _join(self, name: str, timeout: float) -> None:
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.0f s", name, timeout)

    def _count(self, *, uploads: int = 0, forwarded: int = 0, failures: int = 0,
               error: str | None = None, last_file: str | None = None) -> None:
        with self._lock:
            self._uploads += uploads
            self._forwarded += forwarded
            self._failures += failures
            if error is not None:
                self._last_error = error
            if last_file is not None:
                self._last_file = last_file
        self._notify()

    def _notify(self) -> None:
        self._dirty.set()

    def _notify_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()  # before the snapshot: a later change triggers another call
            try:
                self._on_change(self.counters())  # type: ignore[misc]
            except Exception as err:
                log.error("on_change callback failed: %s: %s",
                          type(err).__name__, _one_line(err))
            if self._stopping.is_set() and not self._dirty.is_set() and self._stop_done():
                return

    def _stop_done(self) -> bool:
        return not any(t.is_alive() for n, t in self._threads.items() if n != "ftp-notify")

    def _serve(self) -> None:
        assert self._server is not None
        try:
            while not self._stopping.is_set():
                self._server.serve_forever(timeout=0.2, blocking=False, handle_exit=False)
        except Exception:
            log.exception("FTP server loop failed")
        finally:
            self._server.close_all()

    # ---- called from camera sessions -------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return path.relative_to(self._incoming).as_posix()

    def _commit_upload(self, path: Path, who: str) -> str:
        """Make a completed upload durable (and queued) before the camera hears "226".
        Returns "" on success, else the reason the upload is refused."""
        rel = self._relative(path)
        try:
            if self._spool is not None:
                entry = self._spool.add(path, rel)
                log.info("upload %s (%d bytes) from %s queued as #%d",
                         rel, entry.size, who, entry.seq)
            else:
                _fsync_path(path)
                log.info("upload %s (%d bytes) from %s", rel, path.stat().st_size, who)
        except OSError as err:
            return f"spool {self._spool_dir} write failed: {_describe(err)}"
        self._count(uploads=1, last_file=rel)
        self._work.set()
        return ""

    def _upload_received(self, path: Path) -> None:
        if self._deliver is not None:
            self._deliveries.put(path)

    def _upload_incomplete(self, path: Path, who: str, problem: str) -> None:
        try:
            rel = self._relative(path)
        except ValueError:
            rel = str(path)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            problem += f"; could not delete it: {_describe(err)}"
        message = f"incomplete upload {rel} from {who} discarded: {problem}"
        log.warning("%s", message)
        self._count(failures=1, error=message)

    def _deliver_loop(self) -> None:
        assert self._deliver is not None
        while (path := self._deliveries.get()) is not None:
            try:
                self._deliver(path)
            except Exception as err:
                message = (f"deliver {self._relative(path)} failed: "
                           f"{type(err).__name__}: {_one_line(err)}")
                log.error("%s", message)
                self._count(failures=1, error=message)

    # ---- forwarder -------------------------------------------------------------------------

    def _forward_loop(self) -> None:
        assert self._spool is not None and self._upstream is not None
        backoff = self._retry_s
        try:
            while not self._stopping.is_set():
                self._work.clear()
                entry = self._spool.head()
                if entry is None:
                    idle_for = time.monotonic() - self._last_ok
                    fresh = self._state is UpstreamState.CONNECTED and idle_for < self._keepalive_s
                    if not fresh and not self._attempt(self._probe):
                        self._stopping.wait(backoff)
                        backoff = min(2 * backoff, self._max_retry_s)
                        continue
                    backoff = self._retry_s
                    self._work.wait(max(0.0, self._keepalive_s - idle_for) if fresh
                                    else self._keepalive_s)
                    continue
                if not self._spool.data_path(entry).is_file():
                    message = self._spool.reject(entry)
                    log.error("%s", message)
                    self._count(failures=1, error=message)
                    continue
                if self._attempt(lambda ftp: self._send(ftp, entry)):
                    with self._lock:  # leaves the queue and counts as forwarded as one step
                        self._spool.remove(entry)
                        self._forwarded += 1
                    self._notify()
                    log.info("forwarded %s (#%d) to %s", entry.path, entry.seq,
                             self._upstream.address)
                    backoff = self._retry_s
                elif not self._stopping.is_set():
                    # Back off even if cameras keep uploading: they must not hammer the archive.
                    self._stopping.wait(backoff)
                    backoff = min(2 * backoff, self._max_retry_s)
        finally:
            self._disconnect()

    def _attempt(self, action: Callable[[ftplib.FTP], None]) -> bool:
        """Run `action` on the upstream connection. A reused connection that fails gets one
        immediate retry on a fresh one (the archive may simply have dropped an idle session);
        a fresh connection that fails means the upstream is down."""
        while True:
            reused = self._ftp is not None
            try:
                if self._ftp is None:
                    self._ftp = self._connect()
                action(self._ftp)
            except _Stopped:
                self._disconnect()
                return False
            except _UpstreamFailure as err:
                self._disconnect()
                if reused and not self._stopping.is_set():
                    continue
                if not self._stopping.is_set():
                    self._upstream_down(str(err))
                return False
            except Exception as err:  # a bug, not the network: say so, keep the thread alive
                self._disconnect()
                log.exception("forwarder error")
                self._upstream_down(f"internal error: {type(err).__name__}: {_one_line(err)}")
                return False
            self._upstream_up()
            return True

    def _connect(self) -> ftplib.FTP:
        up = self._upstream
        assert up is not None
        ftp = ftplib.FTP(timeout=up.timeout_s)
        try:
            with _stage("connect"):
                ftp.connect(up.host, up.port)
            with _stage(f"login as {up.user!r}"):
                ftp.login(up.user, up.password)
            with _stage("TYPE I"):
                ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        self._remote_dirs.clear()
        return ftp

    def _disconnect(self) -> None:
        if self._ftp is not None:
            self._ftp.close()
            self._ftp = None

    def _probe(self, ftp: ftplib.FTP) -> None:
        with _stage("NOOP"):
            ftp.voidcmd("NOOP")

    def _send(self, ftp: ftplib.FTP, entry: SpoolEntry) -> None:
        up = self._upstream
        assert up is not None and self._spool is not None
        final = posixpath.normpath(posixpath.join(up.directory, entry.path))
        part = final + PART_SUFFIX
        self._make_remote_dirs(ftp, posixpath.dirname(final))
        sent = 0
        with open(self._spool.data_path(entry), "rb") as src, _stage(f"store {entry.path}"):
            conn = ftp.transfercmd(f"STOR {part}")
            self._data_conn = conn
            try:
                while chunk := src.read(CHUNK):
                    if self._stopping.is_set():
                        raise _Stopped()
                    conn.sendall(chunk)
                    sent += len(chunk)
            finally:
                self._data_conn = None
                conn.close()
            ftp.voidresp()
        if sent != entry.size:
            log.warning("spool copy of %s is %d bytes, %d when queued (modified in place?)",
                        entry.path, sent, entry.size)
        self._check_remote_size(ftp, part, sent, entry.path)
        with _stage(f"rename {entry.path}"):
            try:
                ftp.rename(part, final)
            except ftplib.error_perm:  # some servers refuse to rename over an existing file
                ftp.delete(final)
                ftp.rename(part, final)

    def _check_remote_size(self, ftp: ftplib.FTP, remote: str, sent: int, rel: str) -> None:
        try:
            size = ftp.size(remote)
        except ftplib.error_perm:  # SIZE not supported: nothing to check against
            return
        except ftplib.all_errors as err:
            raise _UpstreamFailure(f"SIZE {rel}: {_describe(err)}") from None
        if size is not None and size != sent:
            raise _UpstreamFailure(f"store {rel}: archive holds {size} of {sent} bytes")

    def _make_remote_dirs(self, ftp: ftplib.FTP, directory: str) -> None:
        path = "/" if directory.startswith("/") else ""
        for part in [p for p in directory.split("/") if p and p != "."]:
            path = posixpath.join(path, part) if path else part
            if path in self._remote_dirs:
                continue
            with _stage(f"MKD {path}"):
                try:
                    ftp.mkd(path)
                except ftplib.error_perm:
                    pass  # exists already (or not allowed: STOR will then say why)
            self._remote_dirs.add(path)

    def _abort_upstream_io(self) -> None:
        """Unblock a forwarder stuck in a send so stop() does not wait for a whole file."""
        for sock in (self._data_conn, getattr(self._ftp, "sock", None)):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _upstream_down(self, reason: str) -> None:
        assert self._upstream is not None
        message = f"upstream {self._upstream.address} down: {reason}"
        with self._lock:
            new_outage = self._state is not UpstreamState.DOWN
            self._state = UpstreamState.DOWN
            if new_outage:
                self._failures += 1
            changed = new_outage or message != self._last_error
            self._last_error = message
        if new_outage:
            queued = len(self._spool) if self._spool is not None else 0
            log.warning("%s; %d file(s) queued, retrying", message, queued)
        else:  # one line per retry, for whoever debugs the link
            log.debug("upstream %s still down: %s", self._upstream.address, reason)
        if changed:
            self._notify()

    def _upstream_up(self) -> None:
        assert self._upstream is not None
        self._last_ok = time.monotonic()
        with self._lock:
            changed = self._state is not UpstreamState.CONNECTED
            self._state = UpstreamState.CONNECTED
        if changed:
            log.info("upstream %s connected", self._upstream.address)
            self._notify()
