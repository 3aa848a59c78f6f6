"""HDF1's dataset layout rules (ndflow.plugins.hdf5_layout), without a file: the chunk shape
fitted to the frame, the file and HDF5's 4 GiB, the compression filter and the fill value."""

from __future__ import annotations

import numpy as np
import pytest

from ndflow.ndarray import Codec, NDArray
from ndflow.plugins.file_writer import WriteError
from ndflow.plugins.hdf5_layout import (CHUNK_MAX_BYTES, COMPRESSIONS, codec_filter,
                                        compression_filter, fill_value, fit_chunks)


def chunks(shape, itemsize=1, auto=True, rows=0, cols=0, frames=0, held=0):
    return fit_chunks(shape, itemsize, auto=auto, rows=rows, cols=cols, frames=frames,
                      held=held)


def test_a_whole_frame_per_chunk_by_default():
    assert chunks((512, 640)) == ((1, 512, 640), "")


def test_rows_and_columns_are_used_when_auto_is_off_and_never_exceed_the_frame():
    assert chunks((512, 640), auto=False, rows=64, cols=2000) == ((1, 64, 640), "")
    assert chunks((512, 640), auto=True, rows=64, cols=64) == ((1, 512, 640), "")


def test_frames_per_chunk_are_at_most_the_frames_of_the_file():
    shape, note = chunks((16, 16), frames=100, held=10)
    assert shape == (10, 16, 16)
    assert "NumFramesChunks 100 > the 10 frames of a file" in note
    assert chunks((16, 16), frames=100, held=0)[0] == (100, 16, 16)  # unbounded file


def test_a_frame_over_four_gib_gets_fewer_rows_per_chunk():
    shape, note = chunks((70000, 70000), itemsize=1)
    assert shape[0] == 1 and shape[2] == 70000
    assert shape[1] * 70000 <= CHUNK_MAX_BYTES < (shape[1] + 1) * 70000
    assert "over HDF5's 4 GiB" in note


def test_frames_per_chunk_are_cut_to_four_gib():
    shape, note = chunks((4096, 4096), itemsize=4, frames=1000)
    assert shape == (63, 4096, 4096)  # 64 frames of 64 MiB would be 4 GiB
    assert "1000 frames of 67108864 bytes per chunk" in note


@pytest.mark.parametrize("value, dtype, fill, said", [
    (-5, "u1", 0, "clamped to 0 for uint8 data"),
    (300, "u1", 255, "clamped to 255 for uint8 data"),
    (3.7, "i2", 3, "truncated to 3 for int16 data"),
    (-3.7, "i2", -3, "truncated to -3 for int16 data"),
    (7, "u2", 7, None),
    (1e39, "f4", np.finfo("f4").max, "clamped to"),
    (-2.5, "f8", -2.5, None),
])
def test_fill_value_is_what_hdf5_would_convert_it_to(value, dtype, fill, said):
    got, note = fill_value(value, np.dtype(dtype))
    assert got == fill and got.dtype == np.dtype(dtype)
    if said is None:
        assert note is None
    else:
        assert said in note


def settings(name, **more):
    return {"Compression": COMPRESSIONS.index(name), "ZLevel": 6, "BloscCompressor": 0,
            "BloscLevel": 5, "BloscShuffle": 0, **more}


def test_compression_filters():
    assert compression_filter(settings("None")) == {}
    assert compression_filter(settings("zlib", ZLevel=9)) == {"compression": "gzip",
                                                             "compression_opts": 9}
    assert compression_filter(settings("LZ4"))["compression"] == 32004  # HDF5's LZ4 filter
    assert compression_filter(settings("BSLZ4"))["compression"] == 32008  # bitshuffle
    assert compression_filter(settings("Blosc"))["compression"] == 32001


@pytest.mark.parametrize("name", ["N-bit", "szip", "JPEG"])
def test_an_unsupported_compression_says_which_to_choose(name):
    with pytest.raises(WriteError, match=f"Compression {name} is not supported; choose None"):
        compression_filter(settings(name))


def compressed(name):
    frame = NDArray.from_numpy(np.zeros(8, np.uint8))
    frame.codec = Codec(name=name, dtype="uint8")
    return frame


def test_a_codec_frame_gets_the_filter_that_reads_it_or_a_clear_refusal():
    assert codec_filter(compressed("zlib")) == {"compression": "gzip"}
    assert codec_filter(compressed("bslz4"))["compression"] == 32008
    with pytest.raises(WriteError, match="'jpeg' cannot be written to HDF5"):
        codec_filter(compressed("jpeg"))
