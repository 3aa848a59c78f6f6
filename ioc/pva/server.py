"""pvAccess transport: every PV of every component over PVA (p4p on PVXS), as QSRV serves an
EPICS 7 IOC's records, with the same names as over Channel Access.

One `StaticProvider` holds a `SharedPV` per PV; names added and withdrawn while serving (an
algorithm's reload) are added to and removed from it. PVXS runs the sockets in its own threads;
a client's put is handed to the IOC's event loop, where it takes the one put path every transport
shares (`Component.handle_put`), so a PVA put is clamped, refused and completed exactly as a CA
put. Server settings come from the usual environment (EPICS_PVAS_SERVER_PORT,
EPICS_PVAS_BROADCAST_PORT, EPICS_PVAS_INTF_ADDR_LIST, ...).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Mapping

from p4p.server import Server, StaticProvider

from ..access import AccessSecurity
from ..transport import PVSpec
from . import pvxs_send
from .endpoints import PVAEndpoint, make_endpoint

log = logging.getLogger("ndflow.pva")


class PVATransport:
    """Serves every PV over pvAccess."""

    name = "pva"

    def __init__(self) -> None:
        self.provider = StaticProvider("ndflow")
        self.endpoints: dict[str, PVAEndpoint] = {}
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.access = AccessSecurity()  # the IOC's rules, set before serving

    def endpoint(self, spec: PVSpec, value: Any) -> PVAEndpoint | None:
        return make_endpoint(spec, value, self)

    def add(self, endpoints: Mapping[str, PVAEndpoint]) -> None:
        for name, endpoint in endpoints.items():
            endpoint.pvname = name
            self.endpoints[name] = endpoint
            self.provider.add(name, endpoint.pv)

    def withdraw(self, names: Iterable[str]) -> None:
        for name in names:
            endpoint = self.endpoints.pop(name, None)
            if endpoint is None:
                continue
            try:
                self.provider.remove(name)
            except KeyError:
                pass
            endpoint.pv.close(destroy=True)  # connected clients see the PV go

    def names(self) -> list[str]:
        return list(self.endpoints)

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        log.info("PVXS send path: %s", pvxs_send.apply())
        self.server = Server(providers=[self.provider])
        conf = self.server.conf()
        log.info("PVXS send thread: %s", pvxs_send.batch_sender())
        log.info("pvAccess on TCP port %s, searches on UDP port %s, interfaces %s",
                 conf.get("EPICS_PVAS_SERVER_PORT"), conf.get("EPICS_PVAS_BROADCAST_PORT"),
                 conf.get("EPICS_PVAS_INTF_ADDR_LIST"))
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            server, self.server = self.server, None
            server.stop()

    async def settle(self) -> None:
        """PVXS hands a post to its subscribers' queues inside post() itself."""
