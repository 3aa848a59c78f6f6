"""Veto (`Veto1:`): discard frames by a condition on their attributes, visibly.

Reduction often knows from a frame's numbers that it is useless (no beam: Stats' Total below a
floor; a shutter attribute closed). The Lima2 goals ask that such frames be discarded without
being lost silently: a vetoed frame goes downstream as a missing frame with cause `vetoed`
(`MissingCause.VETOED`), so a file writer records a row with that cause where the frame would
have been, and the acquisition counts it among its lost frames.

`VetoCalc` is an EPICS calc expression, the same language as CircularBuff's TriggerCalc
(`ndflow.calc`; never Python's eval): A, B, C and D are the values of the attributes named by
`VetoA` .. `VetoD` (NaN when the frame lacks one or it is not numeric), E is the number of frames
this plugin has seen. A frame is vetoed when the result is finite and non-zero; NaN (a missing
attribute) passes, so a condition written about an attribute never discards frames that do not
carry it. The default "0" vetoes nothing. An expression that does not compile is kept on the PV
(as ADCore keeps a bad TriggerCalc), vetoes nothing, and its error and position are shown on
`VetoStatus_RBV`.

Counters: `FramesVetoed_RBV`, `FramesPassed_RBV` (frames with data sent on). Placeholders of
frames lost upstream are passed on unchanged and not counted here. Frames are passed by
reference (no copy); blocking callbacks keep them in the caller's thread at no queue cost.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

from ndflow.calc import CalcError, attribute_number, compile_calc
from ndflow.ndarray import FrameStatus, MissingCause, NDArray
from ndflow.params import R, float_param, int_param, string_param, text_param
from ndflow.plugin import Plugin

DEFAULT_VETO_CALC = "0"  # vetoes nothing
NAMES = ("VetoA", "VetoB", "VetoC", "VetoD")

VETO_PARAMS = (
    *(string_param(name, "", group="Condition",
                   doc=f"attribute whose value is the calc's {name[-1]}") for name in NAMES),
    text_param("VetoCalc", 256, DEFAULT_VETO_CALC, group="Condition",
               doc="EPICS calc of A..D (attributes) and E (frames seen); non-zero vetoes"),
    float_param("VetoCalcVal", 0.0, R, precision=3, group="Condition",
                doc="the calc's value for the last frame"),
    text_param("VetoStatus_RBV", 256, "OK", R, group="Condition",
               doc="OK, or why VetoCalc does not compile and where"),
    int_param("FramesVetoed_RBV", 0, R, group="Counters",
              doc="frames turned into missing frames with cause vetoed"),
    int_param("FramesPassed_RBV", 0, R, group="Counters", doc="frames with data sent on"),
)


def veto_env(attributes: Mapping[str, Any], names: Mapping[str, str], seen: int
             ) -> dict[str, float]:
    """The calc's variables for a frame: A..D from the attributes named by VetoA..VetoD."""
    env = {name[-1]: attribute_number(attributes, names[name]) for name in NAMES}
    env["E"] = float(seen)
    return env


def vetoes(calc: Callable[[Mapping[str, float]], float] | None, env: Mapping[str, float]
           ) -> tuple[bool, float]:
    """(whether the frame is vetoed, the calc's value): finite and non-zero vetoes."""
    if calc is None:
        return False, math.nan
    value = calc(env)
    return math.isfinite(value) and value != 0.0, value


class Veto(Plugin):
    screen = "NDVeto"
    kind = "veto"
    plugin_type = "NDPluginVeto"
    compression_aware = True  # it reads attributes only, never pixels: any frame passes as
    channels_aware = True  # it is, compressed, multi-channel or sparse
    sparse_aware = True
    PARAMS = Plugin.PARAMS + (VETO_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._calc: Callable[[Mapping[str, float]], float] | None = compile_calc(
            DEFAULT_VETO_CALC)
        self._seen = 0

    def put_VetoCalc(self, value: str) -> str:
        text = value if value.strip() else DEFAULT_VETO_CALC
        try:
            self._calc = compile_calc(text)  # one reference swap: the worker sees old or new
            self.set("VetoStatus_RBV", "OK")
        except CalcError as exc:
            self._calc = None
            self.set("VetoStatus_RBV", f"{exc}"[:255])
            self.message(f"VetoCalc: {exc}; nothing is vetoed", logging.WARNING)
        return text

    def process(self, array: NDArray) -> NDArray:
        params = self.frame_settings
        self._seen += 1
        env = veto_env(array.attributes, params, self._seen)
        vetoed, value = vetoes(self._calc, env)
        self.set("VetoCalcVal", value)
        if not vetoed:
            self._count("FramesPassed_RBV")
            return array
        self._count("FramesVetoed_RBV")
        self._mark_lost(array, failed=False)
        return array.derive(None, status=FrameStatus(
            MissingCause.VETOED, f"{self.port}: {params['VetoCalc'][:80]} = {value:g}"))
