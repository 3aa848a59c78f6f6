"""Observation points without an IOC: which frames the sampler keeps (every k-th, at most r per
second, restarting per acquisition), the history bounded by count and bytes, lookup by uniqueId,
the async frame stream (each frame once, bounded, overflow counted), and the plugin's data path
driven in-process."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ndflow.framestream import FrameStream
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, MissingCause, NDArray
from ndflow.plugins.observe import LATEST, History, Observe, Sampler


def frame(uid: int, nbytes: int = 8, acquisition: Acquisition | None = None) -> NDArray:
    array = NDArray.from_numpy(np.full(nbytes, uid % 256, dtype=np.uint8), unique_id=uid)
    array.acquisition = acquisition
    return array


# --- sampling -------------------------------------------------------------------------------------
def kept(sampler: Sampler, n: int, every: int, rate: float = 0.0, dt: float = 0.0,
         acquisition=None, first: int = 1) -> list[int]:
    return [uid for i, uid in enumerate(range(first, first + n))
            if sampler.take(every, rate, i * dt, acquisition)]


def test_every_third_frame_from_the_first():
    assert kept(Sampler(), 10, 3) == [1, 4, 7, 10]
    assert kept(Sampler(), 5, 1) == [1, 2, 3, 4, 5]


def test_the_count_restarts_with_each_acquisition():
    sampler = Sampler()
    a, b = object(), object()
    assert kept(sampler, 5, 3, acquisition=a) == [1, 4]
    assert kept(sampler, 5, 3, acquisition=b, first=6) == [6, 9]  # b's first frame is kept


def test_at_most_r_per_second():
    # frames every 0.1 s, at most 2.5 per second: one in every 4 (0.4 s >= 1/2.5 s)
    assert kept(Sampler(), 12, 1, rate=2.5, dt=0.1) == [1, 5, 9]
    # both: every 2nd, then at most 4 per second (0.25 s): 0.0, 0.4, 0.8 ... of 0.2-spaced frames
    assert kept(Sampler(), 10, 2, rate=4.0, dt=0.1) == [1, 5, 9]


def test_a_nonsense_period_counts_as_every_frame():
    assert kept(Sampler(), 3, 0) == [1, 2, 3]


# --- history --------------------------------------------------------------------------------------
def test_history_keeps_the_last_n_oldest_first():
    history = History()
    for uid in range(1, 21):
        history.add(frame(uid), 10)
    assert history.ids() == list(range(11, 21))
    assert history.get(15).unique_id == 15
    assert history.get(3) is None
    assert history.get(LATEST).unique_id == 20
    assert history.nbytes == 10 * 8


def test_history_byte_budget_drops_the_oldest_first():
    history = History()
    dropped = [history.add(frame(uid, nbytes=100), 10, max_bytes=350) for uid in range(1, 6)]
    assert history.ids() == [3, 4, 5]
    assert dropped == [0, 0, 0, 1, 1]
    assert history.nbytes == 300
    assert history.add(frame(6, nbytes=1000), 10, max_bytes=350) == 4  # too big for the budget
    assert history.ids() == [] and history.nbytes == 0


def test_history_shrinks_on_trim_and_replaces_a_repeated_id():
    history = History()
    for uid in (1, 2, 3, 4):
        history.add(frame(uid), 10)
    history.add(frame(2, nbytes=16), 10)  # a new run restarting its ids: the newer frame wins
    assert history.ids() == [1, 3, 4, 2]
    assert history.get(2).data.size == 16
    assert history.nbytes == 3 * 8 + 16
    history.trim(2)
    assert history.ids() == [4, 2]
    history.clear()
    assert history.ids() == [] and history.get(LATEST) is None and history.nbytes == 0


def test_history_is_consistent_under_concurrent_readers():
    history = History()
    errors = []

    def read() -> None:
        for _ in range(2000):
            ids = history.ids()
            if len(ids) > 5 or ids != sorted(ids):
                errors.append(ids)
            history.get(LATEST)
    reader = threading.Thread(target=read)
    reader.start()
    for uid in range(1, 5000):
        history.add(frame(uid), 5)
    reader.join()
    assert not errors


# --- the stream -----------------------------------------------------------------------------------
def test_stream_gives_each_frame_once_and_counts_overflow():
    async def main() -> tuple[list[int], int, int]:
        stream: FrameStream[int] = FrameStream(maxsize=4)
        producer = threading.Thread(target=lambda: [stream.push(i) for i in range(10)])
        producer.start()
        producer.join()
        stream.finish()
        got = [i async for i in stream]
        return got, stream.overflow, stream.received
    got, overflow, received = asyncio.run(main())
    assert got == [6, 7, 8, 9]  # the newest kept; the 6 oldest dropped and counted
    assert overflow == 6 and received == 10


def test_stream_waits_for_frames_and_ends_on_close():
    async def main() -> list[int]:
        stream: FrameStream[int] = FrameStream(maxsize=8)
        loop = asyncio.get_running_loop()

        def produce() -> None:
            for i in range(5):
                stream.push(i)
            stream.finish()
        loop.call_later(0.05, lambda: threading.Thread(target=produce).start())
        return [i async for i in stream]
    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_stream_refuses_a_zero_size_and_ignores_pushes_after_close():
    async def main() -> None:
        with pytest.raises(ValueError):
            FrameStream(0)
        stream: FrameStream[int] = FrameStream(2)
        stream.close()
        stream.push(1)
        await asyncio.sleep(0)
        assert stream.queued == 0
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
    asyncio.run(main())


# --- the plugin's data path, in-process ----------------------------------------------------------
def observe_plugin(**values) -> Observe:
    plugin = Observe("OBS1", "Obs1:", PortGraph(), input_port="", enabled=True)
    plugin.values.update(values)
    plugin.freeze()
    return plugin


def test_plugin_holds_every_third_of_60_and_streams_them_once():
    async def main():
        plugin = observe_plugin(HistorySize=10, SampleEvery=3)
        run = Acquisition.start({})
        stream = plugin.frames(maxsize=64)
        worker = threading.Thread(target=lambda: [plugin._handle(frame(uid, acquisition=run))
                                                  for uid in range(1, 61)])
        worker.start()
        worker.join()
        plugin.before_publish()  # what the publisher does once per interval
        plugin.shutdown()  # ends the stream
        got = [f async for f in stream]
        return plugin, got, stream
    plugin, got, stream = asyncio.run(main())
    sampled = list(range(1, 61, 3))
    assert [f.unique_id for f in got] == sampled and stream.overflow == 0
    assert [f.attributes["SampleIndex"].value for f in got] == list(range(1, 21))
    assert plugin.values["FramesSampled_RBV"] == 20
    # shutdown cleared the history; what it held is what History_RBV showed at the publish
    assert list(plugin.values["History_RBV"]) == sampled[-10:]
    assert plugin.values["LastIndex_RBV"] == 58
    assert plugin.values["HistoryCount_RBV"] == 10


def test_plugin_counts_placeholders_and_never_holds_them():
    plugin = observe_plugin(HistorySize=5)
    plugin._handle(frame(1))
    plugin._handle(NDArray.missing(MissingCause.DROPPED, unique_id=2))
    plugin._handle(frame(3))
    assert plugin.history.ids() == [1, 3]
    assert plugin.values["FramesMissing_RBV"] == 1


def test_plugin_memory_budget_bounds_the_history():
    plugin = observe_plugin(HistorySize=10, MaxMemory=1000 / (1024 * 1024))  # 1000 bytes
    for uid in range(1, 8):
        plugin._handle(frame(uid, nbytes=300))
    assert plugin.history.ids() == [5, 6, 7]
    assert "MaxMemory" in plugin.values["StatusMessage_RBV"]


def test_a_stream_whose_loop_ended_is_forgotten_by_the_plugin():
    plugin = observe_plugin(HistorySize=2)

    async def subscribe():
        return plugin.frames()
    asyncio.run(subscribe())  # the consumer's loop ends without closing its stream
    assert len(plugin._streams) == 1
    plugin._handle(frame(1))  # the push finds the loop closed: the stream is dropped
    assert plugin._streams == [] and plugin.history.ids() == [1]
