"""The IOC: builds components from a config, wires the port graph and serves every PV.

One asyncio loop runs the transports' servers (Channel Access, pvAccess), the publisher and a
once-a-second housekeeping task. Drivers and non-blocking plugins run in their own threads and
reach the transports only through the publisher. The transports are found by name (the config's
`transports`) through the registry; this module names none of them.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
import logging
from typing import Any, Callable, Iterable, Mapping

from pydantic import ValidationError

from . import registry
from .component import Component
from .config import IOCConfig, LineMap, Site
from .driver import Driver
from .graph import GraphError, PortGraph
from .plugin import Plugin
from .publisher import Publisher
from .access import ACFError, AccessSecurity
from .resources import Resources
from .transport import Transport

log = logging.getLogger("ndflow.ioc")
MB = 1024 * 1024


class IOC:
    def __init__(self, config: IOCConfig, lines: LineMap | None = None,
                 transports: list[str] | None = None) -> None:
        """`transports`: the protocols to serve (default: the config's); [] serves nothing."""
        self.config = config
        self.prefix = config.prefix
        self.graph = PortGraph()
        self.publisher = Publisher(config.publish.interval_s,
                                   config.publish.array_mb_per_s * 1e6)
        self.components: list[Component] = []
        self._names: set[str] = set()  # every PV name served, for duplicates
        self._loop: asyncio.AbstractEventLoop | None = None
        lines = lines or LineMap("<config>", None)
        self.transports = self._load_transports(
            config.transports if transports is None else transports, lines)
        self.publisher.transports = self.transports
        self.site = Site.of(config, lines.base_dir)
        self.access = self._load_access(config, lines)
        for transport in self.transports:
            transport.access = self.access
        try:
            self._build(config, lines)
        except BaseException:  # a config error, or a stop (Ctrl-C) while it builds
            self.shutdown()  # components built so far may have started child processes
            raise

    def _build(self, config: IOCConfig, lines: LineMap) -> None:
        for i, cfg in enumerate(config.drivers):
            self._add(self._make(lines, ("drivers", i), "drivers", cfg.type, cfg.options,
                                 port=cfg.port, prefix=cfg.prefix, graph=self.graph,
                                 pool_bytes=int(cfg.pool_mb * MB),
                                 loss_policy=cfg.loss_policy), lines, ("drivers", i), cfg.asg)
        for i, cfg in enumerate(config.plugins):
            self._add(self._make(lines, ("plugins", i), "plugins", cfg.type, cfg.options,
                                 port=cfg.port, prefix=cfg.prefix, graph=self.graph,
                                 input_port=cfg.input, input_address=cfg.address,
                                 enabled=cfg.enabled, blocking=cfg.blocking,
                                 queue_size=cfg.queue_size, max_threads=cfg.max_threads,
                                 loss_policy=cfg.loss_policy,
                                 pool_bytes=int(cfg.pool_mb * MB)), lines, ("plugins", i), cfg.asg)
        resources = Resources(list(self.components), _budget_mb(config.memory_budget_mb),
                              access=self.access)
        self._add(resources, lines, ("memory_budget_mb",))
        for i, cfg in enumerate(config.plugins):
            if cfg.input and cfg.input not in self.graph.ports:
                known = ", ".join(sorted(self.graph.ports))
                raise lines.error(("plugins", i, "input"),
                                  f"no port named {cfg.input!r} (known: {known})")

    @staticmethod
    def _load_access(config: IOCConfig, lines: LineMap) -> AccessSecurity:
        acf = config.access_security
        path = (lines.base_dir / Path(acf.file).expanduser()) if acf.file else None
        try:
            return AccessSecurity(path, acf.client_ip)
        except ACFError as exc:
            raise lines.error(("access_security", "file"), str(exc)) from None

    @staticmethod
    def _load_transports(names: list[str], lines: LineMap) -> list[Transport]:
        transports = []
        for i, name in enumerate(dict.fromkeys(names)):
            try:
                transports.append(registry.load("transports", name)())
            except registry.UnknownComponent as exc:
                raise lines.error(("transports", i), str(exc)) from None
            except Exception as exc:
                raise lines.error(("transports", i), f"cannot load {name!r}: {exc}") from None
        return transports

    def _make(self, lines: LineMap, path: tuple, group: str, kind: str, options: dict,
              **kw: Any) -> Component:
        try:
            cls = registry.load(group, kind)
        except registry.UnknownComponent as exc:
            raise lines.error(path + ("type",), str(exc)) from None
        except Exception as exc:
            raise lines.error(path + ("type",), f"cannot load {kind!r}: {exc}") from None
        opts_model = getattr(cls, "Options", None)
        if opts_model is not None:
            try:
                kw["options"] = opts_model.model_validate(options)
            except ValidationError as exc:
                raise lines.error_from(exc, path + ("options",)) from None
        elif options:
            raise lines.error(path + ("options",), f"{kind} takes no options")
        if "site" in inspect.signature(cls).parameters:
            kw["site"] = self.site
        try:
            return cls(**kw)
        except (ValueError, TypeError) as exc:
            raise lines.error(path + ("options",), str(exc)) from None

    def _add(self, component: Component, lines: LineMap, path: tuple,
             asg: str = "DEFAULT") -> None:
        component.asg = asg
        try:
            self.graph.add(component)
        except GraphError as exc:
            raise lines.error(path + ("port",), str(exc)) from None
        full = f"{self.prefix}{component.prefix}"
        served = component.attach(self.publisher, self.transports)
        names = {full + suffix for suffix in component.params.pv_suffixes()}
        twice = sorted(names & self._names)
        if twice:
            raise lines.error(path + ("prefix",), f"PV {twice[0]} defined twice")
        self._names |= names
        for transport, endpoints in served.items():
            transport.add({full + suffix: e for suffix, e in endpoints.items()})
        component.pv_registry = self
        if component.site is None:
            component.site = self.site
        self.components.append(component)

    def add_component(self, component: Component) -> None:
        """Serve one more component, built outside the config (the cluster's per-rank views
        and status), before the IOC runs."""
        lines = LineMap("<cluster>", None)
        self._add(component, lines, ())

    # --- PVs added and withdrawn at run time (PVRegistry) -----------------------------------------
    def add_pvs(self, component: Component, served: Mapping[Transport, Mapping[str, Any]]) -> None:
        full = f"{self.prefix}{component.prefix}"

        def add() -> None:
            count = 0
            for transport, endpoints in served.items():
                transport.add({full + suffix: e for suffix, e in endpoints.items()})
                self._names |= {full + suffix for suffix in endpoints}
                count = max(count, len(endpoints))
            log.info("%s: added %d PVs", component.port, count)
        self._on_loop(add)

    def withdraw_pvs(self, component: Component, suffixes: Iterable[str]) -> None:
        full = f"{self.prefix}{component.prefix}"
        names = {full + s for s in suffixes}

        def withdraw() -> None:
            for transport in self.transports:
                transport.withdraw(names)
            self._names -= names
            log.info("%s: withdrew %d PVs", component.port, len(names))
        self._on_loop(withdraw)

    def _on_loop(self, action: Callable[[], None]) -> None:
        """Change what is served in the event loop's thread, never under a server's feet."""
        loop = self._loop
        if loop is None or not loop.is_running():
            action()
        else:
            loop.call_soon_threadsafe(action)

    # --- queries ----------------------------------------------------------------------------------
    def pv_names(self) -> list[str]:
        return sorted(self._names)

    @property
    def drivers(self) -> list[Driver]:
        return [c for c in self.components if isinstance(c, Driver)]

    @property
    def plugins(self) -> list[Plugin]:
        return [c for c in self.components if isinstance(c, Plugin)]

    def component(self, port: str) -> Component:
        return self.graph.ports[port]

    # --- running ----------------------------------------------------------------------------------
    async def run(self, started: asyncio.Event | None = None, serve: bool = True) -> None:
        """Serve until cancelled; shut every component down on the way out. With
        `serve=False` everything runs but no transport serves (batch replay)."""
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.publisher.run(), name="publisher")]
        try:
            for component in self.components:
                component.start()
            tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            if serve:
                for transport in self.transports:
                    tasks.append(asyncio.create_task(transport.serve(self._loop),
                                                     name=transport.name))
                log.info("serving %d PVs with prefix %s over %s", len(self._names), self.prefix,
                         ", ".join(t.name for t in self.transports) or "nothing")
            if started is not None:
                started.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.shutdown()

    def shutdown(self) -> None:
        """Stop every component, sources first: the drivers (no frame is made after), then
        each plugin after the one it takes frames from, so it drains what it holds into the
        plugins downstream while they still run; a file writer writes what the stages before
        it had queued. (Downstream first, as before, closed the writers while the driver went
        on making frames, and a stage draining into a stopped one waited on it.)"""
        for component in self._upstream_first():
            try:
                component.shutdown()
            except Exception as exc:
                log.error("%s: shutdown failed: %s", component.port, exc)

    def _upstream_first(self) -> list[Component]:
        """The drivers, then the plugins, each after the one it takes its frames from, then
        the rest (configuration order among equals)."""

        def hops(component: Component) -> int:
            count, seen = 0, {component}
            while isinstance(component, Plugin):
                source = self.graph.source_of(component)
                upstream = self.graph.ports.get(source[0]) if source else None
                if upstream is None or upstream in seen:
                    break
                seen.add(upstream)
                component, count = upstream, count + 1
            return count

        def rank(component: Component) -> tuple[int, int]:
            if isinstance(component, Driver):
                return 0, 0
            return (1, hops(component)) if isinstance(component, Plugin) else (2, 0)

        return sorted(self.components, key=rank)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for component in self.components:
                try:
                    component.periodic(now - last)
                except Exception as exc:
                    log.error("%s: periodic update failed: %s", component.port, exc)
            last = now


def _budget_mb(configured: float) -> float:
    """The IOC's memory budget: as configured, or (-1) half of the machine's memory."""
    if configured >= 0:
        return configured
    import psutil
    return psutil.virtual_memory().total / 2 / MB
