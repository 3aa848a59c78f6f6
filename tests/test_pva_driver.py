"""The pva driver (ADCore's pvaDriver) on real processes: an NTNDArray PV served by a p4p server
in this process, an ndflow IOC whose `pva` driver reads it, and what arrives downstream read back
over Channel Access and from the IOC's HDF5 files.

- frames arrive with their pixels, uniqueId, timestamps, dims and attributes; ImageMode counts
  received frames; a compressed frame is passed on compressed and the HDF5 file holds its pixels;
- the server going away sets PvConnection_RBV Down with a status, and frames flow again when it
  returns;
- a consumer slower than the source counts the frames it lost on OverrunCounter_RBV;
- bad PvNames (10 kB, not an NTNDArray, no such PV) give a clear status and no traceback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
from p4p import Value
from p4p.nt import NTNDArray, NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from conftest import (CA_PORTS, PVA_PORTS, PVA_SEARCH_PORT, _ports_in_use, running_ioc,
                      unique_prefix)
from test_acquisition import get, put, wait_for

from ndflow.ndarray import EPICS_EPOCH_OFFSET, AttrSource, Codec, NDArray, NDAttribute
from ndflow.plugins.codec import encode_blosc, encode_bslz4, encode_lz4h5, encode_zlib
from ndflow.pva.ntndarray import TYPE
from ndflow.pva.ntndarray_stream import to_value

NX, NY = 24, 16
IMAGE, SCALAR, PLAIN = "PVATEST:image", "PVATEST:scalar", "PVATEST:plain"


class Source:
    """A p4p server in this process serving an NTNDArray PV (and an NTScalar one), on a pvAccess
    port pair of the test session no IOC uses, so the IOCs' clients find it by their search."""

    def __init__(self) -> None:
        ca_port = next(p for p in CA_PORTS if p not in _ports_in_use)
        _ports_in_use.add(ca_port)  # reserves its PVA ports: no IOC takes them meanwhile
        self._reserved = ca_port
        port = PVA_PORTS[CA_PORTS.index(ca_port)]
        self.conf = {"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
                     "EPICS_PVAS_SERVER_PORT": str(port),
                     "EPICS_PVAS_BROADCAST_PORT": str(PVA_SEARCH_PORT),
                     "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
                     "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1"}
        self.image = SharedPV(initial=Value(TYPE, {}))  # no frame yet: an empty union
        self.scalar = SharedPV(nt=NTScalar("d"), initial=1.5)
        # what a plain p4p server serves: numpy arrays wrapped by p4p's NTNDArray
        self.plain = SharedPV(nt=NTNDArray(), initial=np.zeros((1, 1), np.uint8))
        self.server: Server | None = None
        self.last_uid = 0
        self.start()

    def start(self) -> None:
        self.server = Server(providers=[{IMAGE: self.image, SCALAR: self.scalar,
                                         PLAIN: self.plain}],
                             conf=self.conf, useenv=False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def post(self, array: NDArray) -> None:
        self.image.post(to_value(array))
        self.last_uid = array.unique_id

    def uids(self, n: int) -> list[int]:
        """The next `n` uniqueIds of this source (the PV's ids go on from test to test)."""
        return list(range(self.last_uid + 1, self.last_uid + 1 + n))

    def close(self) -> None:
        self.stop()
        _ports_in_use.discard(self._reserved)


def config(folder: Path, queue_size: int = 2, decompress: bool = True) -> str:
    """The IOC: the pva driver, a Codec plugin in Decompress mode (compressed frames are
    restored, others pass), a blocking Stats and an HDF5 writer after it."""
    source = "CODEC1" if decompress else "PVA1"
    codec = ("  - {type: codec, port: CODEC1, prefix: 'Codec1:', input: PVA1, enabled: true,\n"
             "     blocking: true, options: {mode: Decompress}}\n") if decompress else ""
    return (f"data_roots: ['{folder}']\n"
            "drivers:\n"
            f"  - {{type: pva, port: PVA1, prefix: 'cam1:', options: {{pv_name: '{IMAGE}', "
            f"queue_size: {queue_size}}}}}\n"
            "plugins:\n" + codec +
            f"  - {{type: stats, port: STATS1, prefix: 'Stats1:', input: {source}, "
            "enabled: true,\n     blocking: true}\n"
            f"  - {{type: hdf5, port: FileHDF1, prefix: 'HDF1:', input: {source}, "
            "enabled: true}\n")


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    src = Source()
    yield src
    src.close()


@pytest.fixture(scope="module")
def ioc(source, tmp_path_factory):
    """One IOC for this module's driver tests (its log must hold no traceback at the end)."""
    folder = tmp_path_factory.mktemp("pvadriver")
    with running_ioc(config(folder), folder) as proc:
        proc.folder = folder
        yield proc


@pytest.fixture
def cam(ioc, source, tmp_path) -> str:
    """The shared IOC, idle and reading the test PV, counters at 0; its prefix."""
    p = ioc.prefix
    if source.server is None:
        source.start()
    if get(p + "cam1:Acquire_RBV"):
        put(p + "cam1:Acquire", 0)
    if get(p + "HDF1:Capture_RBV"):
        put(p + "HDF1:Capture", 0)
    assert wait_for(lambda: get(p + "cam1:DetectorState_RBV", as_string=True) != "Acquire")
    if get(p + "cam1:PvName_RBV", as_string=True) != IMAGE:
        put(p + "cam1:PvName", IMAGE)
    assert wait_for(lambda: get(p + "cam1:PvConnection_RBV", as_string=True) == "Up")
    for name, value in [("AcquirePeriod", 0.0), ("ArrayCounter", 0), ("OverrunCounter", 0)]:
        put(p + "cam1:" + name, value)
    yield p
    no_traceback(ioc)


def frame(uid: int, when: float | None = None, dtype: str = "u2") -> NDArray:
    """A frame as an areaDetector source would post it: its own uniqueId, times, attributes."""
    y, x = np.mgrid[0:NY, 0:NX]
    array = NDArray.from_numpy(((x + 100 * y + 7 * uid) % 4000).astype(dtype))
    array.stamp(uid, 1_750_000_000.125 + uid if when is None else when)
    # the driver's EPICS time stamp differs from the data's time, as in ADCore
    array.epics_ts = (array.epics_ts[0] - 3, 456_789 + uid)
    array.dims[0].offset, array.dims[0].binning = 8, 2
    array.attributes = {
        "ColorMode": NDAttribute("ColorMode", 0, "Color mode"),
        "Temperature": NDAttribute("Temperature", -20.5 + uid, "sensor [C]", AttrSource.PARAM,
                                   "TEMP"),
        "Shot": NDAttribute("Shot", np.int32(1000 + uid), "shot number", AttrSource.CONST, "1"),
        "Target": NDAttribute("Target", f"field {uid}", "target name"),
    }
    return array


def start_capture(p: str, folder: Path, name: str, count: int, mode: str = "Stream") -> None:
    """HDF1 captures `count` frames (Capture mode: buffered, the file made from the first of
    them; Stream opens it at once with the layout of the last frame the writer saw)."""
    put(p + "HDF1:FilePath", str(folder))
    put(p + "HDF1:FileName", name)
    put(p + "HDF1:FileTemplate", "%s%s_%3.3d.h5")
    put(p + "HDF1:FileWriteMode", mode)
    put(p + "HDF1:AutoSave", "Yes")  # Capture mode writes the buffer when it is full
    put(p + "HDF1:NumCapture", count)
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1)


def acquire(p: str, mode: str, count: int = 1) -> None:
    """Acquire=1 and wait until the driver acquires (its monitor is then live)."""
    put(p + "cam1:ImageMode", mode)
    put(p + "cam1:NumImages", count)
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(p + "cam1:DetectorState_RBV", as_string=True) == "Acquire")


def status(p: str) -> str:
    return get(p + "cam1:StatusMessage_RBV", as_string=True)


def no_traceback(ioc) -> None:
    log = ioc.log()
    assert "Traceback" not in log, log


# --- frames -----------------------------------------------------------------------------------
def test_frames_arrive_with_pixels_ids_times_and_attributes(cam, source, ioc):
    p = cam
    assert get(p + "cam1:PvName_RBV", as_string=True) == IMAGE
    start_capture(p, ioc.folder, "frames", 5)
    acquire(p, "Multiple", 5)
    ids = source.uids(6)
    sent = [frame(uid) for uid in ids]
    for array in sent:  # one more than NumImages: Multiple stops after 5
        source.post(array)
        time.sleep(0.05)
    assert wait_for(lambda: get(p + "cam1:Acquire_RBV") == 0)
    assert get(p + "cam1:NumImagesCounter_RBV") == 5
    assert get(p + "cam1:ArrayCounter_RBV") == 5
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0)
    assert get(p + "cam1:UniqueId_RBV") == ids[4]  # the source's id, not ArrayCounter
    assert get(p + "cam1:ArraySizeX_RBV") == NX and get(p + "cam1:ArraySizeY_RBV") == NY
    assert get(p + "cam1:DataType_RBV", as_string=True) == "UInt16"
    assert get(p + "cam1:BinX_RBV") == 2 and get(p + "cam1:MinX_RBV") == 8
    assert get(p + "cam1:OverrunCounter_RBV") == 0
    assert get(p + "Stats1:MaxValue_RBV") == sent[4].data.max()
    with h5py.File(get(p + "HDF1:FullFileName_RBV", as_string=True)) as f:
        np.testing.assert_array_equal(f["/entry/data/data"][()],
                                      np.stack([a.data for a in sent[:5]]))
        attrs = f["/entry/instrument/NDAttributes"]
        assert list(attrs["NDArrayUniqueId"][()]) == ids[:5]
        assert list(attrs["NDArrayTimeStamp"][()]) == [a.timestamp for a in sent[:5]]
        assert list(attrs["NDArrayEpicsTSSec"][()]) == [a.epics_ts[0] for a in sent[:5]]
        assert list(attrs["NDArrayEpicsTSnSec"][()]) == [a.epics_ts[1] for a in sent[:5]]
        assert list(attrs["Temperature"][()]) == [-20.5 + uid for uid in ids[:5]]
        assert attrs["Temperature"].attrs["description"] == "sensor [C]"
        assert attrs["Shot"].dtype == np.int32
        assert list(attrs["Shot"][()]) == [1000 + uid for uid in ids[:5]]
        assert [t.decode() for t in attrs["Target"][()]] == [f"field {uid}" for uid in ids[:5]]


def test_single_mode_takes_the_next_frame_not_the_one_before(cam, source):
    p = cam
    before, after = source.uids(2)
    source.post(frame(before))  # posted before Acquire: the PV's current value
    time.sleep(0.3)
    acquire(p, "Single")
    time.sleep(0.3)
    assert get(p + "cam1:Acquire_RBV") == 1  # still waiting: that frame is not new
    source.post(frame(after))
    assert wait_for(lambda: get(p + "cam1:Acquire_RBV") == 0)
    assert get(p + "cam1:UniqueId_RBV") == after
    assert get(p + "cam1:NumImagesCounter_RBV") == 1


@pytest.mark.parametrize("codec", ["lz4", "lz4hdf5", "bslz4", "blosc", "zlib"])
def test_a_compressed_frame_goes_on_compressed_and_decompresses_to_its_pixels(
        codec, cam, source, ioc):
    """The driver passes a compressed frame on as it came (Codec_RBV, the element type from
    codec.parameters); a Codec plugin in Decompress mode gives back the source's pixels."""
    p = cam
    start_capture(p, ioc.folder, codec, 1)
    acquire(p, "Single")
    [uid] = source.uids(1)
    raw = frame(uid)
    level = shuffle = compressor = -1
    if codec in ("lz4", "lz4hdf5"):
        payload = encode_lz4h5(raw.data, 0 if codec == "lz4" else 64)
    elif codec == "bslz4":
        payload = encode_bslz4(raw.data)
    elif codec == "blosc":
        level, shuffle, compressor = 5, 1, 0
        payload = encode_blosc(raw.data, level, shuffle, compressor)
    else:
        level = 6
        payload = encode_zlib(raw.data, level)
    source.post(raw.derive(np.frombuffer(payload, np.uint8),
                           codec=Codec(codec, level, shuffle, compressor, raw.data.dtype.str)))
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0)
    assert get(p + "cam1:Codec_RBV", as_string=True) == codec
    assert get(p + "cam1:DataType_RBV", as_string=True) == "UInt16"
    assert get(p + "Codec1:CodecStatus", as_string=True) == "Success", \
        get(p + "Codec1:CodecError", as_string=True)
    assert get(p + "Stats1:MaxValue_RBV") == raw.data.max()
    with h5py.File(get(p + "HDF1:FullFileName_RBV", as_string=True)) as f:
        np.testing.assert_array_equal(f["/entry/data/data"][0], raw.data)
        assert list(f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]) == [uid]


def test_a_plain_p4p_server_frame_is_received(cam, source):
    """What a p4p SharedPV(nt=NTNDArray()) serves: uniqueId 0, no timestamps, ColorMode
    inferred from the shape."""
    p = cam
    put(p + "cam1:PvName", PLAIN)
    assert wait_for(lambda: get(p + "cam1:PvConnection_RBV", as_string=True) == "Up")
    acquire(p, "Continuous")
    data = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    before = time.time()
    source.plain.post(data)
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == 1)
    assert get(p + "cam1:ColorMode_RBV", as_string=True) == "RGB1"
    assert (get(p + "cam1:ArraySizeX_RBV"), get(p + "cam1:ArraySizeY_RBV"),
            get(p + "cam1:ArraySizeZ_RBV")) == (4, 6, 3)
    assert get(p + "cam1:UniqueId_RBV") == 0
    # no time from the source: stamped on arrival
    assert get(p + "cam1:TimeStamp_RBV") + EPICS_EPOCH_OFFSET >= before - 1
    put(p + "cam1:Acquire", 0)


# --- connection -------------------------------------------------------------------------------
def test_server_gone_sets_down_and_frames_flow_when_it_returns(cam, source):
    p = cam
    acquire(p, "Continuous")
    first, second, third = source.uids(3)
    source.post(frame(first))
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == 1)
    source.stop()
    assert wait_for(lambda: get(p + "cam1:PvConnection_RBV", as_string=True) == "Down")
    assert wait_for(lambda: "disconnected" in status(p)), status(p)
    assert IMAGE in status(p)
    source.start()
    # within seconds, whenever the client last hurried its searches (the driver renews a
    # channel left disconnected for 2 s; PVXS alone could wait a 6-30 s search-ring turn)
    assert wait_for(lambda: get(p + "cam1:PvConnection_RBV", as_string=True) == "Up",
                    timeout=6)
    assert wait_for(lambda: "connected" in status(p) and "dis" not in status(p)), status(p)
    time.sleep(0.2)
    for uid in (second, third):
        source.post(frame(uid))
        time.sleep(0.05)
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == 3), \
        get(p + "cam1:ArrayCounter_RBV")
    assert get(p + "cam1:UniqueId_RBV") == third
    assert get(p + "cam1:OverrunCounter_RBV") == 0  # nothing counted across the outage
    assert get(p + "cam1:Acquire_RBV") == 1
    put(p + "cam1:Acquire", 0)


# --- overruns ---------------------------------------------------------------------------------
def test_a_slow_consumer_counts_overruns(cam, source):
    """The driver takes a frame every 0.1 s (AcquirePeriod); the source posts every 10 ms. The
    client queue (2) squashes the surplus; each uniqueId that never arrived is one overrun, so
    frames received + overruns = frames posted."""
    p = cam
    put(p + "cam1:AcquirePeriod", 0.1)
    acquire(p, "Continuous")
    posted = source.uids(40)
    for uid in posted:
        source.post(frame(uid))
        time.sleep(0.01)
    assert wait_for(lambda: get(p + "cam1:UniqueId_RBV") == posted[-1]), \
        get(p + "cam1:UniqueId_RBV")  # the newest update survives the squash
    received = get(p + "cam1:ArrayCounter_RBV")
    overruns = get(p + "cam1:OverrunCounter_RBV")
    assert overruns > 0 and received < len(posted)
    assert received + overruns == len(posted), (received, overruns)
    put(p + "cam1:OverrunCounter", 0)  # reset, as pvaDriver's longout
    assert wait_for(lambda: get(p + "cam1:OverrunCounter_RBV") == 0)
    put(p + "cam1:Acquire", 0)


def test_gaps_in_unique_id_are_overruns_and_a_restart_is_not(cam, source):
    p = cam
    acquire(p, "Continuous")
    base = source.uids(1)[0]
    # base+2, base+3 lost; the source restarts at 1; 3 lost
    for uid in (base, base + 1, base + 4, base + 5, 1, 2, 4):
        source.post(frame(uid))
        time.sleep(0.05)
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == 7)
    assert get(p + "cam1:OverrunCounter_RBV") == 3
    put(p + "cam1:Acquire", 0)


# --- bad input --------------------------------------------------------------------------------
def test_bad_pv_names_give_a_status_and_the_driver_carries_on(cam, source):
    p = cam
    # not an NTNDArray
    put(p + "cam1:PvName", SCALAR)
    assert wait_for(lambda: "not an NTNDArray" in status(p)), status(p)
    assert SCALAR in status(p)
    # no such PV
    put(p + "cam1:PvName", "PVATEST:nobody")
    assert wait_for(lambda: "not found" in status(p), timeout=5), status(p)
    assert get(p + "cam1:PvConnection_RBV", as_string=True) == "Down"
    # 10 kB: truncated to the waveform's 255 characters (said so), then not found
    put(p + "cam1:PvName", "X" * 10_000)
    assert wait_for(lambda: len(get(p + "cam1:PvName_RBV", as_string=True)) == 255)
    assert wait_for(lambda: "not found" in status(p), timeout=5), status(p)
    # acquiring on a PV that is not a frame: a status, no frame, no dead thread
    put(p + "cam1:PvName", SCALAR)
    acquire(p, "Continuous")
    source.scalar.post(2.5)
    time.sleep(0.3)
    assert get(p + "cam1:ArrayCounter_RBV") == 0
    # back to the real PV while acquiring: frames flow
    put(p + "cam1:PvName", IMAGE)
    assert wait_for(lambda: get(p + "cam1:PvConnection_RBV", as_string=True) == "Up")
    time.sleep(0.3)
    source.post(frame(source.uids(1)[0]))
    assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") == 1), status(p)
    put(p + "cam1:Acquire", 0)


# --- two ndflow IOCs: one's Pva1:Image (NDPluginPva) read by the other's pva driver ------------
SOURCE_IOC = """
data_roots: ["{root}"]
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: 40, max_size_y: 30}}}}
plugins:
  - {{type: pva, port: PVA1, prefix: "Pva1:", input: SIM1, blocking: true, enabled: true}}
  - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, blocking: true, enabled: true}}
"""
ATTRIBUTES_XML = ('<Attributes>'
                  '<Attribute name="Gain" type="PARAM" source="Gain" datatype="DOUBLE" '
                  'description="camera gain"/>'
                  '<Attribute name="Frames" type="PARAM" source="ArrayCounter" datatype="INT"/>'
                  '<Attribute name="Label" type="CONST" source="bl 7" datatype="STRING"/>'
                  '</Attributes>')


@pytest.fixture(scope="module")
def sim_ioc(tmp_path_factory):
    """A second ndflow IOC: a simulated detector whose frames Pva1 serves as NTNDArray."""
    folder = tmp_path_factory.mktemp("simsource")
    with running_ioc(SOURCE_IOC.format(root=folder), folder) as proc:
        proc.folder = folder
        a = proc.prefix
        for name, value in [("ImageMode", "Multiple"), ("NumImages", 5), ("AcquireTime", 0.001),
                            ("AcquirePeriod", 0.05), ("Gain", 2.5), ("SimMode", "LinearRamp"),
                            ("NDAttributesFile", ATTRIBUTES_XML)]:
            put(a + "cam1:" + name, value)
        assert get(a + "cam1:NDAttributesStatus", as_string=True) == "Attributes file OK"
        yield proc


@pytest.mark.parametrize("data_type, color", [("UInt16", "Mono"), ("Float32", "Mono"),
                                              ("UInt8", "RGB1")])
def test_a_second_ioc_reproduces_the_first_iocs_pva1_frames(cam, ioc, sim_ioc, data_type,
                                                            color):
    """The pva driver of this module's IOC reads the sim IOC's Pva1:Image: both IOCs' HDF5
    files hold the same pixels, uniqueIds, time stamps and attributes."""
    a, b = sim_ioc.prefix, cam
    put(a + "cam1:DataType", data_type)
    put(a + "cam1:ColorMode", color)
    put(b + "cam1:PvName", f"{a}Pva1:Image")
    assert wait_for(lambda: get(b + "cam1:PvConnection_RBV", as_string=True) == "Up")
    name = f"{data_type}_{color}"
    start_capture(a, sim_ioc.folder, name, 5, "Capture")  # the type and colour change here
    start_capture(b, ioc.folder, name, 5, "Capture")
    acquire(b, "Multiple", 5)
    put(a + "cam1:Acquire", 1, timeout=20)
    assert wait_for(lambda: get(b + "cam1:Acquire_RBV") == 0), status(b)
    assert wait_for(lambda: get(b + "HDF1:Capture_RBV") == 0)
    assert wait_for(lambda: get(a + "HDF1:Capture_RBV") == 0)
    assert get(b + "cam1:OverrunCounter_RBV") == 0
    assert get(b + "cam1:ColorMode_RBV", as_string=True) == color
    assert get(b + "cam1:DataType_RBV", as_string=True) == data_type
    with h5py.File(get(a + "HDF1:FullFileName_RBV", as_string=True)) as fa, \
            h5py.File(get(b + "HDF1:FullFileName_RBV", as_string=True)) as fb:
        sent, received = fa["/entry/data/data"][()], fb["/entry/data/data"][()]
        assert received.dtype == sent.dtype and received.shape == sent.shape
        np.testing.assert_array_equal(received, sent)
        na, nb = fa["/entry/instrument/NDAttributes"], fb["/entry/instrument/NDAttributes"]
        for attr in ("NDArrayUniqueId", "NDArrayTimeStamp", "NDArrayEpicsTSSec",
                     "NDArrayEpicsTSnSec", "Gain", "Frames", "Label", "ColorMode"):
            np.testing.assert_array_equal(nb[attr][()], na[attr][()], err_msg=attr)
        assert nb["Gain"].attrs["description"] == "camera gain"
        assert list(nb["Gain"][()]) == [2.5] * 5
