"""The archive side: one thread sends the spool's entries upstream, strictly in sequence order.

Each file goes to a temporary name, its size is checked, then it is renamed, so the archive
never shows a partial file and a retry after a crash overwrites instead of duplicating. An
outage is one failure and one warning; retries back off (even while cameras keep uploading,
so they cannot hammer the archive) and are logged at debug level. An idle connection is kept
alive with NOOPs so the upstream state on the PV stays true.
"""

from __future__ import annotations

import ftplib
import logging
import posixpath
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ndflow.reasons import one_line, reason

from .model import Tally, Upstream, UpstreamState
from .spool import CHUNK, Spool, SpoolEntry

log = logging.getLogger("ndflow.ftp")

PART_SUFFIX = ".part"  # remote temporary name while a file is being stored upstream


class _UpstreamFailure(Exception):
    pass


class _Stopped(Exception):
    pass


@contextmanager
def _stage(what: str) -> Iterator[None]:
    try:
        yield
    except ftplib.all_errors as err:
        raise _UpstreamFailure(f"{what}: {reason(err)}") from None


class Forwarder:
    """Runs in its own thread (`run`); `work` is set when an entry is queued, `stopping` when
    the gateway stops. Only that thread uses the upstream connection; `abort_io` (from the
    stopping thread) only shuts its sockets down."""

    def __init__(self, *, spool: Spool, upstream: Upstream, tally: Tally,
                 stopping: threading.Event, work: threading.Event,
                 retry_s: float, max_retry_s: float, keepalive_s: float) -> None:
        self._spool = spool
        self._upstream = upstream
        self._tally = tally
        self._stopping = stopping
        self._work = work
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._keepalive_s = keepalive_s
        self._ftp: ftplib.FTP | None = None
        self._data_conn: socket.socket | None = None
        self._remote_dirs: set[str] = set()
        self._last_ok = 0.0

    def run(self) -> None:
        backoff = self._retry_s
        try:
            while not self._stopping.is_set():
                self._work.clear()
                entry = self._spool.head()
                if entry is None:
                    idle_for = time.monotonic() - self._last_ok
                    fresh = (self._tally.state is UpstreamState.CONNECTED
                             and idle_for < self._keepalive_s)
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
                    self._tally.count(failures=1, error=message)
                    continue
                if self._attempt(lambda ftp: self._send(ftp, entry)):
                    with self._tally.lock:  # leaves the queue and counts as forwarded as one step
                        self._spool.remove(entry)
                        self._tally.forwarded += 1
                    self._tally.notify()
                    log.info("forwarded %s (#%d) to %s", entry.path, entry.seq,
                             self._upstream.address)
                    backoff = self._retry_s
                elif not self._stopping.is_set():
                    # Back off even if cameras keep uploading: they must not hammer the archive.
                    self._stopping.wait(backoff)
                    backoff = min(2 * backoff, self._max_retry_s)
        finally:
            self._disconnect()

    def abort_io(self) -> None:
        """Unblock a forwarder stuck in a send so stop() does not wait for a whole file."""
        for sock in (self._data_conn, getattr(self._ftp, "sock", None)):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

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
                self._upstream_down(f"internal error: {type(err).__name__}: {one_line(err)}")
                return False
            self._upstream_up()
            return True

    def _connect(self) -> ftplib.FTP:
        up = self._upstream
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
        final = posixpath.normpath(posixpath.join(self._upstream.directory, entry.path))
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
            raise _UpstreamFailure(f"SIZE {rel}: {reason(err)}") from None
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

    def _upstream_down(self, why: str) -> None:
        message = f"upstream {self._upstream.address} down: {why}"
        tally = self._tally
        with tally.lock:
            new_outage = tally.state is not UpstreamState.DOWN
            tally.state = UpstreamState.DOWN
            if new_outage:
                tally.failures += 1
            changed = new_outage or message != tally.last_error
            tally.last_error = message
        if new_outage:
            log.warning("%s; %d file(s) queued, retrying", message, len(self._spool))
        else:  # one line per retry, for whoever debugs the link
            log.debug("upstream %s still down: %s", self._upstream.address, why)
        if changed:
            tally.notify()

    def _upstream_up(self) -> None:
        self._last_ok = time.monotonic()
        with self._tally.lock:
            changed = self._tally.state is not UpstreamState.CONNECTED
            self._tally.state = UpstreamState.CONNECTED
        if changed:
            log.info("upstream %s connected", self._upstream.address)
            self._tally.notify()
