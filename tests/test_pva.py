"""pvAccess: every PV of the default IOC over PVA as over CA, the same put path, put completion,
and `Pva1:Image` as NTNDArray (NDPluginPva), read with p4p and pvapy as independent clients."""

from __future__ import annotations

import math
import time

import epics
import numpy as np
import pytest
from p4p.client.thread import Context, RemoteError

from ndflow.config import load_config
from ndflow.params import Kind
from ndflow.server import IOC

from test_acquisition import get, put, ramp, wait_for, wrap


@pytest.fixture(scope="module")
def pva():
    with Context("pva", nt=False) as ctxt:
        yield ctxt


def served_pvs(prefix: str) -> list[tuple[str, object, bool]]:
    """(full name, Param, readback view) of every PV the default IOC declares (in-process)."""
    config, lines = load_config(None)
    config.prefix = prefix
    ioc = IOC(config, lines, transports=[])
    try:
        out = []
        for c in ioc.components:
            for p in c.params:
                if p.setpoint_name:
                    out.append((prefix + c.prefix + p.setpoint_name, p, False))
                if p.readback_name:
                    out.append((prefix + c.prefix + p.readback_name, p, True))
                out += [(prefix + c.prefix + a, p, True) for a in p.aliases]
        return out
    finally:
        ioc.shutdown()


# --- every scalar and enum PV: the same over PVA as over CA ---------------------------------------
def test_every_scalar_and_enum_pv_reads_the_same_over_pva_and_ca(default_ioc, pva):
    p = default_ioc.prefix
    pvs = [(n, prm, rb) for n, prm, rb in served_pvs(p)
           if prm.kind in (Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.STRING)
           and not n.endswith(("TimeStamp_RBV", "Uptime_RBV", "CPU_RBV", "Mem_RBV", "MemUsed_RBV",
                               "PoolMem_RBV", "BudgetUse_RBV", "ChildrenMem_RBV",
                               "ComponentCPU_RBV", "ChildrenCPU_RBV", "ShmMem_RBV"))]
    assert len(pvs) > 2000, len(pvs)
    names = [n for n, _, _ in pvs]
    over_pva = pva.get(names, timeout=20)
    with_ctrl = {n for n, prm, _ in pvs if prm.kind is Kind.ENUM or prm.low is not None
                 and prm.high is not None or prm.kind is Kind.FLOAT}
    ca_values = {n: v for n, v in zip(names, _ca_get_all(names, with_ctrl))}
    mismatched = []
    for (name, prm, readback), value in zip(pvs, over_pva):
        assert not isinstance(value, Exception), f"{name}: {value}"
        ca_value, ca_ctrl = ca_values[name]
        if prm.kind is Kind.ENUM:
            got = value["value.index"]
            choices = list(value["value.choices"])
            if choices != list(ca_ctrl["enum_strs"]) or got != ca_value:
                mismatched.append((name, (got, choices), (ca_value, ca_ctrl["enum_strs"])))
            continue
        got = value["value"]
        same = math.isclose(got, ca_value, rel_tol=1e-12) if prm.kind is Kind.FLOAT else \
            got == ca_value
        if not same:
            mismatched.append((name, got, ca_value))
        if prm.kind in (Kind.INT, Kind.FLOAT) and prm.low is not None and prm.high is not None:
            limits = (value["control.limitLow"], value["control.limitHigh"])
            ca_limits = (ca_ctrl["lower_ctrl_limit"], ca_ctrl["upper_ctrl_limit"])
            if limits != pytest.approx(ca_limits) or limits != pytest.approx((prm.low, prm.high)):
                mismatched.append((name, limits, ca_limits))
            assert value["display.units"] == prm.units
            if prm.kind is Kind.FLOAT:
                assert value["display.precision"] == prm.precision == ca_ctrl["precision"]
    assert not mismatched, f"{len(mismatched)} differ, e.g. {mismatched[:10]}"


def _ca_get_all(names: list[str], with_ctrl: set[str]) -> list[tuple[object, dict]]:
    """Values and control metadata of many PVs over CA, channels connected in parallel."""
    from epics import ca
    chids = [ca.create_channel(n, connect=False, auto_cb=False) for n in names]
    try:
        for chid in chids:
            assert ca.connect_channel(chid, timeout=10), ca.name(chid)
        for chid in chids:
            ca.get(chid, wait=False)
        ca.pend_io(10)
        out = []
        for name, chid in zip(names, chids):
            value = ca.get_complete(chid, timeout=10)
            ctrl = ca.get_ctrlvars(chid, timeout=10) if name in with_ctrl else {}
            if isinstance(value, bytes):
                value = value.decode()
            out.append((value, ctrl))
        return out
    finally:
        for chid in chids:
            ca.clear_channel(chid)


# --- the same put path ----------------------------------------------------------------------------
def test_pva_puts_are_clamped_and_refused_as_ca_puts(default_ioc, pva):
    p = default_ioc.prefix
    # every kind of clamp: a value beyond each declared limit, over CA then over PVA
    limited = [(n, prm) for n, prm, rb in served_pvs(p) if not rb and prm.kind in
               (Kind.INT, Kind.FLOAT) and prm.low is not None and prm.high is not None
               and prm.access.name == "RW" and ":TS" not in n and "Acquire" not in n]
    assert len(limited) > 20
    for name, prm in limited[::max(1, len(limited) // 40)]:
        for beyond in (prm.high + 1e6, prm.low - 1e6):
            if prm.kind is Kind.INT:
                beyond = int(max(min(beyond, 2 ** 31 - 1), -2 ** 31))
            readback = name + "_RBV" if not prm.rbv_name else name[: -len(prm.name)] + prm.rbv_name
            assert epics.caput(name, beyond, wait=True, timeout=5) == 1, name
            over_ca = get(readback)
            epics.caput(name, prm.default if prm.default is not None else 0, wait=True)
            pva.put(name, beyond, wait=True)
            over_pva = pva.get(readback)["value"]
            assert over_pva == over_ca, (name, beyond, over_ca, over_pva)
            assert over_pva in (prm.low, prm.high), (name, over_pva)
        epics.caput(name, prm.default if prm.default is not None else 0, wait=True)
    with pytest.raises(RemoteError, match="not a finite number"):
        pva.put(p + "cam1:AcquireTime", float("nan"))
    with pytest.raises(RemoteError, match="read-only"):
        pva.put(p + "cam1:ArrayCounter_RBV", 3)
    with pytest.raises(RemoteError, match="outside 0..2"):
        pva.put(p + "HDF1:FileWriteMode", {"value.index": 9})

    def status() -> str:  # published within an interval of the refusal
        return bytes(pva.get(p + "HDF1:StatusMessage_RBV")["value"].astype(np.uint8)).decode()
    assert wait_for(lambda: "FileWriteMode: put refused" in status(), 2), status()
    # a char waveform path takes text as QSRV serves it: NUL-terminated bytes
    pva.put(p + "HDF1:FileName", np.frombuffer(b"from_pva\0", dtype=np.int8))
    assert get(p + "HDF1:FileName_RBV", as_string=True) == "from_pva"
    # (an int32 field carries int32 on the wire: a client converts 2**40 before sending, as it
    # would for QSRV; a double into an int goes through the put path as its int value)
    # the IOC still serves a clean acquisition afterwards, put-completion over PVA
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", 3)
    put(p + "cam1:AcquirePeriod", 0.1)
    put(p + "cam1:ArrayCounter", 0)
    started = time.monotonic()
    pva.put(p + "cam1:Acquire", 1, wait=True, timeout=10)
    took = time.monotonic() - started
    assert get(p + "cam1:ArrayCounter_RBV") == 3  # done when the put completed
    assert took >= 0.2, took  # three frames 0.1 s apart: the put waited for them
    assert pva.get(p + "cam1:Acquire")["value.index"] == 0
    # without completion requested, the put returns once the acquisition has started
    put(p + "cam1:NumImages", 20)
    started = time.monotonic()
    pva.put(p + "cam1:Acquire", 1)
    assert time.monotonic() - started < 1.0
    # (DetectorState shows Waiting between frames 0.1 s apart: Acquire_RBV says it runs).
    # DetectorState_RBV follows once the driver's thread has taken the acquisition, after
    # Acquire_RBV (as in ADCore's drivers): under load a read in between sees Idle (seen once
    # in 33 loaded runs), so it is waited for too
    assert wait_for(lambda: get(p + "cam1:Acquire_RBV") == 1, 5)
    assert wait_for(lambda: get(p + "cam1:DetectorState_RBV", as_string=True) in
                    ("Acquire", "Waiting"), 5)
    put(p + "cam1:Acquire", 0)
    put(p + "cam1:AcquirePeriod", 0.0)
    assert "Traceback" not in default_ioc.log()


# --- Pva1:Image -----------------------------------------------------------------------------------
DATA_TYPES = ["Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64"]
NUMPY = dict(zip(DATA_TYPES, ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]))

SMALL_IOC = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 64, max_size_y: 48}}
plugins:
  - {type: pva, port: PVA1, prefix: "Pva1:", input: SIM1, blocking: true, enabled: true}
  - {type: attribute, port: ATTR1, prefix: "Attr1:", input: SIM1, blocking: true, enabled: true}
  - {type: codec, port: CODEC1, prefix: "Codec1:", input: SIM1, blocking: true, enabled: true}
  - {type: pva, port: PVA2, prefix: "Pva2:", input: CODEC1, blocking: true, enabled: true}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from conftest import running_ioc
    with running_ioc(SMALL_IOC, tmp_path_factory.mktemp("pva")) as ioc:
        p = ioc.prefix
        for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("Gain", 1.0),
                            ("AcquireTime", 0.001), ("SimMode", "LinearRamp"),
                            ("GainRed", 1.0), ("GainGreen", 2.0), ("GainBlue", 3.0)]:
            put(p + "cam1:" + name, value)
        yield ioc


def frame(pva, name: str):
    value = pva.get(name, timeout=5)
    dims = [d["size"] for d in value["dimension"]]
    return value, np.asarray(value["value"]).reshape(dims[::-1])


@pytest.mark.parametrize("data_type", DATA_TYPES)
@pytest.mark.parametrize("color", ["Mono", "RGB1"])
def test_pva1_image_is_the_ramp_with_its_metadata(small, pva, data_type, color):
    p = small.prefix
    put(p + "cam1:DataType", data_type)
    put(p + "cam1:ColorMode", color)
    put(p + "cam1:Reset", 1)
    put(p + "cam1:Acquire", 1)
    value, data = frame(pva, p + "Pva1:Image")
    dtype = np.dtype(NUMPY[data_type])
    assert data.dtype == dtype
    expected = ramp(64, 48)
    if color == "Mono":
        assert data.shape == (48, 64)
        np.testing.assert_array_equal(data, wrap(expected, dtype) if dtype.kind in "iu"
                                      else expected.astype(dtype))
    else:
        assert data.shape == (48, 64, 3)  # RGB1: dims [3, x, y]
        for plane, gain in enumerate((1, 2, 3)):
            want = np.trunc(gain * expected)
            np.testing.assert_array_equal(data[..., plane], wrap(want, dtype)
                                          if dtype.kind in "iu" else want.astype(dtype))
    # uniqueId, timestamps and attributes as the file writers and Attr1 see them
    assert value["uniqueId"] == get(p + "cam1:ArrayCounter_RBV")
    attrs = {a["name"]: a for a in value["attribute"]}
    assert attrs["ColorMode"]["value"] == {"Mono": 0, "RGB1": 2}[color]
    stamp = value["timeStamp.secondsPastEpoch"] + value["timeStamp.nanoseconds"] * 1e-9
    assert abs(stamp - time.time()) < 30
    data_stamp = value["dataTimeStamp.secondsPastEpoch"] + \
        value["dataTimeStamp.nanoseconds"] * 1e-9
    assert abs(data_stamp - stamp) < 1.0
    assert [d["size"] for d in value["dimension"]] == \
        ([64, 48] if color == "Mono" else [3, 64, 48])
    assert value["uncompressedSize"] == data.nbytes
    assert value["codec.name"] == ""


@pytest.mark.parametrize("codec", ["Blosc", "LZ4", "BSLZ4", "JPEG"])
def test_compressed_frames_go_out_compressed_and_decompress_to_the_original(small, pva, codec):
    p = small.prefix
    put(p + "cam1:DataType", "UInt8" if codec == "JPEG" else "UInt16")
    put(p + "cam1:ColorMode", "Mono")
    put(p + "Codec1:Mode", "Compress")
    put(p + "Codec1:Compressor", codec)
    if codec == "JPEG":
        put(p + "Codec1:JPEGQuality", 100)
    put(p + "cam1:Reset", 1)
    put(p + "cam1:Acquire", 1)
    plain, original = frame(pva, p + "Pva1:Image")
    packed = pva.get(p + "Pva2:Image", timeout=5)
    assert packed["codec.name"] == codec.lower()
    assert packed["uniqueId"] == plain["uniqueId"]
    assert packed["compressedSize"] == len(packed["value"]) < original.nbytes
    assert packed["uncompressedSize"] == original.nbytes
    data = decompress_wire(packed, original.dtype)
    if codec == "JPEG":  # lossy even at quality 100: close, not equal
        assert np.abs(data.astype(int) - original.astype(int)).max() <= 4
    else:
        np.testing.assert_array_equal(data.reshape(original.shape), original)
    put(p + "Codec1:Mode", "Compress")


def decompress_wire(value, dtype: np.dtype) -> np.ndarray:
    """Decode an NTNDArray's compressed bytes as ADCore's pvaDriver would (ADCore's wire bytes:
    a Blosc frame, a bare LZ4 block, bitshuffle/LZ4 blocks with no header, a JPEG file), the
    element type from codec.parameters (pvData ScalarType)."""
    import struct

    import imagecodecs
    from ndflow.plugins.codec import bshuf_block_elements, decode_bslz4
    raw = np.asarray(value["value"]).astype(np.uint8).tobytes()
    assert value["codec.parameters"] == {"i1": 1, "u1": 5, "i2": 2, "u2": 6}[dtype.str[1:]]
    size, name = value["uncompressedSize"], value["codec.name"]
    if name == "blosc":
        plain = imagecodecs.blosc_decode(raw)
    elif name == "lz4":
        plain = imagecodecs.lz4_decode(raw, out=size)
    elif name == "bslz4":
        header = struct.pack(">QI", size, bshuf_block_elements(dtype.itemsize) * dtype.itemsize)
        return decode_bslz4(np.frombuffer(header + raw, np.uint8), dtype, size // dtype.itemsize)
    else:
        assert name == "jpeg"
        return np.asarray(imagecodecs.jpeg8_decode(raw))
    return np.frombuffer(plain, dtype=dtype)


def test_pvapy_reads_the_same_frame(default_ioc, small, pva):
    """pvapy (pvAccessCPP, not PVXS) finds the PVs of every IOC up, here two: it keeps one
    search address per IP whatever its port, so each IOC answering on a search port of its own
    hid all but the first started (default_ioc, requested first) from it."""
    import pvaccess
    p = small.prefix
    put(p + "cam1:DataType", "UInt16")
    put(p + "cam1:ColorMode", "Mono")
    put(p + "cam1:Reset", 1)
    put(p + "cam1:Acquire", 1)
    _, data = frame(pva, p + "Pva1:Image")
    channel = pvaccess.Channel(p + "Pva1:Image")
    channel.setTimeout(10.0)  # a loaded 2-core machine: pvapy's default is a few seconds
    obj = channel.get("")
    values = obj["value"][0]["ushortValue"]
    dims = [d["size"] for d in obj["dimension"]]
    np.testing.assert_array_equal(np.asarray(values).reshape(dims[::-1]), data)
    assert obj["uniqueId"] == get(p + "cam1:ArrayCounter_RBV")
    # and the other IOC's PVs, read the same as over p4p
    name = default_ioc.prefix + "cam1:MaxSizeX_RBV"
    other = pvaccess.Channel(name)
    other.setTimeout(10.0)
    assert other.get("")["value"] == pva.get(name)["value"] > 64


def test_what_changed_while_no_pva_client_was_connected_is_what_the_first_one_reads(small):
    """Values and frames are built for pvAccess only while a client has the channel open; the
    first client to connect after changes reads the latest value, with the time of its change,
    and the latest frame."""
    p = small.prefix
    period = round(0.5 + 0.25 * (time.time() % 1.0), 3)  # differs from run to run
    put(p + "cam1:DataType", "UInt16")
    put(p + "cam1:ColorMode", "Mono")
    put(p + "cam1:Reset", 1)
    with Context("pva", nt=False) as ctxt:  # a frame seen, then the channels closed
        ctxt.get(p + "Pva1:Image", timeout=5)
        ctxt.get(p + "cam1:AcquirePeriod_RBV", timeout=5)
    time.sleep(0.5)  # the server sees the channels close
    put(p + "cam1:AcquirePeriod", period)
    changed = time.time()
    put(p + "cam1:Acquire", 1)  # a frame nobody over pvAccess is connected to
    time.sleep(1.0)
    with Context("pva", nt=False) as ctxt:
        value = ctxt.get(p + "cam1:AcquirePeriod_RBV", timeout=5)
        image = ctxt.get(p + "Pva1:Image", timeout=5)
    assert value["value"] == pytest.approx(period)
    stamp = value["timeStamp.secondsPastEpoch"] + value["timeStamp.nanoseconds"] * 1e-9
    assert abs(stamp - changed) < 0.5, "the time stamp is the change's, not the connect's"
    assert image["uniqueId"] == get(p + "cam1:ArrayCounter_RBV")
    dims = [d["size"] for d in image["dimension"]]
    np.testing.assert_array_equal(np.asarray(image["value"]).reshape(dims[::-1]),
                                  wrap(ramp(64, 48), np.dtype("uint16")))


def test_pvname_rbv_names_the_image_pv(small):
    p = small.prefix
    assert get(p + "Pva1:PvName_RBV", as_string=True) == p + "Pva1:Image"
    assert get(p + "Pva1:PluginType_RBV", as_string=True) == "NDPluginPva"


# --- ophyd-async with every signal over pva:// ----------------------------------------------------
def test_ophyd_async_simdetector_over_pva_counts_five_frames_into_hdf5(default_ioc, tmp_path):
    import asyncio

    import h5py
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd_async.core import StaticFilenameProvider, StaticPathProvider
    from ophyd_async.epics.adcore import ADWriterFactory
    from ophyd_async.epics.adsimdetector import SimDetector

    p = default_ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("SizeX", 128), ("SizeY", 64), ("MinX", 0), ("MinY", 0),
                        ("DataType", "UInt16"), ("ColorMode", "Mono"),
                        ("SimMode", "LinearRamp"), ("Gain", 1.0), ("AcquireTime", 0.01),
                        ("AcquirePeriod", 0.0), ("Reset", 1)]:
        put(p + "cam1:" + name, value)
    folder = tmp_path / "scan"
    folder.mkdir()
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    async def make() -> SimDetector:
        path_provider = StaticPathProvider(StaticFilenameProvider("over_pva"), folder)
        det = SimDetector("pva://" + p, ADWriterFactory.hdf(path_provider), name="det")
        await det.connect(timeout=10)
        return det

    det = asyncio.run_coroutine_threadsafe(make(), RE.loop).result(30)
    # every signal of the device goes over pvAccess
    sources = [sig.source for sig in _signals(det)]
    assert sources and all(s.startswith("pva://") for s in sources), sources[:5]
    RE(count([det], num=5))
    assert docs[-1][1]["exit_status"] == "success"
    with h5py.File(folder / "over_pva.h5") as f:
        data = f["/entry/data/data"]
        assert data.shape == (5, 64, 128)
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        np.testing.assert_array_equal(np.diff(ids), 1)
        first = int(ids[0])
        for row in (0, 4):
            frame = int(ids[row]) - first + 1
            np.testing.assert_array_equal(data[row], wrap(ramp(128, 64, inc=10, frame=frame), "u2"))


def _signals(device):
    from ophyd_async.core import Signal
    for _, child in device.children():
        if isinstance(child, Signal):
            yield child
        else:
            yield from _signals(child)


# --- the same frame as the file writer sees it ----------------------------------------------------
HDF_IOC = """
data_roots: ["{root}"]
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: 40, max_size_y: 30}}}}
plugins:
  - {{type: pva, port: PVA1, prefix: "Pva1:", input: SIM1, blocking: true, enabled: true}}
  - {{type: hdf5, port: HDF1, prefix: "HDF1:", input: SIM1, blocking: true, enabled: true}}
"""
ATTRIBUTES = ('<Attributes>'  # under the 256 characters of NDAttributesFile
              '<Attribute name="Gain" type="PARAM" source="Gain" datatype="DOUBLE" '
              'description="camera gain"/>'
              '<Attribute name="Frames" type="PARAM" source="ArrayCounter" datatype="INT"/>'
              '<Attribute name="Label" type="CONST" source="bl 7" datatype="STRING"/>'
              '</Attributes>')


def test_pva_frame_carries_what_hdf5_records_for_it(start_ioc, tmp_path, pva):
    import h5py
    from conftest import unique_prefix
    p = unique_prefix()
    start_ioc(HDF_IOC.format(root=tmp_path), prefix=p)
    for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"), ("Gain", 2.5),
                        ("NDAttributesFile", ATTRIBUTES), ("DataType", "UInt16")]:
        put(p + "cam1:" + name, value)
    for name, value in [("FilePath", str(tmp_path)), ("FileName", "same"),
                        ("FileTemplate", "%s%s.h5"), ("FileWriteMode", "Single"),
                        ("AutoSave", "Yes"), ("AutoIncrement", "No")]:
        put(p + "HDF1:" + name, value)
    assert get(p + "cam1:NDAttributesStatus", as_string=True) == "Attributes file OK", \
        get(p + "cam1:NDAttributesFile", as_string=True)
    put(p + "cam1:Acquire", 1)
    value, data = frame(pva, p + "Pva1:Image")
    attrs = {a["name"]: a for a in value["attribute"]}
    with h5py.File(tmp_path / "same.h5") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][...].reshape(data.shape), data)
        nd = f["/entry/instrument/NDAttributes"]
        assert value["uniqueId"] == int(nd["NDArrayUniqueId"][0])
        # timeStamp is the EPICS time stamp, dataTimeStamp the array's, both on the POSIX epoch
        assert value["timeStamp.secondsPastEpoch"] == int(nd["NDArrayEpicsTSSec"][0]) + 631152000
        assert value["timeStamp.nanoseconds"] == int(nd["NDArrayEpicsTSnSec"][0])
        data_ts = value["dataTimeStamp.secondsPastEpoch"] + \
            value["dataTimeStamp.nanoseconds"] * 1e-9
        assert data_ts - 631152000 == pytest.approx(float(nd["NDArrayTimeStamp"][0]), abs=1e-6)
        for name in ("Gain", "Frames", "Label"):
            stored = nd[name][()]
            stored = stored[0] if getattr(stored, "shape", ()) else stored
            stored = stored.decode() if isinstance(stored, bytes) else stored
            assert attrs[name]["value"] == stored, name
    assert attrs["Gain"]["value"] == 2.5 and attrs["Gain"]["descriptor"] == "camera gain"
    assert attrs["Gain"]["sourceType"] == 1 and attrs["Gain"]["source"] == "Gain"  # PARAM
    assert attrs["Label"]["sourceType"] == 4 and attrs["Label"]["value"] == "bl 7"  # CONST
    assert [d["size"] for d in value["dimension"]] == [40, 30]
    assert [d["binning"] for d in value["dimension"]] == [1, 1]


# --- a fuzzing client over PVA --------------------------------------------------------------------
def test_fuzz_every_writable_pv_over_pva(default_ioc, pva):
    """Extreme values of each PV's own wire type (a PVA client converts other types to it before
    sending): every put answers, a success or an error, within its timeout; afterwards every
    plugin still processes, an acquisition with put-completion over PVA works and the log has
    no traceback."""
    from test_fuzz_puts import BUSY, declared_targets
    p = default_ioc.prefix
    targets = [t for t in declared_targets(p) if not t.busy and t.param.kind is not Kind.ARRAY]
    long_text = np.frombuffer(b"x" * 10_000 + b"\0", dtype=np.int8)
    rounds = {
        Kind.FLOAT: [math.nan, math.inf, -math.inf, 1e300, -1e300],
        Kind.INT: [2 ** 31 - 1, -(2 ** 31), 0],
        Kind.ENUM: [{"value.index": 99}, {"value.index": -1}, {"value.index": 2 ** 31 - 1}],
        Kind.STRING: ["x" * 10_000, "", "\0abc"],
        Kind.TEXT: [long_text, np.zeros(1, np.int8), np.frombuffer(b"../../etc\0", np.int8)],
    }
    answered = refused = 0
    for i in range(max(len(v) for v in rounds.values())):
        batch = [(t.pv, rounds[t.param.kind][i]) for t in targets
                 if i < len(rounds[t.param.kind]) and t.param.name.rsplit(":", 1)[-1] not in BUSY]
        for start in range(0, len(batch), 200):
            names, values = zip(*batch[start:start + 200])
            results = pva.put(list(names), list(values), throw=False, timeout=10)
            for name, result in zip(names, results):
                assert not isinstance(result, TimeoutError), f"put to {name} did not answer"
                assert result is None or isinstance(result, RemoteError), (name, result)
                answered += 1
                refused += result is not None
    assert answered > 2000 and refused > 500, (answered, refused)
    # every plugin still works and an acquisition completes with put-completion over PVA
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Single"), ("DataType", "UInt8"), ("ColorMode", "Mono"),
                        ("SizeX", 64), ("SizeY", 64), ("MinX", 0), ("MinY", 0), ("BinX", 1),
                        ("BinY", 1), ("AcquireTime", 0.001), ("AcquirePeriod", 0.0),
                        ("WaitForPlugins", "Yes"), ("NumImages", 1)]:
        put(p + "cam1:" + name, value)
    put(p + "Stats1:EnableCallbacks", "Enable")
    put(p + "Stats1:ComputeStatistics", "Yes")
    put(p + "Stats1:NDArrayPort", "SIM1")
    before = get(p + "Stats1:ArrayCounter_RBV")
    pva.put(p + "cam1:Acquire", 1, wait=True, timeout=10)
    assert wait_for(lambda: get(p + "Stats1:ArrayCounter_RBV") == before + 1, 5)
    assert "Traceback" not in default_ioc.log()


def test_monitors_see_every_frame_complete_when_only_changes_are_sent(small, pva):
    """Pva1 posts each frame marking only what changed since the previous one (the pixels,
    uniqueId and time stamps; the dimensions, codec and attributes only when they change): a p4p
    monitor (PVXS) and a pvapy monitor (pvAccessCPP) still see every frame complete, across a
    change of size, element type and colour mode between acquisitions."""
    import pvaccess
    p = small.prefix
    name = p + "Pva1:Image"
    seen_p4p: list = []
    seen_pvapy: list = []
    connected: set[str] = set()

    def on_p4p(value) -> None:
        connected.add("p4p")
        if isinstance(value, Exception) or value["value"] is None:
            return
        seen_p4p.append((value["uniqueId"], [d["size"] for d in value["dimension"]],
                         np.array(value["value"]), {a["name"]: a["value"]
                                                    for a in value["attribute"]},
                         {n.split(".")[0] for n in value.changedSet()}))

    def on_pvapy(obj) -> None:
        connected.add("pvapy")
        d = obj.get()
        if not d["value"] or not d["value"][0]:
            return
        (member, values), = d["value"][0].items()
        seen_pvapy.append((d["uniqueId"], [x["size"] for x in d["dimension"]], member,
                           np.array(values), {a["name"]: a["value"][0]["value"]
                                              for a in d["attribute"]}))

    for setting, value in [("DataType", "UInt8"), ("ColorMode", "Mono"), ("SizeX", 64),
                           ("ImageMode", "Multiple"), ("NumImages", 3), ("Reset", 1)]:
        put(p + "cam1:" + setting, value)
    start = get(p + "cam1:ArrayCounter_RBV")
    sub = pva.monitor(name, on_p4p, request="record[queueSize=20]")
    channel = pvaccess.Channel(name)
    channel.setTimeout(10.0)
    channel.subscribe("delta", on_pvapy)
    channel.startMonitor("")
    try:
        assert wait_for(lambda: connected == {"p4p", "pvapy"}, 10)  # the value held before
        put(p + "cam1:Acquire", 1)
        assert wait_for(lambda: get(p + "cam1:Acquire_RBV") == 0, 10)
        for setting, value in [("DataType", "UInt16"), ("ColorMode", "RGB1"), ("SizeX", 32)]:
            put(p + "cam1:" + setting, value)
        put(p + "cam1:Acquire", 1)
        assert wait_for(lambda: get(p + "cam1:Acquire_RBV") == 0, 10)
        last = start + 6
        assert get(p + "cam1:ArrayCounter_RBV") == last
        assert wait_for(lambda: seen_p4p[-1][0] == last and seen_pvapy[-1][0] == last, 10)
    finally:
        channel.stopMonitor()
        sub.close()
        for setting, value in [("ImageMode", "Single"), ("SizeX", 64), ("ColorMode", "Mono")]:
            put(p + "cam1:" + setting, value)
    frames_p4p = {uid: rest for uid, *rest in seen_p4p if uid > start}
    frames_pvapy = {uid: rest for uid, *rest in seen_pvapy if uid > start}
    assert sorted(frames_p4p) == sorted(frames_pvapy) == list(range(start + 1, last + 1))
    for uid in range(start + 1, last + 1):
        mono = uid <= start + 3
        dims = [64, 48] if mono else [3, 32, 48]
        p4p_dims, p4p_data, p4p_attrs, _ = frames_p4p[uid]
        pvapy_dims, member, pvapy_data, pvapy_attrs = frames_pvapy[uid]
        assert p4p_dims == pvapy_dims == dims, uid
        assert member == ("ubyteValue" if mono else "ushortValue")
        assert p4p_data.dtype == np.dtype("u1" if mono else "u2")
        np.testing.assert_array_equal(pvapy_data, p4p_data)
        data = p4p_data.reshape(dims[::-1]).astype(np.int64)
        red = data if mono else data[..., 0]  # GainRed 1: the ramp itself
        np.testing.assert_array_equal(red - red[0, 0], ramp(dims[-2], 48))
        assert p4p_attrs["ColorMode"] == pvapy_attrs["ColorMode"] == (0 if mono else 2)
    # on the wire, the frames after the first of each acquisition carried no dimensions
    assert "dimension" not in frames_p4p[start + 2][3]
    assert "dimension" in frames_p4p[start + 4][3]
