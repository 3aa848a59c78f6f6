"""Table1's pure parts: how attribute values become columns, LogPVs checking, and the PV
watcher's bookkeeping (fed by an in-process client object, so no network is involved; the
real CA and PVA clients are exercised by tests/test_table.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndflow import pvwatch
from ndflow.plugins.table import _classify, _dataset_name, log_pv_names


@pytest.mark.parametrize("value, kind, expected", [
    (3, "number", 3.0), (True, "number", 1.0), (np.float32(2.5), "number", 2.5),
    (np.array([4]), "number", 4.0), ("text", "text", "text"), (b"ab", "text", "ab"),
    (10 ** 400, "number", math.inf)])
def test_scalars(value, kind, expected):
    assert _classify(value) == (kind, expected)


def test_arrays_and_what_is_left_out():
    kind, array = _classify([1, 2, 3])
    assert kind == "array" and array.dtype == np.float64 and array.tolist() == [1, 2, 3]
    assert _classify(np.ones((2, 2)))[0] is None  # 2-D: not a table column
    assert _classify({"a": 1})[0] is None
    assert _classify(["a", "b"])[0] is None


def test_dataset_names():
    assert _dataset_name("a/b") == "a_b"
    assert _dataset_name(".") is None and _dataset_name("") is None
    assert len(_dataset_name("x" * 10_000)) == 255


def test_log_pv_names():
    assert log_pv_names(" A:B,  pva://C:D  A:B ") == ["A:B", "pva://C:D"]
    for bad in ("with space\x01", "x" * 10_000, " ".join(f"P{i}" for i in range(17)),
                "a;b'c\"", "ftp://x"):
        with pytest.raises(ValueError):
            log_pv_names(bad)


class Client:
    """Stands for a protocol client: records subscriptions; the test pushes updates."""

    def __init__(self) -> None:
        self.subs: dict[str, object] = {}

    def subscribe(self, name, on_value):
        self.subs[name] = on_value
        return name

    def unsubscribe(self, handle):
        self.subs.pop(handle)

    def close(self):
        pass


def wait_until(predicate, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_watch_latest_and_listeners():
    client = Client()
    watch = pvwatch.PVWatch({"ca": client})
    assert watch.latest("X:T") is None  # not connected yet: nothing, and no waiting
    assert wait_until(lambda: "X:T" in client.subs)
    heard = []
    watch.listen("X:T", lambda name, value, ts: heard.append((name, value, ts)))
    client.subs["X:T"](21.5, 100.0)
    assert watch.latest("X:T") == (21.5, 100.0)
    assert heard == [("X:T", 21.5, 100.0)]
    watch.close()


def test_watch_limits_and_idle_names(monkeypatch):
    client = Client()
    watch = pvwatch.PVWatch({"ca": client})
    monkeypatch.setattr(pvwatch, "MAX_PVS", 3)
    for i in range(3):
        watch.watch(f"P{i}")
    with pytest.raises(pvwatch.PVNameError, match="already 3"):
        watch.watch("P3")
    monkeypatch.setattr(pvwatch, "IDLE_S", 0.0)  # nobody asked lately: room is made
    watch.watch("P3")
    assert wait_until(lambda: set(client.subs) == {"P3"})
    with pytest.raises(pvwatch.PVNameError):
        watch.watch("bad name")
    watch.close()
