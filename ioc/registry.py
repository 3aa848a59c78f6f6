"""Finds driver and plugin classes by the name a config uses for them.

The core knows no concrete driver or plugin: they register under the entry-point groups
`ndflow.drivers` and `ndflow.plugins` (ours in pyproject.toml), so a third-party package adds
one without touching ndflow. A config may also name a class in an importable module of its own
as `module:Class` (a site's plugin that is not packaged); configs are the operator's, never a
client's. The screen generator is found the same way (`ndflow.screens`), so
the core never imports it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

GROUPS = {"drivers": "ndflow.drivers", "plugins": "ndflow.plugins",
          "transports": "ndflow.transports",
          "pvclients": "ndflow.pvclients",  # PV monitors for EPICS_PV attributes (pvwatch)
          "screens": "ndflow.screens"}  # screen writers: (components, folder) -> paths


class UnknownComponent(LookupError):
    pass


def available(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUPS[group]))


def load(group: str, name: str) -> type:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownComponent(f"cannot load {group[:-1]} {name!r}: {exc}") from None
    for ep in entry_points(group=GROUPS[group]):
        if ep.name == name:
            return ep.load()
    raise UnknownComponent(f"unknown {group[:-1]} type {name!r} (available: "
                           f"{', '.join(available(group)) or 'none'})")
