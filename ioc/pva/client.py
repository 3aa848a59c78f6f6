"""A Python client of an IOC's observation points over pvAccess (p4p): await frames, fetch a
held frame by uniqueId, read the history.

    from ndflow.pva.client import Observer

    async with Observer("13SIM1:Obs1:") as obs:
        async with obs.frames(maxsize=32) as stream:
            await stream.wait_live(5)          # frames sampled from now on will arrive
            async for frame in stream:         # ndflow NDArray objects
                ...
        held = await obs.history()             # uniqueIds held, oldest first
        frame = await obs.frame(held[-1])      # Lima2's getFrame(idx); None if not held

Events, not callbacks: `frames()` is an async iterator fed by the subscription to the point's
`Image` (ndflow.framestream). The value present when the subscription starts is the past, not
an event, so it is skipped: each frame sampled after `live` arrives once. A consumer that falls
behind loses the oldest queued frames, counted on `stream.overflow`; frames the server coalesced
for a slow connection are found from the `SampleIndex` attribute every sampled frame carries
and counted on `stream.gaps`.

`frame()` writes FrameIndex (the put completes once FrameByIndex is posted) and reads
FrameByIndex. Two clients asking at the same moment can see each other's frame, so the result's
uniqueId is checked and the request repeated if needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from p4p.client.asyncio import Context

from ..framestream import FrameStream
from ..ndarray import NDArray
from . import ntndarray_in

FOUND = 1  # FrameIndexStatus_RBV index


class Observer:
    """An observation point (`prefix` = IOC prefix + plugin prefix, e.g. "13SIM1:Obs1:")."""

    def __init__(self, prefix: str, context: Context | None = None) -> None:
        self.prefix = prefix
        self._own = context is None
        self.ctxt = context if context is not None else Context("pva", nt=False)
        self._fetch = asyncio.Lock()

    async def __aenter__(self) -> "Observer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.ctxt.close()

    # --- the stream of sampled frames -----------------------------------------------------------
    def frames(self, maxsize: int = 16) -> FrameStream[NDArray]:
        """Frames sampled from now on (call in the running loop); see the module docstring."""
        state = {"first": True, "sample": None}
        stream: FrameStream[NDArray]

        async def update(value: Any) -> None:  # p4p's asyncio monitors take coroutines
            if isinstance(value, Exception):
                # a disconnection: after it the server sends its current value again, which is
                # the past (or a frame already delivered), not an event
                state["first"] = True
                return
            try:
                frame = ntndarray_in.from_value(value).to_ndarray()
            except ntndarray_in.NTNDArrayError:
                frame = None  # the server's initial empty value: no frame posted yet
            sample = _sample_index(frame)
            previous, state["sample"] = state["sample"], sample
            if state["first"]:  # the value at subscription (or reconnection): the past
                state["first"] = False
                stream.set_live()
                return
            if frame is None:
                return
            if sample is not None and previous is not None and sample > previous + 1:
                stream.note_gap(sample - previous - 1)
            stream.push(frame)

        subscription = self.ctxt.monitor(self.prefix + "Image", update, notify_disconnect=True)
        stream = FrameStream(maxsize, on_close=lambda _: subscription.close())
        return stream

    # --- frame getters --------------------------------------------------------------------------
    async def frame(self, unique_id: int = -1, timeout: float = 5.0) -> NDArray | None:
        """The frame held with `unique_id` (-1: the newest), or None if it is not held."""
        async with self._fetch:
            for _ in range(3):
                await self._within(timeout, self.ctxt.put(
                    self.prefix + "FrameIndex", {"value": unique_id}, wait=True))
                status = await self._within(timeout, self.ctxt.get(
                    self.prefix + "FrameIndexStatus_RBV"))
                if status["value.index"] != FOUND:
                    return None
                value = await self._within(timeout, self.ctxt.get(self.prefix + "FrameByIndex"))
                frame = ntndarray_in.from_value(value).to_ndarray()
                if unique_id == -1 or frame.unique_id == unique_id:
                    return frame
            return None

    async def history(self, timeout: float = 5.0) -> list[int]:
        """The uniqueIds held, oldest first."""
        value = await self._within(timeout, self.ctxt.get(self.prefix + "History_RBV"))
        return [int(i) for i in value["value"]]

    async def last_index(self, timeout: float = 5.0) -> int:
        value = await self._within(timeout, self.ctxt.get(self.prefix + "LastIndex_RBV"))
        return int(value["value"])

    @staticmethod
    async def _within(timeout: float, operation: Any) -> Any:
        """`operation` (a p4p coroutine), given up after `timeout` s (asyncio.TimeoutError)."""
        return await asyncio.wait_for(operation, timeout)


def _sample_index(frame: NDArray | None) -> int | None:
    attribute = frame.attributes.get("SampleIndex") if frame is not None else None
    value = attribute.number() if attribute is not None else None
    return int(value) if value is not None else None
