"""NDPluginStdArrays (`image1:`): the latest frame as the `ArrayData` waveform.

As in ADCore the waveform has a configured element type and length (ADSimDetector: Int8 /
UCHAR, 12,000,000 elements) and the frame is converted to that type with C-cast semantics and
truncated to the length. When the element size matches, the waveform is a read-only view of the
frame itself, so nothing is copied before a transport serialises it (Channel Access, which has
no unsigned or 64-bit integers, views it as the signed type of the same size).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ndflow.adcore import DATA_TYPES, NUMPY_DTYPES
from ndflow.dtypes import c_cast
from ndflow.ndarray import NDArray
from ndflow.params import ParamTable, array_param
from ndflow.plugin import Plugin


class StdArraysOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_type: str = Field("Int8", description="waveform element type (ADCore TYPE macro)")
    nelm: int = Field(12_000_000, ge=1, description="waveform length (NELEMENTS)")


class StdArrays(Plugin):
    screen = "NDStdArrays"
    kind = "stdarrays"
    plugin_type = "NDPluginStdArrays"
    #: address 0: all channels, channel-major (ArraySize0/1/2 = W, H, C); J: channel J
    channels_aware = True
    Options = StdArraysOptions

    def __init__(self, *args: Any, options: StdArraysOptions | None = None, **kw: Any) -> None:
        self.options = options or StdArraysOptions()
        if self.options.data_type not in DATA_TYPES:
            raise ValueError(f"data_type {self.options.data_type!r} is not one of "
                             f"{', '.join(DATA_TYPES)}")
        dtype = NUMPY_DTYPES[DATA_TYPES.index(self.options.data_type)]
        self._element = dtype
        super().__init__(*args, **kw)

    def declare(self) -> ParamTable:
        table = super().declare()
        table.params["ArrayData"] = array_param(
            "ArrayData", self._element.str[1:], self.options.nelm, group="Image", widget="image",
            doc="the last frame, flattened; reshape with ArraySize0/1/2_RBV")
        return table

    def process(self, array: NDArray) -> None:
        flat = array.data.reshape(-1)[: self.options.nelm]
        element = self._element
        if flat.dtype == element:
            value = flat.view()
        elif flat.dtype.itemsize == element.itemsize and flat.dtype.kind in "iu" \
                and element.kind in "iu":
            value = flat.view(element)  # same bits a C cast between equal-size ints gives
        else:
            value = c_cast(flat, element)
        value.flags.writeable = False
        self.set("ArrayData", value)
        return None
