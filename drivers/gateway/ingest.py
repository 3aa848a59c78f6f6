"""The camera side: a pyftpdlib server whose sessions commit each upload before "226".

Why it is customised:
- An upload is handed to an `UploadSink` (the gateway), which makes it durable, before the
  camera hears "226 Transfer complete"; if that fails the camera hears "451" instead.
- Stock pyftpdlib treats a TCP reset on the data connection like the end of the file, which
  would forward a truncated image: a reset is an abort here, and the partial file is discarded.
- A re-upload over a name whose bytes are still hard-linked into the spool gets a new inode
  first (`_IngestFS.open`), so it never truncates a queued file.
Tested against pyftpdlib 2.x; `_IngestDTPHandler` uses a few of pyftpdlib's private DTPHandler
attributes (`_closed`, `_resp`), covered by the tests.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Protocol

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.log import logger as pyftpdlib_logger
from pyftpdlib.servers import ThreadedFTPServer

from ndflow.reasons import reason

log = logging.getLogger("ndflow.ftp")

USER_PERMS = "elmw"  # cd, list, mkdir, store: no read-back, delete, rename or append
# Errors that mean the client vanished mid-transfer, not that it finished sending.
_PEER_ABORT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT}


class UploadSink(Protocol):
    """What the camera sessions tell the gateway, each call from a session's thread."""

    def commit_upload(self, path: Path, who: str) -> str:
        """Make the completed upload durable; "" if done, else why it is refused."""

    def upload_received(self, path: Path) -> None:
        """After "226": the file may go to the consumer."""

    def upload_incomplete(self, path: Path, who: str, problem: str) -> None:
        """The transfer did not complete: discard the partial file and count a failure."""


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
                problem = f"cannot write upload: {reason(err)}"
            except Exception as err:  # a bug: keep the session, refuse the file loudly
                log.exception("committing upload %s failed", self.file_obj.name)
                problem = f"internal error: {type(err).__name__}"
            if problem:
                self.transfer_finished = False
                self.cmd_channel.upload_problem = problem
                self._resp = (f"451 Upload not stored: {problem}.", pyftpdlib_logger.info)
        super().close()


class _IngestHandler(FTPHandler):
    """Per-session control channel; `sink` is set on the per-gateway subclass."""

    sink: UploadSink
    abstracted_fs = _IngestFS
    dtp_handler = _IngestDTPHandler
    banner = "ndflow FTP ingest gateway ready."
    upload_problem = ""

    def _who(self) -> str:
        return f"{self.username or '?'}@{self.remote_ip}"

    def commit_upload(self, file: str) -> str:
        return self.sink.commit_upload(Path(file), self._who())

    def on_file_received(self, file: str) -> None:
        self.sink.upload_received(Path(file))

    def on_incomplete_file_received(self, file: str) -> None:
        problem, self.upload_problem = self.upload_problem or "transfer aborted", ""
        self.sink.upload_incomplete(Path(file), self._who(), problem)

    def on_login_failed(self, username: str, password: str) -> None:
        log.warning("login refused for user %r from %s", username, self.remote_ip)

    def log_exception(self, instance: object) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # network trouble is routine, not a bug: one line
            log.warning("FTP session %s: %s", self._who(), reason(err))
        else:
            super().log_exception(instance)


class IngestServer(ThreadedFTPServer):
    """The cameras' FTP server: `users` log in to `incoming` and may only store files.

    pyftpdlib keeps the stop flag and lock on the class, so stopping one server would stop
    every other server in the process (e.g. the archive in the same test): make them ours."""

    poll_timeout = 0.2

    def __init__(self, address: tuple[str, int], *, users: dict[str, str], incoming: Path,
                 sink: UploadSink, login_failure_delay_s: float) -> None:
        self._exit = threading.Event()
        self._lock = threading.Lock()
        authorizer = DummyAuthorizer()
        for user, password in users.items():
            authorizer.add_user(user, password, str(incoming), perm=USER_PERMS)
        handler = type("IngestHandler", (_IngestHandler,), {
            "sink": sink, "authorizer": authorizer,
            "auth_failed_timeout": login_failure_delay_s,
        })
        super().__init__(address, handler, ioloop=IOLoop())
