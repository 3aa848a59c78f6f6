"""What the kinds of rank share: which components are file writers, the rank files' names, and
the message kinds of partial-frame dispatch and remote acquisition.

The kinds below travel like the ones in `wire` (a pickled header on `wire.TAG`); they are
defined here, not in `wire`, because only the roles of this package send and read them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..component import Component

# header kinds (besides wire's)
START = "start"  # control -> acquisition rank: run acquisition "acq" (the control rank's id);
#                  shared whole frames: after uniqueId "base", its first frame at image "seq"
ACQ_DONE = "acq_done"  # acquisition rank -> control: the driver is done with "acq"; "last":
#                        the last uniqueId it made
GONE = "gone"  # control -> processing: acquisition rank "feeder" stopped answering; its part
#                of "acq" is over (as ACQ_END), a frame it sends for it later is dropped
DISPATCHED = "dispatched"  # acquisition rank -> control: "frames" [(acq, uid, rank)] it sent,
#                            "lost" [(acq, uid)] it dropped at dispatch (no room in time)

#: the driver's values an acquisition rank reports to the control rank (the facade shows the
#: first acquisition rank's: every module has the same counters)
DRIVER_REPORTED = ("ArrayCounter", "NumImagesCounter_RBV", "DetectorState_RBV",
                   "StatusMessage_RBV", "ArrayRate_RBV")


def is_file_writer(component: Component) -> bool:
    return all(n in component.params for n in ("Capture", "NumCapture", "FileName",
                                                "FullFileName_RBV", "NumCaptured_RBV"))


def writes_hdf5(component: Component) -> bool:
    return is_file_writer(component) and getattr(component, "extension", "") in (".h5", ".hdf5")


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def rank_file_name(name: str, rank: int) -> str:
    """The FileName a processing rank's writer uses: the master's name plus `_r<rank>`."""
    return f"{name}_r{rank}"
