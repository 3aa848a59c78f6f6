"""The IOC stops its sources first: the drivers, then each plugin after the one it takes frames
from, whatever order the configuration lists them in, so every stage drains into stages that
still run (a file writer last gets what the stages before it had queued)."""

from __future__ import annotations

import asyncio

from ndflow.config import parse_config
from ndflow.driver import Driver
from ndflow.plugin import Plugin
from ndflow.server import IOC

CONFIG = """
transports: []
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 32, max_size_y: 16}}
plugins:
  - {type: stats, port: STATS1, prefix: "Stats1:", input: ROI1}
  - {type: roi, port: ROI1, prefix: "ROI1:", input: SIM1}
  - {type: stats, port: STATS2, prefix: "Stats2:", input: SIM1}
  - {type: stats, port: STATS3, prefix: "Stats3:", input: STATS1}
"""


def test_drivers_first_then_each_plugin_after_its_source():
    async def main() -> list[str]:
        config, lines = parse_config(CONFIG, "inline.yml")
        ioc = IOC(config, lines, transports=[])
        stopped: list[str] = []
        for component in ioc.components:
            if isinstance(component, (Driver, Plugin)):
                original = component.shutdown

                def shutdown(original=original, port=component.port) -> None:
                    stopped.append(port)
                    original()

                component.shutdown = shutdown  # type: ignore[method-assign]
        started = asyncio.Event()
        server = asyncio.create_task(ioc.run(started, serve=False))
        await started.wait()
        server.cancel()  # a stop: run() shuts every component down on its way out
        await asyncio.gather(server, return_exceptions=True)
        return stopped

    assert asyncio.run(main()) == ["SIM1", "ROI1", "STATS2", "STATS1", "STATS3"]
