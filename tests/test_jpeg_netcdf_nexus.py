"""JPEG1:, netCDF1: and Nexus1: through a real IOC: files written under a tmp data root and read
back with each format's own reader (Pillow for JPEG, the netCDF C library through netCDF4, h5py
for NeXus), their PVs as ADCore declares them, bad paths and templates refused, fuzzed puts."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import epics
import h5py
import netCDF4
import numpy as np
import pytest
from PIL import Image

from conftest import ioc_with_data_root
from test_acquisition import get, put, ramp, wait_for, wrap
from test_file_writers import capture, put_status, refused, text

NX, NY = 64, 48
ATTRIBUTES_XML = ('<Attributes><Attribute name="Gain" type="PARAM" source="Gain" '
                  'datatype="DOUBLE" description="camera gain"/>'
                  '<Attribute name="Counter" type="PARAM" source="ArrayCounter" datatype="INT"/>'
                  '<Attribute name="Beam" type="CONST" source="pink" datatype="STRING"/>'
                  '</Attributes>')
WRITERS = ("JPEG1:", "netCDF1:", "Nexus1:")


def config(root: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt8}}}}
        plugins:
          - {{type: jpeg, port: FileJPEG1, prefix: "JPEG1:", input: SIM1, enabled: true}}
          - {{type: netcdf, port: FileNetCDF1, prefix: "netCDF1:", input: SIM1, enabled: true}}
          - {{type: nexus, port: FileNexus1, prefix: "Nexus1:", input: SIM1, enabled: true}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with ioc_with_data_root(tmp_path_factory, "jnn", config) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Multiple"), ("NumImages", 1), ("WaitForPlugins", "Yes"),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1.0),
                        ("DataType", "UInt8"), ("SimMode", "LinearRamp"), ("Reset", 1),
                        ("ArrayCounter", 0), ("NDAttributesFile", "")]:
        put(p + "cam1:" + name, value)
    for plugin in WRITERS:
        put(p + plugin + "Capture", 0)
        put(p + plugin + "EnableCallbacks", "Enable")
        put(p + plugin + "FileWriteMode", "Single")
        put(p + plugin + "AutoSave", "No")
        put(p + plugin + "FilePath", str(ioc.root))
        put(p + plugin + "AutoIncrement", "Yes")
    return p


def frames(n: int, first: int = 1) -> np.ndarray:
    """UInt8 LinearRamp frames first..first+n-1 (x + y + frame-1: no wrap at this size)."""
    return np.stack([wrap(ramp(NX, NY, frame=k), "u1") for k in range(first, first + n)])


def enable_only(p: str, plugin: str) -> None:
    for other in WRITERS:
        put(p + other + "EnableCallbacks", "Enable" if other == plugin else "Disable")


# --- ophyd 1.x: first, before pyepics' PV cache holds plain PVs for these names -------------------
def test_ophyd_file_plugin_classes_connect_and_check_plugin_type(ioc):
    from ophyd.areadetector.plugins import JPEGPlugin, NetCDFPlugin, NexusPlugin
    plugins = [JPEGPlugin(ioc.prefix + "JPEG1:", name="jpeg1"),
               NetCDFPlugin(ioc.prefix + "netCDF1:", name="netcdf1"),
               NexusPlugin(ioc.prefix + "Nexus1:", name="nexus1")]
    unconnected = []
    for plugin in plugins:
        plugin.wait_for_connection(timeout=30)
        for walk in plugin.walk_signals():  # every signal, the lazy ones and asyn_io too
            try:
                walk.item.wait_for_connection(timeout=10)
            except TimeoutError:
                unconnected.append(walk.item.name)
    assert not unconnected
    jpeg, netcdf, nexus = plugins
    assert jpeg.jpeg_quality.get() == 50 and nexus.file_template_valid.get() == 1
    assert jpeg.plugin_type.get() == "NDFileJPEG" and not jpeg._misconfigured
    assert netcdf.plugin_type.get() == "NDFileNetCDF" and not netcdf._misconfigured
    # ADCore's NDFileNexus.cpp says "NDFileNexus"; ophyd's NexusPlugin expects "NDPluginNexus"
    # and so refuses to stage against ADCore as against ndflow (an ophyd bug, not ours)
    assert nexus.plugin_type.get() == "NDFileNexus" and nexus._misconfigured
    for plugin in plugins:
        plugin.destroy()


# --- JPEG ------------------------------------------------------------------------------------------
def test_jpeg_writes_three_files_that_decode_to_the_frames(ioc, p):
    enable_only(p, "JPEG1:")
    assert text(p + "JPEG1:PluginType_RBV") == "NDFileJPEG"
    assert text(p + "JPEG1:FileFormat_RBV") == "JPEG"
    assert get(p + "JPEG1:JPEGQuality_RBV") == 50  # ADCore's NDFileJPEG.template VAL
    errors, sizes = {}, {}
    for quality, first_number in ((95, 1), (10, 11)):
        put(p + "JPEG1:JPEGQuality", quality)
        capture(p, 3, "JPEG1:", FileName=f"q{quality}", FileNumber=first_number,
                FileTemplate="%s%s_%3.3d.jpg", FileWriteMode="Stream", NumCapture=3)
        expected = frames(3)
        put(p + "cam1:Reset", 1)
        worst, total = 0.0, 0
        for k in range(3):
            path = ioc.root / f"q{quality}_{first_number + k:03d}.jpg"
            total += path.stat().st_size
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "L" and img.size == (NX, NY)
                pixels = np.asarray(img, dtype=np.int16)
            worst = max(worst, float(np.abs(pixels - expected[k]).mean()))
        errors[quality], sizes[quality] = worst, total
        assert get(p + "JPEG1:FileNumber_RBV") == first_number + 3
    # lossy within what the quality promises: near-exact at 95, coarser (and smaller) at 10
    assert errors[95] < 1.0, errors
    assert errors[10] < 8.0 and errors[10] > errors[95], errors
    assert sizes[10] < sizes[95], sizes


def test_jpeg_refuses_arrays_it_cannot_hold(ioc, p):
    enable_only(p, "JPEG1:")
    put(p + "cam1:DataType", "UInt16")
    put(p + "JPEG1:FileName", "wide")
    put(p + "JPEG1:FileNumber", 1)
    put(p + "JPEG1:AutoSave", "Yes")
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: "8-bit" in text(p + "JPEG1:WriteMessage"))
    assert text(p + "JPEG1:WriteStatus") == "Write error"
    assert not list(ioc.root.glob("wide_*"))
    put(p + "JPEG1:AutoSave", "No")


# --- netCDF ----------------------------------------------------------------------------------------
def test_netcdf_holds_three_frames_in_adcore_layout(ioc, p):
    enable_only(p, "netCDF1:")
    assert text(p + "netCDF1:PluginType_RBV") == "NDFileNetCDF"
    assert text(p + "netCDF1:FileFormat_RBV") == "netCDF"
    put(p + "cam1:NDAttributesFile", ATTRIBUTES_XML)
    put(p + "cam1:Gain", 1.0)
    name = capture(p, 3, "netCDF1:", FileName="nc", FileNumber=1, FileTemplate="%s%s_%3.3d.nc",
                   FileWriteMode="Capture", NumCapture=3, AutoSave="Yes")
    assert name == str(ioc.root / "nc_001.nc")
    with netCDF4.Dataset(name) as nc:  # the netCDF C library, not h5netcdf
        assert nc.data_model == "NETCDF4"
        assert nc.dimensions["numArrays"].isunlimited() and len(nc.dimensions["numArrays"]) == 3
        assert (len(nc.dimensions["dim0"]), len(nc.dimensions["dim1"])) == (NY, NX)
        assert nc.dataType == 1 and math.isclose(nc.NDNetCDFFileVersion, 3.1)  # UInt8
        assert nc.numArrayDims == 2 and list(nc.dimSize) == [NX, NY]
        assert list(nc.dimBinning) == [1, 1] and list(nc.dimReverse) == [0, 0]
        data = nc.variables["array_data"][:]
        np.testing.assert_array_equal(np.asarray(data), frames(3))
        assert list(nc.variables["uniqueId"][:]) == [1, 2, 3]
        stamps = np.asarray(nc.variables["timeStamp"][:])
        assert np.all(np.diff(stamps) >= 0) and stamps[0] > 1e8
        assert np.all(np.asarray(nc.variables["epicsTSSec"][:]) > 0)
        assert list(nc.variables["ndflowStatus"][:]) == [0, 0, 0]
        np.testing.assert_allclose(nc.variables["Attr_Gain"][:], [1.0, 1.0, 1.0])
        assert nc.getncattr("Attr_Gain_DataType") == "Float64"
        assert nc.getncattr("Attr_Gain_Description") == "camera gain"
        assert nc.getncattr("Attr_Gain_SourceType") == "NDAttrSourceParam"
        assert list(netCDF4.chartostring(nc.variables["Attr_Beam"][:])) == ["pink"] * 3
        assert nc.getncattr("Attr_Beam_DataType") == "String"
        counters = list(nc.variables["Attr_Counter"][:])
        assert counters == sorted(counters) and len(set(counters)) == 3


# --- NeXus -----------------------------------------------------------------------------------------
def _nx_class(obj) -> str:
    value = obj.attrs.get("NX_class")
    return value.decode() if isinstance(value, bytes) else str(value)


def test_nexus_default_template_is_a_nexus_file_with_the_frames(ioc, p):
    enable_only(p, "Nexus1:")
    assert text(p + "Nexus1:PluginType_RBV") == "NDFileNexus"
    assert text(p + "Nexus1:FileFormat_RBV") == "NeXus"
    assert get(p + "Nexus1:FileTemplateValid") == 1
    name = capture(p, 3, "Nexus1:", FileName="nx", FileNumber=1, FileTemplate="%s%s_%3.3d.nxs",
                   FileWriteMode="Stream", NumCapture=3)
    with h5py.File(name, "r") as f:
        assert _nx_class(f["/entry"]) == "NXentry"
        assert _nx_class(f["/entry/instrument"]) == "NXinstrument"
        assert _nx_class(f["/entry/instrument/detector"]) == "NXdetector"
        assert _nx_class(f["/entry/data"]) == "NXdata"
        detector = f["/entry/instrument/detector/data"]
        np.testing.assert_array_equal(detector[()], frames(3))
        assert f["/entry/data"].attrs["signal"] == "data"
        linked = f["/entry/data/data"]
        assert linked.id == detector.id  # a NeXus link: the same dataset, not a copy
        assert linked.attrs["target"] == "/entry/instrument/detector/data"
        assert list(f["/entry/ndflow/unique_id"][()]) == [1, 2, 3]
        assert list(f["/entry/ndflow/status"][()]) == [0, 0, 0]
        assert f["/entry/title"][()] == b"areaDetector data"


def test_nexus_template_from_the_config_folder(ioc, p):
    enable_only(p, "Nexus1:")
    template = ioc.folder / "templates" / "mine.xml"
    template.parent.mkdir(exist_ok=True)
    template.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="UTF-8"?>
        <NXroot>
          <Facility type="UserGroup">
            <facility_float type="CONST" outtype="NX_FLOAT32">3.1415</facility_float>
            <facility_int type="CONST" outtype="NX_INT32">12</facility_int>
          </Facility>
          <NXentry name="scan">
            <notes> </notes>
            <NXdata name="raw">
              <gain type="ND_ATTR" source="Gain"/>
              <absent type="ND_ATTR" source="NoSuchAttribute"/>
              <frames type="pArray">
                <Attr name="signal" type="CONST" outtype="NX_INT32">1</Attr>
                <Attr name="beam" type="ND_ATTR" source="Beam"/>
              </frames>
            </NXdata>
          </NXentry>
        </NXroot>
        """))
    put(p + "cam1:NDAttributesFile", ATTRIBUTES_XML)
    put(p + "Nexus1:TemplateFilePath", str(template.parent) + "/")
    put(p + "Nexus1:TemplateFileName", "mine.xml")
    assert get(p + "Nexus1:FileTemplateValid") == 1
    assert text(p + "Nexus1:TemplateFileName_RBV") == "mine.xml"
    put(p + "Nexus1:FileName", "single")
    put(p + "Nexus1:FileNumber", 1)
    put(p + "Nexus1:FileTemplate", "%s%s_%3.3d.h5")
    put(p + "Nexus1:AutoSave", "Yes")
    put(p + "cam1:NumImages", 1)
    put(p + "cam1:Acquire", 1)
    path = ioc.root / "single_001.h5"
    assert wait_for(lambda: get(p + "Nexus1:FileNumber_RBV") == 2)
    put(p + "Nexus1:AutoSave", "No")
    with h5py.File(path, "r") as f:
        assert _nx_class(f["/Facility"]) == "Facility"
        assert f["/Facility/facility_float"].dtype == np.float32
        assert math.isclose(float(f["/Facility/facility_float"][()]), 3.1415, rel_tol=1e-6)
        assert int(f["/Facility/facility_int"][()]) == 12
        assert f["/scan/notes"][()] == b"LEFT BLANK"
        assert _nx_class(f["/scan/raw"]) == "NXdata"
        data = f["/scan/raw/frames"]
        assert data.shape == (NY, NX)  # Single mode: the array's own shape, as ADCore
        np.testing.assert_array_equal(data[()], frames(1)[0])
        assert data.attrs["signal"] == 1 and data.attrs["beam"] == "pink"
        np.testing.assert_allclose(f["/scan/raw/gain"][()], [1.0])
        assert "absent" not in f["/scan/raw"]
    put(p + "Nexus1:TemplateFileName", "")  # back to the default
    assert get(p + "Nexus1:FileTemplateValid") == 1


@pytest.mark.parametrize("body, reason", [
    ("<NXroot><NXentry name='e'><a type='pArray'/><b type='pArray'/></NXentry></NXroot>",
     "exactly one node of type pArray"),
    ("<NXroot><NXentry name='e'><a type='CONST' outtype='NX_INT8'>lots</a></NXentry></NXroot>",
     "is not an NX_INT8"),
    ("<NXroot><NXentry name='e'><a type='Python'/></NXentry></NXroot>", "type 'Python'"),
    ("<!DOCTYPE r [<!ENTITY x 'y'>]><NXroot/>", "DTDs and entities"),
    ("<NXroot><NXentry", "not well-formed"),
    ("<Other/>", "root element must be NXroot"),
])
def test_nexus_bad_templates_are_refused(ioc, p, body, reason):
    enable_only(p, "Nexus1:")
    bad = ioc.folder / "bad.xml"
    bad.write_text(body)
    put(p + "Nexus1:TemplateFilePath", "")
    put(p + "Nexus1:TemplateFileName", str(bad))
    assert get(p + "Nexus1:FileTemplateValid") == 0
    assert wait_for(lambda: reason in text(p + "Nexus1:StatusMessage_RBV"), 5), \
        text(p + "Nexus1:StatusMessage_RBV")
    # no file while the template is not valid: not at a frame (Single, AutoSave)...
    put(p + "Nexus1:FileName", "refused")
    put(p + "Nexus1:AutoSave", "Yes")
    put(p + "Nexus1:FileWriteMode", "Single")
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: "template is not valid" in text(p + "Nexus1:WriteMessage"))
    # ... nor at the start of a capture (Stream opens at once with LazyOpen=No)
    put(p + "Nexus1:FileWriteMode", "Stream")
    put(p + "Nexus1:LazyOpen", "No")
    assert refused(put_status(p + "Nexus1:Capture", 1))
    assert get(p + "Nexus1:Capture_RBV") == 0
    assert not list(ioc.root.glob("refused_*"))
    put(p + "Nexus1:AutoSave", "No")
    put(p + "Nexus1:TemplateFileName", "")
    assert get(p + "Nexus1:FileTemplateValid") == 1


def test_nexus_templates_are_read_only_from_configured_folders(ioc, p, tmp_path):
    outside = tmp_path / "outside.xml"  # not under the config folder or a data root
    outside.write_text("<NXroot><NXentry name='e'><d type='pArray'/></NXentry></NXroot>")
    for folder, name in ((str(tmp_path), "outside.xml"), ("/etc/", "passwd"),
                         (str(ioc.root), "../../../../etc/passwd")):
        put(p + "Nexus1:TemplateFilePath", folder)
        put(p + "Nexus1:TemplateFileName", name)
        assert get(p + "Nexus1:FileTemplateValid") == 0
        assert wait_for(lambda: any(s in text(p + "Nexus1:StatusMessage_RBV") for s in (
            "read only from", "'..'")), 5), text(p + "Nexus1:StatusMessage_RBV")
        message = text(p + "Nexus1:StatusMessage_RBV")
        assert "root:" not in message  # never the file's contents
    put(p + "Nexus1:TemplateFilePath", "")
    put(p + "Nexus1:TemplateFileName", "")
    assert get(p + "Nexus1:FileTemplateValid") == 1


# --- all three -------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin", WRITERS)
def test_paths_outside_the_data_roots_are_refused(ioc, p, plugin):
    enable_only(p, plugin)
    assert refused(put_status(p + plugin + "FilePath", "/etc"))
    assert get(p + plugin + "FilePathExists_RBV") == 0
    assert "outside the data roots" in text(p + plugin + "WriteMessage")
    put(p + plugin + "FilePath", str(ioc.root))
    put(p + plugin + "FileName", "../../escape")
    put(p + plugin + "AutoSave", "Yes")
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: "outside the data roots" in text(p + plugin + "WriteMessage"))
    assert not list(ioc.root.parent.parent.glob("escape*"))
    put(p + plugin + "AutoSave", "No")


def test_fuzzed_puts_leave_the_writers_serving(ioc, p):
    huge = "x" * 10_000
    long = "/" + "y" * 254  # as long as a 256-character waveform takes (libca refuses more)
    for value in (math.nan, math.inf, -math.inf, 1e300, -5, 2 ** 40, "abc", huge):
        epics_value = value
        put_status(p + "JPEG1:JPEGQuality", epics_value if not isinstance(value, str) else 0)
        quality = get(p + "JPEG1:JPEGQuality_RBV")
        assert 0 <= quality <= 100
    for pv in ("Nexus1:TemplateFilePath", "Nexus1:TemplateFileName", "netCDF1:FileName",
               "JPEG1:FileName"):
        put_status(p + pv, long)
        epics.caput(p + pv, huge, wait=True)  # pyepics cuts it to the waveform's length
        put_status(p + pv, "\x00\xff")
        assert get(p + pv + "_RBV", as_string=True) is not None
    put(p + "Nexus1:TemplateFilePath", "")
    put(p + "Nexus1:TemplateFileName", "")
    assert get(p + "Nexus1:FileTemplateValid") == 1
    put(p + "JPEG1:JPEGQuality", 50)
    assert get(p + "JPEG1:JPEGQuality_RBV") == 50


# ADCore ee039d24 ADApp/op/bob/autoconvert: NDFileJPEG/NDFileNetCDF/NDFileNexus.bob, plus the
# NDFileBase.bob, NDFile.bob (FileFormat) and NDPluginBase.bob they embed
ADCORE_FILE_BASE = (
    "AutoIncrement AutoIncrement_RBV AutoSave AutoSave_RBV Capture Capture_RBV CreateDirectory "
    "CreateDirectory_RBV DeleteDriverFile DeleteDriverFile_RBV FileName FileName_RBV FileNumber "
    "FileNumber_RBV FilePath FilePathExists_RBV FilePath_RBV FileTemplate FileTemplate_RBV "
    "FileWriteMode FileWriteMode_RBV FreeCapture FullFileName_RBV LazyOpen LazyOpen_RBV "
    "NumCapture NumCapture_RBV NumCaptured_RBV ReadFile ReadFile_RBV TempSuffix TempSuffix_RBV "
    "WriteFile WriteFile_RBV WriteMessage WriteStatus FileFormat FileFormat_RBV "
    "ADCoreVersion_RBV ArrayCallbacks ArrayCallbacks_RBV ArrayCounter ArrayCounter_RBV "
    "ArrayRate_RBV ArraySize0_RBV ArraySize1_RBV ArraySize2_RBV ColorMode_RBV DataType_RBV "
    "DriverVersion_RBV DroppedArrays DroppedArrays_RBV EnableCallbacks EnableCallbacks_RBV "
    "ExecutionTime_RBV MinCallbackTime MinCallbackTime_RBV NDArrayAddress NDArrayAddress_RBV "
    "NDArrayPort NDArrayPort_RBV NDimensions_RBV PluginType_RBV PortName_RBV ProcessPlugin "
    "QueueFree QueueSize TimeStamp_RBV UniqueId_RBV").split()
ADCORE_SCREEN_PVS = {
    "JPEG1:": ["JPEGQuality", "JPEGQuality_RBV"],
    "netCDF1:": [],
    "Nexus1:": ["FileTemplateValid", "TemplateFileName", "TemplateFileName_RBV",
                "TemplateFilePath", "TemplateFilePath_RBV"],
}


def test_every_pv_of_adcores_screens_connects(ioc):
    from epics import ca
    names = [ioc.prefix + r + s for r, own in ADCORE_SCREEN_PVS.items()
             for s in (*own, *ADCORE_FILE_BASE)]
    chids = {n: ca.create_channel(n, connect=False, auto_cb=False) for n in names}
    assert wait_for(lambda: all(ca.isConnected(c) for c in chids.values()), 20), \
        [n for n, c in chids.items() if not ca.isConnected(c)][:10]
