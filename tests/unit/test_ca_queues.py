"""Channel Access subscription queues (ndflow.ca.queues): counted, and never waiting.

A circuit queue that is full keeps the newest update of each subscription and drops the rest,
counting them as taken, instead of making the context's dispatch (every client's monitors)
wait for a client that stopped reading."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

from ndflow.ca.queues import CountingQueue


@dataclass(eq=False)
class Update:  # what caproto queues a weak reference to: an EventAddResponse
    subscriptionid: int
    value: int


def test_a_full_queue_keeps_the_newest_update_of_each_subscription_and_never_waits():
    updates = [Update(sub, value) for value in range(3) for sub in (1, 2)]  # 1,2,1,2,1,2

    async def main() -> tuple[CountingQueue, list[Update]]:
        queue = CountingQueue(maxsize=len(updates))
        for update in updates:
            await queue.put(weakref.ref(update))
        extra = Update(3, 0)
        await asyncio.wait_for(queue.put(weakref.ref(extra)), 1)  # full: must not wait
        return queue, [queue.get_nowait()() for _ in range(queue.qsize())]

    queue, left = asyncio.run(main())
    assert [(u.subscriptionid, u.value) for u in left] == [(1, 2), (2, 2), (3, 0)]
    assert queue.puts == 7 and queue.gets == 7  # the 4 superseded count as taken


def test_expired_updates_are_dropped_when_full():
    kept, newer = Update(1, 9), Update(1, 10)

    async def main() -> list[Update]:
        queue = CountingQueue(maxsize=3)
        await queue.put(weakref.ref(Update(2, 0)))  # expires at once: nothing holds it
        await queue.put(weakref.ref(kept))
        await queue.put(weakref.ref(Update(3, 0)))
        await queue.put(weakref.ref(newer))  # full: the expired ones go, then it is queued
        return [queue.get_nowait()() for _ in range(queue.qsize())]

    assert asyncio.run(main()) == [kept, newer]


def test_a_queue_with_room_keeps_every_update_in_order():
    updates = [Update(1, value) for value in range(5)]

    async def main() -> list[int]:
        queue = CountingQueue(maxsize=10)
        for update in updates:
            await queue.put(weakref.ref(update))
        return [queue.get_nowait()().value for _ in range(5)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_only_subscriptions_to_most_of_the_array_pace_it():
    from types import SimpleNamespace

    from ndflow.ca.server import _whole
    image = list(range(1000))
    assert _whole(SimpleNamespace(data_count=0), image)  # 0: the whole array
    assert _whole(SimpleNamespace(data_count=1000), image)
    assert _whole(SimpleNamespace(data_count=600), image)
    assert not _whole(SimpleNamespace(data_count=10), image)  # a count of ten numbers


def test_skipped_superseded_updates_are_summed_into_one_line_a_minute():
    import logging

    from ndflow.ca.server import SupersededUpdates

    def record(n: int) -> logging.LogRecord:
        return logging.LogRecord("caproto.circ", logging.WARNING, __file__, 1,
                                 "High load. Dropped %d responses.", (n,), None)

    summary = SupersededUpdates()
    first = record(3)
    assert summary.filter(first) and first.levelno == logging.INFO
    assert first.getMessage().startswith("3 monitor updates skipped as superseded")
    assert not any(summary.filter(record(n)) for n in (5, 7))  # within the minute: summed
    summary._said -= SupersededUpdates.PERIOD_S
    later = record(1)
    assert summary.filter(later) and later.getMessage().startswith("13 monitor updates")
    other = logging.LogRecord("caproto.circ", logging.WARNING, __file__, 1, "other", (), None)
    assert summary.filter(other) and other.levelno == logging.WARNING
