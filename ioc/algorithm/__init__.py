"""The algorithm API: what a user's algorithm file imports, and the child process that runs it.

    from ndflow.algorithm import Algorithm, Input, Output, Result, Alarm

    class Centroid(Algorithm):
        threshold = Input(100.0, low=0, units="counts", doc="pixels below are ignored")
        cx = Output(float, units="px")

        def process(self, image, params, attributes, metadata):
            ...
            return {"cx": x}

An attribute `threshold` becomes the PVs `$(P)$(R)Threshold` and `Threshold_RBV` (CamelCase, as
areaDetector names things); an output `cx` becomes `Cx_RBV`. `name=` chooses another PV name.

This package is the whole of what runs in an algorithm's child process, possibly under another
interpreter or virtual environment than the IOC's, without ndflow installed: the user API
(`api`, `declare`), the parameter declaration both sides share (`param`), the control protocol
(`wire`), the shared-memory segments (`segment`), the child's runtime (`child`) and its error
lines (`errors`). It imports the standard library and numpy, and its own modules by relative
import, nothing else (tests/test_algorithm_package.py checks it). `safepath` (files opened
under trusted roots without following links) lives here because `read_file` needs it in the
child; the IOC imports it as `ndflow.safepath`.
"""

from .api import Algorithm, Dimension, FrameInfo, Params, Result, Status, Veto, read_file
from .declare import INPUT_GROUP, OUTPUT_GROUP, Input, Output
from .param import AlarmLimits as Alarm  # LOLO/HIHI: major alarm, LOW/HIGH: minor
from .wire import PROTOCOL_VERSION

__all__ = ["Algorithm", "Input", "Output", "Alarm", "Result", "Status", "Params", "FrameInfo",
           "Dimension", "Veto", "read_file", "INPUT_GROUP", "OUTPUT_GROUP", "PROTOCOL_VERSION"]
