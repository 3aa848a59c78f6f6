"""The Python API on the IOC object itself: asyncio code running an IOC in-process (no
transport) awaits an observation point's frames with `async for`, each sampled frame once, and
reads a held frame by uniqueId; puts go through the same path as a client's."""

from __future__ import annotations

import asyncio

import numpy as np

from ndflow.config import parse_config
from ndflow.server import IOC

CONFIG = """
transports: []
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 32, max_size_y: 16,
     data_type: UInt16}}
plugins:
  - {type: observe, port: OBS1, prefix: "Obs1:", input: SIM1, enabled: true,
     options: {history: 4}}
"""


def test_asyncio_code_awaits_the_sampled_frames_of_an_in_process_ioc():
    async def main():
        config, lines = parse_config(CONFIG, "inline.yml")
        ioc = IOC(config, lines, transports=[])
        started = asyncio.Event()
        server = asyncio.create_task(ioc.run(started, serve=False))
        await started.wait()
        cam, obs = ioc.component("SIM1"), ioc.component("OBS1")
        try:
            for name, value in [("SampleEvery", 2)]:
                await obs.handle_put(obs.params[name], value)
            for name, value in [("ImageMode", "Multiple"), ("NumImages", 9),
                                ("AcquireTime", 0.001), ("AcquirePeriod", 0.0),
                                ("SimMode", "LinearRamp"), ("WaitForPlugins", "Yes")]:
                await cam.handle_put(cam.params[name], value)
            got = []
            async with obs.frames(maxsize=8) as stream:
                acquire = asyncio.create_task(cam.handle_put(cam.params["Acquire"], 1))
                while len(got) < 5:
                    got.append(await stream.get(timeout=10))
                await asyncio.wait_for(acquire, 10)
                overflow = stream.overflow
            await obs.handle_put(obs.params["FrameIndex"], got[-2].unique_id)
            by_index = obs.values["FrameByIndex"]
            status = obs.values["FrameIndexStatus_RBV"]
            history = list(obs.values["History_RBV"])
            return got, overflow, by_index, status, history
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
    got, overflow, by_index, status, history = asyncio.run(main())
    first = got[0].unique_id
    assert [f.unique_id for f in got] == [first + i for i in range(0, 9, 2)] and overflow == 0
    assert history == [f.unique_id for f in got][-4:]
    assert status == 1 and by_index.unique_id == got[-2].unique_id
    np.testing.assert_array_equal(by_index.data, got[-2].data)
    # LinearRamp: each frame is the previous one plus the increment everywhere
    step = (got[1].data.astype(float) - got[0].data.astype(float)) / 2
    assert np.all(step == step.flat[0]) and step.flat[0] > 0
