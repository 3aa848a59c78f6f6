"""Region parameters that show what a frame allowed while frames use what was asked for.

ADCore's ROI and ROIStat clip MinX/SizeX... to the array they receive and show the clipped
values on the readbacks; the next array, perhaps bigger, starts again from the values the user
put, not from the clipped ones. A plugin with this mixin keeps the last put of each named
parameter and gives those to its frames (`frame_snapshot`), whatever the readbacks show.
"""

from __future__ import annotations

from typing import Any, Iterable

from ndflow.params import Param


class KeepsRequests:
    """Mixin for a Plugin (before it in the bases): call `keep_requests(names)` once the
    plugin's values exist."""

    values: dict[str, Any]
    _requested: dict[str, Any]

    def keep_requests(self, names: Iterable[str]) -> None:
        self._requested = {name: self.values[name] for name in names}

    def after_put(self, param: Param, value: Any) -> None:
        if param.name in self._requested:
            self._requested[param.name] = value

    def frame_snapshot(self) -> dict[str, Any]:
        snapshot = dict(self.values)
        snapshot.update(self._requested)  # the requests, not the clipped values they show
        return snapshot
