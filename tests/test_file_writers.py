"""HDF5 and TIFF writers: modes, file names, attributes, SWMR, compression, and bad input.

Files are written by a real IOC under a tmp data root and read back with h5py (plus hdf5plugin
for the compressed ones) and tifffile, in this process or in a second one.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import epics
import h5py
import hdf5plugin
import numpy as np
import psutil
import pytest
import tifffile
from epics import ca, dbr

from conftest import CA_ENV, NDFLOW, ioc_with_data_root, running_ioc, unique_prefix
from test_acquisition import Monitor, get, put, ramp, wait_for, wrap

NX, NY = 64, 48
ATTRIBUTES_XML = ('<Attributes><Attribute name="Gain" type="PARAM" source="Gain" '
                  'datatype="DOUBLE" description="camera gain"/>'
                  '<Attribute name="Counter" type="PARAM" source="ArrayCounter" datatype="INT"/>'
                  '<Attribute name="Beam" type="CONST" source="$(BEAM)" datatype="STRING"/>'
                  '</Attributes>')


def config(root: Path, extra: str = "") -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:", {extra}
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, enabled: true}}
          - {{type: tiff, port: FileTIFF1, prefix: "TIFF1:", input: SIM1, enabled: true}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with ioc_with_data_root(tmp_path_factory, "writers", config) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Multiple"), ("NumImages", 1), ("WaitForPlugins", "Yes"),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1.0),
                        ("SimMode", "LinearRamp"), ("Reset", 1), ("ArrayCounter", 0)]:
        put(p + "cam1:" + name, value)
    for plugin in ("HDF1:", "TIFF1:"):
        put(p + plugin + "Capture", 0)
        put(p + plugin + "FileWriteMode", "Single")
        put(p + plugin + "AutoSave", "No")
        put(p + plugin + "CreateDirectory", 0)
        put(p + plugin + "FilePath", str(ioc.root))
        put(p + plugin + "FileTemplate", "%s%s_%3.3d" + (".h5" if plugin == "HDF1:" else ".tif"))
    for name, value in [("Compression", "None"), ("SWMRMode", "Off"), ("NumFramesFlush", 0),
                        ("LazyOpen", "No"), ("StoreAttr", "Yes"), ("NumCapture", 1)]:
        put(p + "HDF1:" + name, value)
    return p


def text(pv: str) -> str:
    return get(pv, as_string=True)


def put_status(pv: str, value: str | float) -> int | None:
    """A put-callback's CA status (dbr.ECA_NORMAL if the IOC took the put), which
    epics.caput(wait=True) drops: with it a refused put reads as done. A str goes as characters
    (a char-waveform PV such as FilePath), a number as DBR_DOUBLE. None: no answer in 10 s."""
    chid = ca.create_channel(pv, connect=False, auto_cb=False)
    assert ca.connect_channel(chid, timeout=5), f"cannot connect {pv}"
    result: dict[str, int] = {}

    def done(args) -> None:
        result["status"] = args.status
    callback = dbr.make_callback(done, dbr.event_handler_args)
    if isinstance(value, str):
        raw = value.encode() + b"\0"
        ftype, data = dbr.CHAR, (ctypes.c_ubyte * len(raw))(*raw)
    else:
        ftype, data = dbr.DOUBLE, (ctypes.c_double * 1)(value)
    usr = ctypes.py_object(0)
    assert ca.libca.ca_array_put_callback(ftype, len(data), chid, data, callback,
                                          usr) == dbr.ECA_NORMAL
    ca.flush_io()
    deadline = time.monotonic() + 10
    while "status" not in result and time.monotonic() < deadline:
        ca.poll(evt=1e-3, iot=0.01)
    return result.get("status")


def refused(status: int | None) -> bool:
    """A put the IOC answered with a CA error."""
    return status is not None and status != dbr.ECA_NORMAL


def capture(p: str, acquire: int, plugin: str = "HDF1:", **settings) -> str:
    """Write `settings` to the plugin, start a capture, acquire `acquire` frames (Multiple) and
    wait until the capture ends; returns FullFileName_RBV."""
    for name, value in settings.items():
        put(p + plugin + name, value)
    # Monitored, as ophyd watches it (connected before the put: see Monitor); every change of
    # Capture_RBV reaches it in order (tests/test_monitor_stress.py drives 2000 captures).
    capture_rbv = Monitor.of(p + plugin + "Capture_RBV")
    capturing = lambda: capture_rbv.value  # noqa: E731
    put(p + plugin + "Capture", 1, wait=False)  # busy: its put-callback ends with the capture
    assert wait_for(lambda: capturing() == 1)
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", acquire)
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: capturing() == 0, timeout=15)
    return text(p + plugin + "FullFileName_RBV")


def frames(n: int, first: int = 1) -> np.ndarray:
    """The UInt16 LinearRamp frames first..first+n-1 (inc = Gain*AcquireTime*1000 = 1)."""
    return np.stack([wrap(ramp(NX, NY, frame=k), "u2") for k in range(first, first + n)])


def test_file_path_gets_a_slash_and_template_makes_the_name(ioc, p):
    sub = ioc.root / "made" / "here"
    put(p + "HDF1:CreateDirectory", -2)  # create up to two levels above the file
    put(p + "HDF1:FilePath", str(sub))
    assert text(p + "HDF1:FilePath_RBV") == f"{sub}/"
    assert get(p + "HDF1:FilePathExists_RBV") == 1 and sub.is_dir()
    put(p + "HDF1:FileName", "scan")
    put(p + "HDF1:FileNumber", 7)
    put(p + "HDF1:FileTemplate", "%s%s_%4.4d.h5")
    put(p + "HDF1:AutoSave", "Yes")
    put(p + "cam1:Acquire", 1)
    assert text(p + "HDF1:FullFileName_RBV") == f"{sub}/scan_0007.h5"
    assert get(p + "HDF1:FileNumber_RBV") == 8  # AutoIncrement
    with h5py.File(sub / "scan_0007.h5") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][:], frames(1))


def test_capture_mode_writes_n_frames_with_attributes(ioc, p):
    put(p + "cam1:NDAttributesMacros", "BEAM=on")
    put(p + "cam1:NDAttributesFile", ATTRIBUTES_XML)
    assert text(p + "cam1:NDAttributesStatus") == "Attributes file OK"
    put(p + "cam1:Gain", 2.0)
    path = capture(p, 6, FileName="capture", FileWriteMode="Capture", NumCapture=4,
                   AutoSave="Yes")
    assert get(p + "HDF1:NumCaptured_RBV") == 4
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.shape == (4, NY, NX) and data.dtype == np.uint16
        inc = 2  # Gain 2 * AcquireTime 0.001 * 1000
        expected = np.stack([wrap(ramp(NX, NY, inc=inc, frame=k), "u2") for k in range(1, 5)])
        np.testing.assert_array_equal(data[:], expected)
        attrs = f["/entry/instrument/NDAttributes"]
        np.testing.assert_array_equal(attrs["Counter"][:], [1, 2, 3, 4])
        np.testing.assert_array_equal(attrs["NDArrayUniqueId"][:], [1, 2, 3, 4])
        np.testing.assert_array_equal(attrs["Gain"][:], [2.0] * 4)
        assert attrs["Gain"].attrs["description"] == "camera gain"
        assert [v.decode() for v in attrs["Beam"][:]] == ["on"] * 4
        assert (attrs["NDArrayStatus"][:] == 0).all()
    put(p + "cam1:NDAttributesFile", "")


def test_stream_is_readable_with_swmr_while_it_grows(ioc, p):
    put(p + "HDF1:FileName", "swmr")
    put(p + "HDF1:FileWriteMode", "Stream")
    put(p + "HDF1:SWMRMode", "On")
    put(p + "HDF1:NumFramesFlush", 1)
    put(p + "HDF1:NumCapture", 40)
    put(p + "HDF1:LazyOpen", "Yes")
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1)
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:AcquirePeriod", 0.05)
    put(p + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:NumCaptured_RBV") >= 3)
    path = text(p + "HDF1:FullFileName_RBV")
    assert get(p + "HDF1:SWMRActive_RBV") == 1
    reader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, time, h5py
        seen = []
        with h5py.File({path!r}, "r", swmr=True) as f:
            data = f["/entry/data/data"]
            for _ in range(60):
                data.refresh()
                seen.append(data.shape[0])
                if seen[-1] >= 40:
                    break
                time.sleep(0.05)
            print(json.dumps({{"seen": seen, "last": data[seen[-1] - 1].tolist()}}))
        """)], capture_output=True, text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    result = json.loads(reader.stdout)
    seen = result["seen"]
    assert seen[0] < 40 and max(seen) > seen[0], f"the reader never saw the file grow: {seen}"
    assert seen == sorted(seen)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 0, timeout=15)
    put(p + "cam1:Acquire", 0)
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.shape[0] == 40
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        np.testing.assert_array_equal(np.diff(ids), 1)
        # each row is the frame with that unique id (the ramp adds 1 per frame)
        np.testing.assert_array_equal(data[5], frames(1, int(ids[5]))[0])
        assert np.asarray(result["last"]).shape == (NY, NX)


@pytest.mark.parametrize("compression, filter_id", [
    ("zlib", h5py.h5z.FILTER_DEFLATE), ("Blosc", hdf5plugin.BLOSC_ID),
    ("LZ4", hdf5plugin.LZ4_ID), ("BSLZ4", hdf5plugin.BSHUF_ID)])
def test_compressed_files_read_back_with_plain_h5py(ioc, p, compression, filter_id):
    path = capture(p, 3, FileName=f"c_{compression}", FileWriteMode="Stream",
                   Compression=compression, NumCapture=3)
    # A fresh interpreter with only h5py + hdf5plugin: no ndflow code involved in reading.
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import hdf5plugin, h5py, numpy
        with h5py.File({path!r}) as f:
            d = f["/entry/data/data"]
            print(d.id.get_create_plist().get_filter(0)[0], d.shape, int(d[:].sum()))
        """)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    fid, total = check.stdout.split(" ", 1)[0], int(check.stdout.split()[-1])
    assert int(fid) == filter_id
    assert total == int(frames(3).astype(np.int64).sum())
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["/entry/data/data"][:], frames(3))


def test_tiff_writes_one_readable_file_per_frame(ioc, p):
    capture(p, 3, "TIFF1:", FileName="img", FileNumber=1, FileWriteMode="Stream", NumCapture=3)
    for k in range(1, 4):
        with tifffile.TiffFile(ioc.root / f"img_{k:03d}.tif") as tif:
            page = tif.pages[0]
            np.testing.assert_array_equal(page.asarray(), frames(1, k)[0])
            assert page.tags[65000].value == k  # NDArrayUniqueId
    assert get(p + "TIFF1:FileNumber_RBV") == 4


def test_bad_paths_and_templates_are_reported_and_nothing_is_written(ioc, p, tmp_path):
    # refused with a CA error carrying the reason (pyepics' caput would not tell); stored as
    # ADCore stores it, so nothing goes on being written into the folder before
    assert refused(put_status(p + "HDF1:FilePath", "/etc"))
    assert text(p + "HDF1:FilePath_RBV") == "/etc/"
    assert get(p + "HDF1:FilePathExists_RBV") == 0
    assert "outside the data roots" in text(p + "HDF1:WriteMessage")
    assert text(p + "HDF1:WriteStatus") == "Write error"
    put(p + "HDF1:FilePath", str(ioc.root / ".." / ".." / "escape"))
    assert "outside the data roots" in text(p + "HDF1:WriteMessage")

    blocker = ioc.root / "a_file"
    blocker.write_text("not a folder")
    put(p + "HDF1:FilePath", str(blocker / "sub"))
    assert get(p + "HDF1:FilePathExists_RBV") == 0
    put(p + "HDF1:FileWriteMode", "Stream")
    assert refused(put_status(p + "HDF1:Capture", 1))  # at once
    assert get(p + "HDF1:Capture_RBV") == 0
    assert "does not exist" in text(p + "HDF1:WriteMessage")

    put(p + "HDF1:FilePath", str(ioc.root))
    assert text(p + "HDF1:WriteStatus") == "Write OK"
    put(p + "HDF1:FileName", "../../outside")  # the name cannot climb out either
    put(p + "HDF1:FileWriteMode", "Single")
    put(p + "HDF1:AutoSave", "Yes")
    put(p + "cam1:Acquire", 1)
    assert "outside the data roots" in text(p + "HDF1:WriteMessage")
    assert not (ioc.root.parent.parent / "outside_001.h5").exists()

    put(p + "HDF1:FileName", "t")
    put(p + "HDF1:FileTemplate", "%s%s%d%d%d")
    put(p + "cam1:Acquire", 1)
    assert "FileTemplate '%s%s%d%d%d'" in text(p + "HDF1:WriteMessage")
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    assert "Traceback" not in ioc.log()


def test_missing_frames_take_a_row_with_their_cause(tmp_path):
    """A driver pool with room for one frame, which the Capture buffer holds: every later frame
    is refused (a NO_MEMORY placeholder), and the file says so row by row."""
    root = tmp_path / "data"
    root.mkdir()
    with running_ioc(config(root, "pool_mb: 0.007,"), tmp_path) as ioc:
        p = ioc.prefix
        put(p + "cam1:AcquireTime", 0.001)
        put(p + "cam1:WaitForPlugins", "Yes")
        path = capture(p, 4, FilePath=str(root), FileName="gaps", FileWriteMode="Capture",
                       AutoSave="Yes", NumCapture=4)
        with h5py.File(path) as f:
            status = f["/entry/instrument/NDAttributes/NDArrayStatus"][:]
            status_meaning = f["/entry/instrument/NDAttributes/NDArrayStatus"].attrs["meaning"]
            ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
            data = f["/entry/data/data"][:]
            missing = f["/entry/ndflow/missing"][:]
        assert list(ids) == [1, 2, 3, 4]  # one row per frame, lost or not
        assert list(status) == [0, 3, 3, 3]  # 3: "no memory in pool" (see the dataset's note)
        assert "3 no memory in pool" in status_meaning
        assert list(missing["unique_id"]) == [2, 3, 4]
        assert {c.decode() for c in missing["cause"]} == {"no memory in pool"}
        np.testing.assert_array_equal(data[0], frames(1)[0])
        assert (data[1:] == 0).all()  # FillValue



@pytest.mark.parametrize("autosave", ["Yes", "No"])
def test_a_stop_mid_capture_writes_the_held_frames_or_says_they_are_lost(tmp_path, autosave):
    """SIGTERM while a Capture-mode capture holds frames (NumCapture not reached): with
    AutoSave=Yes the IOC writes them on its way out, as Capture=0 would; with AutoSave=No they
    waited for a WriteFile=1, and the log says how many are lost. Never silently gone."""
    root = tmp_path / "data"
    root.mkdir()
    with running_ioc(config(root), tmp_path) as ioc:
        p = ioc.prefix
        for name, value in [("FilePath", str(root)), ("FileName", "held"),
                            ("FileTemplate", "%s%s.h5"), ("FileWriteMode", "Capture"),
                            ("NumCapture", 1000), ("AutoSave", autosave)]:
            put(p + "HDF1:" + name, value)
        put(p + "cam1:WaitForPlugins", "Yes")
        put(p + "HDF1:Capture", 1, wait=False)
        assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1)
        put(p + "cam1:ImageMode", "Multiple")
        put(p + "cam1:NumImages", 5)
        put(p + "cam1:Acquire", 1)
        assert get(p + "HDF1:NumCaptured_RBV") == 5
        ioc.proc.terminate()
        ioc.proc.wait(timeout=15)
        log = ioc.log()
    assert ioc.proc.returncode == 0, log
    path = root / "held.h5"
    if autosave == "Yes":
        assert "its 5 captured arrays are written" in log, log
        with h5py.File(path) as f:
            np.testing.assert_array_equal(f["/entry/data/data"][:], frames(5))
            assert list(f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]) == [1, 2, 3, 4, 5]
    else:
        assert "5 captured arrays not written (AutoSave No" in log, log
        assert not path.exists()


def test_disk_full_keeps_the_frames_already_written(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writes past it fail with EFBIG."""
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "ioc.yml").write_text(config(root))
    p = unique_prefix()
    env = {**os.environ, **CA_ENV, "EPICS_CA_SERVER_PORT": str(ioc_port()),
           "EPICS_CAS_SERVER_PORT": str(ioc_port())}
    limit = 200_000  # bytes: room for a few 6 kB frames, not for 60

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = open(tmp_path / "ioc.log", "w")
    proc = subprocess.Popen(NDFLOW + ["run", str(tmp_path / "ioc.yml"), "--prefix", p],
                            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap)
    try:
        assert wait_for(lambda: epics.caget(p + "cam1:Acquire_RBV", timeout=5,
                                                connection_timeout=0.5) is not None,
                        timeout=30)
        put(p + "cam1:AcquireTime", 0.001)
        put(p + "cam1:WaitForPlugins", "Yes")
        capture(p, 60, FilePath=str(root), FileName="full", FileWriteMode="Stream",
                NumFramesFlush=1, NumCapture=60)
        assert text(p + "HDF1:WriteStatus") == "Write error"
        assert "disk full" in text(p + "HDF1:WriteMessage")
        written = get(p + "HDF1:NumCaptured_RBV")
        assert 0 < written < 60
        assert proc.poll() is None  # still serving
        assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"
        with h5py.File(root / "full_001.h5") as f:
            data = f["/entry/data/data"]
            good = min(written, data.shape[0])
            assert good >= written - 1  # at most the row being written when it failed
            np.testing.assert_array_equal(data[:good], frames(good))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def ioc_port() -> int:
    from conftest import CA_PORTS, _ports_in_use
    return next(port for port in reversed(CA_PORTS) if port not in _ports_in_use)


@pytest.mark.parametrize("compressor, filter_id", [
    ("Blosc", hdf5plugin.BLOSC_ID), ("LZ4HDF5", hdf5plugin.LZ4_ID),
    ("BSLZ4", hdf5plugin.BSHUF_ID), ("Zlib", h5py.h5z.FILTER_DEFLATE)])
def test_codec_compressed_arrays_are_written_as_chunks(start_ioc, tmp_path, compressor,
                                                       filter_id):
    """Codec1 compresses, HDF1 writes its bytes unchanged as one chunk per frame, and plain
    h5py + hdf5plugin reads back the original frames."""
    root = tmp_path / "data"
    root.mkdir()
    cfg = textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: codec, port: CODEC1, prefix: "Codec1:", input: SIM1}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: CODEC1}}
        """)
    p = start_ioc(cfg, prefix=unique_prefix()).prefix
    put(p + "Codec1:Mode", "Compress")
    put(p + "Codec1:Compressor", compressor)
    put(p + "cam1:AcquireTime", 0.001)
    put(p + "cam1:WaitForPlugins", "Yes")
    path = capture(p, 3, FilePath=str(root), FileName="codec", FileWriteMode="Stream",
                   NumCapture=3)
    assert text(p + "HDF1:WriteStatus") == "Write OK", text(p + "HDF1:WriteMessage")
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys, hdf5plugin, h5py, numpy
        with h5py.File({path!r}) as f:
            d = f["/entry/data/data"]
            numpy.save(sys.stdout.buffer, d[:])
            print(d.id.get_create_plist().get_filter(0)[0], file=sys.stderr)
        """)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode()
    assert int(check.stderr.decode().split()[-1]) == filter_id
    np.testing.assert_array_equal(np.load(io.BytesIO(check.stdout)), frames(3))


def test_empty_text_puts_are_accepted(ioc, p):
    """`caput HDF1:XMLFileName ""` (ophyd-async does it) sends DBR_STRING "" to a char waveform."""
    put(p + "HDF1:XMLFileName", "layout.xml")
    assert get(p + "HDF1:XMLValid_RBV") == 0
    put(p + "HDF1:XMLFileName", "")
    assert text(p + "HDF1:XMLFileName_RBV") == ""
    assert get(p + "HDF1:XMLValid_RBV") == 1
    put(p + "HDF1:FileName", "")
    assert text(p + "HDF1:FileName_RBV") == ""
    # no folder is not a bad folder: taken (nothing can be written until one is given)
    assert put_status(p + "HDF1:FilePath", "") == dbr.ECA_NORMAL
    assert text(p + "HDF1:FilePath_RBV") == "" and get(p + "HDF1:FilePathExists_RBV") == 0


# --- DrainOnStop, bad puts that cannot flood the log, declared limits -----------------------------
DRAIN_FRAMES = 40


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """An HDF5 writer slower than its driver: 512x512 UInt16 noise (incompressible) through
    zlib level 9 takes some 20 ms a frame, the simulator makes one in a few, so an unpaced
    acquisition leaves frames waiting in HDF1's queue (room for all of them: none dropped)."""
    folder = tmp_path_factory.mktemp("slow")
    root = folder / "data"
    root.mkdir()
    cfg = textwrap.dedent(f"""
        data_roots: ["{root}"]
        memory_budget_mb: 24
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: 512, max_size_y: 512, data_type: UInt16}}}}
        plugins:
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, enabled: true,
             queue_size: {DRAIN_FRAMES + 10}}}
        """)
    with running_ioc(cfg, folder) as ioc:
        ioc.root = root
        p = ioc.prefix
        for name, value in [("SimMode", "Offset&Noise"), ("Noise", 30000), ("AcquireTime", 0),
                            ("AcquirePeriod", 0), ("WaitForPlugins", "No")]:
            put(p + "cam1:" + name, value)
        yield ioc


@pytest.mark.parametrize("drain", ["Yes", "No"])
def test_capture_0_writes_the_frames_already_queued_with_drain_on_stop(slow, drain):
    """Capture=0 right after an unpaced acquisition, while HDF1 still has frames queued:
    DrainOnStop=Yes (the default) writes every one of them before the file closes and the put
    completes; No (ADCore) stops at once and they are not in the file."""
    p, h = slow.prefix, slow.prefix + "HDF1:"
    assert text(h + "DrainOnStop_RBV") == "Yes"  # the default
    put(p + "cam1:ArrayCounter", 0)
    for name, value in [("FilePath", str(slow.root)), ("FileName", f"drain{drain}"),
                        ("FileWriteMode", "Stream"), ("NumCapture", 0),
                        ("Compression", "zlib"), ("ZLevel", 9), ("LazyOpen", "Yes"),
                        ("DrainOnStop", drain)]:
        put(h + name, value)
    put(h + "Capture", 1, wait=False)
    assert wait_for(lambda: get(h + "Capture_RBV") == 1)
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", DRAIN_FRAMES)
    put(p + "cam1:Acquire", 1)  # done once acquired: HDF1 is still writing
    written_at_stop = get(h + "NumCaptured_RBV")
    put(h + "Capture", 0, timeout=30)
    assert get(h + "Capture_RBV") == 0
    assert get(h + "DroppedArrays") == 0  # every frame was queued
    assert written_at_stop < DRAIN_FRAMES, "HDF1 kept up: nothing was queued at Capture=0"
    with h5py.File(text(h + "FullFileName_RBV")) as f:
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        status = f["/entry/instrument/NDAttributes/NDArrayStatus"][:]
        rows = f["/entry/data/data"].shape[0]
    assert rows == len(ids) and (status == 0).all()
    if drain == "Yes":  # every frame of the acquisition, in order
        assert list(ids) == list(range(1, DRAIN_FRAMES + 1))
    else:  # the first frames only: those queued at Capture=0 were not written
        assert rows < DRAIN_FRAMES and list(ids) == list(range(1, rows + 1))
    assert get(h + "NumCaptured_RBV") == rows
    put(h + "DrainOnStop", "Yes")
    put(h + "Compression", "None")


def test_capture_1_right_after_a_draining_capture_0_takes_the_next_frames(slow):
    """Capture=0 (draining) and at once Capture=1, then a second acquisition: the new capture
    begins right behind the stop, so the first file holds the first acquisition and the
    second file the second one, every frame of each."""
    p, h = slow.prefix, slow.prefix + "HDF1:"
    put(p + "cam1:ArrayCounter", 0)
    for name, value in [("FilePath", str(slow.root)), ("FileName", "back_to_back"),
                        ("FileNumber", 1), ("FileWriteMode", "Stream"), ("NumCapture", 0),
                        ("Compression", "zlib"), ("ZLevel", 9), ("LazyOpen", "Yes"),
                        ("DrainOnStop", "Yes")]:
        put(h + name, value)
    put(h + "Capture", 1, wait=False)
    assert wait_for(lambda: get(h + "Capture_RBV") == 1)
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", DRAIN_FRAMES // 2)
    put(p + "cam1:Acquire", 1)
    put(h + "Capture", 0, wait=False)  # the queue still holds frames of the first acquisition
    put(h + "Capture", 1, wait=False)
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: get(h + "NumCaptured_RBV") == DRAIN_FRAMES // 2, timeout=20)
    put(h + "Capture", 0, timeout=30)
    half = DRAIN_FRAMES // 2
    for number, first in ((1, 1), (2, half + 1)):
        with h5py.File(slow.root / f"back_to_back_{number:03d}.h5") as f:
            ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        assert list(ids) == list(range(first, first + half)), number
    put(h + "Compression", "None")


def test_capture_mode_with_num_capture_0_ends_when_memory_is_full(slow):
    """NumCapture=0 in Capture mode, Capture=1 while acquiring unpaced: frames are held until
    the IOC's memory budget (24 MB: some 40 frames of 512 kB) refuses the next one; that one
    ends the capture with its row, the file is written (AutoSave) and the put completes. The
    process does not grow past the budget while frames keep coming."""
    p, h = slow.prefix, slow.prefix + "HDF1:"
    for name, value in [("FilePath", str(slow.root)), ("FileName", "full"),
                        ("FileWriteMode", "Capture"), ("NumCapture", 0), ("AutoSave", "Yes")]:
        put(h + name, value)
    rss = psutil.Process(slow.proc.pid).memory_info().rss
    put(h + "Capture", 1, wait=False)
    assert wait_for(lambda: get(h + "Capture_RBV") == 1)
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:Acquire", 1, wait=False)
    try:
        assert wait_for(lambda: get(h + "Capture_RBV") == 0, timeout=20), \
            f"the capture never ended; {get(h + 'NumCaptured_RBV')} held"
        time.sleep(1)  # frames keep coming: not taken
        grown = psutil.Process(slow.proc.pid).memory_info().rss - rss
    finally:
        put(p + "cam1:Acquire", 0)
    assert "memory full" in text(h + "StatusMessage_RBV")
    assert text(h + "WriteStatus") == "Write OK"
    with h5py.File(text(h + "FullFileName_RBV")) as f:
        status = f["/entry/instrument/NDAttributes/NDArrayStatus"][:]
        missing = f["/entry/ndflow/missing"][:]
    held = int((status == 0).sum())
    assert 10 <= held <= 48  # what 24 MB holds of 512 kB frames (less what the driver has)
    assert status[-1] != 0  # the frame that found memory full ends it, with its cause
    assert missing["cause"][-1].decode() == "no memory in pool"
    assert grown < 100 * 2 ** 20, f"grew {grown / 2 ** 20:.0f} MB"


def test_bad_paths_are_refused_and_logged_once(slow, tmp_path):
    """A client repeating a bad FilePath (outside the roots, missing, a link) or a Capture=1
    that cannot start gets a CA error with each put, and the log one line per PV."""
    p, h = slow.prefix, slow.prefix + "HDF1:"
    (slow.root / "real").mkdir(exist_ok=True)
    link = slow.root / "link"
    link.symlink_to(slow.root / "real", target_is_directory=True)
    put(h + "FileWriteMode", "Stream")
    put(h + "CreateDirectory", 0)
    cases = {"/etc/flood": "outside the data roots", str(slow.root / "nowhere"): "does not exist",
             str(link): "symbolic link"}
    for path, reason in cases.items():
        statuses = [put_status(h + "FilePath", path) for _ in range(20)]
        assert all(refused(s) for s in statuses), (path, statuses)  # each refused, answered
        assert text(h + "FilePath_RBV") == path + "/"
        assert get(h + "FilePathExists_RBV") == 0
        assert reason in text(h + "WriteMessage")
    assert all(refused(put_status(h + "Capture", 1)) for _ in range(10))
    assert get(h + "Capture_RBV") == 0
    # the folder that was missing, created on CreateDirectory: usable again
    put(h + "FilePath", str(slow.root / "nowhere"))
    put(h + "CreateDirectory", -1)
    assert get(h + "FilePathExists_RBV") == 1 and (slow.root / "nowhere").is_dir()
    log = slow.log()
    path_lines = [line for line in log.splitlines() if "HDF1:FilePath:" in line]
    capture_lines = [line for line in log.splitlines() if "HDF1:Capture:" in line]
    assert len(path_lines) == 1 and "put refused" in path_lines[0], path_lines
    assert len(capture_lines) == 1 and "put refused" in capture_lines[0], capture_lines
    assert " ERROR " not in log, log


def test_chunk_sizes_and_fill_value_are_fitted_when_the_file_opens(ioc, p):
    """NumFramesChunks is declared up to 2**20 (2**31-1 clamps), fitted to the frames a file
    holds (NumCapture) and to HDF5's 4 GiB per chunk, which h5py takes at creation and fails on
    at the first write; FillValue is clamped to the data type. Each fitting is said on
    StatusMessage_RBV, and the files open and read back."""
    h = p + "HDF1:"
    put(h + "ChunkSizeAuto", "No")
    put(h + "NumFramesChunks", 2 ** 31 - 1)
    assert get(h + "NumFramesChunks_RBV") == 2 ** 20
    path = capture(p, 3, FileName="chunks", FileWriteMode="Stream", NumCapture=3,
                   FillValue=1e30)
    with h5py.File(path) as f:
        data = f["/entry/data/data"]
        assert data.chunks == (3, NY, NX)  # not 2**20 frames of fill for 3 frames
        assert data.fillvalue == 65535  # 1e30 clamped to UInt16
        np.testing.assert_array_equal(data[:], frames(3))
    assert os.path.getsize(path) < 200_000
    assert "FillValue 1e+30 clamped to 65535" in text(h + "StatusMessage_RBV")

    # Unlimited capture: 2**20 frames of 6 kB would be a 6 GiB chunk. The file opens at once
    # (LazyOpen No) and closes with no frame written, so nothing that big is ever allocated.
    put(h + "FillValue", -5)
    put(h + "NumCapture", 0)
    put(h + "LazyOpen", "No")
    put(h + "FileName", "chunks_unlimited")
    put(h + "Capture", 1, wait=False)
    assert wait_for(lambda: get(h + "Capture_RBV") == 1)
    message = text(h + "StatusMessage_RBV")
    put(h + "Capture", 0)
    most = (2 ** 32 - 1) // (NX * NY * 2)
    assert f"over HDF5's 4 GiB: {most} per chunk" in message, message
    with h5py.File(text(h + "FullFileName_RBV")) as f:
        data = f["/entry/data/data"]
        assert data.chunks == (most, NY, NX) and data.shape == (0, NY, NX)
        assert data.fillvalue == 0  # -5 clamped, not wrapped to 65531
    for name, value in [("ChunkSizeAuto", "Yes"), ("NumFramesChunks", 0), ("FillValue", 0)]:
        put(h + name, value)
    assert "Traceback" not in ioc.log()
