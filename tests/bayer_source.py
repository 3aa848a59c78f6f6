"""A plugin for tests that passes its input on marked as a Bayer image (loaded by configs as
`bayer_source:BayerTag` with tests/ on PYTHONPATH): ADSimDetector makes no Bayer frames, and
NDPluginColorConvert's Bayer modes need some to convert."""

from __future__ import annotations

from ndflow.ndarray import AttrSource, NDArray, NDAttribute, NDDimension
from ndflow.params import enum_param, int_param
from ndflow.plugin import Outputs, Plugin

BAYER = 1  # NDColorModeBayer


class BayerTag(Plugin):
    kind = "bayertag"
    plugin_type = "BayerTag"
    PARAMS = Plugin.PARAMS + ((
        enum_param("Pattern", ("RGGB", "GBRG", "GRBG", "BGGR"), 0),
        int_param("OffsetX", 0, doc="dims[0].offset given to the output"),
    ),)

    def process(self, array: NDArray) -> Outputs:
        dims = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in array.dims]
        dims[0].offset = int(self.frame_settings["OffsetX"])
        out = array.derive(array.data, dims=dims, color_mode=BAYER)
        pattern = int(self.frame_settings["Pattern"])
        out.attributes["ColorMode"] = NDAttribute("ColorMode", BAYER, "Color mode",
                                                  AttrSource.DRIVER)
        out.attributes["BayerPattern"] = NDAttribute("BayerPattern", pattern, "Bayer pattern",
                                                     AttrSource.DRIVER)
        return out
