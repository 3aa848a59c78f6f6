"""NDPluginCodec: compress -> decompress round trips through a real IOC, CompFactor, JPEG quality
and colour, bad input; and the compressed bytes read back by h5py + hdf5plugin as one chunk."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import running_ioc
from test_acquisition import get, put, ramp, wrap

NX, NY = 64, 48
CONFIG = f"""
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
plugins:
  - {{type: codec, port: CODEC1, prefix: "Codec1:", input: SIM1,
     options: {{mode: Compress, compressor: Zlib}}}}
  - {{type: codec, port: CODEC2, prefix: "Codec2:", input: CODEC1, options: {{mode: Decompress}}}}
  - {{type: stdarrays, port: IMAGE1, prefix: "image1:", input: CODEC2,
     options: {{data_type: Float64, nelm: 10000}}}}
  - {{type: stdarrays, port: IMAGE2, prefix: "image2:", input: SIM1,
     options: {{data_type: Float64, nelm: 10000}}}}
"""
DTYPES = {"UInt8": "u1", "UInt16": "u2", "Float32": "f4"}


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("codec")) as ioc:
        for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"),
                            ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1.0)]:
            put(ioc.prefix + "cam1:" + name, value)
        yield ioc


@pytest.fixture
def p(ioc):
    """The prefix, with the codecs back at Zlib -> Decompress and a Mono UInt8 camera."""
    p = ioc.prefix
    for pv, value in [("Codec1:Mode", "Compress"), ("Codec1:Compressor", "Zlib"),
                      ("Codec2:Mode", "Decompress"), ("cam1:ColorMode", "Mono"),
                      ("cam1:DataType", "UInt8"), ("cam1:Noise", 0.0)]:
        put(p + pv, value)
    return p


def acquire(p: str) -> None:
    put(p + "cam1:Reset", 1)  # each frame is the first ramp frame
    put(p + "cam1:Acquire", 1)


def frame(p: str, plugin: str) -> np.ndarray:
    ndims = get(p + plugin + "NDimensions_RBV")
    dims = [get(p + plugin + f"ArraySize{i}_RBV") for i in range(ndims)]
    count = int(np.prod(dims))
    return np.asarray(get(p + plugin + "ArrayData", count=count)).reshape(dims[::-1])


@pytest.mark.parametrize("compressor", ["Zlib", "Blosc", "LZ4", "LZ4HDF5", "BSLZ4"])
@pytest.mark.parametrize("data_type", list(DTYPES))
def test_lossless_round_trip_restores_the_frame(p, compressor, data_type):
    put(p + "cam1:DataType", data_type)
    put(p + "Codec1:Compressor", compressor)
    counter = get(p + "image1:ArrayCounter_RBV")
    acquire(p)
    assert get(p + "image1:ArrayCounter_RBV") == counter + 1
    original = frame(p, "image2:")
    np.testing.assert_array_equal(original, wrap(ramp(NX, NY), DTYPES[data_type]))
    np.testing.assert_array_equal(frame(p, "image1:"), original)
    assert get(p + "image1:DataType_RBV", as_string=True) == data_type
    assert get(p + "image1:Codec_RBV") == ""
    # the compressed array as the decompressing plugin received it
    name = {"LZ4HDF5": "lz4hdf5"}.get(compressor, compressor.lower())
    assert get(p + "Codec2:Codec_RBV") == name
    assert get(p + "Codec2:Compressor_RBV", as_string=True) == compressor
    nbytes = NX * NY * np.dtype(DTYPES[data_type]).itemsize
    assert get(p + "Codec2:ArraySize_RBV") == nbytes
    compressed = get(p + "Codec2:CompressedSize_RBV")
    assert 0 < compressed < nbytes  # a ramp compresses
    factor = get(p + "Codec1:CompFactor_RBV")
    assert factor == pytest.approx(nbytes / compressed, rel=1e-9)
    assert get(p + "Codec2:CompFactor_RBV") == pytest.approx(factor, rel=1e-9)
    assert get(p + "Codec1:CodecStatus", as_string=True) == "Success"
    assert get(p + "Codec2:CodecStatus", as_string=True) == "Success"


def test_blosc_settings_travel_with_the_array(p):
    put(p + "cam1:DataType", "UInt16")
    put(p + "Codec1:Compressor", "Blosc")
    sizes = {}
    for compressor, shuffle in [("LZ4", "Bit"), ("ZSTD", "Byte"), ("ZLIB", "None")]:
        put(p + "Codec1:BloscCompressor", compressor)
        put(p + "Codec1:BloscShuffle", shuffle)
        put(p + "Codec1:BloscCLevel", 5)
        acquire(p)
        np.testing.assert_array_equal(frame(p, "image1:"), frame(p, "image2:"))
        sizes[compressor] = get(p + "Codec2:CompressedSize_RBV")
    assert len(set(sizes.values())) > 1, "the Blosc settings made no difference"


def test_pass_through_cases(p):
    # Compressor None: the array goes on uncompressed, factor 1
    put(p + "Codec1:Compressor", "None")
    acquire(p)
    assert get(p + "Codec2:Codec_RBV") == ""
    assert get(p + "Codec1:CompFactor_RBV") == 1.0
    # Decompress mode with an uncompressed input: passed on, the readback says None
    assert get(p + "Codec2:Compressor_RBV", as_string=True) == "None"
    assert get(p + "Codec2:CompFactor_RBV") == 1.0
    np.testing.assert_array_equal(frame(p, "image1:"), frame(p, "image2:"))
    # Compress mode with a compressed input: a warning, passed on still compressed
    put(p + "Codec1:Compressor", "Zlib")
    put(p + "Codec2:Mode", "Compress")
    put(p + "Codec2:Compressor", "Blosc")
    acquire(p)
    assert get(p + "Codec2:CodecStatus", as_string=True) == "Warning"
    assert get(p + "Codec2:CodecError", as_string=True) == "Array already compressed"
    message = get(p + "image1:StatusMessage_RBV", as_string=True)
    assert "compressed (zlib)" in message  # StdArrays refused it, with a reason


def test_jpeg_quality_changes_size_and_error(p):
    put(p + "cam1:Noise", 60.0)  # texture, so that quality matters
    put(p + "Codec1:Compressor", "JPEG")
    results = {}
    for quality in (10, 95):
        put(p + "Codec1:JPEGQuality", quality)
        acquire(p)
        original = frame(p, "image2:")
        restored = frame(p, "image1:")
        assert restored.shape == original.shape
        assert get(p + "Codec2:Codec_RBV") == "jpeg"
        error = np.abs(restored - original).mean()
        results[quality] = (get(p + "Codec2:CompressedSize_RBV"), error)
    assert results[10][0] < results[95][0]
    assert results[95][1] < 2.0 < results[10][1]
    # out-of-range qualities are clamped to 1..100 as the record's DRVL/DRVH do
    put(p + "Codec1:JPEGQuality", 0)
    assert get(p + "Codec1:JPEGQuality_RBV") == 1
    put(p + "Codec1:JPEGQuality", 500)
    assert get(p + "Codec1:JPEGQuality_RBV") == 100


@pytest.mark.parametrize("color", ["RGB1", "RGB3"])
def test_jpeg_colour_comes_back_as_rgb1(p, color):
    put(p + "cam1:ColorMode", color)
    put(p + "Codec1:Compressor", "JPEG")
    put(p + "Codec1:JPEGQuality", 100)
    acquire(p)
    original = frame(p, "image2:")
    if color == "RGB3":  # planes [3, y, x] -> pixels [y, x, 3]
        original = original.transpose(1, 2, 0)
    assert get(p + "image1:ColorMode_RBV", as_string=True) == "RGB1"
    assert [get(p + f"image1:ArraySize{i}_RBV") for i in range(3)] == [3, NX, NY]
    restored = frame(p, "image1:")
    assert np.abs(restored - original).mean() < 3.0


def test_jpeg_refuses_16_bit_data_and_passes_the_frame_on(p):
    put(p + "cam1:DataType", "UInt16")
    put(p + "Codec1:Compressor", "JPEG")
    acquire(p)
    assert get(p + "Codec1:CodecStatus", as_string=True) == "Error"
    assert get(p + "Codec1:CodecError", as_string=True) == "JPEG only supports 8-bit data"
    assert "8-bit" in get(p + "Codec1:StatusMessage_RBV", as_string=True)
    assert get(p + "Codec1:CompFactor_RBV") == 1.0
    np.testing.assert_array_equal(frame(p, "image1:"), frame(p, "image2:"))


def test_settings_are_clamped_like_the_records(p):
    for name, value, expected in [("ZlibCLevel", 20, 9), ("ZlibCLevel", -3, 0),
                                  ("BloscCLevel", 12, 9), ("BloscNumThreads", 0, 1),
                                  ("LZ4HDF5BlockSize", -5, 0)]:
        put(p + "Codec1:" + name, value)
        assert get(p + "Codec1:" + name + "_RBV") == expected, name
    put(p + "Codec1:ZlibCLevel", 6)
    put(p + "Codec1:BloscCLevel", 3)
    assert get(p + "Codec1:PluginType_RBV") == "NDPluginCodec"


# --- the bytes are HDF5 chunks: write_direct_chunk, read back through the filter -----------------

def _h5_filters():
    import hdf5plugin
    return {
        "Zlib": {"compression": "gzip"},
        "Blosc": dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
        "LZ4": dict(hdf5plugin.LZ4()),
        "LZ4HDF5": dict(hdf5plugin.LZ4()),
        "BSLZ4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    }


@pytest.mark.parametrize("compressor", ["Zlib", "Blosc", "LZ4", "LZ4HDF5", "BSLZ4"])
@pytest.mark.parametrize("dtype, shape", [("u1", (NY, NX)), ("u2", (NY, NX)), ("f4", (NY, NX)),
                                          ("i8", (37, 29)), ("u1", (30, 40, 3))])
def test_compressed_bytes_are_one_hdf5_chunk(tmp_path, compressor, dtype, shape):
    import h5py

    from ndflow.graph import PortGraph
    from ndflow.ndarray import NDArray
    from ndflow.plugins.codec import COMPRESSORS, Codec
    rng = np.random.default_rng(7)
    values = (rng.normal(size=shape) * 20 + np.arange(shape[-1])).astype(dtype)
    plugin = Codec("CODEC", "Codec1:", PortGraph())
    plugin.values.update({"Compressor": COMPRESSORS.index(compressor), "BloscCompressor": 5,
                          "BloscShuffle": 1, "LZ4HDF5BlockSize": 1000})
    plugin.freeze()  # process() runs on the frozen parameters, as the plugin's owner takes them
    out = plugin.process(NDArray.from_numpy(values, color_mode=2 if len(shape) == 3 else 0))
    assert plugin.values["CodecStatus"] == 0, plugin.values["CodecError"]
    assert out.data.dtype == np.uint8 and out.data.ndim == 1
    assert out.nbytes == values.nbytes and out.dtype == values.dtype
    path = tmp_path / "chunk.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(1,) + shape, dtype=dtype, chunks=(1,) + shape,
                              **_h5_filters()[compressor])
        ds.id.write_direct_chunk((0,) * (len(shape) + 1), out.data.tobytes())
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][0], values)
    # and the Decompress mode gives the same array back
    plugin.values["Mode"] = 1
    plugin.freeze()
    back = plugin.process(out)
    assert back.codec.name == "" and back.data.dtype == values.dtype
    np.testing.assert_array_equal(back.data, values)


def test_corrupt_compressed_data_is_an_error_not_a_crash():
    from ndflow.graph import PortGraph
    from ndflow.ndarray import NDArray
    from ndflow.plugins.codec import Codec
    plugin = Codec("CODEC", "Codec1:", PortGraph())
    plugin.values["Compressor"] = 6  # BSLZ4
    plugin.freeze()
    values = np.arange(NX * NY, dtype=np.uint16).reshape(NY, NX)
    out = plugin.process(NDArray.from_numpy(values))
    broken = out.derive(out.data[: len(out.data) // 2])
    plugin.values["Mode"] = 1
    plugin.freeze()
    result = plugin.process(broken)
    assert result is broken  # passed on unchanged, as ADCore does on failure
    assert plugin.values["CodecStatus"] == 2
    assert "BSLZ4" in plugin.values["CodecError"]
