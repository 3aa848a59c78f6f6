"""Phoebus .bob screens generated from a component's parameter declarations.

Rows pair each setpoint (textentry, combo or action button on `$(P)$(R)X`) with its readback
(textupdate on `$(P)$(R)X_RBV`), in sections by the declarations' `group`, as ADCore's screens
do; arrays become plots. Colours follow ADCore's converted MEDM screens: control blue for
setpoints, blue-on-grey for readbacks. Widget types and versions are the ones ADCore's own .bob
files use, so any Phoebus that opens those opens these.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Sequence

from ndflow.params import Access, Kind, Param

ROW = 25
LABEL_X, LABEL_W = 10, 210
SET_X, SET_W = 225, 150
RBV_X, RBV_W = 380, 150
WIDTH = RBV_X + RBV_W + 10
CONTROL = (115, 223, 255)
READBACK_FG, READBACK_BG = (10, 0, 184), (187, 187, 187)
HEADER_BG = (210, 210, 210)


class Screen:
    """A display being laid out top to bottom, one row at a time."""

    def __init__(self, name: str, macros: dict[str, str]) -> None:
        self.root = ET.Element("display", version="2.0.0")
        _text(self.root, "name", name)
        if macros:
            node = ET.SubElement(self.root, "macros")
            for key, value in macros.items():
                _text(node, key, value)
        self.y = 10
        self._count = 0

    def widget(self, kind: str, version: str, x: int, y: int, w: int, h: int,
               **props: str | ET.Element) -> ET.Element:
        self._count += 1
        node = ET.SubElement(self.root, "widget", type=kind, version=version)
        _text(node, "name", f"{kind} #{self._count}")
        for key, value in (("x", x), ("y", y), ("width", w), ("height", h)):
            _text(node, key, str(value))
        for key, value in props.items():
            if not isinstance(value, ET.Element):
                _text(node, key, value)
            elif value.tag == key:  # a whole property (actions, traces)
                node.append(value)
            else:  # a value to wrap in the property (a colour, a font)
                ET.SubElement(node, key).append(value)
        return node

    def title(self, text: str) -> None:
        self.widget("label", "2.0.0", 0, self.y, WIDTH, 30, text=text,
                    horizontal_alignment="1", font=_font(20, bold=True),
                    background_color=_color(HEADER_BG), transparent="false")
        self.y += 40

    def section(self, text: str) -> None:
        self.widget("label", "2.0.0", LABEL_X, self.y, WIDTH - 2 * LABEL_X, 22, text=text,
                    font=_font(16, bold=True))
        self.y += ROW + 2

    def param(self, p: Param) -> None:
        label = p.name.removesuffix("_RBV")
        if p.kind is Kind.ARRAY:
            self.widget("label", "2.0.0", LABEL_X, self.y, LABEL_W, 20, text=label)
            self.y += ROW
            self._plot(p)
            return
        tall = p.kind is Kind.TEXT and p.length > 300
        height = 100 if tall else 20
        self.widget("label", "2.0.0", LABEL_X, self.y, LABEL_W, 20, text=label,
                    tooltip=p.doc or label)
        if p.access is Access.W:
            self._command(p)
        elif p.setpoint_name:
            self._setpoint(p)
        if p.readback_name:
            wide = p.access is Access.R and p.kind in (Kind.TEXT, Kind.STRING)
            x, w = (SET_X, SET_W + RBV_W + 5) if wide else (RBV_X, RBV_W)
            self.widget("textupdate", "2.0.0", x, self.y, w, height,
                        pv_name=f"$(P)$(R){p.readback_name}",
                        foreground_color=_color(READBACK_FG),
                        background_color=_color(READBACK_BG),
                        format="6" if p.kind in (Kind.TEXT, Kind.STRING) else "0",
                        show_units="true", border_alarm_sensitive="true",
                        wrap_words="true" if tall else "false")
        self.y += height + 5

    def _setpoint(self, p: Param) -> None:
        pv = f"$(P)$(R){p.setpoint_name}"
        if p.kind is Kind.ENUM:
            self.widget("combo", "2.0.0", SET_X, self.y, SET_W, 20, pv_name=pv,
                        background_color=_color(CONTROL))
        else:
            self.widget("textentry", "3.0.0", SET_X, self.y, SET_W, 20, pv_name=pv,
                        background_color=_color(CONTROL),
                        format="6" if p.kind in (Kind.TEXT, Kind.STRING) else "0")

    def _command(self, p: Param) -> None:
        actions = ET.Element("actions")
        action = ET.SubElement(actions, "action", type="write_pv")
        _text(action, "pv_name", f"$(P)$(R){p.name}")
        _text(action, "value", "1")
        _text(action, "description", p.name)
        self.widget("action_button", "3.0.0", SET_X, self.y, SET_W, 20, actions=actions,
                    pv_name=f"$(P)$(R){p.name}", text=p.name,
                    background_color=_color(CONTROL))

    def _plot(self, p: Param) -> None:
        traces = ET.Element("traces")
        trace = ET.SubElement(traces, "trace")
        _text(trace, "name", p.name)
        _text(trace, "x_pv", "")
        _text(trace, "y_pv", f"$(P)$(R){p.readback_name or p.name}")
        _text(trace, "trace_type", "1")
        self.widget("xyplot", "3.0.0", LABEL_X, self.y, WIDTH - 2 * LABEL_X, 200,
                    traces=traces)
        self.y += 210

    def xml(self) -> str:
        _text(self.root, "width", str(WIDTH))
        _text(self.root, "height", str(self.y + 10))
        ET.indent(self.root, "  ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(
            self.root, encoding="unicode") + "\n"


def component_screen(title: str, params: Iterable[Param], groups: Sequence[str],
                     macros: dict[str, str] | None = None) -> str:
    """A screen with one section per group in `groups`, in that order."""
    screen = Screen(title, macros or {})
    screen.title(title)
    by_group: dict[str, list[Param]] = {g: [] for g in groups}
    for p in params:
        if p.group in by_group:
            by_group[p.group].append(p)
    for group, members in by_group.items():
        if members:
            screen.section(group)
            for p in members:
                screen.param(p)
    return screen.xml()


def write_screen(path: Path, text: str) -> None:
    """Replace the file atomically, so Phoebus never reads half a screen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".bob.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    node = ET.SubElement(parent, tag)
    node.text = text
    return node


def _color(rgb: tuple[int, int, int]) -> ET.Element:
    return ET.Element("color", red=str(rgb[0]), green=str(rgb[1]), blue=str(rgb[2]))


def _font(size: int, bold: bool = False) -> ET.Element:
    return ET.Element("font", family="Liberation Sans", style="BOLD" if bold else "REGULAR",
                      size=f"{size:.1f}")
