"""The plugin data path in-process: the Inbox's bound, placeholders in unique_id order, the
Sorter (gaps, SortTime, SortSize, a new acquisition), MinCallbackTime before queueing, and
commands run between frames. Real Plugin objects and threads; no IOC, no CA."""

from __future__ import annotations

import threading
import time

import numpy as np

from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, MissingCause, NDArray
from ndflow.plugin import Inbox, Plugin


class Recorder(Plugin):
    """Collects what reaches it; optionally slow."""

    def __init__(self, *args, delay: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.delay = delay
        self.seen: list[NDArray] = []
        self.during: list[str] = []

    def process(self, array):
        self.during.append(f"start {array.unique_id}")
        time.sleep(self.delay)
        self.during.append(f"end {array.unique_id}")
        return array


def frame(uid: int, acquisition: Acquisition | None = None) -> NDArray:
    array = NDArray.from_numpy(np.zeros((2, 2), np.uint8))
    array.unique_id = uid
    array.acquisition = acquisition
    return array


def chain(delay: float, queue_size: int, **values):
    graph = PortGraph()
    upstream = Recorder("UP", "UP:", graph)
    graph.add(upstream)
    plugin = Recorder("P", "P:", graph, input_port="UP", enabled=True, queue_size=queue_size,
                      delay=delay, max_threads=4)
    sink = Recorder("SINK", "SINK:", graph, input_port="P", enabled=True, blocking=True)
    for component in (plugin, sink):
        graph.add(component)
    plugin.values.update(values)
    sink.receive = sink.seen.append  # record arrival order exactly
    plugin.start()
    graph.connect(sink, "P")
    return upstream, plugin, sink


def test_inbox_bound_holds_under_concurrent_offers():
    inbox = Inbox()
    accepted = []

    def offer():
        accepted.append(sum(inbox.offer(frame(i), 10) for i in range(1000)))
    threads = [threading.Thread(target=offer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(accepted) == 10 and inbox.frames == 10
    inbox.put("pass", frame(0), [])  # placeholders never count against the bound
    assert inbox.frames == 10 and not inbox.offer(frame(1), 10)


def test_placeholders_of_dropped_frames_arrive_in_unique_id_order():
    upstream, plugin, sink = chain(delay=0.01, queue_size=2)
    try:
        for uid in range(1, 21):
            plugin.receive(frame(uid))
        assert _wait(lambda: len(sink.seen) == 20)
        assert [a.unique_id for a in sink.seen] == list(range(1, 21))
        dropped = [a for a in sink.seen if not a.valid]
        assert dropped and all(a.status.missing is MissingCause.DROPPED for a in dropped)
        assert plugin.values["DroppedArrays"] == len(dropped)
        assert plugin.values["ArrayCounter"] + len(dropped) == 20  # every frame accounted for
    finally:
        plugin.shutdown()


def test_min_callback_time_throttles_before_queueing():
    upstream, plugin, sink = chain(delay=0.0, queue_size=100, MinCallbackTime=10.0)
    try:
        for uid in range(1, 6):
            plugin.receive(frame(uid))
        assert _wait(lambda: len(sink.seen) == 1)
        time.sleep(0.05)
        assert [a.unique_id for a in sink.seen] == [1]
        assert plugin.values["DroppedArrays"] == 0 and plugin._inbox.frames == 0
    finally:
        plugin.shutdown()


def test_sorted_mode_restores_order_across_threads_and_a_gap_waits_sort_time():
    upstream, plugin, sink = chain(delay=0.0, queue_size=100, SortMode=1, NumThreads=2,
                                   SortTime=0.3)
    plugin._set_threads(2)
    try:
        sorter = plugin._sorter
        for uid in (1, 3, 2, 5):  # 4 never comes
            sorter.push(frame(uid), [frame(uid)])
        assert [a.unique_id for a in sink.seen] == [1, 2, 3]
        time.sleep(0.35)
        sorter.flush_ready()
        assert [a.unique_id for a in sink.seen] == [1, 2, 3, 5]  # released after SortTime
    finally:
        plugin.shutdown()


def test_sort_size_releases_held_frames_and_a_new_acquisition_starts_its_own_order():
    upstream, plugin, sink = chain(delay=0.0, queue_size=100, SortMode=1, NumThreads=2,
                                   SortTime=10.0, SortSize=3)
    plugin._set_threads(2)
    try:
        sorter = plugin._sorter
        sorter.push(frame(1), [frame(1)])
        for uid in (3, 4, 5, 6):  # 2 is missing; more than SortSize held
            sorter.push(frame(uid), [frame(uid)])
        assert [a.unique_id for a in sink.seen][:2] == [1, 3]
        run = Acquisition.start({})
        run.first_id = 100
        sink.seen.clear()
        sorter.push(frame(100, run), [frame(100, run)])  # a new acquisition's first frame
        assert [a.unique_id for a in sink.seen][-1] == 100
    finally:
        plugin.shutdown()


def test_commands_run_between_frames_never_inside_one():
    upstream, plugin, sink = chain(delay=0.1, queue_size=10)
    try:
        plugin.receive(frame(1))
        plugin.receive(frame(2))
        assert _wait(lambda: plugin.during[:1] == ["start 1"])
        plugin.between_frames(lambda: plugin.during.append("command"))
        assert _wait(lambda: len(sink.seen) == 2)
        assert plugin.during == ["start 1", "end 1", "command", "start 2", "end 2"]
    finally:
        plugin.shutdown()


def test_blocking_mode_command_waits_for_the_frame_in_progress():
    graph = PortGraph()
    plugin = Recorder("P", "P:", graph, enabled=True, blocking=True, delay=0.1)
    plugin.start()
    worker = threading.Thread(target=plugin.receive, args=(frame(1),))
    worker.start()
    assert _wait(lambda: plugin.during[:1] == ["start 1"])
    started = time.monotonic()
    plugin.between_frames(lambda: plugin.during.append("command"))
    assert time.monotonic() - started < 0.05  # the caller never waits
    worker.join()
    assert plugin.during == ["start 1", "end 1", "command"]
    done = plugin.between_frames(lambda: plugin.during.append("idle"))  # idle: runs at once
    assert plugin.during[-1] == "idle" and done.done()


def test_a_put_during_a_frame_applies_from_the_next_frame():
    graph = PortGraph()
    plugin = Recorder("P", "P:", graph, enabled=True, blocking=True)
    plugin.start()
    plugin.receive(frame(1))
    assert plugin.frame_settings["SortSize"] == 20
    plugin.values["SortSize"] = 7  # what handle_put does, then it bumps the version
    plugin.params_version += 1
    assert plugin.frame_settings["SortSize"] == 20  # the frame in progress keeps its snapshot
    plugin.receive(frame(2))
    assert plugin.frame_settings["SortSize"] == 7


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
