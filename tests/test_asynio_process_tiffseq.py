"""`AsynIO` (ADCore's asyn record and the fields screens and ophyd read) on the camera and the
plugins, and Proc1's ReadBackgroundTIFFSeq / ReadFlatFieldTIFFSeq reading a TIFF file from a data
root, through a real IOC with pyepics (and ophyd for AsynIO)."""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import epics
import numpy as np
import pytest
import tifffile

from conftest import ioc_with_data_root
from test_acquisition import get, put, wait_for
from test_file_writers import put_status, refused, text
from test_process import CAM_RESET, PROC_RESET, acquire

NX, NY = 64, 48


def config(root: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: {NX}, max_size_y: {NY}}}}}
        plugins:
          - {{type: stdarrays, port: IN1, prefix: "image1:", input: SIM1,
             options: {{data_type: Float64, nelm: 20000}}}}
          - {{type: process, port: PROC1, prefix: "Proc1:", input: SIM1}}
          - {{type: stdarrays, port: OUT1, prefix: "image2:", input: PROC1,
             options: {{data_type: Float64, nelm: 20000}}}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with ioc_with_data_root(tmp_path_factory, "asynio", config) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    prefix = ioc.prefix
    for name, value in PROC_RESET:
        put(prefix + "Proc1:" + name, value)
    for name, value in CAM_RESET:
        put(prefix + "cam1:" + name, value)
    put(prefix + "Proc1:TIFF:FilePath", str(ioc.root))
    put(prefix + "Proc1:TIFF:FileTemplate", "%s%s_%3.3d.tif")
    return prefix


# --- AsynIO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("component, port", [("cam1:", "SIM1"), ("Proc1:", "PROC1"),
                                             ("image1:", "IN1")])
def test_asyn_record_fields_answer_as_a_connected_port(ioc, component, port):
    r = ioc.prefix + component + "AsynIO"
    assert get(r) == 0
    assert text(r + ".CNCT") == "Connect"  # what ADCore's screens show and write
    assert text(r + ".PCNCT") == "Connect"
    assert text(r + ".ENBL") == "Enable" and text(r + ".AUCT") == "autoConnect"
    assert text(r + ".PORT") == port and get(r + ".ADDR") == 0
    assert text(r + ".TMOD") == "Write/Read"
    # a client asking for the enum strings gets asyn's menu
    pv = epics.PV(r + ".CNCT")
    assert pv.wait_for_connection(5)
    assert list(pv.get_ctrlvars()["enum_strs"]) == ["Disconnect", "Connect"]
    # ndflow has no asyn layer to disconnect: no write access, as a read-only field
    assert not pv.write_access
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        pv.put(0, wait=True, timeout=3)
    assert text(r + ".CNCT") == "Connect"
    pv.disconnect()
    # the settings a record stores are stored
    put(r + ".TMOD", "Read")
    assert text(r + ".TMOD") == "Read"
    put(r + ".TMOD", "Write/Read")
    put(r + ".TMOT", 2.5)
    assert get(r + ".TMOT") == 2.5


def test_ophyd_asyn_io_signal_connects(ioc):
    # image2: no other test here reads its PVs (pyepics' PV cache would hand ophyd a plain PV)
    from ophyd.areadetector.plugins import ImagePlugin
    plugin = ImagePlugin(ioc.prefix + "image2:", name="image2")
    plugin.asyn_io.wait_for_connection(timeout=10)
    assert plugin.asyn_io.get() == 0
    assert plugin.port_name.get() == "OUT1"
    # not destroyed here: ophyd's metadata thread may still be reading the plugin's other
    # signals' control values, and destroy() clears their channels under it; libca then
    # segfaulted in ca.write_access (this process, CI of 2917e88). ophyd's race, not the IOC's


def test_asyn_fields_refuse_bad_values(ioc):
    r = ioc.prefix + "cam1:AsynIO"
    for pv, value in ((".TMOT", math.nan), (".TMOT", math.inf), (".TMOD", 17), (".TMOD", -1),
                      (".TMSK", 2 ** 40), ("", 2 ** 40)):
        assert refused(put_status(r + pv, value)), (pv, value)
    put_status(r + ".TMOT", 1e300)  # clamped as a DRVH would
    assert get(r + ".TMOT") == 86400.0
    put_status(r + ".TMOT", -3)
    assert get(r + ".TMOT") == 0.0
    assert text(r + ".TMOD") == "Write/Read" and get(r + ".TMSK") == 1
    assert text(r + ".CNCT") == "Connect"
    put(r + ".TMOT", 1.0)


# --- ReadBackgroundTIFFSeq / ReadFlatFieldTIFFSeq -------------------------------------------------------
def write_tiff(path: Path, data: np.ndarray) -> None:
    tifffile.imwrite(path, data)


def test_background_and_flat_field_read_from_tiff_files(ioc, p):
    rng = np.random.default_rng(7)
    background = rng.integers(0, 20, (NY, NX)).astype(np.uint16)
    flat = rng.integers(1, 50, (NY, NX)).astype(np.float32)
    write_tiff(ioc.root / "bg_003.tif", background)
    write_tiff(ioc.root / "flat_001.tif", flat)
    assert get(p + "Proc1:ValidBackground_RBV", as_string=True) == "Invalid"

    put(p + "Proc1:TIFF:FileName", "bg")
    put(p + "Proc1:TIFF:FileNumber", 3)
    put(p + "Proc1:ReadBackgroundTIFFSeq.PROC", 1)  # as ADCore's NDProcess screen does
    assert get(p + "Proc1:ValidBackground_RBV", as_string=True) == "Valid"
    assert text(p + "Proc1:TIFF:FullFileName_RBV") == str(ioc.root / "bg_003.tif")
    put(p + "Proc1:EnableBackground", 1)
    put(p + "Proc1:DataTypeOut", "Float64")
    frame, out = acquire(p)
    np.testing.assert_array_equal(out, frame - background)

    put(p + "Proc1:TIFF:FileName", "flat")
    put(p + "Proc1:TIFF:FileNumber", 1)
    put(p + "Proc1:ReadFlatFieldTIFFSeq", 1)  # the screen writes the record itself
    assert get(p + "Proc1:ValidFlatField_RBV", as_string=True) == "Valid"
    put(p + "Proc1:EnableFlatField", 1)
    put(p + "Proc1:ScaleFlatField", 100.0)
    frame, out = acquire(p)
    np.testing.assert_allclose(out, (frame - background) * (100.0 / flat.astype(np.float64)),
                               rtol=1e-12)
    put(p + "Proc1:ScaleFlatField", 255.0)


def test_tiff_files_outside_the_data_roots_or_unusable_are_refused(ioc, p, tmp_path):
    good = np.full((NY, NX), 5, dtype=np.uint16)
    write_tiff(ioc.root / "keep_001.tif", good)
    put(p + "Proc1:TIFF:FileName", "keep")
    put(p + "Proc1:TIFF:FileNumber", 1)
    put(p + "Proc1:ReadBackgroundTIFFSeq", 1)
    assert get(p + "Proc1:ValidBackground_RBV") == 1

    outside = tmp_path / "outside_001.tif"  # a real TIFF, but not under a data root
    write_tiff(outside, good)
    (ioc.root / "notatiff_001.tif").write_text("plain text")
    os.symlink(outside, ioc.root / "link_001.tif")
    cases = [
        (str(tmp_path), "outside", "%s%s_%3.3d.tif", "outside the data roots"),
        ("/etc", "passwd", "%s/%s", "outside the data roots"),
        (str(ioc.root), "../../../../etc/passwd", "%s%s", "outside"),
        (str(ioc.root), "missing", "%s%s_%3.3d.tif", "no such file"),
        (str(ioc.root), "notatiff", "%s%s_%3.3d.tif", "not a readable TIFF"),
        (str(ioc.root), "link", "%s%s_%3.3d.tif", "link"),
        (str(ioc.root), "keep", "%s%s%d%d", "FileTemplate"),
        (str(ioc.root), "keep", "%n%s", "not allowed"),
    ]
    for folder, name, template, reason in cases:
        put(p + "Proc1:TIFF:FilePath", folder)
        put(p + "Proc1:TIFF:FileName", name)
        put(p + "Proc1:TIFF:FileTemplate", template)
        for pv in ("Proc1:ReadBackgroundTIFFSeq.PROC", "Proc1:ReadFlatFieldTIFFSeq"):
            assert refused(put_status(p + pv, 1)), (name, pv)
            assert wait_for(lambda: reason in text(p + "Proc1:StatusMessage_RBV"), 5), \
                (name, pv, text(p + "Proc1:StatusMessage_RBV"))
            assert "root:" not in text(p + "Proc1:StatusMessage_RBV")
    # the background read before is still in force
    assert get(p + "Proc1:ValidBackground_RBV") == 1
    put(p + "Proc1:EnableBackground", 1)
    put(p + "Proc1:DataTypeOut", "Float64")
    frame, out = acquire(p)
    np.testing.assert_array_equal(out, frame - 5)


def test_tiffseq_pvs_take_fuzz(ioc, p):
    for pv in ("Proc1:ReadBackgroundTIFFSeq", "Proc1:ReadFlatFieldTIFFSeq.PROC",
               "Proc1:TIFF:FileNumber"):
        for value in (math.nan, math.inf, 1e300, -1):
            put_status(p + pv, value)
    for pv in ("Proc1:TIFF:FilePath", "Proc1:TIFF:FileName", "Proc1:TIFF:FileTemplate"):
        put_status(p + pv, "%" * 255)
        epics.caput(p + pv, "q" * 10_000, wait=True)
    put(p + "Proc1:TIFF:FileTemplate", "%s%s_%3.3d.tif")
    assert refused(put_status(p + "Proc1:ReadBackgroundTIFFSeq", 1))
    assert get(p + "cam1:Acquire_RBV") is not None


# ADCore ee039d24 ADApp/op/bob/autoconvert/NDProcess.bob (its own PVs) and ADSetup.bob's AsynIO
NDPROCESS_BOB = (
    "AutoOffsetScale AutoResetFilter DataTypeOut DataTypeOut_RBV EnableBackground "
    "EnableBackground_RBV EnableFilter EnableFilter_RBV EnableFlatField EnableFlatField_RBV "
    "EnableHighClip EnableHighClip_RBV EnableLowClip EnableLowClip_RBV EnableOffsetScale "
    "EnableOffsetScale_RBV FC1 FC1_RBV FC2 FC2_RBV FC3 FC3_RBV FC4 FC4_RBV FOffset FOffset_RBV "
    "FScale FScale_RBV FilterCallbacks FilterType HighClipThresh HighClipThresh_RBV "
    "HighClipValue HighClipValue_RBV LowClipThresh LowClipThresh_RBV LowClipValue "
    "LowClipValue_RBV NumFilter NumFilter_RBV NumFiltered_RBV OC1 OC1_RBV OC2 OC2_RBV OC3 "
    "OC3_RBV OC4 OC4_RBV OOffset OOffset_RBV OScale OScale_RBV Offset Offset_RBV RC1 RC1_RBV "
    "RC2 RC2_RBV ROffset ROffset_RBV ReadBackgroundTIFFSeq.PROC ReadFlatFieldTIFFSeq "
    "ResetFilter SaveBackground SaveFlatField Scale ScaleFlatField ScaleFlatField_RBV "
    "Scale_RBV ValidBackground_RBV ValidFlatField_RBV").split()


def test_every_pv_of_adcores_process_and_setup_screens_connects(ioc):
    from epics import ca
    names = [ioc.prefix + "Proc1:" + s for s in NDPROCESS_BOB]
    names += [ioc.prefix + r + "AsynIO.CNCT" for r in ("cam1:", "Proc1:", "image1:")]
    chids = {n: ca.create_channel(n, connect=False, auto_cb=False) for n in names}
    assert wait_for(lambda: all(ca.isConnected(c) for c in chids.values()), 20), \
        [n for n, c in chids.items() if not ca.isConnected(c)][:10]
