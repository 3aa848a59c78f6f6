"""NDPluginPva (`Pva1:`): each frame as the NTNDArray `$(P)$(R)Image` over pvAccess.

As in ADCore the plugin has one record of its own, `PvName_RBV`, the name of the NTNDArray PV;
everything else is the plugin base. The output is not an NDArray for downstream plugins but a PV:
each frame is posted from the plugin's own thread (the event loop never builds an NTNDArray),
compressed frames (from a Codec plugin) go out compressed with the codec's name and the original
element type. `MaxByteRate` throttles the output as NDPluginPva does: a frame over the budget is
not posted, is counted on `DroppedOutputArrays` and not on ArrayCounter.

The plugin knows no transport: `Image` is a frame parameter (Kind.NDARRAY), which the pvAccess
transport serves as NTNDArray and Channel Access does not carry.
"""

from __future__ import annotations

from typing import Any

from ndflow.ndarray import NDArray
from ndflow.params import R, ndarray_param, text_param
from ndflow.plugin import Plugin
from ndflow.throttle import ByteRate

PVA_PARAMS = (
    text_param("PvName_RBV", 256, "", R, group="Plugin",
               doc="the NTNDArray PV this plugin posts to (empty: no pvAccess transport)"),
    ndarray_param("Image", group="Image", widget="image",
                  doc="the latest frame as NTNDArray (pvAccess only)"),
)


class PvaPlugin(Plugin):
    screen = "NDPva"
    kind = "pva"
    plugin_type = "NDPluginPva"
    compression_aware = True  # compressed frames are posted compressed, as ADCore does
    PARAMS = Plugin.PARAMS + (PVA_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._posted_bytes = ByteRate()  # MaxByteRate: what goes out over pvAccess

    def start(self) -> None:
        served = [e.pvname for e in self.endpoints.get("Image", ())]
        if served:
            self.set("PvName_RBV", served[0])
        else:
            self.message("Image is not served: the IOC has no pvAccess transport "
                         "(config key transports)")
        super().start()

    def process(self, array: NDArray) -> None:
        if self._posted_bytes.over(self.frame_settings["MaxByteRate"], array.data.nbytes):
            self.increment("DroppedOutputArrays")
            return None
        self.set("Image", array)
        return None
