"""NDFileJPEG (`JPEG1:`): one JPEG file per array, encoded with imagecodecs (libjpeg-turbo).

As ADCore's NDFileJPEG: 8-bit arrays only (Int8 and UInt8; an Int8 array's bytes are written as
they are, as ADCore does), Mono (2-D) or RGB1/RGB2/RGB3 (3-D with the colour axis of size 3 where
the mode says), quality from `JPEGQuality` (ADCore: 0..100, 50 at start). Every mode writes one
file per array (`multiple_arrays` False), like TIFF. An array the format cannot take (16-bit, a
4-D stack, a Bayer frame) is refused with a WriteMessage that says what to do (convert with a
Process plugin's DataTypeOut), and the file is not created.

What ndflow adds: the files are opened through the NDFile base (only under the data roots, links
refused), and a lost frame (placeholder) reaching the writer is counted on StatusMessage_RBV:
there is no file for it, as there is none in TIFF.

imagecodecs is already a dependency (NDPluginCodec's JPEG), so JPEG needs nothing new.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from ndflow.ndarray import NDArray
from ndflow.params import RW, enum_param, int_param
from ndflow.plugins.file_writer import FileWriter, OneArrayFileWriter, WriteError

MONO, RGB1, RGB2, RGB3 = 0, 2, 3, 4
#: where the colour axis of size 3 is in the numpy array (slowest first) for each RGB mode
_COLOUR_AXIS = {RGB1: 2, RGB2: 1, RGB3: 0}

JPEG_PARAMS = (
    enum_param("FileFormat", ("JPEG", "Invalid"), 0, RW, rbv_choices=("JPEG", "Undefined"),
               group="File"),
    int_param("JPEGQuality", 50, RW, low=0, high=100, group="JPEG",
              doc="libjpeg quality 0..100 (higher: larger files, closer to the array)"),
)


def jpeg_pixels(array: NDArray) -> np.ndarray:
    """The array as libjpeg takes it: (rows, columns) or (rows, columns, 3) uint8; WriteError
    with the reason if the array is not one JPEG can hold."""
    data = array.data
    if data is None or data.dtype.itemsize != 1 or data.dtype.kind not in "iu":
        kind = "no data" if data is None else str(data.dtype)
        raise WriteError(f"JPEG holds 8-bit arrays only (array {array.unique_id} is {kind}); "
                         "convert it first (a Process plugin with DataTypeOut=UInt8)")
    pixels = data.view(np.uint8)
    if pixels.ndim == 2:
        return pixels
    axis = _COLOUR_AXIS.get(array.color_mode)
    if pixels.ndim == 3 and axis is not None and pixels.shape[axis] == 3:
        return np.moveaxis(pixels, axis, 2)
    raise WriteError(f"JPEG holds Mono 2-D or RGB1/RGB2/RGB3 arrays (array {array.unique_id} "
                     f"has shape {data.shape} and color mode {array.color_mode})")


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """`pixels` (from jpeg_pixels) as JPEG bytes at libjpeg `quality` (clamped to 0..100)."""
    level = int(min(100, max(0, quality)))
    return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(pixels), level=level))


class JPEG(OneArrayFileWriter):
    screen = "NDFileJPEG"
    kind = "jpeg"
    plugin_type = "NDFileJPEG"
    PARAMS = (*FileWriter.PARAMS, JPEG_PARAMS)
    extension = ".jpg"

    def open_file(self, path: Path, first: NDArray) -> None:
        jpeg_pixels(first)  # refuse before a file exists for an array JPEG cannot hold
        super().open_file(path, first)

    def write_array(self, array: NDArray) -> None:
        assert self._fh is not None
        self._fh.write(encode_jpeg(jpeg_pixels(array), self._open_params["JPEGQuality"]))

    def write_missing(self, array: NDArray) -> None:
        self.notes.line("missing", f"array {array.unique_id} lost "
                                   f"({array.status.missing.value}): no JPEG file for it")

