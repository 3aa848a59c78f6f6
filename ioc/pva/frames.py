"""Frames over pvAccess: a frame parameter (Kind.NDARRAY) served as NTNDArray, NDPluginPva's
`Image`. Each frame is converted and posted in the thread that produced it (the plugin's), as
NDPluginPva does in its own thread; PVXS then queues it to each subscriber, coalescing for a
client that falls behind (which pvaDriver counts as overruns).

Each update marks only what changed since the previous one (`NTNDArrayStream`): the SharedPV's
current value, which a client connecting later and a get receive, is the merge of every update,
so it is always a complete frame."""

from __future__ import annotations

import threading
from typing import Any

from p4p import Value
from p4p.server import raw

from ..transport import PVSpec
from .ntndarray import TYPE
from .ntndarray_stream import NTNDArrayStream


class _FramePV(raw.SharedPV):
    """SharedPV telling its endpoint, in PVXS's thread, when the first client connects and the
    last one leaves (raw.SharedPV runs these hooks at once, before the channel serves)."""

    def __init__(self, on_clients: Any, **kw: Any) -> None:
        self._on_clients = on_clients
        super().__init__(**kw)

    def _onFirstConnect(self, _junk: Any) -> None:
        self._on_clients(True)

    def _onLastDisconnect(self, _junk: Any) -> None:
        self._on_clients(False)


class FrameEndpoint:
    """The NTNDArray PV of a frame parameter; read-only.

    A frame is converted (one copy of its pixels) only while a client has the channel open; the
    last frame is kept (its buffer stays leased) and converted for the first client that
    connects after, so nobody connected costs nothing per frame."""

    def __init__(self, spec: PVSpec, transport: Any) -> None:
        self.spec = spec
        self.param = spec.param
        self.readback = True
        self.pvname = spec.param.name  # replaced by the full name when served
        self.value: Any = None  # the last frame posted
        self.posted = 0
        self._clients = False
        self._unposted = False
        self._lock = threading.Lock()
        self.pv = _FramePV(self._clients_changed, initial=Value(TYPE, {}))
        self._stream = NTNDArrayStream()

    def to_wire(self, value: Any) -> Any:
        return value

    async def publish_value(self, value: Any) -> None:
        self.post_frame(value)

    def post_frame(self, array: Any) -> None:
        if array is None:
            return
        with self._lock:  # against _clients_changed: frames reach clients in order
            self.value = array
            if not self._clients:
                self._unposted = True
                return
            self._post(array)

    def _clients_changed(self, connected: bool) -> None:
        with self._lock:
            self._clients = connected
            if connected and self._unposted and self.value is not None:
                self._unposted = False
                try:
                    self._post(self.value)
                except ValueError:  # a frame NTNDArray cannot carry: post_frame said so
                    pass

    def _post(self, array: Any) -> None:
        """Post the update of `array` (the caller holds the lock). An update that was not
        posted makes the next one complete, so the stream never marks changes against a frame
        the PV does not hold."""
        update = self._stream.update(array)
        try:
            self.pv.post(update)
        except BaseException:
            self._stream.reset()
            raise
        self.posted += 1
