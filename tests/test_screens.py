"""Generated Phoebus screens (issue 4): the default IOC plus one algorithm instance. Every file is
well-formed .bob with widget types and versions Phoebus knows; every screen is reachable from
`ndflow.bob`; every PV named anywhere (macros expanded as the buttons pass them) connects; no
widgets overlap; fonts and colours are consistent; an algorithm's new parameter appears on its
screen while the IOC runs."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from epics import ca

from conftest import NDFLOW, REPO, running_ioc
from test_acquisition import get, put, wait_for

# Widget types and versions of ADCore's and ADSimDetector's own .bob files
# (shared/reference/phoebus-bob.md): a Phoebus that opens those opens these.
KNOWN_WIDGETS = {
    "textupdate": "2.0.0", "label": "2.0.0", "textentry": "3.0.0", "action_button": "3.0.0",
    "combo": "2.0.0", "rectangle": "2.0.0", "scrollbar": "2.0.0", "embedded": "2.0.0",
    "group": "2.0.0", "xyplot": "3.0.0", "polyline": "2.0.0", "led": "2.0.0", "image": "2.0.0",
    "checkbox": "2.0.0",
}
MACRO = re.compile(r"\$\((\w+)\)")

ALGO_V1 = '''
from ndflow.algorithm import Alarm, Algorithm, Input, Output

class Probe(Algorithm):
    threshold = Input(100.0, low=0, high=4096, units="counts", doc="pixels above count")
    mode = Input("Mean", choices=["Mean", "Max"])
    enabled = Input(True)
    weights = Input([1.0, 2.0, 3.0])
    level = Output(float, units="counts", alarm=Alarm(high=200.0, hihi=250.0))
    profile = Output(float, length=64)

    def process(self, image, params, attributes, metadata):
        value = float(image.mean() if params.mode == "Mean" else image.max())
        return {"level": value, "profile": image.mean(axis=0)[:64].astype(float)}
'''
ALGO_V2 = ALGO_V1.replace('    enabled = Input(True)\n',
                          '    enabled = Input(True)\n    gate_width = Input(7, units="px")\n')


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screens_ioc")
    (folder / "algorithms").mkdir()
    (folder / "algorithms" / "probe.py").write_text(ALGO_V1)
    return folder


def config_text(folder: Path) -> str:
    """The default IOC (ADCore's commonPlugins) plus one algorithm instance."""
    default = (REPO / "ioc" / "configs" / "default.yml").read_text()
    default = re.sub(r"(?m)^screens_dir:.*$", f"screens_dir: '{folder / 'screens'}'", default)
    default = re.sub(r"(?m)^data_roots:.*$", f"data_roots: ['{folder}']", default)
    return (f"algorithm_folders: ['{folder / 'algorithms'}']\n" + default
            + "  - {type: python, port: PROBE, prefix: 'Probe1:', input: SIM1, "
              "options: {file: probe.py}}\n")


@pytest.fixture(scope="module")
def ioc(folder):
    with running_ioc(config_text(folder), folder, timeout=60) as proc:
        yield proc


@pytest.fixture(scope="module")
def screens(ioc, folder) -> Path:
    path = folder / "screens"
    assert wait_for(lambda: (path / "ndflow.bob").exists(), timeout=10)
    return path


def widgets(node: ET.Element):
    """Every widget, nested ones (in groups) included."""
    return node.iter("widget")


def pv_names(root: ET.Element) -> set[str]:
    """Every PV a screen connects: widgets', actions', rules' and traces'."""
    names = set()
    for tag in ("pv_name", "y_pv", "x_pv"):
        names |= {e.text.strip() for e in root.iter(tag) if e.text and e.text.strip()}
    return names


def expand(text: str, macros: dict[str, str]) -> str:
    return MACRO.sub(lambda m: macros[m.group(1)], text)


def walk(screens: Path, macros: dict[str, str]) -> dict[tuple[str, tuple], set[str]]:
    """Follow every open_display from ndflow.bob as Phoebus would (the opener's macros plus the
    action's, over the file's own defaults): {(file, macros): expanded PV names}."""
    seen: dict[tuple[str, tuple], set[str]] = {}
    todo = [("ndflow.bob", macros)]
    while todo:
        name, given = todo.pop()
        root = ET.parse(screens / name).getroot()
        own = {m.tag: m.text or "" for m in root.findall("macros/*")}
        effective = {**own, **given}
        key = (name, tuple(sorted(effective.items())))
        if key in seen:
            continue
        seen[key] = {expand(pv, effective) for pv in pv_names(root)}
        for action in root.iter("action"):
            if action.get("type") == "open_display":
                extra = {m.tag: m.text or "" for m in action.findall("macros/*")}
                todo.append((action.findtext("file"), {**effective, **extra}))
    return seen


def test_every_file_is_a_phoebus_display(screens):
    files = sorted(screens.glob("*.bob"))
    assert {"ndflow.bob", "simDetector.bob", "NDStats.bob", "NDROI.bob", "NDFileHDF5.bob",
            "NDStdArrays.bob", "PROBE.bob"} <= {f.name for f in files}
    for path in files:
        assert path.read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>')
        root = ET.parse(path).getroot()
        assert root.tag == "display" and root.get("version") == "2.0.0", path.name
        assert root.findtext("name"), path.name
        for w in widgets(root):
            kind = w.get("type")
            assert KNOWN_WIDGETS.get(kind) == w.get("version"), (path.name, kind, w.get("version"))
            assert w.findtext("name"), (path.name, kind)
        for action in root.iter("action"):
            if action.get("type") == "open_display":
                assert (screens / action.findtext("file")).is_file(), (path.name, action)
        for embedded in root.iter("widget"):
            if embedded.get("type") == "embedded":
                assert (screens / embedded.findtext("file")).is_file(), path.name


def test_every_screen_is_reachable_and_every_pv_connects(ioc, screens):
    reached = walk(screens, {"P": ioc.prefix})
    assert {name for name, _ in reached} == {f.name for f in screens.glob("*.bob")}
    names = set().union(*reached.values())
    assert not [n for n in names if "$(" in n]
    # the screens cover the IOC: every instance's own PVs appear, via its R
    for expected in ("cam1:AcquireTime", "cam1:AcquireTime_RBV", "Stats3:Total_RBV",
                     "ROI4:MinX", "HDF1:FileTemplate", "Probe1:Threshold", "Probe1:Level_RBV",
                     "image1:ArrayData", "Stats1:TSTotal", "Stats1:TS:TSAcquire", "Attr1:1:AttrName"):
        assert ioc.prefix + expected in names, expected
    pva = {n for n in names if n.startswith("pva://")}
    assert ioc.prefix + "Pva1:Image" in {n.removeprefix("pva://") for n in pva}
    names -= pva
    from p4p.client.thread import Context
    with Context("pva", nt=False) as ctxt:  # NTNDArray images: Phoebus reads them over PVA
        for name in sorted(pva):
            assert ctxt.get(name.removeprefix("pva://"), timeout=10).getID() == \
                "epics:nt/NTNDArray:1.0", name
    chids = {n: ca.create_channel(n, connect=False, auto_cb=False) for n in sorted(names)}
    try:
        deadline = time.monotonic() + 30
        missing = list(chids)
        while missing and time.monotonic() < deadline:
            ca.poll(evt=0.05)
            missing = [n for n in missing if not ca.isConnected(chids[n])]
        assert not missing, f"{len(missing)} of {len(names)} PVs did not connect: {missing[:20]}"
    finally:
        for chid in chids.values():
            ca.clear_channel(chid)
    assert len(names) > 2000  # the whole commonPlugins set, not a sample


def rectangles(node: ET.Element):
    for w in node.findall("widget"):
        yield w, tuple(int(w.findtext(k) or 0) for k in ("x", "y", "width", "height"))


def test_widgets_do_not_overlap_and_fit_their_parents(screens):
    for path in screens.glob("*.bob"):
        root = ET.parse(path).getroot()
        parents = [root] + [w for w in widgets(root) if w.get("type") == "group"]
        for parent in parents:
            width, height = int(parent.findtext("width")), int(parent.findtext("height"))
            boxes = list(rectangles(parent))
            for w, (x, y, w_, h) in boxes:
                assert x >= 0 and y >= 0 and x + w_ <= width and y + h <= height, (
                    path.name, parent.findtext("name"), w.findtext("name"), (x, y, w_, h))
            for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in itertools.combinations(boxes, 2):
                apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
                assert apart, (path.name, a.findtext("name"), (ax, ay, aw, ah),
                               b.findtext("name"), (bx, by, bw, bh))


def style(widget: ET.Element) -> tuple:
    font = widget.find("font/font")
    colours = tuple((tag, tuple(widget.find(f"{tag}/color").get(c) for c in ("red", "green", "blue")))
                    for tag in ("foreground_color", "background_color")
                    if widget.find(f"{tag}/color") is not None)
    return (None if font is None else (font.get("family"), font.get("style"), font.get("size")),
            colours)


def test_fonts_and_colours_are_consistent(screens):
    """One style per kind of widget across every screen: all setpoints look alike, all
    readbacks alike (pvi's DLS style), and only two font families appear."""
    styles: dict[tuple[str, str], set] = {}
    families = set()
    for path in screens.glob("*.bob"):
        for w in widgets(ET.parse(path).getroot()):
            styles.setdefault((w.get("type"), w.findtext("name")), set()).add(style(w))
            families |= {f.get("family") for f in w.iter("font") if f.get("family")}
    mixed = {kind: s for kind, s in styles.items() if len(s) > 1}
    assert not mixed
    assert families <= {"Liberation Sans", "Cantarell"}
    entry = styles[("textentry", "TextEntry")].pop()
    combo = styles[("combo", "ComboBox")].pop()
    assert dict(entry[1])["background_color"] == dict(combo[1])["background_color"]


def widget_on(root: ET.Element, pv: str) -> ET.Element:
    found = [w for w in widgets(root) if w.findtext("pv_name") == pv]
    assert len(found) == 1, (pv, len(found))
    return found[0]


def position(w: ET.Element) -> tuple[int, int]:
    return int(w.findtext("x")), int(w.findtext("y"))


def test_setpoints_sit_beside_their_readbacks(screens):
    cam = ET.parse(screens / "simDetector.bob").getroot()
    for setpoint, kind in (("AcquireTime", "textentry"), ("ImageMode", "combo")):
        entry = widget_on(cam, f"$(P)$(R){setpoint}")
        readback = widget_on(cam, f"$(P)$(R){setpoint}_RBV")
        assert (entry.get("type"), readback.get("type")) == (kind, "textupdate")
        assert position(entry)[1] == position(readback)[1]  # same row
        assert position(entry)[0] < position(readback)[0]
    start = [w for w in widgets(cam) if w.get("type") == "action_button"
             and w.findtext("actions/action/pv_name") == "$(P)$(R)Acquire"]
    assert sorted((w.findtext("text"), w.findtext("actions/action/value")) for w in start) == [
        ("Acquire", "1"), ("Stop", "0")]
    assert widget_on(cam, "$(P)$(R)DetectorState_RBV").get("type") == "textupdate"
    assert widget_on(cam, "$(P)$(R)ShutterStatus_RBV").get("type") == "led"
    labels = {w.findtext("text") for w in widgets(cam) if w.get("type") == "label"}
    assert "Acquire Time (s)" in labels  # units beside the name


def test_algorithm_screen_shows_its_declarations(screens):
    root = ET.parse(screens / "PROBE.bob").getroot()
    assert root.findtext("macros/R") == "Probe1:"  # opens with P alone
    assert widget_on(root, "$(P)$(R)Threshold").get("type") == "textentry"
    assert widget_on(root, "$(P)$(R)Mode").get("type") == "combo"
    level = widget_on(root, "$(P)$(R)Level_RBV")
    assert level.findtext("border_alarm_sensitive") == "true"
    tooltips = " ".join(w.findtext("tooltip") or "" for w in widgets(root))
    assert "range 0 .. 4096 counts" in tooltips and "alarm at HIGH 200, HIHI 250" in tooltips
    reload = widget_on(root, "$(P)$(R)Reload")
    assert (reload.get("type"), reload.findtext("actions/action/value")) == ("action_button", "1")
    plots = [ET.parse(p).getroot() for p in screens.glob("PROBE_*.bob")]
    traces = {t.findtext("y_pv") for r in plots for t in r.iter("trace")}
    assert "$(P)$(R)Profile_RBV" in traces


def test_image_widget_sizes_itself_from_the_array_size_pvs(ioc, screens):
    images = [(p, w) for p in screens.glob("NDStdArrays*.bob")
              for w in widgets(ET.parse(p).getroot()) if w.get("type") == "image"]
    assert len(images) == 1
    path, image = images[0]
    assert image.findtext("pv_name") == "$(P)$(R)ArrayData"
    rules = {r.get("prop_id"): r.findtext("pv_name") for r in image.iter("rule")}
    assert rules == {"data_width": "$(P)$(R)ArraySize0_RBV",
                     "data_height": "$(P)$(R)ArraySize1_RBV"}
    p = ioc.prefix
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:AcquireTime", 0.01)
    put(p + "cam1:Acquire", 1, timeout=20)
    assert wait_for(lambda: get(p + "image1:ArraySize0_RBV") == get(p + "cam1:SizeX_RBV"))
    assert get(p + "image1:ArraySize1_RBV") == get(p + "cam1:SizeY_RBV")


def test_overview_lists_every_instance_with_its_screen(ioc, screens):
    root = ET.parse(screens / "ndflow.bob").getroot()
    opens = {a.findtext("macros/R"): a.findtext("file") for a in root.iter("action")
             if a.get("type") == "open_display"}
    assert opens["cam1:"] == "simDetector.bob"
    assert opens["Stats5:"] == "NDStats.bob" and opens["ROI1:"] == "NDROI.bob"
    assert opens["Probe1:"] == "PROBE.bob"
    # the IOC resources, the driver, every plugin of the default config (commonPlugins with
    # image1, image2, Pva1 and Pos1; Table1, Sparse1, Obs1, Veto1), the algorithm
    from ndflow.config import load_config
    default, _ = load_config(None)
    assert len(default.plugins) == 36
    assert len(opens) == 1 + len(default.drivers) + len(default.plugins) + 1
    for prefix in ("JPEG1:", "netCDF1:", "Nexus1:", "Codec2:", "Table1:", "Sparse1:", "Obs1:",
                   "Veto1:"):
        assert prefix in opens, prefix
    assert opens["Pva1:"] == "NDPva.bob"
    assert opens["IOC:"] == "ndflowIOC.bob"
    pvs = pv_names(root)
    for suffix in ("NDArrayPort_RBV", "EnableCallbacks_RBV", "ArrayRate_RBV", "DroppedArrays_RBV"):
        assert f"$(P)Stats2:{suffix}" in pvs
    assert "$(P)cam1:DetectorState_RBV" in pvs
    assert get(ioc.prefix + "Stats2:NDArrayPort_RBV") == "ROI1"


def test_new_algorithm_parameter_appears_on_its_screen(ioc, folder, screens):
    screen = screens / "PROBE.bob"
    assert "$(P)$(R)GateWidth" not in screen.read_text()
    (folder / "algorithms" / "probe.py").write_text(ALGO_V2)
    assert wait_for(lambda: "$(P)$(R)GateWidth" in screen.read_text(), timeout=10)
    root = ET.parse(screen).getroot()
    assert widget_on(root, "$(P)$(R)GateWidth").get("type") == "textentry"
    assert widget_on(root, "$(P)$(R)GateWidth_RBV").get("type") == "textupdate"
    assert get(ioc.prefix + "Probe1:GateWidth_RBV") == 7
    loads = get(ioc.prefix + "Probe1:Loads_RBV")
    put(ioc.prefix + "Probe1:Reload", 1)  # the screen's Reload button
    assert wait_for(lambda: get(ioc.prefix + "Probe1:Loads_RBV") == loads + 1, timeout=10)


def test_screens_command_writes_the_same_files(ioc, folder, screens, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(NDFLOW + ["screens", str(folder / "ioc.yml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and "ndflow.bob" in done.stderr
    assert {p.name for p in out.glob("*.bob")} == {p.name for p in screens.glob("*.bob")}
    assert (out / "NDStats.bob").read_text() == (screens / "NDStats.bob").read_text()


def test_screens_command_reports_an_unwritable_folder(folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(NDFLOW + ["screens", str(folder / "ioc.yml"), "--out",
                                    str(blocker / "sub")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "cannot write the screens" in done.stderr and "Traceback" not in done.stderr
