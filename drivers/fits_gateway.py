"""The FTP ingest gateway as part of a FITS driver: its config, its PVs, and the glue.

Cameras upload to the gateway (`gateway.IngestGateway`); each completed file is forwarded
unchanged upstream and handed to the driver, which reads it as its next frame. Passwords come
from the environment or a file named in the config, never from a PV, and are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ndflow.params import R, enum_param, int_param, text_param

from .gateway import GatewayCounters, IngestGateway, Upstream, UpstreamState

UPSTREAM_STATES = tuple(s.value for s in UpstreamState)

GATEWAY_PARAMS = (
    int_param("FTPUploads_RBV", 0, R, group="FTP gateway", doc="complete uploads received"),
    int_param("FTPForwarded_RBV", 0, R, group="FTP gateway", doc="files forwarded upstream"),
    int_param("FTPQueued_RBV", 0, R, group="FTP gateway",
              doc="files waiting for the upstream (kept on disk)"),
    int_param("FTPFailures_RBV", 0, R, group="FTP gateway",
              doc="failed uploads, deliveries and upstream outages"),
    enum_param("FTPUpstream_RBV", UPSTREAM_STATES, 0, R, group="FTP gateway",
               doc="the upstream archive's state"),
    text_param("FTPLastError_RBV", 256, "", R, group="FTP gateway"),
    text_param("FTPLastUpload_RBV", 256, "", R, group="FTP gateway"),
)


class Secret(BaseModel):
    """A password by reference: an environment variable or a file (first line)."""

    model_config = ConfigDict(extra="forbid")
    password_env: str = ""
    password_file: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> "Secret":
        if bool(self.password_env) == bool(self.password_file):
            raise ValueError("give exactly one of password_env or password_file")
        return self

    def password(self, base: Path, what: str) -> str:
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"{what}: environment variable {self.password_env} is not set")
            return value
        path = base / Path(self.password_file).expanduser()
        try:
            return path.read_text().splitlines()[0] if path.stat().st_size else ""
        except OSError as exc:
            raise ValueError(f"{what}: cannot read password_file {path}: "
                             f"{exc.strerror}") from None


class FTPUser(Secret):
    name: str


class UpstreamOptions(Secret):
    host: str
    port: int = Field(21, ge=1, le=65535)
    user: str = "anonymous"
    directory: str = "/"
    timeout_s: float = Field(10.0, gt=0)


class GatewayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = Field("0.0.0.0:2121", description="host:port the cameras upload to")
    users: list[FTPUser] = Field(min_length=1, description="camera logins")
    incoming: str = Field(description="where uploads land (under a data root)")
    spool: str = Field(description="the on-disk forward queue (not inside incoming)")
    upstream: UpstreamOptions | None = Field(None, description="the archive; none: no forward")
    retry_s: float = Field(1.0, gt=0)
    max_retry_s: float = Field(30.0, gt=0)

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"gateway.listen {self.listen!r}: give host:port")
        return host, int(port)


def build_gateway(options: GatewayOptions, base: Path, incoming: Path, spool: Path,
                  deliver: Callable[[Path], None],
                  publish: Callable[[dict], None]) -> IngestGateway:
    """The gateway, not yet started; passwords are resolved now, so a missing one is a config
    error. Every counter change is published as PV values."""
    users = {u.name: u.password(base, f"gateway user {u.name}") for u in options.users}
    upstream = None
    if options.upstream is not None:
        up = options.upstream
        upstream = Upstream(host=up.host, port=up.port, user=up.user,
                            password=up.password(base, "gateway.upstream"),
                            directory=up.directory, timeout_s=up.timeout_s)
    host, port = options.address()

    def changed(c: GatewayCounters) -> None:
        publish({"FTPUploads_RBV": c.uploads, "FTPForwarded_RBV": c.forwarded,
                 "FTPQueued_RBV": c.queued, "FTPFailures_RBV": c.failures,
                 "FTPUpstream_RBV": UPSTREAM_STATES.index(c.upstream.value),
                 "FTPLastError_RBV": c.last_error[:255],
                 "FTPLastUpload_RBV": c.last_file[-255:]})

    return IngestGateway(host=host, port=port, users=users, incoming=incoming, spool=spool,
                         upstream=upstream, deliver=deliver, retry_s=options.retry_s,
                         max_retry_s=max(options.max_retry_s, options.retry_s),
                         on_change=changed)
