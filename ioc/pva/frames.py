"""Frames over pvAccess: a frame parameter (Kind.NDARRAY) served as NTNDArray, NDPluginPva's
`Image`. Each frame is converted and posted in the thread that produced it (the plugin's), as
NDPluginPva does in its own thread; PVXS then queues it to each subscriber, coalescing for a
client that falls behind (which pvaDriver counts as overruns)."""

from __future__ import annotations

from typing import Any

from p4p import Value
from p4p.nt import NTNDArray
from p4p.server import raw

from ..transport import PVSpec
from . import ntndarray

_TYPE = NTNDArray.buildType()


class FrameEndpoint:
    """The NTNDArray PV of a frame parameter; read-only."""

    def __init__(self, spec: PVSpec, transport: Any) -> None:
        self.spec = spec
        self.param = spec.param
        self.readback = True
        self.pvname = spec.param.name  # replaced by the full name when served
        self.value: Any = None  # the last frame posted
        self.posted = 0
        self.pv = raw.SharedPV(initial=Value(_TYPE, {}))

    def to_wire(self, value: Any) -> Any:
        return value

    async def publish_value(self, value: Any) -> None:
        self.post_frame(value)

    def post_frame(self, array: Any) -> None:
        if array is None:
            return
        self.pv.post(ntndarray.to_value(array))
        self.value = array
        self.posted += 1
