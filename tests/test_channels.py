"""Multi-channel frames through a real IOC (issue 15 item 1, acceptance 1): a 2-channel sim
acquisition through Stats (per channel) and HDF5 gives a (10, 2, H, W) dataset equal to the
formula per channel; NDArrayAddress 1 and 2 select each channel for Stats and image1; a
plugin that handles one channel says so; the Python plugin gives algorithms the channel axis
and names; bad puts on the new PVs. pyepics as the client, h5py to read the file back."""

from __future__ import annotations

import ctypes
import os
import subprocess
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from epics import ca, dbr

from conftest import CA_ENV, NDFLOW, running_ioc
from test_acquisition import get, put, ramp, wait_for, wrap
from test_file_writers import capture, refused, text
from test_file_writers import put_status as put_number_status

NX, NY = 40, 24
NAMES = ["threshold_1", "threshold_2"]
GAIN, OFFSET = 0.5, 10.0  # cam1:ChannelGain / ChannelOffset

ALGORITHM = '''
from ndflow.algorithm import Algorithm, Output


class Channels(Algorithm):
    names = Output(str, length=80)
    axis = Output(int)
    count = Output(int)
    total2 = Output(float)

    def process(self, image, params, attributes, metadata):
        if not metadata.channels:
            return {"names": "", "axis": -1, "count": 1, "total2": -1.0}
        return {"names": ",".join(metadata.channels), "axis": metadata.channel_axis,
                "count": image.shape[metadata.channel_axis],
                "total2": float(image[1].sum(dtype=float))}
'''


def config(root: Path, algorithm: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        algorithm_folders: ["{algorithm.parent}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SIM1, enabled: true}}
          - {{type: stats, port: STATS2, prefix: "Stats2:", input: SIM1, address: 1,
             enabled: true}}
          - {{type: stdarrays, port: Image1, prefix: "image1:", input: SIM1, enabled: true,
             options: {{data_type: UInt16, nelm: 100000}}}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: STATS1, enabled: true}}
          - {{type: roi, port: ROI1, prefix: "ROI1:", input: SIM1, enabled: true}}
          - {{type: python, port: PY1, prefix: "Py1:", input: SIM1, enabled: true,
             options: {{file: "{algorithm}"}}}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("channels")
    root = folder / "data"
    root.mkdir()
    algorithm = folder / "channels_alg.py"
    algorithm.write_text(ALGORITHM)
    with running_ioc(config(root, algorithm), folder) as ioc:
        ioc.root = root
        yield ioc


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Multiple"), ("NumImages", 1), ("WaitForPlugins", "Yes"),
                        ("DataType", "UInt16"), ("ColorMode", "Mono"),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1.0),
                        ("SimMode", "LinearRamp"), ("NumChannels", 2), ("ChannelGain", GAIN),
                        ("ChannelOffset", OFFSET), ("Reset", 1), ("ArrayCounter", 0)]:
        put(p + "cam1:" + name, value)
    put(p + "Stats1:ComputeStatistics", 1)
    put(p + "Stats2:ComputeStatistics", 1)
    put(p + "Stats2:NDArrayAddress", 1)
    put(p + "image1:NDArrayAddress", 0)
    put(p + "ROI1:NDArrayAddress", 0)
    put(p + "HDF1:Capture", 0)
    for name, value in [("FileWriteMode", "Single"), ("AutoSave", "No"), ("CreateDirectory", 0),
                        ("FilePath", str(ioc.root)), ("FileTemplate", "%s%s_%3.3d.h5"),
                        ("Compression", "None"), ("SWMRMode", "Off"), ("LazyOpen", "No"),
                        ("StoreAttr", "Yes"), ("NumCapture", 1)]:
        put(p + "HDF1:" + name, value)
    return p


def expected(frame: int) -> np.ndarray:
    """Frame `frame` (1-based) of the 2-channel UInt16 LinearRamp (inc = 1): channel 1 the
    ADSimDetector ramp, channel 2 = (uint16)(channel 1 * ChannelGain + ChannelOffset)."""
    first = wrap(ramp(NX, NY, frame=frame), "u2")
    second = wrap(first.astype(np.float64) * GAIN + OFFSET, "u2")
    return np.stack([first, second])


def acquire(p: str, n: int = 1) -> None:
    put(p + "cam1:NumImages", n)
    put(p + "cam1:Acquire", 1)  # WaitForPlugins: done once every plugin has the frames


def image1(p: str) -> np.ndarray:
    ndims = get(p + "image1:NDimensions_RBV")
    shape = tuple(reversed([get(p + f"image1:ArraySize{i}_RBV") for i in range(ndims)]))
    data = get(p + "image1:ArrayData", count=int(np.prod(shape)))
    return np.asarray(data).astype(np.uint16).reshape(shape)


def test_ten_frames_through_stats_and_hdf5(p):
    path = capture(p, 10, FileName="two", FileWriteMode="Stream", NumCapture=10,
                   AutoSave="Yes")
    want = np.stack([expected(k) for k in range(1, 11)])
    assert not np.array_equal(want[:, 0], want[:, 1])  # the thresholds count differently
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.shape == (10, 2, NY, NX) and data.dtype == np.uint16
        assert [str(n) for n in data.attrs["channels"]] == NAMES
        assert data.attrs["channel_axis"] == 1
        np.testing.assert_array_equal(data[:], want)
        attrs = f["/entry/instrument/NDAttributes"]
        np.testing.assert_array_equal(attrs["NDArrayUniqueId"][:], np.arange(1, 11))
        assert (attrs["NDArrayStatus"][:] == 0).all()
        # Stats1 (address 0) per channel, frame by frame
        for j, name in enumerate(NAMES):
            np.testing.assert_allclose(attrs[f"Total_{name}"][:],
                                       want[:, j].sum(axis=(1, 2), dtype=np.float64))
            np.testing.assert_allclose(attrs[f"MaxValue_{name}"][:],
                                       want[:, j].max(axis=(1, 2)))
        np.testing.assert_allclose(attrs["Total"][:], want[:, 0].sum(axis=(1, 2), dtype=float))
    last = want[-1].astype(np.float64)
    assert get(p + "Stats1:NumChannels_RBV") == 2
    np.testing.assert_allclose(get(p + "Stats1:ChannelTotal_RBV", count=2), last.sum(axis=(1, 2)))
    np.testing.assert_allclose(get(p + "Stats1:ChannelSigma_RBV", count=2),
                               last.std(axis=(1, 2)), rtol=1e-9)
    assert get(p + "Stats1:Total_RBV") == pytest.approx(last[0].sum())
    assert text(p + "cam1:ChannelNames_RBV") == "threshold_1 threshold_2"
    assert get(p + "cam1:ArraySizeZ_RBV") == 2
    assert get(p + "HDF1:NumCaptured_RBV") == 10


@pytest.mark.parametrize("address", [1, 2])
def test_ndarray_address_selects_the_channel(p, address):
    put(p + "Stats2:NDArrayAddress", address)
    put(p + "image1:NDArrayAddress", address)
    acquire(p, 1)
    want = expected(1)[address - 1]
    assert get(p + "Stats2:Total_RBV") == pytest.approx(want.sum(dtype=np.float64))
    assert get(p + "Stats2:MaxValue_RBV") == want.max()
    assert get(p + "Stats2:NumChannels_RBV") == 1  # it sees one channel
    assert get(p + "image1:NDimensions_RBV") == 2
    np.testing.assert_array_equal(image1(p), want)


def test_address_0_image_holds_all_channels(p):
    acquire(p, 1)
    assert get(p + "image1:NDimensions_RBV") == 3
    np.testing.assert_array_equal(image1(p), expected(1))


def test_a_plugin_for_one_channel_says_so(ioc, p):
    def said() -> int:
        return sum("ROI1: array" in line and "set NDArrayAddress to 1..2" in line
                   for line in ioc.log().splitlines())
    before = said()
    received = get(p + "ROI1:FramesReceived_RBV")
    acquire(p, 20)
    assert wait_for(lambda: "set NDArrayAddress to 1..2" in text(p + "ROI1:StatusMessage_RBV"))
    # every frame refused and counted, the log not flooded (one line per few seconds)
    assert wait_for(lambda: get(p + "ROI1:FramesReceived_RBV") == received + 20)
    assert get(p + "ROI1:ArrayCounter_RBV") >= 20
    # (held back entirely if an earlier test's line was logged less than an interval ago)
    assert said() >= 1 and said() - before <= 2
    put(p + "ROI1:NDArrayAddress", 2)
    put(p + "cam1:Reset", 1)
    acquire(p, 1)
    assert get(p + "ROI1:ArraySize0_RBV") == NX and get(p + "ROI1:NDimensions_RBV") == 2
    put(p + "ROI1:NDArrayAddress", 3)  # the frames have 2 channels
    acquire(p, 1)
    assert wait_for(lambda: "NDArrayAddress 3" in text(p + "ROI1:StatusMessage_RBV"))


def test_algorithms_get_the_channel_axis_and_names(p):
    assert wait_for(lambda: get(p + "Py1:Loads_RBV") >= 1, timeout=30)  # its PVs exist
    acquire(p, 1)
    assert wait_for(lambda: text(p + "Py1:Names_RBV") == ",".join(NAMES), timeout=20)
    assert get(p + "Py1:Axis_RBV") == 0 and get(p + "Py1:Count_RBV") == 2
    assert get(p + "Py1:Total2_RBV") == pytest.approx(expected(1)[1].sum(dtype=np.float64))


def test_one_channel_is_the_ordinary_frame(p):
    put(p + "cam1:NumChannels", 1)
    acquire(p, 1)
    assert get(p + "image1:NDimensions_RBV") == 2
    np.testing.assert_array_equal(image1(p), expected(1)[0])
    assert get(p + "Stats1:NumChannels_RBV") == 1
    assert get(p + "Stats1:Total_RBV") == pytest.approx(expected(1)[0].sum(dtype=float))
    assert text(p + "cam1:ChannelNames_RBV") == "threshold_1"


def test_channels_need_mono(ioc, p):
    put(p + "cam1:ColorMode", "RGB1")
    acquire(p, 1)
    assert "NumChannels 2 needs ColorMode Mono" in ioc.log()  # said (the status moved on)
    assert text(p + "cam1:ChannelNames_RBV") == "threshold_1"
    assert get(p + "cam1:NumChannels_RBV") == 2  # the setting stays for the next Mono run
    assert get(p + "image1:NDimensions_RBV") == 3 and get(p + "image1:ArraySize0_RBV") == 3
    put(p + "cam1:ColorMode", "Mono")


BAD = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, "abc", "9" * 39, "1e999", ""]


def put_status(pv: str, value: str | float) -> int | None:
    """The CA status of a put-callback; text goes as DBR_STRING (at most 40 characters on CA),
    as caput writes it to a numeric record."""
    if not isinstance(value, str):
        return put_number_status(pv, value)
    chid = ca.create_channel(pv, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=5), f"cannot connect {pv}"
    result: dict[str, int] = {}

    def done(args) -> None:
        result["status"] = args.status
    callback = dbr.make_callback(done, dbr.event_handler_args)
    data = (ctypes.c_char * 40)(*value.encode()[:39])
    usr = ctypes.py_object(0)
    assert ca.libca.ca_array_put_callback(dbr.STRING, 1, chid, data, callback, usr) == \
        dbr.ECA_NORMAL
    ca.flush_io()
    deadline = time.monotonic() + 10
    while "status" not in result and time.monotonic() < deadline:
        ca.poll(evt=1e-3, iot=0.01)
    return result.get("status")


@pytest.mark.parametrize("name", ["cam1:NumChannels", "cam1:ChannelGain", "cam1:ChannelOffset",
                                  "Stats2:NDArrayAddress"])
def test_bad_puts_on_the_new_pvs(ioc, p, name):
    for value in BAD:
        status = put_status(p + name, value)
        assert status is not None  # answered, not hung
        assert np.isfinite(get(p + name + "_RBV"))
    assert refused(put_status(p + name, float("nan")))
    assert refused(put_status(p + name, "abc"))
    # the declared limits hold whatever was written
    put(p + "cam1:NumChannels", 1e6)
    assert get(p + "cam1:NumChannels_RBV") == 16
    put(p + "cam1:NumChannels", -3)
    assert get(p + "cam1:NumChannels_RBV") == 1
    put(p + "cam1:ChannelGain", 1e6)
    assert get(p + "cam1:ChannelGain_RBV") == 10.0
    # and the IOC still acquires the right frames
    put(p + "cam1:NumChannels", 2)
    put(p + "cam1:ChannelGain", GAIN)
    put(p + "cam1:ChannelOffset", OFFSET)
    put(p + "Stats2:NDArrayAddress", 2)
    put(p + "cam1:Reset", 1)
    put(p + "cam1:ArrayCounter", 0)
    acquire(p, 1)
    assert get(p + "Stats2:Total_RBV") == pytest.approx(expected(1)[1].sum(dtype=float))
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"


def test_bad_channel_names_in_the_config_name_key_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(textwrap.dedent("""
        drivers:
          - type: sim
            port: SIM1
            prefix: "cam1:"
            options: {max_size_x: 16, max_size_y: 16, channel_names: [low, "two words"]}
        plugins: []
        """))
    done = subprocess.run(NDFLOW + ["run", str(bad), "--prefix", "BAD:"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **CA_ENV})
    assert done.returncode != 0
    assert "line 6: drivers[0].options.channel_names" in done.stderr + done.stdout
    assert "'two words' is not an identifier" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
