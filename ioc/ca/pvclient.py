"""A Channel Access client for `ndflow.pvwatch`: monitors on PVs of this IOC or any other.

caproto's threading client, not pyepics: caproto is already the IOC's CA library (no new
dependency and no second CA implementation in the process), it is pure Python, so there is no
libca context with its own threads in a process that starts algorithm children, and its
monitor callbacks run in its own worker threads, never on the event loop. DBR_TIME monitors
give the value with the server's timestamp.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class CAClient:
    def __init__(self) -> None:
        from caproto.threading.client import Context

        self._context = Context(timeout=2.0)

    def subscribe(self, name: str, on_value: Callable[[Any, float], None]) -> Any:
        """Monitor `name` (connection in the background; no waiting here)."""
        pv, = self._context.get_pvs(name, timeout=2.0)

        def update(sub: Any, response: Any) -> None:
            on_value(_scalar(response.data), float(response.metadata.timestamp))
        sub = pv.subscribe(data_type="time")
        sub.add_callback(update)
        return (pv, sub, update)

    def unsubscribe(self, handle: Any) -> None:
        pv, sub, update = handle
        sub.remove_callback(update)

    def close(self) -> None:
        try:
            self._context.disconnect()
        except Exception:
            pass


def _scalar(data: Any) -> Any:
    """One element as a Python value; a waveform stays an array; text decoded."""
    if isinstance(data, np.ndarray) and data.size == 1:
        data = data.reshape(-1)[0]
    elif isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    if isinstance(data, bytes):
        return data.decode("latin-1")
    if isinstance(data, np.generic):
        return data.item()
    return data
