"""NDPluginOverlay (`Over1:`, overlays `Over1:1:` .. `Over1:8:`): crosses, rectangles, ellipses
and text drawn into a copy of each image.

Follows NDPluginOverlay.cpp with NDOverlay.template and NDOverlayN.template (ADCore 3.14). For
each overlay in use, in order 1..8, with P = Position, S = Size, W = Width (integer division
as in C; sizes and widths are never negative here):
- Cross: centre c = P + S//2; the horizontal bar spans P .. c + S//2 and is 2*(WidthY//2)+1 rows
  thick, the vertical bar spans the remaining rows of P .. c + S//2 in y and is 2*(WidthX//2)+1
  columns thick. A width of 0 or 1 draws a 1-pixel cross.
- Rectangle: rows P .. P+S and columns P .. P+S inclusive (S+1 pixels, as ADCore draws), the line
  growing inwards: min(W, S-1) pixels thick. Width 0 draws nothing.
- Ellipse: ADCore's parametric rings: for ring j in 0 .. min(WidthX, SizeX-1)-1 (WidthY is not
  used), radii a = SizeX//2 - j and b = SizeY//2 - j about c, 2*(a0 + b0) + 1 angles t from 0 to
  pi/2 (t summed step by step as the C loop does), pixels c +- (int)(r cos t + 0.5) in the four
  quadrants, each pixel once. Width 0 draws nothing.
- Text: DisplayText followed by the array's EPICS time stamp formatted with TimeStampFormat
  (strftime plus `%0<n>f` for n digits of fractional seconds; empty: no time stamp), in the
  chosen font (plugins/overlay_font.py: the public-domain X11 6x13, 6x13B, 9x15, 9x15B fonts
  ADCore's bitmaps come from), cell after cell from PositionX, clipped to PositionX + SizeX and
  to min(SizeY, the font's height) rows. A character below 32 or above 126 leaves its cell
  blank. SizeY defaults to 0, so a text overlay shows nothing until SizeY is set, as in ADCore.
- Colour: Mono (and 2-D arrays of any colour mode) take Green; RGB1/RGB2/RGB3 take Red, Green,
  Blue on their colour planes. Set writes the value C-cast to the element type; XOR XORs it
  into the pixel (floats: truncated toward zero to an integer, XORed, converted back).
- PositionX/CenterX: writing CenterX sets PositionX = CenterX - SizeX//2, writing PositionX sets
  CenterX = PositionX + SizeX//2; a SizeX write keeps whichever of the two was written last and
  recomputes the other (ADCore's freezePosition). Likewise for Y.
- `<n>:<X>Link` (X = PositionX/Y, CenterX/Y, SizeX/Y, WidthX/Y) is the longout that writes X:
  a put of a value writes it to X as ADCore's record does. Its input link `<n>:<X>Link.DOL` names
  a PV; when that PV is served by this IOC (full name, or its name after the IOC prefix; CP, MS,
  NMS, PP modifiers accepted), X follows it: whenever the source's value changes (checked before
  every frame and once a second) it is written to X (floats truncated, as a DOUBLE to LONG link
  converts). A blank DOL or one naming a PV this IOC does not serve leaves X set by hand, as in
  ADCore; StatusMessage_RBV says which. As commonPlugins loads them, overlays 1-4 follow ROI1-4
  (MinX_RBV, MinY_RBV, SizeX_RBV, SizeY_RBV) when those ROIs exist (options `links`).
- MaxSizeX_RBV/MaxSizeY_RBV show the input's x/y size, copied to every overlay's MaxSizeX/Y and
  SetXHOPR/SetYHOPR (ADCore's dfanouts that set the sliders' display limits).

Deliberate differences: each pixel is drawn at most once per overlay (ADCore XORs twice, i.e.
leaves unchanged, the pixels where a thick rectangle's left and right bands overlap); XOR on
64-bit integers keeps the upper 32 bits (ADCore XORs through a C int); a 3-D array that is not
RGB gets Green on every plane (ADCore: the first only); 1-D and 4-D+ arrays pass unchanged with a
note (ADCore draws nothing on 1-D ones and only the first plane of others); when no overlay is
in use the input is passed on without a copy. Bad geometry never stops the plugin: sizes and
widths below 0 are clamped to 0 on the put, anything outside the frame is clipped, and an
ellipse that would take more than MAX_ELLIPSE_POINTS samples is not drawn, with a note. Only
links to PVs of this IOC are followed (ADCore's database links reach any PV).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ndflow.component import Component, Served
from ndflow.ndarray import NDArray
from ndflow.notes import Notes
from ndflow.params import (R, W, Kind, Param, ParamTable, bool_param,
                           enum_param, int_param, string_param, text_param)
from ndflow.plugin import Outputs, Plugin
from ndflow.publisher import Publisher
from ndflow.transport import Transport

from .overlay_draw import (DRAW_MODES, RECTANGLE, SET, SHAPES, TEXT, Shape, _int32, draw,
                           epics_strftime, image_view, position_update)

FONTS = ("6x13", "6x13 Bold", "9x15", "9x15 Bold")
#: the parameters an input link can drive, in NDOverlayN.template's order
LINKED = ("PositionX", "PositionY", "CenterX", "CenterY", "SizeX", "SizeY", "WidthX", "WidthY")
#: Name of each overlay as commonPlugins.cmd loads them
COMMON_NAMES = ("ROI1", "ROI2", "ROI3", "ROI4", "Cursor1", "Cursor2", "Box1", "Box2")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%03f"
_LINK_MODIFIERS = {"CP", "CPP", "MS", "NMS", "MSS", "MSI", "PP", "NPP", "CA"}


def _commonplugins_links() -> dict[str, str]:
    """commonPlugins.cmd's XPOS/YPOS/XSIZE/YSIZE macros: overlay n of 1-4 follows ROIn."""
    links = {}
    for n in range(1, 5):
        for target, source in (("PositionX", "MinX"), ("PositionY", "MinY"),
                               ("SizeX", "SizeX"), ("SizeY", "SizeY")):
            links[f"{n}:{target}Link"] = f"ROI{n}:{source}_RBV CP MS"
    return links


class OverlayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noverlays: int = Field(8, ge=1, le=64, description="overlays (ADCore's maxOverlays)")
    names: list[str] = Field(default_factory=lambda: list(COMMON_NAMES),
                             description="initial Name of overlay 1, 2, ... (commonPlugins')")
    links: dict[str, str] = Field(
        default_factory=_commonplugins_links,
        description="initial input links, '<n>:<X>Link' -> a PV of this IOC (its full name or "
                    "its name after the IOC prefix, e.g. 'ROI1:MinX_RBV CP MS')")


# --- the plugin -------------------------------------------------------------------------------


@dataclass
class _Link:
    """A resolved input link: the component and parameter whose value a target follows."""

    source: Component
    param: str
    last: Any = None


class Overlay(Plugin):
    screen = "NDOverlay"
    kind = "overlay"
    plugin_type = "NDPluginOverlay"
    Options = OverlayOptions

    def __init__(self, *args: Any, options: OverlayOptions | None = None, **kw: Any) -> None:
        self.options = options or OverlayOptions()
        self.ids = range(1, self.options.noverlays + 1)
        super().__init__(*args, **kw)
        for i, name in enumerate(self.options.names[: len(self.ids)]):
            self.values[f"{i + 1}:Name"] = name[:39]
        for key, text in self.options.links.items():
            if f"{key}.DOL" not in self.params:
                raise ValueError(f"links: {key!r} is not an input link of this plugin "
                                 f"(<n>:<X>Link with n in 1..{len(self.ids)} and X one of "
                                 f"{', '.join(LINKED)})")
            self.values[f"{key}.DOL"] = text[:39]
        self._lock = threading.Lock()  # geometry puts (event loop) vs links followed (worker)
        self._fixed = {(n, axis): True for n in self.ids for axis in "XY"}  # freezePosition
        self._links: dict[tuple[int, str], _Link] = {}
        self._cache: dict[int, tuple[Shape, int, int, np.ndarray]] = {}
        self._notes = Notes(self)  # a problem said once when it starts or changes
        self._size: tuple[int, int] | None = None
        for n in self.ids:
            for target in LINKED:
                self.put_hooks[f"{n}:{target}"] = self._geometry_hook(n, target)
                self.put_hooks[f"{n}:{target}Link"] = self._link_value_hook(n, target)
                self.put_hooks[f"{n}:{target}Link.DOL"] = self._link_hook(n, target)

    def declare(self) -> ParamTable:
        table = super().declare()
        params: list[Param] = [int_param("MaxSizeX_RBV", 0, R, group="Overlay"),
                               int_param("MaxSizeY_RBV", 0, R, group="Overlay")]
        for n in self.ids:
            group = f"Overlay {n}"
            params += [
                string_param(f"{n}:Name", "", group=group),
                bool_param(f"{n}:Use", group=group, doc="draw this overlay"),
                enum_param(f"{n}:Shape", SHAPES, RECTANGLE, group=group),
                enum_param(f"{n}:DrawMode", DRAW_MODES, SET, group=group,
                           doc="Set writes the colour, XOR XORs it into the pixel"),
            ]
            for target in LINKED:
                low = 0 if target.startswith(("Size", "Width")) else None
                default = 1 if target == "SizeX" else 0
                params += [
                    int_param(f"{n}:{target}", default, low=low, group=group),
                    int_param(f"{n}:{target}Link", default, W, group=group,
                              doc=f"writes {target} (the value of the PV its .DOL names, "
                                  f"if this IOC serves it)"),
                    string_param(f"{n}:{target}Link.DOL", "", W, group=group,
                                 doc=f"a PV of this IOC that {target} follows (blank: none)"),
                ]
            params += [
                *(int_param(f"{n}:{colour}", 1, group=group) for colour in
                  ("Red", "Green", "Blue")),
                text_param(f"{n}:DisplayText", 256, "", group=group),
                string_param(f"{n}:TimeStampFormat", TIME_FORMAT, group=group,
                             doc="strftime of the array's time stamp after the text; "
                                 "%0<n>f: n digits of fractional seconds"),
                enum_param(f"{n}:Font", FONTS, 0, group=group),
                int_param(f"{n}:MaxSizeX", 0, R, group=group),
                int_param(f"{n}:MaxSizeY", 0, R, group=group),
                int_param(f"{n}:SetXHOPR", 0, W, group=group, doc="follows MaxSizeX"),
                int_param(f"{n}:SetYHOPR", 0, W, group=group, doc="follows MaxSizeY"),
            ]
        for p in params:
            table.params[p.name] = p
        return table

    def attach(self, publisher: Publisher, transports: list[Transport]) -> Served:
        """As ADCore's records with asyn:READBACK (and the link records that write them), the
        setpoints PositionX ... WidthY show values the plugin sets (a CenterX put moving
        PositionX, a link): their setpoint endpoints receive data-path changes too. They stay
        settings (frozen per frame, settable in a config) rather than `also_setpoint` values."""
        served = super().attach(publisher, transports)
        for n in self.ids:
            for target in LINKED:
                name = f"{n}:{target}"
                targets = self._targets[name]
                for endpoint in self.endpoints.get(name, ()):
                    if endpoint not in targets:
                        targets.append(endpoint)
        return served

    def start(self) -> None:
        super().start()
        for n in self.ids:
            for target in LINKED:
                name = f"{n}:{target}Link.DOL"
                text = self._resolve(n, target, self.values[name], quiet=True)
                if text != self.values[name]:
                    self.set(name, text)
        self._follow_links()

    # --- puts -----------------------------------------------------------------------------
    def _geometry_hook(self, n: int, target: str) -> Callable[[int], int]:
        def hook(value: int) -> int:
            with self._lock:
                self._set_partners(n, target, value)
            return value
        return hook

    def _link_value_hook(self, n: int, target: str) -> Callable[[int], int]:
        """A put to the link record: with a live input link it fetches the source's value
        (OMSL closed_loop), else it writes the value put; either goes to the target."""
        def hook(value: int) -> int:
            link = self._links.get((n, target))
            if link is not None:
                fetched = self._source_value(link)
                if fetched is not None:
                    value = fetched
            self._apply(n, target, value)
            return value
        return hook

    def _link_hook(self, n: int, target: str) -> Callable[[str], str]:
        def hook(text: str) -> str:
            text = self._resolve(n, target, text, quiet=False)
            self._follow_links(only=(n, target))
            return text
        return hook

    def _set_partners(self, n: int, target: str, value: int) -> None:
        """ADCore's writeInt32: a position, centre or size write sets the partner value (lock
        held)."""
        axis = target[-1]
        kind = target[:-1]
        v = self.values
        key = (n, axis)
        partners, self._fixed[key] = position_update(
            kind, value, v[f"{n}:Position{axis}"], v[f"{n}:Center{axis}"],
            v[f"{n}:Size{axis}"], self._fixed[key])
        for partner, number in partners.items():
            self.set(f"{n}:{partner}{axis}", _int32(number))

    def _apply(self, n: int, target: str, value: int) -> None:
        """Write `value` to target as a put would (clamped like one), from any thread."""
        param = self.params[f"{n}:{target}"]
        value = param.coerce(_int32(value))[0]
        with self._lock:
            self._set_partners(n, target, value)
            self.set(f"{n}:{target}", value)

    # --- input links ------------------------------------------------------------------------
    def _resolve(self, n: int, target: str, text: str, quiet: bool) -> str:
        """Make target follow the PV `text` names, if this IOC serves it; returns the link as
        the record shows it (a name given after the IOC prefix is shown in full)."""
        self._links.pop((n, target), None)
        name = next((t for t in text.split() if t.upper() not in _LINK_MODIFIERS), "")
        where = f"{n}:{target}Link.DOL"
        if not name:
            if not quiet:
                self.message(f"{where}: no input link; {n}:{target} is set by hand")
            return text
        found = self._find_pv(name)
        if found is None:
            if not quiet:
                self.message(f"{where}: {name!r} is not a PV of this IOC; {n}:{target} is "
                             f"set by hand", logging.WARNING)
            return text
        self._links[(n, target)] = _Link(*found)
        prefix = self._ioc_prefix()
        if prefix and not name.startswith(prefix):
            full = text.replace(name, prefix + name, 1)
            if len(full) <= 39:  # a DBR_STRING
                text, name = full, prefix + name
        if not quiet:
            self.message(f"{where}: {n}:{target} follows {name}")
        return text

    def _find_pv(self, name: str) -> tuple[Component, str] | None:
        """(component, parameter) of the numeric PV `name`: its full name, or its name after
        the IOC prefix."""
        ioc_prefix = self._ioc_prefix()
        for component in self.graph:
            for param in list(component.params):
                if param.kind not in (Kind.INT, Kind.FLOAT, Kind.ENUM):
                    continue
                for suffix in param.pv_suffixes:
                    relative = component.prefix + suffix
                    if name == relative or (ioc_prefix and name == ioc_prefix + relative):
                        return component, param.name
        return None

    def _ioc_prefix(self) -> str:
        """The IOC's PV prefix, as this plugin's served PVs show it ("" before serving)."""
        for suffix, endpoints in self.endpoints.items():
            full = next((e.pvname for e in endpoints if getattr(e, "pvname", "")), "")
            if full.endswith(self.prefix + suffix):
                return full[: len(full) - len(self.prefix + suffix)]
        return ""

    @staticmethod
    def _source_value(link: _Link) -> int | None:
        """The source's value as a LONG link fetches it (truncated), None if it has none."""
        value = link.source.values.get(link.param)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return _int32(math.trunc(number)) if math.isfinite(number) else None

    def _follow_links(self, only: tuple[int, str] | None = None) -> bool:
        """Write each linked source's value to its target when it changed (CP); True if any
        did."""
        changed = False
        for key, link in list(self._links.items()):
            if only is not None and key != only:
                continue
            value = self._source_value(link)
            if value is None or value == link.last:
                continue
            link.last = value
            n, target = key
            self._apply(n, target, value)
            self.set(f"{n}:{target}Link", value)
            changed = True
        return changed

    def periodic(self, elapsed: float) -> None:
        super().periodic(elapsed)
        self._follow_links()

    # --- data path --------------------------------------------------------------------------
    def process(self, array: NDArray) -> Outputs:
        if self._follow_links():
            self.freeze(array)  # draw with the values the links just wrote
        data = array.data
        if data.ndim not in (2, 3) or len(array.dims) != data.ndim:
            self._note("dims", f"array {array.unique_id}: {data.ndim}-D arrays are passed on "
                               f"unchanged (overlays are drawn on 2-D and 3-D images)")
            return array
        self._note("dims", "")
        view, rgb = image_view(data, array.color_mode)
        ny, nx = view.shape[:2]
        self._show_size(nx, ny)
        v = self.frame_settings
        shapes = [(n, self._shape(n, v, array)) for n in self.ids if v[f"{n}:Use"]]
        if not shapes:
            return array.derive(data)  # nothing drawn: the data is shared, never written
        buffer = self.output_buffer(data.shape, data.dtype)
        np.copyto(buffer, data)
        out_view, _ = image_view(buffer, array.color_mode)
        for n, shape in shapes:
            pixels = self._pixels(n, shape, nx, ny)
            colours = ((v[f"{n}:Red"], v[f"{n}:Green"], v[f"{n}:Blue"]) if rgb
                       else (v[f"{n}:Green"],) * out_view.shape[2])
            draw(out_view, pixels, colours, int(v[f"{n}:DrawMode"]))
        return array.derive(buffer)

    def _shape(self, n: int, v: dict[str, Any], array: NDArray) -> Shape:
        shape = int(v[f"{n}:Shape"])
        text = ""
        if shape == TEXT:
            text = v[f"{n}:DisplayText"]
            fmt = v[f"{n}:TimeStampFormat"]
            if fmt:
                try:
                    text += epics_strftime(fmt, array.epics_ts)
                    self._note((n, "time"), "")
                except (ValueError, OverflowError, OSError) as exc:
                    self._note((n, "time"), f"{n}:TimeStampFormat {fmt!r}: {exc}")
        return Shape(shape, v[f"{n}:PositionX"], v[f"{n}:PositionY"], v[f"{n}:SizeX"],
                     v[f"{n}:SizeY"], v[f"{n}:WidthX"], v[f"{n}:WidthY"], int(v[f"{n}:Font"]),
                     text)

    def _pixels(self, n: int, shape: Shape, nx: int, ny: int) -> np.ndarray:
        """The overlay's pixels, recomputed only when its geometry or the image size changed
        (ADCore's addressOffset list)."""
        cached = self._cache.get(n)
        if cached is not None and cached[:3] == (shape, nx, ny):
            return cached[3]
        try:
            pixels = shape.pixels(nx, ny)
            self._note((n, "shape"), "")
        except ValueError as exc:
            self._note((n, "shape"), f"overlay {n}: {exc}; not drawn")
            pixels = np.empty(0, dtype=np.int64)
        self._cache[n] = (shape, nx, ny, pixels)
        return pixels

    def _show_size(self, nx: int, ny: int) -> None:
        if self._size == (nx, ny):
            return
        self._size = (nx, ny)
        values = {"MaxSizeX_RBV": nx, "MaxSizeY_RBV": ny}
        for n in self.ids:
            values.update({f"{n}:MaxSizeX": nx, f"{n}:MaxSizeY": ny, f"{n}:SetXHOPR": nx,
                           f"{n}:SetYHOPR": ny})
        self.set_many(values)

    def _note(self, key: Any, text: str) -> None:
        self._notes.say(text, key)
