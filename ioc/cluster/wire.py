"""What travels between ranks: a small header (a pickled dict) and, for a frame, its pixels.

A frame is two MPI messages on the same tag from the same sender, so MPI's non-overtaking rule
keeps them together: the header (`frame_header`: unique id, timestamps, dims, attributes,
colour mode, transform, status) and then the numpy buffer itself, sent with the uppercase
(buffer) API, so the pixels are never pickled. A missing frame is a header alone. Everything
else (puts mirrored from the control rank, acknowledgements, counters, acquisition ends) is a
header alone too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ndarray import (AttrSource, Codec, FrameStatus, MissingCause, NDArray, NDAttribute,
                       NDDimension)

# header kinds
FRAME = "frame"  # control -> processing: a frame (pixels follow unless missing)
PUT = "put"  # control -> processing: a put to mirror
ACQ_END = "acq_end"  # control -> processing: an acquisition's last frame has been sent
STOP = "stop"  # control -> processing: shut down
ACK = "ack"  # processing -> control: frames received (unique ids), backlog
PUT_DONE = "put_done"  # processing -> control: a mirrored put that asked for a reply
DRAINED = "drained"  # processing -> control: an acquisition's frames left every plugin
VALUES = "values"  # processing -> control: changed values, per port

TAG = 11  # one tag for everything: headers and their pixels stay in order per sender


def frame_header(array: NDArray, local: int) -> dict[str, Any]:
    acquisition = array.acquisition
    header: dict[str, Any] = {
        "kind": FRAME, "uid": array.unique_id, "local": local, "ts": array.timestamp,
        "epics_ts": array.epics_ts, "color": array.color_mode,
        "dims": [(d.size, d.offset, d.binning, d.reverse) for d in array.dims],
        "attrs": [(a.name, a.value, a.description, int(a.source_type), a.source)
                  for a in array.attributes.values()],
        "acq": acquisition.id if acquisition is not None else 0,
    }
    if not np.array_equal(array.transform, np.eye(3)):
        header["transform"] = np.asarray(array.transform, float).tolist()
    if array.codec.compressed:
        c = array.codec
        header["codec"] = (c.name, c.level, c.shuffle, c.compressor, c.dtype)
    if array.valid:
        header["dtype"] = array.data.dtype.str
        header["shape"] = array.data.shape
    else:
        cause = array.status.missing or MissingCause.DROPPED
        header["missing"] = (cause.name, array.status.message)
    return header


def frame_from(header: dict[str, Any], data: np.ndarray | None) -> NDArray:
    """The NDArray a header (and its received pixels) describe; acquisition left to the caller."""
    attrs = {name: NDAttribute(name, value, desc, AttrSource(kind), source)
             for name, value, desc, kind, source in header["attrs"]}
    dims = [NDDimension(*d) for d in header["dims"]]
    array = NDArray(data, header["uid"], header["ts"], tuple(header["epics_ts"]), dims, attrs,
                    color_mode=header["color"])
    if "transform" in header:
        array.transform = np.array(header["transform"])
    if "codec" in header:
        array.codec = Codec(*header["codec"])
    if "missing" in header:
        cause, message = header["missing"]
        array.status = FrameStatus(MissingCause[cause], message)
        array.data = None
    return array
