"""The gateway as one service: the cameras' FTP server, the durable spool, the forwarder to the
archive and the hand-over to a local consumer, started and stopped together.

This package does not use ndflow's component machinery (only the core's `reasons`): the FITS
driver wraps it (drivers/fits_gateway.py) and maps `GatewayCounters` to PVs.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Callable

from ndflow.reasons import one_line, reason

from .forwarder import Forwarder
from .ingest import IngestServer
from .model import GatewayCounters, Tally, Upstream
from .spool import Spool, count_queued_on_disk, fsync_path

log = logging.getLogger("ndflow.ftp")


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
        self._login_failure_delay_s = login_failure_delay_s
        self._on_change = on_change

        self._lock = threading.Lock()  # lifecycle
        self._dirty = threading.Event()  # counters changed since the last on_change
        self._tally = Tally(self._dirty.set)
        self._idle_queued = 0 if upstream is not None else count_queued_on_disk(spool_dir)

        self._started = self._stopped = False
        self._stopping = threading.Event()
        self._work = threading.Event()  # new queue entry (or stop) for the forwarder
        self._deliveries: queue.Queue[Path | None] = queue.Queue()
        self._server: IngestServer | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._forwarder = None if self._spool is None or upstream is None else Forwarder(
            spool=self._spool, upstream=upstream, tally=self._tally, stopping=self._stopping,
            work=self._work, retry_s=retry_s, max_retry_s=max_retry_s, keepalive_s=keepalive_s)

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
                self._tally.count(failures=1, error=problem)
            if len(self._spool):
                log.info("spool %s: %d file(s) waiting to be forwarded",
                         self._spool_dir, len(self._spool))
        elif self._idle_queued:
            log.warning("spool %s holds %d unforwarded file(s) but no upstream is configured",
                        self._spool_dir, self._idle_queued)
        try:
            self._server = IngestServer(
                (self._host, self._port), users=self._users, incoming=self._incoming,
                sink=self, login_failure_delay_s=self._login_failure_delay_s)
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
        if self._forwarder is not None:
            self._spawn("ftp-forward", self._forwarder.run)
        host, port = self.address
        log.info("FTP ingest gateway listening on %s:%d, folder %s, upstream %s",
                 host, port, self._incoming,
                 self._upstream.address if self._upstream else "none")
        self._dirty.set()

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
        if self._forwarder is not None:
            self._forwarder.abort_io()
        self._join("ftp-forward", (self._upstream.timeout_s if self._upstream else 0) + 5.0)
        self._dirty.set()
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
        spool = self._spool
        return self._tally.snapshot(lambda: len(spool) if spool is not None
                                    else self._idle_queued)

    # ---- called from camera sessions (ingest.UploadSink) -----------------------------------

    def commit_upload(self, path: Path, who: str) -> str:
        """Make a completed upload durable (and queued) before the camera hears "226".
        Returns "" on success, else the reason the upload is refused."""
        rel = self._relative(path)
        try:
            if self._spool is not None:
                entry = self._spool.add(path, rel)
                log.info("upload %s (%d bytes) from %s queued as #%d",
                         rel, entry.size, who, entry.seq)
            else:
                fsync_path(path)
                log.info("upload %s (%d bytes) from %s", rel, path.stat().st_size, who)
        except OSError as err:
            return f"spool {self._spool_dir} write failed: {reason(err)}"
        self._tally.count(uploads=1, last_file=rel)
        self._work.set()
        return ""

    def upload_received(self, path: Path) -> None:
        if self._deliver is not None:
            self._deliveries.put(path)

    def upload_incomplete(self, path: Path, who: str, problem: str) -> None:
        try:
            rel = self._relative(path)
        except ValueError:
            rel = str(path)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            problem += f"; could not delete it: {reason(err)}"
        message = f"incomplete upload {rel} from {who} discarded: {problem}"
        log.warning("%s", message)
        self._tally.count(failures=1, error=message)

    # ---- threads ---------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return path.relative_to(self._incoming).as_posix()

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

    def _notify_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()  # before the snapshot: a later change triggers another call
            try:
                self._on_change(self.counters())  # type: ignore[misc]
            except Exception as err:
                log.error("on_change callback failed: %s: %s",
                          type(err).__name__, one_line(err))
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

    def _deliver_loop(self) -> None:
        assert self._deliver is not None
        while (path := self._deliveries.get()) is not None:
            try:
                self._deliver(path)
            except Exception as err:
                message = (f"deliver {self._relative(path)} failed: "
                           f"{type(err).__name__}: {one_line(err)}")
                log.error("%s", message)
                self._tally.count(failures=1, error=message)
