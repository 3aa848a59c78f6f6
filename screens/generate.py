"""Every screen of an IOC: one per kind of component, one per algorithm instance, and `ndflow.bob`.

A built-in kind has one screen for all its instances (`NDStats.bob` serves Stats1..5 through
`$(R)`), as ADCore's do. Instances whose parameter lists differ (each Python algorithm, a kind
configured differently) get their own. `ndflow.bob` opens each with R set to its prefix, so an
operator needs only `P` to start: `phoebus -resource .../ndflow.bob?P=13SIM1:`.

Screens follow the declarations: `write_screens` subscribes to each component's declaration
changes (`Component.watch_declarations`), so an algorithm whose parameter list changed while the
IOC runs gets its screen rewritten; no component imports this package.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Iterable

from pvi._format.dls import DLSFormatter

from ndflow.component import Component
from ndflow.driver import Driver
from ndflow.plugin import Plugin

from .bob import render, write_files
from .device import DRIVER, IOC, PLUGIN, component_device, overview_device

TOP_LEVEL = "ndflow"
TABLE_CELL_WIDTH = 110


def component_files(component: Component, stem: str | None = None) -> dict[str, str]:
    """The .bob files (screen and sub-screens) of one component. A screen of one instance
    (not its kind's) also carries R as a default, so it opens with P alone."""
    stem = stem or component.screen_name
    params = list(component.params)
    own = None if stem == type(component).screen else {"R": component.prefix}
    title = f"{component.screen_title} $(P)$(R)"
    return render(component_device(title, params), stem, params, macros=own)


def screen_stems(components: Iterable[Component]) -> dict[str, str]:
    """{port: screen file stem}: the kind's screen, unless instances of the kind declare
    different PVs, in which case each gets `<screen>_<port>`."""
    by_name: dict[str, list[Component]] = {}
    for c in components:
        by_name.setdefault(c.screen_name, []).append(c)
    stems = {}
    for name, members in by_name.items():
        shapes = {tuple(m.params.pv_suffixes()) for m in members}
        for m in members:
            stems[m.port] = name if len(shapes) == 1 else f"{name}_{m.port}"
    return stems


def ioc_files(components: list[Component]) -> dict[str, str]:
    """Every file: each distinct screen once, then the top-level `ndflow.bob`."""
    stems = screen_stems(components)
    files: dict[str, str] = {}
    done: set[str] = set()
    for c in components:
        if stems[c.port] not in done:
            done.add(stems[c.port])
            files.update(component_files(c, stems[c.port]))
    rows = [(c.port, c.prefix, type(c).__name__, f"{stems[c.port]}.bob",
             DRIVER if isinstance(c, Driver) else PLUGIN if isinstance(c, Plugin) else IOC)
            for c in components]
    formatter = DLSFormatter(widget_width=TABLE_CELL_WIDTH, label_width=TABLE_CELL_WIDTH)
    files.update(render(overview_device("ndflow $(P)", rows), TOP_LEVEL, formatter=formatter))
    return files


def write_screens(components: list[Component], folder: Path) -> list[Path]:
    """Write every screen of the IOC into `folder` (the entry point `ndflow run` and
    `ndflow screens` reach through the registry), and keep each component's screen up to date
    with its declarations from then on."""
    paths = write_files(folder, ioc_files(components))
    for port, stem in screen_stems(components).items():
        component = next(c for c in components if c.port == port)
        follower = _FOLLOWERS.get(component)
        if follower is None:
            follower = _FOLLOWERS[component] = ScreenFollower(folder, stem)
            component.watch_declarations(follower)
        follower.folder, follower.stem = folder, stem
    return paths


class ScreenFollower:
    """Rewrites one component's screen after its parameter list changed."""

    def __init__(self, folder: Path, stem: str) -> None:
        self.folder, self.stem = folder, stem

    def __call__(self, component: Component) -> None:
        try:
            write_files(self.folder, component_files(component, self.stem))
        except OSError as exc:
            logging.getLogger(f"ndflow.{component.port}").warning(
                "%s: cannot write its screen in %s: %s", component.port, self.folder,
                exc.strerror or exc)


#: the follower subscribed to each component (a second write_screens moves it, not doubles it)
_FOLLOWERS: "weakref.WeakKeyDictionary[Component, ScreenFollower]" = weakref.WeakKeyDictionary()
