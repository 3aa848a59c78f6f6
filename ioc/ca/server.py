"""Channel Access transport: caproto's asyncio server over the PVs of every component.

caproto looks every search up in the plain `pvdb` dict handed to its Context, so PVs added and
withdrawn while serving (an algorithm's reload) are dict changes made in the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Mapping

from ..transport import PVSpec
from .channels import ParamChannel, make_channel

log = logging.getLogger("ndflow.ca")

try:  # how long caproto's circuit may batch monitor updates before sending them
    from caproto.server.common import HIGH_LOAD_TIMEOUT as SEND_SETTLE_S
except ImportError:  # pragma: no cover
    SEND_SETTLE_S = 0.01


def _limit_caproto_batching() -> None:
    """caproto's circuit holds monitor updates in a batch for up to a latency limit that doubles
    with every batch while a client is busy, up to MAX_LATENCY (1 s), but sends a put's response
    at once. settle() waits until caproto's queues stay empty for two SEND_SETTLE_S polls; a
    batch already taken out of them is not seen, so a put-callback could complete tens of ms
    before its own monitor updates. Capped at SEND_SETTLE_S, a batch is sent within the window
    settle() waits."""
    from caproto.server import common
    common.MAX_LATENCY = min(common.MAX_LATENCY, SEND_SETTLE_S)


class CATransport:
    """Serves every PV over Channel Access (caproto), record fields included."""

    name = "ca"

    def __init__(self) -> None:
        self.pvdb: dict[str, Any] = {}
        self.context: Any = None

    def endpoint(self, spec: PVSpec, value: Any) -> ParamChannel | None:
        return make_channel(spec, value)

    def add(self, endpoints: Mapping[str, ParamChannel]) -> None:
        for name, channel in endpoints.items():
            channel.pvname = name
            self.pvdb[name] = channel

    def withdraw(self, names: Iterable[str]) -> None:
        names = set(names)
        # caproto caches record-field channels ("X.DESC") in the pvdb too
        for key in [k for k in self.pvdb if k.split(".", 1)[0] in names]:
            del self.pvdb[key]

    def names(self) -> list[str]:
        return [name for name in self.pvdb if "." not in name]

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        from caproto.asyncio.server import Context
        _limit_caproto_batching()
        self.context = Context(self.pvdb)
        await self.context.run(log_pv_names=False)

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait until caproto has handed queued monitor updates to the clients' connections."""
        ctx = self.context
        if ctx is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet = 0
        # An update may sit between caproto's context queue and a circuit queue, or in a circuit's
        # batch for up to its latency limit: require the queues to stay empty across that limit.
        while quiet < 2 and loop.time() < deadline:
            busy = not ctx.subscription_queue.empty() or any(
                not circuit.subscription_queue.empty() for circuit in list(ctx.circuits))
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(SEND_SETTLE_S if not busy else 0.001)
