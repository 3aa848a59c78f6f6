"""Publisher: dirty-set collection, coalescing, the ordering barrier, drain, array pacing.

A real Component with declared parameters and real caproto channels, a real Publisher task on an
asyncio loop; no CA server (nothing here needs a network). What reaches a channel is recorded by
wrapping its publish_value().
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from ndflow.ca import CATransport
from ndflow.component import Component
from ndflow.params import R, array_param, bool_param, int_param
from ndflow.publisher import Publisher


class Thing(Component):
    PARAMS = ((int_param("Counter_RBV", 0, R), int_param("Other_RBV", 0, R),
               bool_param("Busy_RBV", "Done", "Busy", 0, R, coalesce=False),
               array_param("Image", "u1", 1000)),)


def make(interval: float = 0.02):
    publisher = Publisher(interval=interval, array_bytes_per_s=1e6)
    thing = Thing("T", "T:")
    transport = CATransport()
    channels = thing.attach(publisher, [transport])[transport]
    written: list[tuple[str, object]] = []
    for suffix, channel in channels.items():
        original = channel.publish_value

        async def record(value, _suffix=suffix, _original=original):
            written.append((_suffix, value))
            await _original(value)
        channel.publish_value = record
    return publisher, thing, channels, written


async def run_publisher(publisher: Publisher):
    task = asyncio.create_task(publisher.run())
    await asyncio.sleep(0)
    return task


def test_set_only_marks_dirty_and_one_flush_sends_the_latest():
    async def main():
        publisher, thing, channels, written = make(interval=0.05)
        task = await run_publisher(publisher)
        await asyncio.sleep(0.06)
        written.clear()
        for i in range(1, 10_001):  # 10,000 frames' worth of counter updates
            thing.set("Counter_RBV", i)
        assert not written  # nothing reached caproto from the data path
        await asyncio.sleep(0.12)
        counters = [v for s, v in written if s == "Counter_RBV"]
        assert counters == [10_000]  # coalesced: one write, the latest value
        assert channels["Counter_RBV"].value == 10_000
        task.cancel()
    asyncio.run(main())


def test_ordered_values_are_never_merged_and_not_overtaken():
    async def main():
        publisher, thing, channels, written = make(interval=0.2)
        task = await run_publisher(publisher)
        await asyncio.sleep(0.01)
        written.clear()
        thing.set("Counter_RBV", 5)  # set before the barrier: must go out before Busy=1
        thing.set("Busy_RBV", 1)
        thing.set("Busy_RBV", 0)
        thing.set("Busy_RBV", 1)
        thing.set("Counter_RBV", 6)
        thing.set("Busy_RBV", 0)
        await publisher.drain()
        order = [(s, v) for s, v in written if s in ("Busy_RBV", "Counter_RBV")]
        assert order == [("Counter_RBV", 5), ("Busy_RBV", "Busy"), ("Busy_RBV", "Done"),
                         ("Busy_RBV", "Busy"), ("Counter_RBV", 6), ("Busy_RBV", "Done")], order
        task.cancel()
    asyncio.run(main())


def test_ordered_post_from_another_thread_collects_what_that_thread_set_before():
    async def main():
        publisher, thing, channels, written = make(interval=0.5)
        task = await run_publisher(publisher)
        await asyncio.sleep(0.01)
        written.clear()

        def data_path():
            for i in range(200):
                thing.set("Counter_RBV", i)
                thing.set("Busy_RBV", i % 2)
        worker = threading.Thread(target=data_path)
        worker.start()
        worker.join()
        await publisher.drain()
        busy = [v for s, v in written if s == "Busy_RBV"]
        # every transition, in order (the first 0 equals the channel's value: not rewritten)
        assert busy == ["Busy", "Done"] * 99 + ["Busy"], busy
        # each Busy write is preceded by the Counter value set just before it
        last_counter = None
        for suffix, value in written:
            if suffix == "Counter_RBV":
                last_counter = value
            elif suffix == "Busy_RBV" and last_counter is not None:
                assert (value == "Busy") == (last_counter % 2 == 1)
        task.cancel()
    asyncio.run(main())


def test_drain_publishes_everything_pending_at_once():
    async def main():
        publisher, thing, channels, written = make(interval=10.0)  # no periodic flush in time
        task = await run_publisher(publisher)
        await asyncio.sleep(0.01)
        thing.set("Other_RBV", 42)
        image = np.arange(1000, dtype=np.uint8)
        thing.set("Image", image)
        await publisher.drain()
        assert channels["Other_RBV"].value == 42
        np.testing.assert_array_equal(channels["Image"].value, image)
        task.cancel()
    asyncio.run(main())


def test_arrays_latest_wins_and_are_paced_by_the_byte_budget():
    async def main():
        publisher, thing, channels, written = make()
        publisher.array_bytes_per_s = 10_000  # 1000-byte arrays: at most ~10/s
        task = await run_publisher(publisher)
        for i in range(200):
            thing.set("Image", np.full(1000, i % 256, dtype=np.uint8))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.15)
        images = [v for s, v in written if s == "Image"]
        assert 2 <= len(images) <= 10, len(images)
        assert images[-1][0] == 199  # the latest one is the one that stays
        task.cancel()
    asyncio.run(main())


def test_a_withdrawn_parameter_is_skipped_not_fatal():
    async def main():
        publisher, thing, channels, written = make(interval=0.02)
        task = await run_publisher(publisher)
        thing.set("Other_RBV", 1)
        thing.remove_params(["Other_RBV"])
        thing.set("Counter_RBV", 3)
        await publisher.drain()
        assert channels["Counter_RBV"].value == 3
        task.cancel()
    asyncio.run(main())


# --- arrays paced by what the clients drain -------------------------------------------------------
class Gate:
    """An endpoint's sent(): returns once opened (the previous update has left)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waits = 0

    async def sent(self) -> None:
        self.waits += 1
        await self.event.wait()


def test_an_array_waits_until_the_previous_one_has_left_and_the_latest_wins():
    async def main():
        publisher, thing, channels, written = make()
        publisher.array_bytes_per_s = None  # paced by the drain alone
        gate = Gate()
        channels["Image"].sent = gate.sent
        task = await run_publisher(publisher)
        thing.set("Image", np.full(1000, 1, dtype=np.uint8))
        await asyncio.sleep(0.05)
        images = [v[0] for s, v in written if s == "Image"]
        assert images == [1] and gate.waits == 1
        for i in range(2, 50):  # the clients have not drained the first one
            thing.set("Image", np.full(1000, i, dtype=np.uint8))
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert [v[0] for s, v in written if s == "Image"] == [1]
        gate.event.set()  # it has left: the latest one goes, at once
        await asyncio.sleep(0.01)
        assert [v[0] for s, v in written if s == "Image"] == [1, 49]
        task.cancel()
    asyncio.run(main())


def test_arrays_follow_the_drain_not_a_budget():
    async def main():
        publisher, thing, channels, written = make()
        publisher.array_bytes_per_s = None
        channels["Image"].sent = Gate().sent  # never drains...
        publisher.array_wait_s = 0.05  # ...so each wait ends after this: ~20/s
        task = await run_publisher(publisher)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(150):  # 0.3 s of frames
            thing.set("Image", np.full(1000, i, dtype=np.uint8))
            await asyncio.sleep(0.002)
        elapsed = loop.time() - start
        await asyncio.sleep(0.06)
        images = [v[0] for s, v in written if s == "Image"]
        assert 3 <= len(images) <= elapsed / 0.05 + 2, (len(images), elapsed)
        assert images[-1] == 149

        async def drained():  # a client that drains at once: (nearly) every frame goes out
            return None
        channels["Image"].sent = drained
        await asyncio.sleep(0.06)  # the last wait for the stuck one ends
        written.clear()
        for i in range(50):
            thing.set("Image", np.full(1000, i, dtype=np.uint8))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.02)
        images = [v[0] for s, v in written if s == "Image"]
        assert len(images) >= 25 and images[-1] == 49, images
        task.cancel()
    asyncio.run(main())


def test_a_scalar_keeps_flowing_while_an_array_waits_for_its_drain():
    async def main():
        publisher, thing, channels, written = make(interval=0.01)
        publisher.array_bytes_per_s = None
        channels["Image"].sent = Gate().sent  # stuck client
        publisher.array_wait_s = 10.0
        task = await run_publisher(publisher)
        for i in range(1, 21):
            thing.set("Image", np.full(1000, i, dtype=np.uint8))
            thing.set("Counter_RBV", i)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.03)
        counters = [v for s, v in written if s == "Counter_RBV"]
        assert len(counters) >= 5 and counters[-1] == 20, counters
        assert len([s for s, v in written if s == "Image"]) == 1
        task.cancel()
    asyncio.run(main())


def test_an_endpoint_that_cannot_tell_its_drain_gets_an_array_once_per_interval():
    class Plain:  # an endpoint with no sent(): never waits, gets the latest each interval
        def __init__(self, spec, value):
            self.spec, self.param, self.readback = spec, spec.param, spec.readback
            self.pvname = spec.suffix
            self.value = value
            self.posted = []

        def to_wire(self, value):
            return value

        async def publish_value(self, value):
            self.value = value
            self.posted.append(value)

    class PlainTransport:
        name = "plain"

        def __init__(self):
            self.endpoints = {}

        def endpoint(self, spec, value):
            self.endpoints[spec.suffix] = Plain(spec, value)
            return self.endpoints[spec.suffix]

    async def main():
        publisher = Publisher(interval=0.05)
        thing = Thing("T", "T:")
        transport = PlainTransport()
        thing.attach(publisher, [transport])
        image = transport.endpoints["Image"]
        task = await run_publisher(publisher)
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(100):  # 0.3 s of frames at ~330/s
            thing.set("Image", np.full(1000, i, dtype=np.uint8))
            await asyncio.sleep(0.003)
        elapsed = loop.time() - start
        await asyncio.sleep(0.08)
        assert 3 <= len(image.posted) <= elapsed / 0.05 + 2, (len(image.posted), elapsed)
        assert image.posted[-1][0] == 99
        task.cancel()
    asyncio.run(main())

