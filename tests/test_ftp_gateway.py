"""FTP ingest gateway against real FTP servers on 127.0.0.1.

The cameras are ftplib clients, the archive is a second pyftpdlib server writing to its own
folder; everything is checked on disk, as an operator would.
"""

from __future__ import annotations

import ftplib
import io
import logging
import os
import posixpath
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from ndflow.drivers.gateway import (
    GatewayCounters,
    IngestGateway,
    Upstream,
    UpstreamState,
)

ARCHIVE_USER, ARCHIVE_PW = "archive", "arch-Pw-9f3k"
CAMERA_USER, CAMERA_PW = "cam07", "cam-Pw-x81q"
REMOTE_DIR = "/telescope"


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Archive:
    """The upstream archive: a pyftpdlib server in its own thread. `received` lists completed
    STORs (relative to the archive root) in arrival order, `contents` their bytes then."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.received: list[str] = []
        self.contents: list[bytes] = []

    def start(self) -> "Archive":
        archive = self

        class Handler(FTPHandler):
            def on_file_received(self, file: str) -> None:
                archive.received.append(Path(file).relative_to(archive.root).as_posix())
                archive.contents.append(Path(file).read_bytes())

        authorizer = DummyAuthorizer()
        authorizer.add_user(ARCHIVE_USER, ARCHIVE_PW, str(self.root), perm="elradfmw")
        Handler.authorizer = authorizer
        Handler.auth_failed_timeout = 0.1  # answer a bad login before the gateway times out
        self.server = FTPServer(("127.0.0.1", self.port), Handler, ioloop=IOLoop())
        self.port = self.server.address[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.ioloop.loop(timeout=0.05, blocking=False)
        self.server.close_all()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def upstream(self, password: str = ARCHIVE_PW) -> Upstream:
        return Upstream("127.0.0.1", self.port, ARCHIVE_USER, password, REMOTE_DIR, 2.0)

    def forwarded_names(self) -> list[str]:
        """Final names of the files stored, in arrival order (stored as .part, then renamed)."""
        prefix = REMOTE_DIR.lstrip("/") + "/"
        return [name.removeprefix(prefix).removesuffix(".part") for name in self.received]

    def file(self, rel: str) -> Path:
        return self.root / REMOTE_DIR.lstrip("/") / rel


@dataclass
class Harness:
    gateway: IngestGateway
    incoming: Path
    delivered: list[Path] = field(default_factory=list)
    changes: list[GatewayCounters] = field(default_factory=list)

    def counters(self) -> GatewayCounters:
        return self.gateway.counters()


@pytest.fixture
def archives(tmp_path):
    started: list[Archive] = []

    def start(port: int = 0) -> Archive:
        archive = Archive(tmp_path / "archive", port).start()
        started.append(archive)
        return archive

    yield start
    for archive in started:
        archive.stop()


@pytest.fixture
def gateways(tmp_path):
    started: list[IngestGateway] = []

    def start(upstream: Upstream | None, deliver: Callable[[Path], None] | None = None,
              **kwargs) -> Harness:
        incoming = tmp_path / "incoming"
        harness = Harness(None, incoming)  # type: ignore[arg-type]
        gateway = IngestGateway(
            host="127.0.0.1", port=0, users={CAMERA_USER: CAMERA_PW, "cam01": "pw01"},
            incoming=incoming, spool=tmp_path / "spool", upstream=upstream,
            deliver=deliver or harness.delivered.append, retry_s=0.1, max_retry_s=0.4,
            on_change=harness.changes.append, login_failure_delay_s=0.05, **kwargs)
        harness.gateway = gateway
        started.append(gateway)
        gateway.start()
        return harness

    yield start
    for gateway in started:
        gateway.stop()


def camera(harness: Harness, user: str = CAMERA_USER, password: str = CAMERA_PW) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(*harness.gateway.address)
    ftp.login(user, password)
    return ftp


def upload(ftp: ftplib.FTP, rel: str, data: bytes) -> None:
    folder = posixpath.dirname(rel)
    if folder:
        try:
            ftp.mkd(folder)
        except ftplib.error_perm:  # exists already
            pass
    ftp.storbinary(f"STOR {rel}", io.BytesIO(data))


def payload(n: int) -> bytes:
    return os.urandom(1000 + 37_000 * n)


def test_uploads_are_forwarded_identical_in_order_and_delivered(tmp_path, archives, gateways,
                                                                caplog):
    caplog.set_level(logging.DEBUG)
    archive = archives()
    consumed = tmp_path / "consumed"
    consumed.mkdir()
    seen: list[tuple[Path, bytes]] = []

    def fits_consumer(path: Path) -> None:
        """Like ndflow's FITS driver: read the file, then move it out of the FTP folder."""
        seen.append((path, path.read_bytes()))
        os.replace(path, consumed / path.name)

    gw = gateways(archive.upstream(), deliver=fits_consumer)
    files = {f"frame{i}.fits" if i % 2 else f"cam07/frame{i}.fits": payload(i) for i in range(5)}
    with camera(gw) as ftp:
        for rel, data in files.items():
            upload(ftp, rel, data)
    wait_for(lambda: gw.counters().forwarded == 5, "5 files forwarded")
    wait_for(lambda: len(seen) == 5, "5 deliveries")

    assert archive.forwarded_names() == list(files)
    for rel, data in files.items():
        assert archive.file(rel).read_bytes() == data
    assert not list(archive.root.rglob("*.part"))
    assert seen == [(gw.incoming.resolve() / rel, data) for rel, data in files.items()]
    counters = gw.counters()
    assert (counters.uploads, counters.forwarded, counters.queued, counters.failures) == \
        (5, 5, 0, 0)
    assert counters.upstream is UpstreamState.CONNECTED
    assert counters.last_file == "cam07/frame4.fits"
    wait_for(lambda: gw.changes and gw.changes[-1] == gw.counters(), "last on_change posted")
    assert not list((tmp_path / "spool").rglob("*.data"))
    assert ARCHIVE_PW not in repr(archive.upstream())
    assert ARCHIVE_PW not in caplog.text and CAMERA_PW not in caplog.text
    assert "Traceback" not in caplog.text


def test_upstream_outage_queues_in_order_and_drains_on_return(archives, gateways, caplog):
    caplog.set_level(logging.DEBUG, logger="ndflow.ftp")
    archive = archives()
    gw = gateways(archive.upstream())
    ftp = camera(gw)
    upload(ftp, "cam07/before.fits", payload(1))
    wait_for(lambda: gw.counters().forwarded == 1, "first file forwarded")

    archive.stop()
    queued = {f"cam07/outage{i}.fits": payload(i) for i in range(4)}
    for rel, data in queued.items():
        upload(ftp, rel, data)
    wait_for(lambda: gw.counters().upstream is UpstreamState.DOWN, "upstream Down")
    wait_for(lambda: caplog.text.count("still down") >= 3, "three retries")
    counters = gw.counters()
    assert counters.queued == 4 and counters.uploads == 5 and counters.forwarded == 1
    assert counters.failures == 1  # one outage, however many retries
    assert f"127.0.0.1:{archive.port}" in counters.last_error
    assert "\n" not in counters.last_error
    assert "Traceback" not in caplog.text

    back = archives(archive.port)
    wait_for(lambda: gw.counters().queued == 0, "queue drained")
    counters = gw.counters()
    assert counters.forwarded == 5 and counters.failures == 1
    assert counters.upstream is UpstreamState.CONNECTED
    assert back.forwarded_names() == list(queued)  # upload order, each exactly once
    for rel, data in queued.items():
        assert back.file(rel).read_bytes() == data
    ftp.quit()


def test_gateway_restart_forwards_the_spool_once(tmp_path, archives, gateways):
    archive = archives()
    first = gateways(archive.upstream())
    with camera(first) as ftp:
        upload(ftp, "early0.fits", payload(0))
        upload(ftp, "early1.fits", payload(1))
        wait_for(lambda: first.counters().forwarded == 2, "early files forwarded")
        archive.stop()
        late = {f"cam07/late{i}.fits": payload(i + 2) for i in range(3)}
        for rel, data in late.items():
            upload(ftp, rel, data)
    wait_for(lambda: first.counters().upstream is UpstreamState.DOWN, "upstream Down")
    first.gateway.stop()
    assert first.counters().queued == 3

    second = gateways(archive.upstream())  # same spool, archive still down
    assert second.counters().queued == 3
    other = IngestGateway(host="127.0.0.1", port=0, users={"u": "p"},
                          incoming=tmp_path / "incoming", spool=tmp_path / "spool",
                          upstream=archive.upstream())
    with pytest.raises(RuntimeError, match="in use"):
        other.start()
    with camera(second) as ftp:
        upload(ftp, "cam07/after_restart.fits", b"new gateway")
    assert second.counters().queued == 4

    back = archives(archive.port)
    wait_for(lambda: second.counters().forwarded == 4, "spooled files forwarded")
    assert archive.forwarded_names()[:2] == ["early0.fits", "early1.fits"]
    assert back.forwarded_names() == ["cam07/late0.fits", "cam07/late1.fits",
                                      "cam07/late2.fits", "cam07/after_restart.fits"]
    everything = archive.received + back.received
    assert Counter(everything).most_common(1)[0][1] == 1  # nothing twice
    for rel, data in late.items():
        assert back.file(rel).read_bytes() == data
    assert second.counters().queued == 0


def test_logins_and_paths_are_confined(tmp_path, gateways):
    gw = gateways(upstream=None)
    incoming = gw.incoming.resolve()
    for user, password in ((CAMERA_USER, "wrong"), ("anonymous", "guest@"), ("nobody", "x")):
        ftp = ftplib.FTP(timeout=10)
        ftp.connect(*gw.gateway.address)
        with pytest.raises(ftplib.error_perm, match="530"):
            ftp.login(user, password)
        ftp.close()

    outside = tmp_path / "outside"
    outside.mkdir()
    (incoming / "link").symlink_to(outside)
    with camera(gw) as ftp:
        upload(ftp, "../escape.fits", b"a")
        upload(ftp, "/../../escape2.fits", b"b")
        with pytest.raises(ftplib.error_perm, match="550"):
            upload(ftp, "link/evil.fits", b"c")
        with pytest.raises(ftplib.error_perm):
            ftp.delete("escape.fits")  # cameras may add files, not remove them
    assert not (tmp_path / "escape.fits").exists() and not (tmp_path / "escape2.fits").exists()
    assert list(outside.iterdir()) == []
    assert (incoming / "escape.fits").read_bytes() == b"a"  # landed inside the FTP root
    wait_for(lambda: len(gw.delivered) == 2, "2 deliveries")
    counters = gw.counters()
    assert (counters.uploads, counters.forwarded, counters.queued) == (2, 0, 0)
    assert counters.upstream is UpstreamState.UNKNOWN
    assert not (tmp_path / "spool").exists()  # no upstream: nothing kept for forwarding

    with pytest.raises(ValueError, match="anonymous"):
        IngestGateway(host="127.0.0.1", port=0, users={"anonymous": ""}, incoming=incoming,
                      spool=tmp_path / "s", upstream=None)
    with pytest.raises(ValueError, match="inside the FTP folder"):
        IngestGateway(host="127.0.0.1", port=0, users={"u": "p"}, incoming=incoming,
                      spool=incoming / "spool", upstream=None)


def _abort_with_abor(ftp: ftplib.FTP, conn: socket.socket) -> None:
    ftp.putcmd("ABOR")
    while not ftp.getline()[:3] in ("225", "226"):  # "426 aborted" comes first if it was busy
        pass
    conn.close()


def _abort_with_reset(ftp: ftplib.FTP, conn: socket.socket) -> None:
    """The camera crashes: its TCP stack resets the data connection."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ftplib.error_temp, match="426"):
        ftp.voidresp()


@pytest.mark.parametrize("interrupt", [_abort_with_abor, _abort_with_reset],
                         ids=["ABOR", "reset"])
def test_interrupted_upload_is_discarded(archives, gateways, interrupt, caplog):
    archive = archives()
    gw = gateways(archive.upstream())
    data = payload(20)
    with camera(gw) as ftp:
        ftp.mkd("cam01")
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("STOR cam01/partial.fits")
        conn.sendall(data[: len(data) // 2])
        # The server must have taken the data connection before it breaks: pyftpdlib never
        # answers a STOR whose data connection dies before it is accepted.
        partial = gw.incoming / "cam01" / "partial.fits"
        wait_for(lambda: partial.exists() and partial.stat().st_size > 0, "transfer started")
        interrupt(ftp, conn)
        wait_for(lambda: gw.counters().failures == 1, "failure counted")
        assert not partial.exists()
        assert "partial.fits" in gw.counters().last_error
        upload(ftp, "cam01/good.fits", data)
    wait_for(lambda: gw.counters().forwarded == 1, "good file forwarded")
    assert archive.forwarded_names() == ["cam01/good.fits"]
    assert gw.delivered == [gw.incoming.resolve() / "cam01/good.fits"]
    counters = gw.counters()
    assert (counters.uploads, counters.failures) == (1, 1)
    assert "Traceback" not in caplog.text


def test_reupload_of_a_queued_name_keeps_both_versions(archives, gateways):
    """A camera overwriting a file still waiting in the queue must not change the queued
    bytes (they share an inode with the incoming file)."""
    archive = archives()
    archive.stop()
    gw = gateways(archive.upstream())
    with camera(gw) as ftp:
        upload(ftp, "cam07/same.fits", b"first version")
        upload(ftp, "cam07/same.fits", b"second, longer version")
    back = archives(archive.port)
    wait_for(lambda: gw.counters().forwarded == 2, "both versions forwarded")
    assert back.contents == [b"first version", b"second, longer version"]
    assert back.file("cam07/same.fits").read_bytes() == b"second, longer version"


def test_consumer_errors_and_bad_upstream_login_are_one_line_failures(archives, gateways,
                                                                       caplog):
    archive = archives()

    def broken_consumer(path: Path) -> None:
        raise ValueError("bad FITS header\nin card 3")

    gw = gateways(archive.upstream(password="not-the-password"), deliver=broken_consumer)
    with camera(gw) as ftp:
        upload(ftp, "cam07/a.fits", b"a")
        upload(ftp, "cam07/b.fits", b"b")
    wait_for(lambda: gw.counters().failures == 3, "2 consumer failures + 1 outage")
    counters = gw.counters()
    assert counters.upstream is UpstreamState.DOWN and counters.queued == 2
    down = [r.getMessage() for r in caplog.records if "down" in r.getMessage()]
    assert down and f"127.0.0.1:{archive.port} down: login as 'archive': 530" in down[0]
    assert "not-the-password" not in caplog.text
    assert "Traceback" not in caplog.text
    assert any("deliver cam07/b.fits failed: ValueError: bad FITS header in card 3"
               in r.getMessage() for r in caplog.records)


def test_spool_write_failure_refuses_the_upload(tmp_path, archives, gateways):
    """If the queue cannot be made durable the camera must hear it (and can retry), rather
    than be told "226" for a file that would never reach the archive."""
    archive = archives()
    gw = gateways(archive.upstream())
    queue_dir = tmp_path / "spool" / "queue"
    queue_dir.rmdir()
    queue_dir.write_text("not a folder")  # any I/O error on the spool (disk full, gone...)
    with camera(gw) as ftp:
        with pytest.raises(ftplib.error_temp, match="451"):
            upload(ftp, "cam07/lost.fits", b"x" * 1000)
    wait_for(lambda: gw.counters().failures == 1, "failure counted")
    counters = gw.counters()
    assert counters.uploads == 0 and counters.queued == 0 and gw.delivered == []
    assert "spool" in counters.last_error and "lost.fits" in counters.last_error
    assert not (gw.incoming / "cam07" / "lost.fits").exists()
    assert archive.received == []
