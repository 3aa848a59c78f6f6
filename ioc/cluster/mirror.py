"""A non-control rank's side of "one IOC": puts mirrored from the control rank are applied
here, and the values this rank's data path changes are reported back.

`Reporter` keeps what it last sent per component and sends only changes (a plugin's counters
and results; an acquisition rank's driver counters), never a value a mirrored put set, so a
report cannot overwrite a client's newer put on the control rank. `PutApplier` applies a
mirrored put through the component's own `handle_put` (the same validation and hooks as on the
control rank) and answers when the control rank asked for an answer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import numpy as np

from ..component import Component
from ..params import Param
from .views import AVERAGED, SUMMED
from .wire import PUT_DONE

#: a put applied for a reply: answered when done, or after this long if it is a busy put still
#: running (Capture=1 runs until the capture ends)
BUSY_PUT_ANSWER = 1.0


class Reporter:
    def __init__(self, components: list[tuple[Component, Callable[[Param], bool]]]) -> None:
        """`components`: each with the test of which of its parameters are reported."""
        self.components = components
        self._reported: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # the MPI thread and a draining plugin's thread
        #: (port, name) of mirrored puts being applied: what they set is not news (a report
        #: taken between the put and its bookkeeping would send the rank's own FileName back)
        self._putting: dict[tuple[str, str], int] = {}

    def changed(self) -> dict[str, dict[str, Any]]:
        """{port: {name: value}} of what changed since the last call."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for component, wanted in self.components:
                last = self._reported.setdefault(component.port, {})
                changed = {}
                for param in component.params:
                    if not wanted(param) or (component.port, param.name) in self._putting:
                        continue
                    value = component.values.get(param.name)
                    if value is None:  # not computed yet (an array before the first frame)
                        continue
                    if isinstance(value, np.ndarray):
                        if isinstance(last.get(param.name), np.ndarray) and \
                                np.array_equal(last[param.name], value):
                            continue
                        value = value.copy()
                    elif last.get(param.name, object()) == value:
                        continue
                    changed[param.name] = value
                if changed:
                    last.update(changed)
                    out[component.port] = changed
            return out

    def begin_put(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._putting[key] = self._putting.get(key, 0) + 1

    def end_put(self, component: Component, name: str) -> None:
        """A mirrored put is done: what it set is not news for the control rank (but a summed
        or averaged counter it reset is: the aggregate must follow)."""
        key = (component.port, name)
        with self._lock:
            if name in self._reported.get(component.port, {}) and name not in SUMMED and \
                    name not in AVERAGED:
                value = component.values.get(name)
                self._reported[component.port][name] = \
                    value.copy() if isinstance(value, np.ndarray) else value
            self._putting[key] -= 1
            if not self._putting[key]:
                del self._putting[key]


class PutApplier:
    def __init__(self, ports: dict[str, Component], reporter: Reporter,
                 answer: Callable[[dict[str, Any]], None]) -> None:
        self.ports = ports
        self.reporter = reporter
        self.answer = answer  # sends a reply to the control rank (any thread)
        self._last: dict[str, asyncio.Future] = {}  # port -> its latest put being applied

    def apply(self, header: dict[str, Any]) -> None:
        """Event loop: apply a mirrored put in the order they came for its port: it starts
        once the port's previous put is done, or answered if that one is busy (a put with an
        awaited check, FilePath, must not be overtaken by the Capture=1 sent after it, which
        would then see no folder)."""
        port = header["port"]
        previous = self._last.get(port)
        task = asyncio.ensure_future(self._after(previous, header))
        self._last[port] = task
        task.add_done_callback(
            lambda t: self._last.pop(port) if self._last.get(port) is t else None)

    async def _after(self, previous: asyncio.Future | None, header: dict[str, Any]) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous}, timeout=BUSY_PUT_ANSWER)  # a busy one runs on
        await self.put(header)

    async def put(self, header: dict[str, Any]) -> None:
        """Apply a mirrored put; done when it completed (or, for a busy put that asked for an
        answer, once answered)."""
        component = self.ports.get(header["port"])
        reply = header.get("reply")
        answer: dict[str, Any] = {"kind": PUT_DONE, "reply": reply, "ok": True}
        if component is None or header["name"] not in component.params:
            answer.update(ok=False, error=f"no {header['port']}:{header['name']} here")
        else:
            param = component.params[header["name"]]
            self.reporter.begin_put((component.port, param.name))
            try:
                task = asyncio.ensure_future(component.handle_put(param, header["value"]))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                if reply and not header.get("complete"):
                    done, _ = await asyncio.wait({task}, timeout=BUSY_PUT_ANSWER)
                else:
                    done, _ = await asyncio.wait({task})
                if task in done:
                    exc = task.exception()
                    if exc is not None:
                        answer.update(ok=False, error=str(exc))
                if reply:
                    answer["values"] = {n: component.values.get(n) for n in
                                        ("FullFileName_RBV", "NumCaptured_RBV", "WriteStatus",
                                         "WriteMessage") if n in component.values}
            finally:
                self.reporter.end_put(component, param.name)
        if reply:
            self.answer(answer)
