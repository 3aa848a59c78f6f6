"""In-process checks of the JPEG/netCDF/NeXus writers' pieces: the NeXus template parser, JPEG's
colour layouts, and a lost frame's row in netCDF and NeXus files (read back with netCDF4/h5py)."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
from PIL import Image

from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import MissingCause, NDArray
from ndflow.plugins.file_writer import CAPTURE, WriteError
from ndflow.plugins.jpeg import encode_jpeg, jpeg_pixels
from ndflow.plugins.netcdf import NetCDF
from ndflow.plugins.nexus import Nexus, TemplateError, default_template, parse_template


def test_default_template_has_the_nexus_groups():
    t = default_template()
    assert t.data_path == ("entry", "instrument", "detector", "data")
    entry = t.nodes[0]
    assert (entry.kind, entry.name, entry.nx_class) == ("group", "entry", "NXentry")
    assert {c.nx_class for c in entry.children if c.kind == "group"} == {"NXinstrument",
                                                                          "NXdata"}


def test_template_constants_are_typed_and_checked():
    t = parse_template(b"<NXroot><NXentry name='e'><d type='pArray'/>"
                       b"<f type='CONST' outtype='NX_FLOAT32'> 2.5 </f>"
                       b"<u type='CONST' outtype='NX_UINT8'>255</u><t/></NXentry></NXroot>", "t")
    f, u, text = t.nodes[0].children[1:]
    assert f.value == np.float32(2.5) and f.value.dtype == np.float32
    assert u.value == 255 and u.value.dtype == np.uint8
    assert text.value == "LEFT BLANK"
    for body, reason in ((b"<NXroot><NXentry><d type='pArray'/><u type='CONST' "
                          b"outtype='NX_UINT8'>256</u></NXentry></NXroot>", "does not fit"),
                         (b"<NXroot><NXentry><d type='pArray'/><x name='a/b'/></NXentry></NXroot>",
                          "cannot be an HDF5 name"),
                         (b"<NXroot><NXentry><d type='pArray'><sub/></d></NXentry></NXroot>",
                          "holds only Attr"),
                         (b"<NXroot><NXentry><d type='pArray'/><Attr name='x'/></NXentry>"
                          b"</NXroot>", "needs type ND_ATTR or CONST"),
                         (b"<NXroot><NXentry><d type='pArray'/><l type='NXlink' target='x'/>"
                          b"</NXentry></NXroot>", "absolute target")):
        with pytest.raises(TemplateError, match=reason):
            parse_template(body, "t")


@pytest.mark.parametrize("mode, shape, axis", [(2, (4, 5, 3), 2), (3, (4, 3, 5), 1),
                                               (4, (3, 4, 5), 0)])
def test_jpeg_takes_each_rgb_layout_as_rows_columns_colour(mode, shape, axis):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, shape, dtype=np.uint8)
    pixels = jpeg_pixels(NDArray.from_numpy(data, color_mode=mode))
    np.testing.assert_array_equal(pixels, np.moveaxis(data, axis, 2))
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(pixels, 100))))
    assert decoded.shape == (4, 5, 3)
    with pytest.raises(WriteError, match="8-bit"):
        jpeg_pixels(NDArray.from_numpy(data.astype(np.uint16), color_mode=mode))


def _writer(cls, tmp_path: Path):
    w = cls("W1", "W1:", PortGraph())
    w.site = Site(base_dir=tmp_path, data_roots=(tmp_path.resolve(),))
    w.values.update(FilePath=str(tmp_path.resolve()) + "/", FileName="f", FileNumber=1,
                    FileWriteMode=CAPTURE)
    return w


def _frames() -> list[NDArray]:
    out = []
    for k in range(3):
        a = NDArray.from_numpy(np.full((3, 4), k + 1, dtype=np.uint16))
        a.stamp(k + 1)
        out.append(a)
    lost = NDArray.missing(MissingCause.DROPPED, "queue full")
    lost.stamp(2)
    return [out[0], lost, out[2]]


def test_netcdf_keeps_a_row_for_a_lost_frame(tmp_path):
    w = _writer(NetCDF, tmp_path)
    assert w._write_files(_frames(), dict(w.values)) is None
    with netCDF4.Dataset(tmp_path / "f_001.nc") as nc:
        assert list(nc["uniqueId"][:]) == [1, 2, 3]
        status = list(nc["ndflowStatus"][:])
        assert status[0] == status[2] == 0 and status[1] > 0
        assert f"{status[1]} overrun/dropped" in nc.ndflowStatusCodes
        np.testing.assert_array_equal(np.asarray(nc["array_data"][2]), np.full((3, 4), 3))


def test_nexus_keeps_a_row_for_a_lost_frame(tmp_path):
    w = _writer(Nexus, tmp_path)
    assert w._write_files(_frames(), dict(w.values)) is None
    with h5py.File(tmp_path / "f_001.h5", "r") as f:
        data = f["/entry/instrument/detector/data"]
        assert data.shape == (3, 3, 4)
        assert data[1].max() == 0 and data[2].min() == 3
        assert list(f["/entry/ndflow/unique_id"][()]) == [1, 2, 3]
        status = list(f["/entry/ndflow/status"][()])
        assert status[0] == status[2] == 0 and status[1] > 0
