"""HDF5 compression filters when HDF5_PLUGIN_PATH points at another library's plugins.

Importing netCDF4 sets HDF5_PLUGIN_PATH to netCDF4's plugin folder, whose Blosc, Zstd and Bzip2
filters are linked to netCDF4's own libhdf5. A process started from there (a beamline script that
used netCDF4, or this test suite) hands the variable to the IOC; HDF5 then loaded those filters
when hdf5plugin asked whether Blosc was available, and every Blosc dataset failed ("error during
user callback": the foreign filter queried its own library with h5py's ids). The IOC must write
with hdf5plugin's filters whatever the environment says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from conftest import ioc_with_data_root
from test_file_writers import capture, config, frames
from test_file_writers import p as p  # noqa: F401  (the fixture resetting the camera)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    spec = importlib.util.find_spec("netCDF4")
    if spec is None or spec.origin is None:
        pytest.skip("netCDF4 is not installed (the test extra installs it)")
    plugins = Path(spec.origin).parent / "plugins"
    assert any(plugins.glob("*blosc*")), f"no Blosc plugin in {plugins}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HDF5_PLUGIN_PATH", str(plugins))  # the IOC inherits it
        with ioc_with_data_root(tmp_path_factory, "foreign_plugins", config) as process:
            yield process


@pytest.mark.parametrize("compression, filter_id", [("Blosc", hdf5plugin.BLOSC_ID),
                                                    ("LZ4", hdf5plugin.LZ4_ID)])
def test_blosc_files_are_written_with_a_foreign_plugin_path(ioc, p, compression, filter_id):
    path = capture(p, 3, FileName=f"foreign_{compression}", FileWriteMode="Stream",
                   Compression=compression, NumCapture=3)
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.id.get_create_plist().get_filter(0)[0] == filter_id
        np.testing.assert_array_equal(data[:], frames(3))
    assert "error during user callback" not in ioc.log()
