"""ndflow.pva.ntndarray_stream.NTNDArrayStream: Pva1's successive NTNDArray updates mark only
what changed since the previous frame, and what a holder of the PV's value sees (PVXS merging
each update into the SharedPV's current value, as it does for a subscriber's copy) is always the
complete frame, whatever changed from one frame to the next: shape, element type, colour mode,
codec, attributes added, removed, retyped, or set to the same number with another sign.

Over the network with p4p and pvapy monitors: tests/test_pva.py."""

from __future__ import annotations

import numpy as np
from p4p import Value
from p4p.server.raw import SharedPV

from ndflow.ndarray import AttrSource, Codec, MissingCause, NDArray, NDAttribute
from ndflow.plugins.codec import encode_bslz4, encode_lz4h5
from ndflow.pva.ntndarray import TYPE
from ndflow.pva.ntndarray_in import from_value
from ndflow.pva.ntndarray_stream import PER_FRAME, NTNDArrayStream, to_value

from test_ntndarray import assert_same, frame, pixels

#: the top-level fields every update marks (its leaves, as p4p's changedSet names them)
PER_FRAME_LEAVES = {"value", "uniqueId", "timeStamp.secondsPastEpoch", "timeStamp.nanoseconds",
                    "timeStamp.userTag", "dataTimeStamp.secondsPastEpoch",
                    "dataTimeStamp.nanoseconds", "dataTimeStamp.userTag"}


def top_level(value: Value) -> set[str]:
    return {name.split(".")[0] for name in value.changedSet()}


def with_attr(array: NDArray, name: str, value, description: str = "") -> NDArray:
    array.attributes[name] = NDAttribute(name, value, description, AttrSource.PARAM, "src")
    return array


def compressed(array: NDArray, name: str) -> NDArray:
    """`array` compressed by ndflow's own codec code (as from a Codec plugin)."""
    data = array.data
    raw = encode_lz4h5(data) if name == "lz4" else encode_bslz4(data)
    out = NDArray(data=np.frombuffer(raw, np.uint8), unique_id=array.unique_id,
                  timestamp=array.timestamp, epics_ts=array.epics_ts, dims=list(array.dims),
                  attributes=dict(array.attributes), color_mode=array.color_mode,
                  codec=Codec(name, dtype=data.dtype.str))
    return out


def sequence() -> list[NDArray]:
    """Frames as an acquisition whose settings change between frames would make them."""
    frames = []
    uid = 0

    def add(array: NDArray) -> None:
        nonlocal uid
        uid += 1
        array.stamp(uid, 1_700_000_000.0 + uid * 0.01)
        frames.append(array)

    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", 1.5))
    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", 1.5))  # only the pixels and ids
    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", 2.5))  # an attribute value
    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", -0.0))
    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", 0.0))  # == -0.0, not on the wire
    add(with_attr(frame(pixels("u1", (48, 64))), "Gain", 0))  # int now: another variant type
    add(frame(pixels("u1", (48, 64))))  # Gain removed
    add(with_attr(frame(pixels("i2", (30, 20))), "Gain", None))  # shape, type, undefined attr
    add(frame(pixels("f8", (30, 20, 3)), color_mode=2))  # RGB1, 3 dims
    add(with_attr(frame(pixels("u2", (30, 20))), "Row", np.arange(4, dtype="u2")))
    add(with_attr(frame(pixels("u2", (30, 20))), "Row", np.arange(4, dtype="u2")))
    add(compressed(frame(pixels("u2", (30, 20))), "lz4"))
    add(compressed(frame(np.zeros((30, 20), "u2")), "bslz4"))  # compressed size changes
    add(frame(pixels("u2", (30, 20))))  # uncompressed again: codec name back to ""
    add(frame(pixels("u2", (30, 20))))
    return frames


def test_first_update_is_complete_and_later_ones_mark_only_what_changed():
    stream = NTNDArrayStream()
    a, b, c = (with_attr(frame(pixels("u1", (48, 64)), unique_id=n), "Gain", g)
               for n, g in [(1, 1.5), (2, 1.5), (3, 2.5)])
    first = stream.update(a)
    assert top_level(first) == top_level(to_value(a)) == {
        "value", "codec", "compressedSize", "uncompressedSize", "dimension", "timeStamp",
        "dataTimeStamp", "attribute", "uniqueId"}
    assert stream.update(b).changedSet() == PER_FRAME_LEAVES  # nothing but the frame's own
    assert top_level(stream.update(c)) == set(PER_FRAME) | {"attribute"}
    stream.reset()
    assert top_level(stream.update(c)) == top_level(first)  # complete again


def test_the_merged_value_is_every_frame_complete_whatever_changed_between_frames():
    """What PVXS holds after each post (the merge of the updates, as a subscriber's copy) reads
    back exactly as the frame, as a complete Value of that frame does."""
    pv = SharedPV(initial=Value(TYPE, {}))
    stream = NTNDArrayStream()
    marked = []
    for array in sequence():
        update = stream.update(array)
        marked.append(top_level(update))
        pv.post(update)
        held = pv.current()
        back = from_value(held)
        if array.codec.compressed:  # the wire bytes round trip to ndflow's own framing
            assert np.array_equal(back.data, from_value(to_value(array)).data)
            assert back.codec == array.codec and back.dims == array.dims
            assert held["compressedSize"] == to_value(array)["compressedSize"]
        else:
            assert_same(back.to_ndarray(), array)
        assert held["uncompressedSize"] == to_value(array)["uncompressedSize"]
        assert held["codec.parameters"] == to_value(array)["codec.parameters"]
    # and the updates did leave out what had not changed
    assert marked[1] == set(PER_FRAME)
    assert "attribute" in marked[4]  # 0.0 after -0.0
    assert "attribute" in marked[10]  # an array-valued attribute is always sent
    assert marked[14] == set(PER_FRAME)


def test_a_frame_that_cannot_be_sent_leaves_the_stream_as_it_was():
    stream = NTNDArrayStream()
    stream.update(frame(pixels("u1", (4, 4)), unique_id=1))
    missing = NDArray.missing(MissingCause.DROPPED, "lost", unique_id=2)
    try:
        stream.update(missing)
    except ValueError:
        pass
    else:
        raise AssertionError("a missing frame has no pixels to send")
    assert stream.update(frame(pixels("u1", (4, 4)), unique_id=2)).changedSet() == \
        PER_FRAME_LEAVES
