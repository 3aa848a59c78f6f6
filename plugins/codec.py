"""NDPluginCodec (`Codec1:`): compress arrays, or restore compressed ones.

Follows ADCore's NDPluginCodec.cpp (R3-14): Mode Compress/Decompress; the Compressor choices JPEG,
Zlib, Blosc, LZ4, LZ4HDF5, BSLZ4 with ADCore's codec names ("jpeg", "zlib", ...); CompFactor_RBV is
uncompressed bytes / compressed bytes (a ratio, although the record's EGU says %); CodecStatus and
CodecError report a failure, and a failed or impossible conversion passes the input on unchanged.
Compress mode with Compressor None, or Decompress mode with an uncompressed input, passes the array
through (Decompress then shows Compressor_RBV None; with a compressed input it shows the codec
found). JPEG takes 8-bit Mono and RGB1/2/3 arrays only (Int8 bytes are read as unsigned and
come back as UInt8, as in ADCore).

A compressed array's data is its compressed bytes (1-D uint8), its dims stay the uncompressed
layout and `codec.dtype` names the element type, as ADCore's NDArray does.

Deliberate differences from ADCore:
- The bytes are exactly one HDF5 chunk for the filter of the same name, so the HDF5 writer can
  store a whole frame with a direct chunk write: "lz4" carries the HDF5 LZ4 filter's (32004)
  16-byte framing with one block (ADCore: a bare LZ4 block, framed by the writer), and "bslz4"
  the bitshuffle filter's (32008) 12-byte header (ADCore: no header). "lz4hdf5", "blosc" (32001)
  and "zlib" (deflate) are the same bytes as ADCore's. A pvAccess server that must send ADCore's
  exact bytes strips 16 ("lz4") or 12 ("bslz4") bytes.
- Decompressing a JPEG made from RGB2/RGB3 gives an RGB1 array with RGB1 dims (ADCore keeps the
  RGB2/RGB3 dims over pixel-interleaved data).
- BloscCLevel is limited to 0..9 (blosc's range; the record's DRVH) and BloscNumThreads to 1..64,
  so a client cannot ask for a million threads.
- CodecStatus has no alarm severities (the record's ONSV/TWSV MINOR/MAJOR).
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Literal

import imagecodecs
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.adcore import COLOR_MODES
from ndflow.ndarray import AttrSource, Codec as NDCodec, NDArray, NDAttribute, NDDimension
from ndflow.params import R, enum_param, float_param, int_param, text_param
from ndflow.plugin import Plugin
from ndflow.pool import NoMemory

COMPRESSORS = ("None", "JPEG", "Zlib", "Blosc", "LZ4", "LZ4HDF5", "BSLZ4")
CODEC_NAMES = ("", "jpeg", "zlib", "blosc", "lz4", "lz4hdf5", "bslz4")  # NDCodecName[]
NONE, JPEG, ZLIB, BLOSC, LZ4, LZ4HDF5, BSLZ4 = range(len(COMPRESSORS))
BLOSC_COMPRESSORS = ("BloscLZ", "LZ4", "LZ4HC", "SNAPPY", "ZLIB", "ZSTD")
BLOSC_CNAMES = ("blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd")  # NDCodecBloscCompName[]
MODES = ("Compress", "Decompress")
COMPRESS, DECOMPRESS = range(2)
SUCCESS, WARNING, ERROR = range(3)
MONO, RGB1, RGB2, RGB3 = (COLOR_MODES.index(m) for m in ("Mono", "RGB1", "RGB2", "RGB3"))

CODEC_PARAMS = (
    enum_param("Mode", MODES, COMPRESS, group="Codec"),
    enum_param("Compressor", COMPRESSORS, NONE, group="Codec",
               doc="Compress: codec to apply; Decompress: readback shows the codec found"),
    float_param("CompFactor_RBV", 1.0, R, precision=2, units="%", group="Codec",
                doc="uncompressed bytes / compressed bytes of the last array"),
    int_param("JPEGQuality", 85, low=1, high=100, group="JPEG"),
    int_param("ZlibCLevel", 6, low=0, high=9, group="Zlib"),
    enum_param("BloscCompressor", BLOSC_COMPRESSORS, 0, group="Blosc"),
    int_param("BloscCLevel", 3, low=0, high=9, group="Blosc"),
    enum_param("BloscShuffle", ("None", "Byte", "Bit"), 0, group="Blosc"),
    int_param("BloscNumThreads", 1, low=1, high=64, group="Blosc"),
    int_param("LZ4HDF5BlockSize", 0, low=0, units="bytes", group="LZ4",
              doc="0 = one block per frame (up to 1 GB)"),
    enum_param("CodecStatus", ("Success", "Warning", "Error"), SUCCESS, R, group="Status"),
    text_param("CodecError", 256, "", R, group="Status"),
)


class CodecFailure(Exception):
    """A conversion that cannot be done: the input goes on unchanged (ADCore: result = pArray)."""

    def __init__(self, message: str, status: int = ERROR) -> None:
        super().__init__(message)
        self.status = status


# --- the codecs as pure functions: numpy array in, HDF5-chunk bytes out, and back -----------------

LZ4_MAX_BLOCK = 1 << 30  # the HDF5 LZ4 filter's default (and largest) block
BSHUF_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
BSHUF_BLOCKED_MULT = 8


def encode_zlib(data: np.ndarray, level: int) -> bytes:
    return imagecodecs.zlib_encode(np.ascontiguousarray(data), level=level)


def encode_blosc(data: np.ndarray, level: int, shuffle: int, compressor: int,
                 threads: int = 1) -> bytes:
    data = np.ascontiguousarray(data)
    return imagecodecs.blosc_encode(data, level, compressor=BLOSC_CNAMES[compressor],
                                    shuffle=shuffle, typesize=data.dtype.itemsize,
                                    numthreads=threads)


def encode_lz4h5(data: np.ndarray, block_size: int = 0) -> bytes:
    """The HDF5 LZ4 filter's chunk: uncompressed size (u64 BE), block size (u32 BE), then per
    block its compressed size (u32 BE) and bytes (stored raw when LZ4 does not shrink it)."""
    data = np.ascontiguousarray(data)
    block = block_size if block_size > 0 else min(max(data.nbytes, 1), LZ4_MAX_BLOCK)
    return imagecodecs.lz4h5_encode(data, blocksize=min(block, LZ4_MAX_BLOCK))


def bshuf_block_elements(itemsize: int) -> int:
    """bitshuffle's default block (bshuf_default_block_size): ~8 kB, a multiple of 8 elements."""
    size = BSHUF_TARGET_BLOCK_BYTES // itemsize
    return max(size - size % BSHUF_BLOCKED_MULT, 128)


def _bshuf_blocks(count: int, block: int) -> list[int]:
    """Element counts of the blocks bitshuffle compresses; the rest (< 8 elements) stays raw."""
    sizes = [block] * (count // block)
    last = count % block
    last -= last % BSHUF_BLOCKED_MULT
    return sizes + ([last] if last else [])


def encode_bslz4(data: np.ndarray) -> bytes:
    """The bitshuffle HDF5 filter's chunk (LZ4 mode): uncompressed size (u64 BE), block size in
    bytes (u32 BE), then per block the LZ4-compressed size (u32 BE) and the LZ4 block of the
    bit-shuffled elements; trailing elements that do not fill 8 are copied as they are."""
    flat = np.ascontiguousarray(data).reshape(-1)
    item = flat.dtype.itemsize
    block = bshuf_block_elements(item)
    raw = memoryview(flat).cast("B")  # the elements' bytes, not a copy of them
    shuffled = memoryview(imagecodecs.bitshuffle_encode(raw, itemsize=item, blocksize=block))
    parts = [struct.pack(">QI", flat.nbytes, block * item)]
    start = 0
    for size in _bshuf_blocks(flat.size, block):
        packed = imagecodecs.lz4_encode(shuffled[start:start + size * item])
        parts += [struct.pack(">I", len(packed)), packed]
        start += size * item
    parts.append(shuffled[start:].tobytes())
    return b"".join(parts)


def decode_bslz4(chunk: bytes | np.ndarray, dtype: np.dtype, count: int) -> np.ndarray:
    buf = memoryview(np.ascontiguousarray(chunk, dtype=np.uint8).reshape(-1))
    item = np.dtype(dtype).itemsize
    if len(buf) < 12:
        raise ValueError("bslz4 chunk shorter than its 12-byte header")
    total, block_bytes = struct.unpack(">QI", buf[:12])
    if total != count * item or block_bytes % item:
        raise ValueError(f"bslz4 header says {total} bytes in blocks of {block_bytes}, "
                         f"expected {count * item} bytes of {item}-byte elements")
    block = block_bytes // item
    if block == 0 or block % BSHUF_BLOCKED_MULT:
        raise ValueError(f"bslz4 block of {block} elements is not a multiple of 8")
    shuffled = bytearray(total)
    pos, start = 12, 0
    for size in _bshuf_blocks(count, block):
        (packed,) = struct.unpack(">I", buf[pos:pos + 4])
        nbytes = size * item
        shuffled[start:start + nbytes] = imagecodecs.lz4_decode(buf[pos + 4:pos + 4 + packed],
                                                               out=nbytes)
        pos += 4 + packed
        start += nbytes
    shuffled[start:] = buf[pos:pos + total - start]
    plain = imagecodecs.bitshuffle_decode(shuffled, itemsize=item, blocksize=block)
    return np.frombuffer(plain, dtype=dtype)


def jpeg_pixels(data: np.ndarray, color_mode: int) -> np.ndarray:
    """The (height, width[, 3]) uint8 image libjpeg is given, as NDPluginCodec's compressJPEG
    reads Mono and RGB1/2/3 arrays; Int8 bytes are taken as they are."""
    if data.dtype.itemsize != 1 or data.dtype.kind not in "iu":
        raise CodecFailure("JPEG only supports 8-bit data")
    pixels = data.view(np.uint8)
    if data.ndim == 2 and color_mode == MONO:
        return pixels
    if data.ndim == 3:
        if color_mode == RGB1 and data.shape[2] == 3:
            return pixels
        if color_mode == RGB2 and data.shape[1] == 3:
            return pixels.transpose(0, 2, 1)
        if color_mode == RGB3 and data.shape[0] == 3:
            return pixels.transpose(1, 2, 0)
    mode = COLOR_MODES[color_mode] if color_mode < len(COLOR_MODES) else str(color_mode)
    raise CodecFailure(f"Unsupported array structure for JPEG: {data.ndim}-D {mode}")


def encode_jpeg(data: np.ndarray, color_mode: int, quality: int) -> bytes:
    return imagecodecs.jpeg8_encode(np.ascontiguousarray(jpeg_pixels(data, color_mode)),
                                    level=min(max(quality, 1), 100))


# --- the plugin -----------------------------------------------------------------------------------


class CodecOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal[MODES] = Field("Compress", description="initial Mode")  # type: ignore[valid-type]
    compressor: Literal[COMPRESSORS] = Field(  # type: ignore[valid-type]
        "None", description="initial Compressor")


class Codec(Plugin):
    screen = "NDCodec"
    kind = "codec"
    plugin_type = "NDPluginCodec"
    compression_aware = True
    PARAMS = Plugin.PARAMS + (CODEC_PARAMS,)
    Options = CodecOptions

    def __init__(self, *args: Any, options: CodecOptions | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        options = options or CodecOptions()
        self.values["Mode"] = MODES.index(options.mode)
        self.values["Compressor"] = COMPRESSORS.index(options.compressor)

    def process(self, array: NDArray) -> NDArray:
        try:
            if self.frame_settings["Mode"] == COMPRESS:
                output, factor = self._compress(array)
            else:
                output, factor = self._decompress(array)
            status, error = SUCCESS, ""
        except CodecFailure as exc:
            output, factor, status, error = array, 1.0, exc.status, str(exc)
            self.message(f"array {array.unique_id}: {error}", logging.WARNING)
        self.set_if_changed({"CodecError": error, "CodecStatus": status,
                             "CompFactor_RBV": factor})
        return output

    # --- compress ---------------------------------------------------------------------------------
    def _compress(self, array: NDArray) -> tuple[NDArray, float]:
        v = self.frame_settings
        algo = v["Compressor"]
        if algo == NONE:
            return array, 1.0
        if array.codec.compressed:
            raise CodecFailure("Array already compressed", WARNING)
        data = array.data
        level = shuffle = compressor = -1  # NDCodec_t::clear(): not used by this codec
        try:
            if algo == JPEG:
                payload = encode_jpeg(data, array.color_mode, v["JPEGQuality"])
            elif algo == ZLIB:
                level = v["ZlibCLevel"]
                payload = encode_zlib(data, level)
            elif algo == BLOSC:
                level, shuffle, compressor = (v["BloscCLevel"], v["BloscShuffle"],
                                              v["BloscCompressor"])
                payload = encode_blosc(data, level, shuffle, compressor, v["BloscNumThreads"])
            elif algo in (LZ4, LZ4HDF5):
                payload = encode_lz4h5(data, v["LZ4HDF5BlockSize"] if algo == LZ4HDF5 else 0)
            else:
                payload = encode_bslz4(data)
        except CodecFailure:
            raise
        except Exception as exc:  # imagecodecs raises its own error types per codec
            raise CodecFailure(f"{COMPRESSORS[algo]} compression failed: {exc}") from None
        codec = NDCodec(CODEC_NAMES[algo], level, shuffle, compressor, data.dtype.str)
        compressed = self.output_buffer((len(payload),), np.uint8)
        compressed[:] = np.frombuffer(payload, dtype=np.uint8)
        output = array.derive(compressed, codec=codec)
        return output, array.nbytes / max(len(payload), 1)

    # --- decompress -------------------------------------------------------------------------------
    def _decompress(self, array: NDArray) -> tuple[NDArray, float]:
        name = array.codec.name
        if not name:
            self.set_if_changed({"Compressor": NONE})
            return array, 1.0
        if name not in CODEC_NAMES:
            raise CodecFailure(f"Unexpected codec: '{name}'")
        algo = CODEC_NAMES.index(name)
        self.set_if_changed({"Compressor": algo})
        try:
            if algo == JPEG:
                output = self._decode_jpeg(array)
            else:
                output = array.derive(self._decode(array, algo), codec=NDCodec())
        except (CodecFailure, NoMemory):  # NoMemory: the base puts a placeholder in its place
            raise
        except Exception as exc:
            raise CodecFailure(f"Failed to {COMPRESSORS[algo]} decompress: {exc}") from None
        return output, output.nbytes / max(array.compressed_size, 1)

    def _decode(self, array: NDArray, algo: int) -> np.ndarray:
        """The pixels, decoded straight into a buffer from this plugin's pool."""
        dtype = np.dtype(array.codec.dtype)
        shape = tuple(d.size for d in reversed(array.dims))
        count = int(np.prod(shape, dtype=np.int64))
        chunk = array.data
        out = self.output_buffer(shape, dtype)
        if algo == BSLZ4:
            np.copyto(out, decode_bslz4(chunk, dtype, count).reshape(shape))
            return out
        raw = out.reshape(-1).view(np.uint8)
        if algo == ZLIB:
            plain = imagecodecs.zlib_decode(chunk, out=raw)
        elif algo == BLOSC:
            plain = imagecodecs.blosc_decode(chunk, numthreads=self.frame_settings["BloscNumThreads"],
                                             out=raw)
        else:  # LZ4, LZ4HDF5
            if algo == LZ4HDF5 and len(chunk) >= 12:
                block = struct.unpack(">I", chunk[8:12].tobytes())[0]
                self.set_if_changed({"LZ4HDF5BlockSize": block})
            plain = imagecodecs.lz4h5_decode(chunk, out=raw)
        size = np.asarray(plain).size
        if size != count * dtype.itemsize:
            raise CodecFailure(f"{COMPRESSORS[algo]} data gave {size} bytes, "
                               f"expected {count * dtype.itemsize}")
        return out

    def _decode_jpeg(self, array: NDArray) -> NDArray:
        """8-bit Mono or RGB1, as decompressJPEG gives, with the ColorMode attribute set."""
        pixels = np.asarray(imagecodecs.jpeg8_decode(array.data), dtype=np.uint8)
        dims = array.dims
        if pixels.ndim == 3:
            order = {RGB1: (0, 1, 2), RGB2: (1, 0, 2), RGB3: (2, 0, 1)}.get(array.color_mode)
            if order is None or len(dims) != 3:
                raise CodecFailure("JPEG colour image from an array that is not RGB1/2/3")
            dims = [dims[i] for i in order]
            color = RGB1
        else:
            color = MONO
        expected = tuple(d.size for d in reversed(dims))
        if pixels.shape != expected:
            raise CodecFailure(f"JPEG image is {pixels.shape}, the array says {expected}")
        decoded = self.output_buffer(pixels.shape, pixels.dtype)
        np.copyto(decoded, pixels)
        output = array.derive(decoded, codec=NDCodec(), color_mode=color,
                              dims=[NDDimension(d.size, d.offset, d.binning, d.reverse)
                                    for d in dims])
        output.attributes["ColorMode"] = NDAttribute("ColorMode", color, "Color Mode",
                                                     AttrSource.DRIVER, "")
        return output
