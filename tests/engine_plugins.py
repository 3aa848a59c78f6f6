"""Plugins that exist to test the engine (loaded by configs as `engine_plugins:<Class>`).

TwiceReader reads its parameter Level twice per frame with a pause between and stamps both
readings on the frame, so a torn parameter set shows as two different values. Slow takes
Seconds per frame and stamps the frame's acquisition id on it.
"""

from __future__ import annotations

import time

from ndflow.ndarray import AttrSource, NDArray, NDAttribute
from ndflow.params import float_param
from ndflow.plugin import Outputs, Plugin


def _stamp(out: NDArray, name: str, value: float) -> None:
    out.attributes[name] = NDAttribute(name, value, name, AttrSource.PARAM, name)


class TwiceReader(Plugin):
    kind = "twice"
    plugin_type = "TwiceReader"
    PARAMS = Plugin.PARAMS + ((float_param("Level", 0.0), float_param("Pause", 0.002)),)

    def process(self, array: NDArray) -> Outputs:
        first = self.frame_settings["Level"]
        time.sleep(self.frame_settings["Pause"])
        second = self.frame_settings["Level"]
        out = array.derive(array.data)
        _stamp(out, "LevelFirst", first)
        _stamp(out, "LevelSecond", second)
        return out


class Slow(Plugin):
    kind = "slow"
    plugin_type = "Slow"
    PARAMS = Plugin.PARAMS + ((float_param("Seconds", 0.05),),)

    def process(self, array: NDArray) -> Outputs:
        time.sleep(self.frame_settings["Seconds"])
        out = array.derive(array.data)
        _stamp(out, "AcquisitionId", array.acquisition.id if array.acquisition else 0)
        return out
