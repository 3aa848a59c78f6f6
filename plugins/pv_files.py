"""Files a PV names (a bad-pixel map, a position list): read only from the IOC's read folders,
and parsed strictly, with errors that say why in one line and never quote the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ndflow import safepath
from ndflow.config import Site
from ndflow.safepath import PathRefused


class FileRefused(ValueError):
    """A file a PV named cannot be used; the message says why (one line, no file contents)."""


def read_pv_file(name: str, site: Site | None, what: str, max_bytes: int) -> bytes:
    """The bytes of the file `name` (a PV's value) if it lies in one of the site's read
    folders: no '..', no symbolic links, a regular file of at most `max_bytes`. A relative name
    is relative to the config file's folder. FileRefused says why not."""
    name = name.strip()
    if not name:
        raise FileRefused("no file name")
    folders = list(site.read_folders) if site is not None else []
    where_text = ", ".join(map(str, folders)) or "no folder"
    if safepath.has_parent_parts(name):
        raise FileRefused(f"{name}: '..' is not allowed in {what} names")
    path = Path(name)
    if not path.is_absolute():
        if site is None:
            raise FileRefused(f"{name}: give an absolute path")
        path = site.base_dir / path
    try:
        where = safepath.locate(path, folders, f"the {what} folders")
    except PathRefused:
        raise FileRefused(f"{name}: {what}s are read only from {where_text}") from None
    try:
        return safepath.read_file(where, max_bytes)
    except FileNotFoundError:
        raise FileRefused(f"{name}: no such file") from None
    except PathRefused as exc:  # names the path itself
        raise FileRefused(str(exc)) from None
    except OSError as exc:
        raise FileRefused(f"{name}: {exc.strerror or exc}") from None


def strict_json(text: str | bytes) -> Any:
    """JSON as the standard allows it (no NaN/Infinity), or FileRefused saying where it is
    wrong."""
    def refuse_constant(name: str) -> Any:
        raise FileRefused(f"{name} is not a number JSON allows")
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except FileRefused:
        raise
    except UnicodeDecodeError:
        raise FileRefused("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FileRefused(f"not valid JSON ({exc.msg}, line {exc.lineno}, column {exc.colno})") \
            from None
    except RecursionError:
        raise FileRefused("not valid JSON (nested too deeply)") from None
