"""NDPluginScatter/Gather, NDPluginBadPixel and NDPosPlugin through a real IOC, as a client sees
them (pyepics; h5py on the files written downstream).

One IOC serves the module: sim 64x48 UInt16 -> Scatter1 -> Stats1, Stats2, ROI1 -> Gather1 ->
HDF1; sim -> BadPix1 -> image1 (and sim -> image0, the raw frame); sim -> Pos1 -> HDF2. The
plugins are loaded as module:Class, as any site's own plugins would be.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import epics
import h5py
import numpy as np
import pytest
from epics import ca

from conftest import ioc_with_data_root, running_ioc
from test_acquisition import Monitor, get, put, ramp, wait_for, wrap

NX, NY = 64, 48
N = 30  # frames per scatter/gather run (10 per parallel plugin)
WAVE = "{data_type: Float64, nelm: 4000}"


def config(root: Path) -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: {NX}, max_size_y: {NY}, data_type: UInt16}}}}
        plugins:
          - {{type: "ndflow.plugins.scatter:Scatter", port: SCATTER1, prefix: "Scatter1:",
             input: SIM1, queue_size: 100}}
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SCATTER1, queue_size: 100}}
          - {{type: stats, port: STATS2, prefix: "Stats2:", input: SCATTER1, queue_size: 100}}
          - {{type: roi, port: ROI1, prefix: "ROI1:", input: SCATTER1, queue_size: 100}}
          - {{type: "ndflow.plugins.gather:Gather", port: GATHER1, prefix: "Gather1:",
             queue_size: 100, options: {{inputs: [STATS1, STATS2, ROI1]}}}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: GATHER1, queue_size: 100}}
          - {{type: stdarrays, port: IMAGE0, prefix: "image0:", input: SIM1, options: {WAVE}}}
          - {{type: "ndflow.plugins.badpixel:BadPixelPlugin", port: BADPIX1,
             prefix: "BadPix1:", input: SIM1}}
          - {{type: stdarrays, port: IMAGE1, prefix: "image1:", input: BADPIX1,
             options: {WAVE}}}
          - {{type: "ndflow.plugins.pos:PosPlugin", port: POS1, prefix: "Pos1:", input: SIM1,
             queue_size: 100}}
          - {{type: hdf5, port: FileHDF2, prefix: "HDF2:", input: POS1, queue_size: 100}}
        """)


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with ioc_with_data_root(tmp_path_factory, "scatter", config) as ioc:
        yield ioc


@pytest.fixture
def p(ioc):
    p = ioc.prefix
    put(p + "cam1:Acquire", 0)
    for name, value in [("ImageMode", "Multiple"), ("NumImages", 1), ("WaitForPlugins", "Yes"),
                        ("AcquireTime", 0.001), ("AcquirePeriod", 0.0), ("Gain", 1.0),
                        ("SimMode", "LinearRamp"), ("Reset", 1), ("ArrayCounter", 0)]:
        put(p + "cam1:" + name, value)
    for hdf in ("HDF1:", "HDF2:"):
        put(p + hdf + "Capture", 0)
        put(p + hdf + "FilePath", str(ioc.root))
        put(p + hdf + "FileWriteMode", "Stream")
        put(p + hdf + "AutoIncrement", "Yes")
        put(p + hdf + "FileTemplate", "%s%s_%3.3d.h5")
        put(p + hdf + "StoreAttr", "Yes")
    return p


def text(pv: str) -> str:
    return get(pv, as_string=True)


def acquire_into(p: str, hdf: str, frames: int, name: str) -> Path:
    """Stream `frames` frames of a Multiple acquisition into a file; its path."""
    put(p + hdf + "FileName", name)
    put(p + hdf + "NumCapture", frames)
    capture_rbv = Monitor.of(p + hdf + "Capture_RBV")
    put(p + hdf + "Capture", 1, wait=False)
    assert wait_for(lambda: capture_rbv.value == 1)
    put(p + "cam1:NumImages", frames)
    put(p + "cam1:Acquire", 1, timeout=30)
    assert wait_for(lambda: capture_rbv.value == 0, timeout=20), text(p + hdf + "WriteMessage")
    return Path(text(p + hdf + "FullFileName_RBV"))


def ids_and_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        return (f["entry/instrument/NDAttributes/NDArrayUniqueId"][()],
                f["entry/data/data"][()])


# --- Scatter / Gather -----------------------------------------------------------------------------

def test_scatter_gather_sorted_gives_every_frame_once_in_unique_id_order(ioc, p):
    for plugin in ("Stats1:", "Stats2:", "ROI1:", "Scatter1:", "Gather1:"):
        put(p + plugin + "ArrayCounter", 0)
    put(p + "Gather1:SortMode", "Sorted")
    put(p + "Gather1:SortTime", 2.0)
    put(p + "Gather1:SortSize", 100)
    path = acquire_into(p, "HDF1:", N, "sorted")
    ids, frames = ids_and_frames(path)
    assert ids.tolist() == list(range(1, N + 1))
    expected = np.stack([wrap(ramp(NX, NY, frame=k), "u2") for k in range(1, N + 1)])
    np.testing.assert_array_equal(frames, expected)  # each frame is its own, unchanged
    # round robin: each of the three parallel plugins took every third frame
    assert [get(p + f"{plugin}ArrayCounter_RBV") for plugin in ("Stats1:", "Stats2:", "ROI1:")] \
        == [N // 3] * 3
    assert get(p + "Scatter1:ArrayCounter_RBV") == N and get(p + "Gather1:ArrayCounter_RBV") == N
    assert get(p + "Gather1:DroppedArrays_RBV") == 0
    assert text(p + "Scatter1:PluginType_RBV") == "NDPluginScatter"
    assert text(p + "Gather1:PluginType_RBV") == "NDPluginGather"
    assert text(p + "Scatter1:ScatterMethod_RBV") == "Round robin"


def test_unsorted_gather_still_gives_every_frame_exactly_once(ioc, p):
    put(p + "Gather1:SortMode", "Unsorted")
    path = acquire_into(p, "HDF1:", N, "unsorted")
    ids, frames = ids_and_frames(path)
    assert sorted(ids.tolist()) == list(range(1, N + 1))  # arrival order, each id once
    for uid, frame in zip(ids, frames):
        np.testing.assert_array_equal(frame, wrap(ramp(NX, NY, frame=int(uid)), "u2"))


def test_gather_inputs_rewire_and_refuse_what_cannot_be(ioc, p):
    assert [text(p + f"Gather1:NDArrayPort_{n}_RBV") for n in (1, 2, 3, 4, 8)] == \
        ["STATS1", "STATS2", "ROI1", "", ""]
    assert text(p + "Gather1:NDArrayPort_RBV") == "STATS1"  # input 1 is NDArrayPort
    put(p + "Gather1:NDArrayPort_4", "NOPE")
    assert text(p + "Gather1:NDArrayPort_4_RBV") == ""
    assert "NOPE" in text(p + "Gather1:StatusMessage_RBV")
    put(p + "Gather1:NDArrayPort_4", "FileHDF1")  # HDF1 reads Gather1: a loop
    assert text(p + "Gather1:NDArrayPort_4_RBV") == ""
    assert "loop" in text(p + "Gather1:StatusMessage_RBV")
    put(p + "Gather1:NDArrayPort_1", "STATS2")
    assert text(p + "Gather1:NDArrayPort_RBV") == "STATS2"
    put(p + "Gather1:NDArrayPort", "STATS1")
    assert text(p + "Gather1:NDArrayPort_1_RBV") == "STATS1"


# --- BadPixel -------------------------------------------------------------------------------------

def waveform(p: str, plugin: str) -> np.ndarray:
    return np.asarray(get(p + plugin + "ArrayData", count=NX * NY)).reshape(NY, NX)


BAD_PIXELS = {"Bad pixels": [
    {"Pixel": [10, 5], "Set": 0},
    {"Pixel": [20, 5], "Set": 70000.7},      # C-cast to UInt16: 70000 wraps to 4464
    {"Pixel": [30, 10], "Replace": [1, 0]},
    {"Pixel": [31, 10], "Replace": [0, 1]},  # (30,10) would take 31 — bad itself: left alone
    {"Pixel": [40, 20], "Median": [1, 1]},
    {"Pixel": [41, 20], "Median": [2, 1]},   # its neighbour (40,20) is bad: left out
    {"Pixel": [0, 0], "Median": [1, 1]},     # a corner: 3 neighbours
    {"Pixel": [63, 47], "Replace": [1, 0]},  # the source is off the frame: left alone
]}


def numpy_expected(raw: np.ndarray) -> np.ndarray:
    """BAD_PIXELS applied with numpy, by hand."""
    out = raw.copy()
    out[5, 10] = 0
    out[5, 20] = np.array(70000).astype(np.uint16)
    out[10, 31] = raw[11, 31]
    block = raw[19:22, 39:42].astype(float).ravel().tolist()
    block.pop(4)  # the pixel itself
    block.remove(raw[20, 41])  # (41,20) is bad
    out[20, 40] = np.trunc(np.median(block))
    block = raw[19:22, 39:44].astype(float)
    mask = np.ones_like(block, bool)
    mask[1, 2] = False  # the pixel (41, 20) itself
    mask[1, 1] = False  # (40, 20) is bad
    out[20, 41] = np.trunc(np.median(block[mask]))
    out[0, 0] = np.trunc(np.median([raw[0, 1], raw[1, 0], raw[1, 1]]))
    return out


def test_bad_pixels_are_replaced_as_numpy_computes(ioc, p):
    path = ioc.root / "badpix.json"
    path.write_text(json.dumps(BAD_PIXELS))
    put(p + "BadPix1:FileName", str(path))
    assert text(p + "BadPix1:FileValid_RBV") == "Yes"
    assert get(p + "BadPix1:NumBadPixels_RBV") == len(BAD_PIXELS["Bad pixels"])
    assert text(p + "BadPix1:PluginType_RBV") == "NDPluginBadPixel"
    put(p + "cam1:SimMode", "Offset&Noise")
    put(p + "cam1:Noise", 1000.0)
    put(p + "cam1:Offset", 2000.0)
    put(p + "cam1:NumImages", 1)
    put(p + "cam1:Acquire", 1)
    raw, fixed = waveform(p, "image0:"), waveform(p, "image1:")
    assert len(np.unique(raw)) > 100  # a noisy frame: medians are not trivial
    np.testing.assert_array_equal(fixed, numpy_expected(raw.astype(np.uint16)))
    assert get(p + "BadPix1:PixelsOutside_RBV") == 0


def test_bad_files_keep_the_previous_list_and_say_why(ioc, p):
    root = ioc.root
    good = root / "good.json"
    good.write_text(json.dumps(BAD_PIXELS))
    put(p + "BadPix1:FileName", str(good))
    outside = ioc.folder.parent / "outside.json"
    outside.write_text(json.dumps(BAD_PIXELS))
    (root / "link.json").symlink_to(good)
    (root / "garbage.json").write_bytes(b"\x00\xffnot json")
    (root / "wrong.json").write_text('{"Bad pixels": [{"Pixel": [1, 2], "Replace": 3}]}')
    huge = root / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(64 << 20)  # sparse: refused by its size, never read
    cases = {str(outside): "read only from", str(root / "link.json"): "symbolic link",
             str(root / "garbage.json"): "not", str(root / "wrong.json"): "bad pixel 1",
             str(huge): "larger than", str(root / "missing.json"): "no such file",
             "../outside.json": "'..'", str(root): "is a folder"}
    for name, why in cases.items():
        put(p + "BadPix1:FileName", name)  # accepted, as ADCore stores it
        message = text(p + "BadPix1:StatusMessage_RBV")
        assert why in message and "previous 8 bad pixels stay" in message, (name, message)
        assert text(p + "BadPix1:FileValid_RBV") == "No"
        assert get(p + "BadPix1:NumBadPixels_RBV") == 8
    # the list in force still works, and the IOC has not lost its worker
    put(p + "cam1:SimMode", "LinearRamp")
    put(p + "cam1:Acquire", 1)
    assert waveform(p, "image1:")[5, 10] == 0


def test_pixels_outside_the_frame_are_counted(ioc, p):
    path = ioc.root / "far.json"
    path.write_text('{"Bad pixels": [{"Pixel": [500, 5], "Set": 1}, {"Pixel": [3, 3], "Set": 9}]}')
    put(p + "BadPix1:FileName", str(path))
    put(p + "cam1:SimMode", "LinearRamp")
    put(p + "cam1:Acquire", 1)
    assert wait_for(lambda: get(p + "BadPix1:PixelsOutside_RBV") == 1)
    assert "1 of 2 bad pixels lie outside" in text(p + "BadPix1:StatusMessage_RBV")
    assert waveform(p, "image1:")[3, 3] == 9


# --- NDPosPlugin ----------------------------------------------------------------------------------

def positions_xml(count: int) -> tuple[str, np.ndarray]:
    table = np.column_stack([np.arange(count) * 0.5 + 1, np.arange(count) % 3])
    rows = "\n".join(f'    <position x="{x}" y="{y}"></position>' for x, y in table)
    return (f"<pos_layout>\n  <dimensions>\n    <dimension name=\"x\"></dimension>\n"
            f"    <dimension name=\"y\"></dimension>\n  </dimensions>\n  <positions>\n{rows}\n"
            f"  </positions>\n</pos_layout>\n"), table


def pos_reset(p: str) -> None:
    put(p + "Pos1:Running", 0)
    put(p + "Pos1:Delete", 1)
    for name, value in [("Mode", "Discard"), ("Missing", 0), ("Duplicate", 0), ("IDStart", 1),
                        ("IDDifference", 1), ("IDName", "")]:
        put(p + "Pos1:" + name, value)


def test_positions_from_a_file_reach_the_hdf5_file(ioc, p):
    pos_reset(p)
    xml, table = positions_xml(12)
    (ioc.root / "scan.xml").write_text(xml)
    put(p + "Pos1:Filename", str(ioc.root / "scan.xml"))
    assert text(p + "Pos1:FileValid_RBV") == "Yes" and get(p + "Pos1:Qty_RBV") == 12
    assert text(p + "Pos1:PluginType_RBV") == "NDPositionPlugin"
    running = Monitor.of(p + "Pos1:Running_RBV")
    put(p + "Pos1:Running", 1, wait=False)  # busy: completes when the positions run out
    assert wait_for(lambda: running.value == 1)
    path = acquire_into(p, "HDF2:", 12, "positions")
    assert wait_for(lambda: running.value == 0)
    with h5py.File(path) as f:
        attrs = f["entry/instrument/NDAttributes"]
        np.testing.assert_array_equal(attrs["x"][()], table[:, 0])
        np.testing.assert_array_equal(attrs["y"][()], table[:, 1])
        assert attrs["NDArrayUniqueId"][()].tolist() == list(range(1, 13))
    assert get(p + "Pos1:Qty_RBV") == 0 and get(p + "Pos1:ExpectedID_RBV") == 13
    assert text(p + "Pos1:Position_RBV") == "[x=6.5,y=2]"
    # not Running: frames are not passed on
    before = get(p + "HDF2:ArrayCounter_RBV")
    put(p + "cam1:NumImages", 2)
    put(p + "cam1:Acquire", 1)
    assert get(p + "HDF2:ArrayCounter_RBV") == before


def test_missing_and_duplicate_frames_and_inline_json(ioc, p):
    pos_reset(p)
    put(p + "Pos1:Filename", json.dumps({"dimensions": ["theta"],
                                         "positions": [[k * 10.0] for k in range(10)]}))
    assert get(p + "Pos1:Qty_RBV") == 10
    put(p + "Pos1:IDStart", 3)  # frames 1 and 2 are "duplicates" of ids already used
    put(p + "Pos1:Mode", "Keep")
    put(p + "Pos1:Running", 1, wait=False)
    put(p + "cam1:NumImages", 3)
    put(p + "cam1:Acquire", 1)
    assert get(p + "Pos1:Duplicate_RBV") == 2 and get(p + "Pos1:Index_RBV") == 1
    assert text(p + "Pos1:Position_RBV") == "[theta=0]"
    put(p + "cam1:ArrayCounter", 6)  # the next frame is 7: ids 4..6 never came
    put(p + "cam1:NumImages", 1)
    put(p + "cam1:Acquire", 1)
    assert get(p + "Pos1:Missing_RBV") == 3 and text(p + "Pos1:Position_RBV") == "[theta=40]"
    assert get(p + "Pos1:Qty_RBV") == 10  # Keep: the list stays
    put(p + "Pos1:Reset", 1)
    assert get(p + "Pos1:Index_RBV") == 0
    put(p + "Pos1:Running", 0)


def test_bad_position_files_are_refused(ioc, p):
    pos_reset(p)
    (ioc.root / "bad.xml").write_text('<pos_layout><dimensions><dimension name="x"/>'
                                      '</dimensions><positions><position x="1"/>'
                                      '<position q="2"/></positions></pos_layout>')
    outside = ioc.folder.parent / "outside.xml"
    outside.write_text(positions_xml(2)[0])
    for name, why in [(str(ioc.root / "bad.xml"), "position 2"),
                      (str(outside), "read only from"), ("<pos_layout", "not valid XML"),
                      (str(ioc.root / "nothing.xml"), "no such file")]:
        put(p + "Pos1:Filename", name)
        assert text(p + "Pos1:FileValid_RBV") == "No"
        assert why in text(p + "Pos1:StatusMessage_RBV"), name
        assert get(p + "Pos1:Qty_RBV") == 0


# --- clients --------------------------------------------------------------------------------------

ADCORE_SCREEN_PVS = {  # ADCore ee039d24 ADApp/op/bob/autoconvert/*.bob, besides NDPluginBase.bob
    "Scatter1:": ["ScatterMethod", "ScatterMethod_RBV"],  # the template's (NDScatter.bob: none)
    "Gather1:": [f"{kind}_{n}{rbv}" for n in range(1, 9) for kind in ("NDArrayPort",
                 "NDArrayAddress") for rbv in ("", "_RBV")],
    "BadPix1:": ["FileName"],
    "Pos1:": ["Delete", "Duplicate", "Duplicate_RBV", "ExpectedID_RBV", "Filename",
              "Filename_RBV", "IDDifference", "IDDifference_RBV", "IDName", "IDName_RBV",
              "IDStart", "IDStart_RBV", "Index_RBV", "Missing", "Missing_RBV", "Mode",
              "Mode_RBV", "Position_RBV", "Qty_RBV", "Reset.PROC", "Running", "Running_RBV",
              "FileValid_RBV", "Reset"],
}


def test_every_pv_of_adcores_screens_connects(ioc):
    missing = []
    for plugin, names in ADCORE_SCREEN_PVS.items():
        for name in names:
            chid = ca.create_channel(ioc.prefix + plugin + name, connect=False, auto_cb=False)
            if not ca.connect_channel(chid, timeout=2):
                missing.append(plugin + name)
    assert not missing


def test_enum_strings_are_adcores(ioc):
    for pv, strings in [("Scatter1:ScatterMethod", ("Round robin",)),
                        ("Scatter1:ScatterMethod_RBV", ("Round robin",)),
                        ("Pos1:Mode", ("Discard", "Keep")), ("Pos1:Mode_RBV", ("Discard", "Keep")),
                        ("Pos1:Running", ("Idle", "Running")),
                        ("Pos1:Running_RBV", ("Idle", "Running")),
                        ("Pos1:FileValid_RBV", ("No", "Yes"))]:
        chid = ca.create_channel(ioc.prefix + pv, connect=False, auto_cb=False)
        assert ca.connect_channel(chid, timeout=5), pv
        assert ca.get_enum_strings(chid) == strings, pv
    assert get(ioc.prefix + "Pos1:IDStart_RBV") == 1
    assert get(ioc.prefix + "Pos1:IDDifference_RBV") == 1


def test_ophyd_plugin_classes_connect(tmp_path):
    """ophyd 1.x's classes on an IOC of their own (pyepics' caget/caput above leave epics.PV
    objects in its cache that ophyd would pick up)."""
    root = tmp_path / "data"
    root.mkdir()
    with running_ioc(config(root), tmp_path) as own:
        ophyd_session(own.prefix)


def ophyd_session(p: str) -> None:
    from ophyd import Component as Cpt
    from ophyd import Device
    from ophyd.areadetector import SimDetector, SingleTrigger
    from ophyd.areadetector.plugins import (BadPixelPlugin, GatherNPlugin_V31, GatherPlugin,
                                            HDF5Plugin, ImagePlugin, PosPluginPlugin_V35,
                                            ROIPlugin, ScatterPlugin_V35, StatsPlugin)

    gather_n = {f"gather1_{n}": Cpt(GatherNPlugin_V31, "Gather1:", index=n) for n in range(1, 9)}
    Detector = type("Detector", (SingleTrigger, SimDetector), {
        "scatter1": Cpt(ScatterPlugin_V35, "Scatter1:"), "gather1": Cpt(GatherPlugin, "Gather1:"),
        "stats1": Cpt(StatsPlugin, "Stats1:"), "stats2": Cpt(StatsPlugin, "Stats2:"),
        "roi1": Cpt(ROIPlugin, "ROI1:"), "image0": Cpt(ImagePlugin, "image0:"), **gather_n})

    # ophyd's BadPixelPlugin/PosPlugin expect PluginType "NDBadPixel"/"NDPosPlugin", not
    # ADCore's "NDPluginBadPixel"/"NDPositionPlugin", so a device staging them fails against
    # ADCore as it does here: they are only connected
    class Others(Device):
        badpix1 = Cpt(BadPixelPlugin, "BadPix1:")
        pos1 = Cpt(PosPluginPlugin_V35, "Pos1:")
        hdf1 = Cpt(HDF5Plugin, "HDF1:")
        hdf2 = Cpt(HDF5Plugin, "HDF2:")
        image1 = Cpt(ImagePlugin, "image1:")

    det = Detector(p, name="det")
    others = Others(p, name="others")
    det.wait_for_connection(timeout=30)
    others.wait_for_connection(timeout=30)
    # every signal of these plugin classes, the lazy ones too, but AsynIO (the asyn record:
    # issue 16's own item) and PoolMaxBuffers (which ADCore does not have either)
    unconnected = []
    for device in (det.scatter1, det.gather1, *(getattr(det, n) for n in gather_n),
                   others.badpix1, others.pos1):
        for walk in device.walk_signals():
            signal = walk.item
            if signal.name.endswith(("asyn_io", "pool_max_buffers")):
                continue
            try:
                signal.wait_for_connection(timeout=10)
            except TimeoutError:
                unconnected.append(signal.name)
    assert not unconnected
    det.validate_asyn_ports()
    graph, _ = det.get_asyn_digraph()
    # ophyd's digraph follows NDArrayPort only: Gather's input 1 (inputs 2..8 are read below)
    assert {("SIM1", "SCATTER1"), ("SCATTER1", "STATS1"), ("SCATTER1", "ROI1"),
            ("STATS1", "GATHER1"), ("SIM1", "IMAGE0")} <= set(graph.edges)
    assert det.gather1_2.gather_array_port.get() == "STATS2"
    assert det.gather1_8.gather_array_port.get() == ""
    assert det.scatter1.scatter_method.get() == "Round robin"
    assert others.pos1.mode.get() == "Discard" and others.pos1.running.get() == 0
    assert others.pos1.plugin_type.get() == "NDPositionPlugin"
    assert others.badpix1.plugin_type.get() == "NDPluginBadPixel"
    assert others.hdf2.nd_array_port.get() == "POS1"
    assert others.image1.nd_array_port.get() == "BADPIX1"
    det.cam.stage_sigs.update({"image_mode": "Multiple", "num_images": 1,
                               "acquire_time": 0.01})
    det.stage()
    try:
        for plugin in (det.scatter1, det.gather1, det.stats1, det.roi1):
            assert plugin.enable.get(as_string=True) == "Enable"
        before = det.gather1.array_counter.get()
        det.trigger().wait(timeout=20)
        assert wait_for(lambda: det.gather1.array_counter.get() == before + 1)
    finally:
        det.unstage()
