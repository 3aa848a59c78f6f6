"""Component.collect: a bug in a component's before_publish costs only what it derives; every
other value it set still goes out (one such bug once hid every counter of two plugins)."""

from __future__ import annotations

from ndflow.component import Component
from ndflow.params import int_param


class Broken(Component):
    PARAMS = ((int_param("Count", 0), int_param("Derived", 0)),)

    def before_publish(self) -> None:
        raise AttributeError("'GatherInput' object has no attribute 'queued'")


class Channel:
    def __init__(self) -> None:
        self.posted: list[object] = []

    def to_wire(self, value: object) -> object:
        return value


def test_values_still_go_out_when_before_publish_fails(caplog):
    component = Broken("BROKEN1", "Broken1:")
    channel = Channel()
    component._targets["Count"] = [channel]
    posted: list[tuple[Channel, object]] = []
    for n in (1, 2, 3):
        component.set("Count", n)
        component.collect(lambda ch, value: posted.append((ch, value)))
    assert [value for _, value in posted] == [1, 2, 3]
    failures = [r for r in caplog.records if "before_publish" in r.getMessage()
                or "derived for publishing" in r.getMessage()]
    assert len(failures) == 1, "said once per interval, not at every flush"
