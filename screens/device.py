"""Parameter declarations turned into pvi's Device model, the input of pvi's .bob formatter.

A parameter's kind, access and choices decide its widgets, as ADCore's screens pair them: a
setpoint (text entry, combo, or buttons for a busy command such as Acquire) beside its `_RBV`
readback; a status value alone; an array as a plot and the frame itself as an image.

Groups come in ADCore's order (an algorithm's inputs and outputs, setup, plugin, readout,
collect, the component's own, file, status). The plumbing every NDArray port has (versions,
array sizes, attributes, buffers) sits behind buttons on sub-screens, as ADCore keeps it on
NDPluginBase's "More" screen, so the main screen shows what an operator changes.
"""

from __future__ import annotations

import re
from typing import Iterable

from pvi.device import (LED, ArrayTrace, ButtonPanel, ComboBox, ComponentUnion, Device,
                        DeviceRef, Grid, Group, ImageRead, Row, SignalR, SignalRW, SignalW,
                        SubScreen, TextFormat, TextRead, TextWrite, enforce_pascal_case,
                        to_title_case)

from ndflow.algorithm import INPUT_GROUP, OUTPUT_GROUP
from ndflow.params import Access, Kind, Param

MACRO_PREFIX = "$(P)$(R)"
FIRST_GROUPS = (INPUT_GROUP, OUTPUT_GROUP, "Setup", "Plugin", "Readout", "Collect")
LAST_GROUPS = ("File", "Status", "Shutter")
SUBSCREEN_GROUPS = ("Info", "Array", "Attributes", "Buffers")
MAX_ROWS_ON_MAIN = 20  # a bigger group (HDF5's extra dimensions) gets its own screen
SHORT_ARRAY = 16  # up to this many elements an array reads as text ("[1, 2, 0, ...]")
LONG_TEXT = 300  # characters above which a text readback gets several lines
IDLE_CHOICES = ("Done", "0", "Done Reset")  # a 2-state enum starting here is a command
LIT_STATES = ("Yes", "Open", "On", "Enable", "Enabled", "True")  # read-only 2-state: an LED


def pv_name(suffix: str) -> str:
    return MACRO_PREFIX + suffix


def pascal(text: str) -> str:
    """pvi's identifier form: "1:AttrName" -> "N1AttrName", "Flat field" -> "FlatField"."""
    words = re.split(r"[^A-Za-z0-9]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    return enforce_pascal_case("N" + name if name[:1].isdigit() else name or "X")


def is_command(p: Param) -> bool:
    """ADCore's busy and one-shot records (Acquire, Capture, ProcessPlugin, Reset): the screen
    offers buttons that write the active state, not a menu."""
    return p.kind is Kind.ENUM and len(p.choices) == 2 and p.choices[0] in IDLE_CHOICES


def label_of(p: Param) -> str:
    name = p.name.removesuffix("_RBV").replace(":", " ")
    words = " ".join(to_title_case(pascal(w)) for w in name.split())
    return f"{words} ({p.units})" if p.units else words


def description_of(p: Param) -> str:
    """The label's tooltip: what the value means, its PV names, limits and alarm thresholds."""
    parts = [p.doc] if p.doc else []
    parts.append(" / ".join(p.pv_suffixes[:2]))
    if p.low is not None or p.high is not None:
        low = "-inf" if p.low is None else f"{p.low:g}"
        high = "inf" if p.high is None else f"{p.high:g}"
        parts.append(f"range {low} .. {high} {p.units}".rstrip())
    if p.alarm is not None:
        limits = [f"{k.upper()} {v:g}" for k, v in vars(p.alarm).items() if v is not None]
        parts.append("alarm at " + ", ".join(limits))
    return "; ".join(parts)


def signal_of(p: Param) -> ComponentUnion:
    """The pvi Signal (PVs + widgets) for one parameter."""
    common = {"name": pascal(p.name.removesuffix("_RBV")),
              "label": label_of(p), "description": description_of(p)}
    text = p.kind in (Kind.STRING, Kind.TEXT)
    fmt = TextFormat.string if text else None
    lines = 4 if p.kind is Kind.TEXT and p.length > LONG_TEXT else None
    read = TextRead(format=fmt, lines=lines)
    write = TextWrite(format=fmt)
    if p.kind is Kind.NDARRAY:  # NTNDArray: Phoebus takes the size and type from the value
        return SignalR(read_pv="pva://" + pv_name(p.name), read_widget=ImageRead(), **common)
    if p.kind is Kind.ARRAY and p.length > SHORT_ARRAY:
        widget = ImageRead() if p.widget == "image" else ArrayTrace(axis="x")
        return SignalR(read_pv=pv_name(p.readback_name or p.name), read_widget=widget, **common)
    if p.kind is Kind.ARRAY:  # a few numbers, read and typed as "1, 2, 3"
        read, write = TextRead(), TextWrite()
    elif p.kind is Kind.ENUM:
        write = ComboBox()  # items from the PV: one source of truth for the choices
        if p.access is Access.R and len(p.choices) == 2 and p.choices[1] in LIT_STATES:
            read = LED()  # a yes/no state; a status such as "Write error" stays text
    if is_command(p):
        # the button says what it does: "Acquire", "Capture"; or the name for a bare 0/1
        active = pascal(p.choices[1]) if p.choices[1].isalpha() else common["name"]
        if p.access is Access.W:
            return SignalW(write_pv=pv_name(p.name),
                           write_widget=ButtonPanel(actions={active: "1"}), **common)
        buttons = ButtonPanel(actions={active: "1", "Stop": "0"})
        return SignalRW(write_pv=pv_name(p.name), write_widget=buttons,
                        read_pv=pv_name(p.readback_name), read_widget=TextRead(), **common)
    if p.access is Access.R:
        return SignalR(read_pv=pv_name(p.readback_name or p.name), read_widget=read, **common)
    if p.access is Access.W:
        return SignalW(write_pv=pv_name(p.name), write_widget=write, **common)
    return SignalRW(write_pv=pv_name(p.name), write_widget=write,
                    read_pv=pv_name(p.readback_name), read_widget=read, **common)


def ordered_groups(params: Iterable[Param]) -> dict[str, list[Param]]:
    """Parameters by group, groups in ADCore's screen order, the rest as first declared."""
    by_group: dict[str, list[Param]] = {}
    for p in params:
        by_group.setdefault(p.group or "Other", []).append(p)
    rank = {g: i for i, g in enumerate(FIRST_GROUPS)}
    rank.update({g: 1000 + i for i, g in enumerate(LAST_GROUPS)})
    order = sorted(by_group, key=lambda g: (rank.get(g, 500), list(by_group).index(g)))
    return {g: by_group[g] for g in order}


def component_device(title: str, params: Iterable[Param]) -> Device:
    """A screen for one component: main groups as boxes, secondary ones behind buttons."""
    main: list[ComponentUnion] = []
    more: list[ComponentUnion] = []
    for group, members in ordered_groups(params).items():
        secondary = group in SUBSCREEN_GROUPS or (len(members) > MAX_ROWS_ON_MAIN
                                                  and group not in FIRST_GROUPS)
        node = Group(name=pascal(group), label=group,
                     layout=SubScreen() if secondary else Grid(),
                     children=[signal_of(p) for p in members])
        (more if secondary else main).append(node)
    if more:
        main.append(Group(name="More", label="More", layout=Grid(), children=more))
    return Device(label=title, children=main)


# --- the top-level screen -------------------------------------------------------------------------

DRIVER_COLUMNS = (("State", "DetectorState_RBV"), ("Acquire", "Acquire_RBV"),
                  ("Rate (Hz)", "ArrayRate_RBV"), ("Frames", "ArrayCounter_RBV"),
                  ("Images", "NumImagesCounter_RBV"))
PLUGIN_COLUMNS = (("Input", "NDArrayPort_RBV"), ("Callbacks", "EnableCallbacks_RBV"),
                  ("Rate (Hz)", "ArrayRate_RBV"), ("Frames", "ArrayCounter_RBV"),
                  ("Dropped", "DroppedArrays_RBV"), ("Queue", "QueueUse"))
IOC_COLUMNS = (("Memory (MB)", "MemUsed_RBV"), ("Pools (MB)", "PoolMem_RBV"),
               ("Budget (%)", "BudgetUse_RBV"), ("CPU (%)", "CPU_RBV"),
               ("Children", "Children_RBV"), ("Children (MB)", "ChildrenMem_RBV"))
DRIVER, PLUGIN, IOC = "driver", "plugin", "ioc"  # a component's row in the overview


def overview_device(title: str, rows: list[tuple[str, str, str, str, str]]) -> Device:
    """The IOC's top-level screen. `rows` holds (port, PV prefix, type, screen file, role)
    per component, role being DRIVER, PLUGIN or IOC (the resources): one table row each with
    its state, rates and drops (memory and CPU for the IOC), and a button that opens its screen
    with R set to its prefix."""
    tables: list[ComponentUnion] = []
    for heading, role, columns in (("IOC", IOC, IOC_COLUMNS),
                                   ("Drivers", DRIVER, DRIVER_COLUMNS),
                                   ("Plugins", PLUGIN, PLUGIN_COLUMNS)):
        members = [r for r in rows if r[4] == role]
        children: list[ComponentUnion] = []
        for i, (port, prefix, kind, screen, _) in enumerate(members):
            cells: list[ComponentUnion] = [
                SignalR(name=pascal(f"{port} {h}"),
                        read_pv=f"$(P){prefix}{suffix}", read_widget=TextRead())
                for h, suffix in columns]
            cells.append(DeviceRef(name=pascal(f"Open {port}"), label=f"{prefix}",
                                   pv="", ui=screen, macros={"R": prefix}))
            header = [h for h, _ in columns] + ["Screen"] if i == 0 else None
            children.append(Group(name=pascal(f"Row {port}"),
                                  label=port, description=f"{kind} {prefix}", layout=Row(header=header),
                                  children=cells))
        if children:
            tables.append(Group(name=heading, label=heading, layout=Grid(), children=children))
    # One SubScreen group as the only child is pvi's way to lay the tables out unsqueezed: each
    # cell gets the formatter's widget width instead of a share of one column.
    return Device(label=title, children=[Group(name="Overview", layout=SubScreen(),
                                               children=tables)])
