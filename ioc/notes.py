"""A condition said once when it starts or changes, not at every frame.

A plugin that clips a region, skips an overlay or refuses an array layout finds the same thing
at every frame; an operator needs one line on StatusMessage_RBV (and in the log) when it
begins, changes or ends, not a line per frame. Each condition has a key (one plugin may have
several at once: an overlay per shape); `say` compares with what was last said for that key.
"""

from __future__ import annotations

import logging
from typing import Hashable, Protocol


class _Says(Protocol):
    def message(self, text: str, level: int = logging.INFO, log: bool = True) -> None: ...


class Notes:
    """What `component` last said per key. `cleared`: what to say when a condition ends (its
    text becomes ""); None: nothing. Called from the owner thread of the component."""

    def __init__(self, component: _Says, level: int = logging.WARNING,
                 cleared: str | None = None) -> None:
        self._component = component
        self._level = level
        self._cleared = cleared
        self._said: dict[Hashable, str] = {}

    def say(self, text: str, key: Hashable = None, topic: str | None = None) -> bool:
        """Say `text` for `key` if its `topic` (default: the text) differs from the last one
        said; True if said. A text naming the frame it was seen at ("array 12: ...") gives the
        rest as its topic, so the same problem on the next frame is not said again."""
        topic = text if topic is None else topic
        if self._said.get(key, "") == topic:
            return False
        self._said[key] = topic
        if text:
            self._component.message(text, self._level)
        elif self._cleared is not None:
            self._component.message(self._cleared, logging.INFO)
        else:
            return False
        return True
