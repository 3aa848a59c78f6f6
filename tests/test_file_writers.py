"""HDF5 and TIFF writers: modes, file names, attributes, SWMR, compression, and bad input.

Files are written by a real IOC under a tmp data root and read back with h5py (plus hdf5plugin
for the compressed ones) and tifffile, in this process or in a second one.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import epics
import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile

from conftest import CA_ENV, NDFLOW, running_ioc, unique_prefix
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
    folder = tmp_path_factory.mktemp("writers")
    root = folder / "data"
    root.mkdir()
    with running_ioc(config(root), folder) as ioc:
        ioc.root = root
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
    put(p + "HDF1:FilePath", "/etc")
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
    put(p + "HDF1:Capture", 1)  # refused at once: the put completes
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
        assert wait_for(lambda: epics.caget(p + "cam1:Acquire_RBV", timeout=0.5) is not None,
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
