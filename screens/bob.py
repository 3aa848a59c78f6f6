"""pvi's Device model formatted as Phoebus .bob files, plus what pvi's model cannot say.

pvi (Diamond's generator, as used by FastCS and ibek) lays the widgets out on its grid with its
DLS style and writes one file per screen and sub-screen. Afterwards each file is finished here:
- the image widget of a CA waveform takes its data width and height from the array's
  `ArraySize0/1_RBV` through Phoebus rules (pvi fixes them at generation time; the frame size
  changes at run time); a `pva://` NTNDArray carries its own;
- menus keep no sample items from pvi's template, so Phoebus takes the choices from the PV;
- readbacks with alarm limits are marked alarm-sensitive explicitly;
- a write button's own `pv_name` is its action's PV (pvi leaves its template placeholder there);
- `group` widgets are written as version 2.0.0, the version ADCore's screens use, so any Phoebus
  that opens ADCore's screens opens these (pvi's template carries 3.0.0, whose extra property
  pvi does not use);
- every file gets the XML declaration and is replaced atomically, so Phoebus never reads half a
  screen.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

from lxml import etree
from pvi._format.dls import DLSFormatter
from pvi.device import Device

from ndflow.params import Param

from .device import pv_name

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def render(device: Device, stem: str, params: Iterable[Param] = (),
           formatter: DLSFormatter | None = None,
           macros: dict[str, str] | None = None) -> dict[str, str]:
    """{file name: XML text} for `device`'s screen `<stem>.bob` and its sub-screens. `macros`
    become the main screen's defaults (a per-instance screen knows its own R)."""
    with tempfile.TemporaryDirectory(prefix="ndflow-bob-") as tmp:
        (formatter or DLSFormatter()).format(device, Path(tmp) / f"{stem}.bob")
        raw = {path.name: path.read_bytes() for path in sorted(Path(tmp).glob("*.bob"))}
    alarmed = {pv_name(p.readback_name or p.name) for p in params if p.alarm is not None}
    return {name: _finish(text, alarmed, macros if name == f"{stem}.bob" else None)
            for name, text in raw.items()}


def _finish(text: bytes, alarmed: set[str], macros: dict[str, str] | None) -> str:
    root = etree.fromstring(text, etree.XMLParser(remove_blank_text=True))
    if macros:
        node = etree.Element("macros")
        for key, value in macros.items():
            etree.SubElement(node, key).text = value
        root.insert(list(root).index(root.find("name")) + 1, node)
    for widget in root.iter("widget"):
        kind = widget.get("type")
        pv = widget.findtext("pv_name") or ""
        if kind == "action_button" and widget.find("actions/action[@type='write_pv']") is not None:
            # pvi fills in the action's PV but leaves its template's placeholder as the
            # button's own PV (which Phoebus connects for the alarm border); use the action's
            _set(widget, "pv_name", widget.findtext("actions/action/pv_name"))
        elif kind == "group":
            widget.set("version", "2.0.0")
        elif kind == "image" and not pv.startswith("pva://"):
            _size_from_pvs(widget, pv)
        elif kind == "combo" and widget.findtext("items_from_pv") != "false":
            _drop(widget, "items")  # pvi's template sample items; Phoebus reads the PV's
        elif kind == "textupdate" and pv in alarmed:
            _set(widget, "border_alarm_sensitive", "true")
    etree.indent(root, space="  ")
    return DECLARATION + etree.tostring(root, encoding="unicode") + "\n"


def _size_from_pvs(widget: etree._Element, array_pv: str) -> None:
    """Rules setting data_width/data_height from the port's ArraySize0/1_RBV, and the frame
    read as unsigned (the Int8 `ArrayData` of a UInt8 frame shows 0..255)."""
    base = array_pv.rpartition(")")[0] + ")"  # the macros: "$(P)$(R)ArrayData" -> "$(P)$(R)"
    _set(widget, "unsigned", "true")
    rules = widget.find("rules")
    if rules is None:
        rules = etree.SubElement(widget, "rules")
    for prop, suffix in (("data_width", "ArraySize0_RBV"), ("data_height", "ArraySize1_RBV")):
        rule = etree.SubElement(rules, "rule", name=prop, prop_id=prop, out_exp="true")
        exp = etree.SubElement(rule, "exp", bool_exp="true")
        etree.SubElement(exp, "expression").text = "pv0"
        etree.SubElement(rule, "pv_name").text = base + suffix


def _drop(widget: etree._Element, tag: str) -> None:
    for node in widget.findall(tag):
        widget.remove(node)


def _set(widget: etree._Element, tag: str, value: str) -> None:
    node = widget.find(tag)
    if node is None:
        node = etree.SubElement(widget, tag)
    node.text = value


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write each file, replacing any older version atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = folder / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
