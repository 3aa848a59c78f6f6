"""The contract between the core and a transport (Channel Access, pvAccess, ...).

The core holds declarations (`Param`) and values and knows which PVs a component has; it imports
no protocol library. A transport is a package that serves those PVs: for each one it makes an
*endpoint* (a caproto channel, a p4p SharedPV) that holds the value clients see, decodes a
client's put into a plain Python value and hands it to the component's put handler, the one put
path every transport shares (`Component.handle_put`: coercion, clamps, refusals, hooks). The
publisher (core) coalesces the values the data path sets and hands each endpoint its latest
value; a transport only says how a value is shown (`to_wire`), sent (`publish`) and when what it
queued has left for the clients (`settle`).

Transports are found by name through the `ndflow.transports` entry points, as drivers and
plugins are, so the core names none of them.
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, Protocol

from .params import Param

#: a put hook returns this when it has published the value itself (a busy record's completion)
HANDLED = object()

#: the component's put path: a client's decoded value and the endpoint it came through in, the
#: stored value (or HANDLED) out
PutHandler = Callable[[Any, Any], Awaitable[Any]]

_ACCEPTED: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "ndflow_put_accepted", default=None)


@contextmanager
def accepting(callback: Callable[[], None]) -> Iterator[None]:
    """Within this block, a put's work (a task created here) calls `callback` once its value is
    accepted and only the completion remains (an Acquire started, a Capture armed). A transport
    uses it for a client that does not wait for completion."""
    token = _ACCEPTED.set(callback)
    try:
        yield
    finally:
        _ACCEPTED.reset(token)


def accepted() -> None:
    """Said by a busy put's hook before it waits for its work to end (see `accepting`)."""
    callback = _ACCEPTED.get()
    if callback is not None:
        callback()


@dataclass(frozen=True)
class PVSpec:
    """One PV of a component, as every transport serves it."""

    suffix: str  # after the IOC prefix, e.g. "cam1:Acquire_RBV"
    param: Param
    readback: bool  # a readback view: read-only, shows the readback choices
    on_put: PutHandler | None  # None: read-only
    asg: str = "DEFAULT"  # its access security group (ndflow.access)
    asl: int = 0  # its access security level (a record's VAL field: ASL0)


class Endpoint(Protocol):
    """What a transport serves one PV with."""

    spec: PVSpec
    pvname: str  # the full name, once served

    @property
    def param(self) -> Param: ...

    @property
    def readback(self) -> bool: ...

    @property
    def value(self) -> Any:
        """The value clients see now (in `to_wire` form)."""

    def to_wire(self, value: Any) -> Any:
        """A stored parameter value -> what this endpoint holds (an enum's string, ...)."""

    async def publish_value(self, value: Any) -> None:
        """Show `value` (already `to_wire`) to clients, with the alarm the declaration implies."""


class FrameEndpoint(Endpoint, Protocol):
    """An endpoint of a frame parameter (Kind.NDARRAY): each frame is posted from the thread
    that sets it (a plugin's), so the event loop never builds one."""

    def post_frame(self, array: Any) -> None: ...


class DrainAware(Endpoint, Protocol):
    """An endpoint that can say when its updates have left the transport's queues (optional:
    the publisher treats an endpoint without `sent` as always ready). The publisher posts a
    large array only once the previous update of that endpoint has left, so arrays are paced by
    what the clients drain."""

    def sent(self) -> Awaitable[None] | None:
        """None if the transport is ready for the next update (the last one has left its
        queues for the clients that pace it: for Channel Access, the fastest client reading
        the whole array; slower ones keep the newest few); else an awaitable (best an
        asyncio.Future: no task is made for it) done once it is."""


class Transport(Protocol):
    """One protocol serving every component's PVs."""

    name: str
    #: the IOC's access rules (ndflow.access.AccessSecurity), set before serving
    access: Any

    def endpoint(self, spec: PVSpec, value: Any) -> Endpoint | None:
        """Make the endpoint for `spec` holding `value` (a stored value), or None if this
        transport cannot carry that kind of parameter."""

    def add(self, endpoints: Mapping[str, Endpoint]) -> None:
        """Serve these endpoints under their full names (called in the event loop's thread once
        serving)."""

    def withdraw(self, names: Iterable[str]) -> None:
        """Stop serving these full names (event loop's thread once serving)."""

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve until cancelled."""

    async def settle(self) -> None:
        """Wait until the updates published so far have been handed to the clients'
        connections (a put completes after this, so a client sees its effects first)."""

    def names(self) -> list[str]:
        """Every full PV name served."""
