"""A pvAccess client for `ndflow.pvwatch` (names written `pva://NAME`): p4p's threaded
client, whose monitor callbacks run in its own worker thread. Every ndflow PV is also served
over PVA, and an EPICS 7 IOC serves its records through QSRV."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


class PVAClient:
    def __init__(self) -> None:
        from p4p.client.thread import Context

        self._context = Context("pva")

    def subscribe(self, name: str, on_value: Callable[[Any, float], None]) -> Any:
        def update(value: Any) -> None:
            if isinstance(value, Exception):  # Disconnected, RemoteError: keep the last
                return
            stamp = getattr(value, "timestamp", None) or time.time()
            # p4p unwraps NTScalar to subclasses of int/float/str/ndarray carrying .timestamp
            if isinstance(value, bool):
                value = bool(value)
            elif isinstance(value, int):
                value = int(value)
            elif isinstance(value, float):
                value = float(value)
            elif isinstance(value, str):
                value = str(value)
            elif isinstance(value, np.ndarray):
                value = np.array(value)
                if value.size == 1:
                    value = value.reshape(-1)[0].item()
            else:  # an NTEnum or a structure: its text
                value = str(value)
            on_value(value, float(stamp))
        return self._context.monitor(name, update)

    def unsubscribe(self, handle: Any) -> None:
        handle.close()

    def close(self) -> None:
        self._context.close()
