"""NDPluginAttribute (`Attr1:`): follow the value of named NDAttributes from array to array.

Follows NDPluginAttribute.cpp with NDAttribute.template and NDAttributeN.template: channel N
(`Attr1:N:`) reads the attribute named by N:AttrName from each array and shows it as
N:Value_RBV, adds it to N:ValueSum_RBV, and records it in the time series N:TSArrayValue whose
controls are at `Attr1:TS:`. The names NDArrayUniqueId, NDArrayTimeStamp, NDArrayEpicsTSSec and
NDArrayEpicsTSnSec read the array's own id and time stamps. A missing or non-numeric attribute
leaves the channel's value unchanged (its last value still goes into the time series). Reset
zeroes every value and sum. Like ADCore, the plugin passes no arrays downstream.

Deliberate differences: Reset returns to "Done Reset" after acting (ADCore leaves the bo at
Reset); a channel whose attribute cannot be read says so once on StatusMessage_RBV (ADCore
only traces it).
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ndflow.ndarray import NDArray
from ndflow.params import R, RW, W, Param, ParamTable, bool_param, float_param, text_param
from ndflow.plugin import Plugin

from .timeseries import TimeSeries

# Names that read the array itself rather than its attribute list
SPECIAL = {
    "NDArrayUniqueId": lambda a: float(a.unique_id),
    "NDArrayTimeStamp": lambda a: float(a.timestamp),
    "NDArrayEpicsTSSec": lambda a: float(a.epics_ts[0]),
    "NDArrayEpicsTSnSec": lambda a: float(a.epics_ts[1]),
}


class AttributeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nchannels: int = Field(8, ge=1, le=256, description="attribute channels (ADCore maxAttributes)")
    nchans: int = Field(2048, ge=1, description="time-series length (NCHANS)")


def attribute_value(array: NDArray, name: str) -> float | str:
    """The attribute's value as a float, or a reason (str) why it has none."""
    if name in SPECIAL:
        return SPECIAL[name](array)
    attribute = array.attributes.get(name)
    if attribute is None:
        return f"array {array.unique_id} has no attribute {name!r}"
    value = attribute.number()
    if value is None:
        return f"attribute {name!r} is not a number ({type(attribute.value).__name__})"
    return value


class Attribute(Plugin):
    screen = "NDPluginAttribute"
    kind = "attribute"
    plugin_type = "NDPluginAttribute"
    channels_aware = True  # reads attributes, never pixels
    Options = AttributeOptions

    def __init__(self, *args: Any, options: AttributeOptions | None = None, **kw: Any) -> None:
        self.options = options or AttributeOptions()
        self.channel_ids = range(1, self.options.nchannels + 1)
        self.ts = TimeSeries([f"{n}:TSArrayValue" for n in self.channel_ids],
                             self.options.nchans, sub="TS:")
        super().__init__(*args, **kw)
        self.ts.attach(self)
        self.values["ArrayCallbacks"] = 0  # as ADCore: this plugin does no array callbacks
        self._sum_lock = threading.Lock()
        self._problems: dict[int, str] = {}  # channel -> name already reported unreadable

    def declare(self) -> ParamTable:
        table = super().declare()
        params: list[Param] = [
            bool_param("Reset", "Done Reset", "Reset", 0, W, group="Attributes",
                       doc="Zero every Value and ValueSum"),
        ]
        for n in self.channel_ids:
            group = f"Channel {n}"
            params += [
                text_param(f"{n}:AttrName", 256, "", RW, group=group,
                           doc="Attribute name, or NDArrayUniqueId / NDArrayTimeStamp / "
                               "NDArrayEpicsTSSec / NDArrayEpicsTSnSec"),
                float_param(f"{n}:Value_RBV", 0.0, R, precision=4, group=group),
                float_param(f"{n}:ValueSum_RBV", 0.0, R, precision=4, group=group),
            ]
        for p in [*params, *self.ts.params()]:
            table.params[p.name] = p
        return table

    def put_Reset(self, value: int) -> int:
        if value:
            with self._sum_lock:
                for n in self.channel_ids:
                    self.set_many({f"{n}:Value_RBV": 0.0, f"{n}:ValueSum_RBV": 0.0})
        return 0

    def process(self, array: NDArray) -> None:
        values = []
        with self._sum_lock:
            for n in self.channel_ids:
                name = self.values[f"{n}:AttrName"]
                value = attribute_value(array, name) if name else None
                if isinstance(value, float):
                    self._problems.pop(n, None)
                    self.set_many({f"{n}:Value_RBV": value,
                                   f"{n}:ValueSum_RBV": self.values[f"{n}:ValueSum_RBV"] + value})
                elif isinstance(value, str) and self._problems.get(n) != name:
                    self._problems[n] = name
                    self.message(f"{n}:AttrName: {value}")
                values.append(self.values[f"{n}:Value_RBV"])
        self.ts.record(values, array.timestamp)
        return None

    def periodic(self, elapsed: float) -> None:
        super().periodic(elapsed)
        self.ts.periodic()
