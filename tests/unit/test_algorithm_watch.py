"""ndflow.plugins.python.watch.FileWatch: an algorithm file watched with watchfiles (inotify) on
its folder: written, replaced by rename (how editors save), deleted, or changed before the watch
began, it calls back; a neighbour's change does not."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ndflow.plugins.python.watch import FileWatch

pytestmark = pytest.mark.timeout(30)


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, seconds: float = 5.0) -> bool:
        hit = self.event.wait(seconds)
        self.event.clear()
        return hit


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "algo.py"
    path.write_text("v = 1\n")
    calls = Calls()
    watch = FileWatch(path, calls, "test-watch")
    yield path, calls, watch
    watch.stop()


def settle(watch: FileWatch) -> None:
    """Until the watch is in place (its first timeout has passed)."""
    watch.start()
    time.sleep(0.8)


def test_a_written_file_calls_back(watched):
    path, calls, watch = watched
    settle(watch)
    began = time.monotonic()
    path.write_text("v = 2\n")
    assert calls.wait(), "no call after the file was written"
    assert time.monotonic() - began < 2.0


def test_a_file_replaced_by_rename_calls_back(watched):
    path, calls, watch = watched
    settle(watch)
    new = path.with_name(".algo.py.swp-new")
    new.write_text("v = 3\n")
    os.replace(new, path)
    assert calls.wait(), "no call after an editor-style save"


def test_a_deleted_file_calls_back(watched):
    path, calls, watch = watched
    settle(watch)
    path.unlink()
    assert calls.wait(), "no call after the file was deleted"


def test_a_neighbour_does_not_call_back(watched):
    path, calls, watch = watched
    settle(watch)
    (path.parent / "other.py").write_text("x = 1\n")
    assert not calls.wait(1.5)
    assert calls.count == 0


def test_a_change_before_the_watch_began_calls_back(watched):
    path, calls, watch = watched
    path.write_text("v = 22\n")  # after the stamp was taken, before the thread watches
    watch.start()
    assert calls.wait(), "a change made before start() was missed"


def test_stop_ends_the_thread_promptly(watched):
    path, calls, watch = watched
    settle(watch)
    began = time.monotonic()
    watch.stop()
    assert not watch._thread.is_alive()
    assert time.monotonic() - began < 2.0
