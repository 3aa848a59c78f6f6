"""The port graph: which component produces arrays under which port name, and who listens.

Rewiring happens at run time from CA puts (NDArrayPort / NDArrayAddress). A request that names
an unknown port or would close a loop raises GraphError and changes nothing.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .component import Component
    from .plugin import Plugin


class GraphError(Exception):
    pass


class PortGraph:
    def __init__(self) -> None:
        self.ports: dict[str, "Component"] = {}
        self._sources: dict["Plugin", tuple[str, int]] = {}
        self._lock = threading.Lock()
        # (port, address) -> listeners; replaced whole on every change so the data path can read
        # it without taking the lock.
        self._listeners: dict[tuple[str, int], tuple["Plugin", ...]] = {}
        # port -> listeners at an address > 0 (a channel of a multi-channel frame, see
        # ndflow.channels): they get every array too and pick their channel themselves
        self._addressed: dict[str, tuple["Plugin", ...]] = {}

    def _rebuild(self) -> None:
        listeners: dict[tuple[str, int], list["Plugin"]] = {}
        for plugin, src in self._sources.items():
            listeners.setdefault(src, []).append(plugin)
        self._listeners = {k: tuple(v) for k, v in listeners.items()}
        addressed: dict[str, list["Plugin"]] = {}
        for (port, address), plugins in listeners.items():
            if address:
                addressed.setdefault(port, []).extend(plugins)
        self._addressed = {k: tuple(v) for k, v in addressed.items()}

    def add(self, component: "Component") -> None:
        if component.port in self.ports:
            raise GraphError(f"port {component.port!r} is defined twice")
        self.ports[component.port] = component

    def remove(self, component: "Component") -> None:
        with self._lock:
            self.ports.pop(component.port, None)
            self._sources.pop(component, None)  # type: ignore[arg-type]
            for plugin, (port, _) in list(self._sources.items()):
                if port == component.port:
                    del self._sources[plugin]
            self._rebuild()

    def source_of(self, plugin: "Plugin") -> tuple[str, int] | None:
        return self._sources.get(plugin)

    def subscribers(self, port: str, address: int = 0) -> tuple["Plugin", ...]:
        return self._listeners.get((port, address), ())

    def addressed(self, port: str) -> tuple["Plugin", ...]:
        """Listeners of `port` at any address > 0 (NDArrayAddress J: channel J)."""
        return self._addressed.get(port, ())

    def connect(self, plugin: "Plugin", port: str, address: int = 0) -> None:
        """Make `plugin` receive the arrays of `port`; refuse unknown ports and cycles."""
        with self._lock:
            if port == "":
                self._sources.pop(plugin, None)
                self._rebuild()
                return
            if port not in self.ports:
                known = ", ".join(sorted(self.ports)) or "none"
                raise GraphError(f"no port named {port!r} (known: {known})")
            # by port name: a plugin with several inputs (Gather) listens through one
            # listener per input, each carrying the plugin's port name
            if port == plugin.port or port in {c.port for c in self._downstream_of(plugin.port)}:
                raise GraphError(f"connecting {plugin.port} to {port} would make a loop")
            self._sources[plugin] = (port, address)
            self._rebuild()

    def _downstream_of(self, port: str) -> set["Component"]:
        seen: set["Component"] = set()
        frontier = [port]
        while frontier:
            current = frontier.pop()
            for plugin, (src, _) in self._sources.items():
                if src == current and plugin not in seen:
                    seen.add(plugin)
                    frontier.append(plugin.port)
        return seen

    def __iter__(self) -> Iterator["Component"]:
        return iter(list(self.ports.values()))
