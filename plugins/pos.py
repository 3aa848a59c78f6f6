"""NDPosPlugin (`Pos1:`): scan positions from a file attached to each frame as NDAttributes.

Why: in a fly scan the detector runs freely while motors move; the positions each frame was
taken at are known in advance (the scan's trajectory). This plugin hands them out one per frame,
in frame order, so a file writer downstream stores every frame with its position (HDF5 writers
use them for the dataset layout, PositionMode).

Follows NDPosPlugin.cpp and NDPosPluginFileReader.cpp (ADCore 3.14) and NDPosPlugin.template:
- `Filename` (char waveform of 1,000,000) is the name of an XML file or the XML itself, in
  ADCore's format: `<pos_layout><dimensions><dimension name="x"/>...</dimensions><positions>
  <position x="1.0" .../>...</positions></pos_layout>`. ndflow also takes JSON:
  `{"dimensions": ["x", "y"], "positions": [{"x": 1, "y": 0}, [2, 0], ...]}` (a position is an
  object by name or a list in dimension order). Loaded positions are *appended* to the list
  (Qty_RBV); `Delete` empties it. `FileValid_RBV` says whether the last Filename loaded.
- Only while `Running` (busy, Idle/Running) is 1 are frames passed on; otherwise they go
  nowhere. Each frame gets, for each dimension, an NDAttribute named after it (Float64,
  description "Position of NDArray", source "NDPosPlugin"), and `Position_RBV` shows them as
  `[x=1,y=0]` (names sorted, values as C++ streams print doubles).
- The frame's id is its uniqueId, or the NDAttribute named by `IDName`. Writing `Running`
  sets `ExpectedID_RBV` to `IDStart`; every frame used adds `IDDifference`. A frame whose id is
  beyond the expected one means frames were lost: the positions of the lost frames are skipped
  (counted in `Missing`) and the frame gets the position for its own id. A frame whose id is
  below the expected one is a duplicate: counted in `Duplicate` and not passed on.
- `Mode` Discard (default) removes each position once used (Index_RBV stays 0, Qty_RBV counts
  down); Keep walks `Index_RBV` through the list, which stays loaded. Writing Mode or `Reset`
  moves the index back to 0. Running returns to Idle when the positions run out, which
  completes a put-callback on Running=1.

Reading files: Filename is writable by any CA client, so a name is read only from the IOC's
configured folders (the config file's folder and the data roots; relative names from the
config file's folder; '..' refused) through `ndflow.safepath` (no symbolic links, regular files
of at most MAX_FILE_BYTES), off the event loop, and checked completely before anything is
appended. Messages about a file point at a position by number and line, never quoting it.
XML with a DOCTYPE is refused (no entities are expanded).

Deliberate differences:
- A file with a position that lacks a dimension or has a value that is not a finite number is
  refused as a whole (ADCore silently skips that position, shifting every later frame's
  position by one); ADCore's reader also takes the leading number of "1.5abc".
- With IDName set, the attribute's value is used as the id. ADCore reads it into a variable
  that shadows the one it then compares, so it compares 0 and drops every frame as a
  duplicate.
- In Keep mode Running returns to Idle as soon as the last position was used (ADCore waits for
  the next frame to find the list exhausted), so a put-callback on Running completes with the
  last frame.
- A placeholder for a frame lost upstream is passed on only while Running (in order with the
  frames around it); the frame after it shows the gap through its id, as in ADCore.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

import numpy as np

from ndflow.busy import Busy, finish
from ndflow.ndarray import AttrSource, NDArray, NDAttribute
from ndflow.params import R, RW, STRING_MAX, W, Param, bool_param, int_param, string_param, \
    text_param
from ndflow.plugin import Plugin
from ndflow.plugins.pv_files import FileRefused, read_pv_file, strict_json
from ndflow.transport import HANDLED

#: a positions file larger than this is refused (1 M positions of 3 axes are about 50 MB of XML)
MAX_FILE_BYTES = 128 << 20
FILENAME_LENGTH = 1_000_000  # NDPosPlugin.template's NELM
DISCARD, KEEP = 0, 1
DESCRIPTION = "Position of NDArray"
SOURCE = "NDPosPlugin"

POS_PARAMS: tuple[Param, ...] = (
    text_param("Filename", FILENAME_LENGTH, "", RW, group="Positions",
               doc="an XML (ADCore's pos_layout) or JSON positions file, or the XML/JSON "
                   "itself; read when written, its positions appended"),
    bool_param("FileValid_RBV", "No", "Yes", 0, R, group="Positions",
               doc="the last Filename written was read and appended"),
    bool_param("Running", "Idle", "Running", 0, RW, coalesce=False, also_setpoint=True,
               group="Positions", doc="frames get positions and are passed on only while "
                                      "Running; back to Idle when the positions run out"),
    bool_param("Reset", "0", "1", 0, W, group="Positions", doc="Index back to 0"),
    bool_param("Delete", "0", "1", 0, W, group="Positions", doc="remove every position"),
    bool_param("Mode", "Discard", "Keep", DISCARD, RW, group="Positions",
               doc="Discard: a position is removed once used; Keep: the index walks the list"),
    int_param("Qty_RBV", 0, R, group="Positions", doc="positions in the list"),
    int_param("Index_RBV", 0, R, group="Positions", doc="the next position (Keep mode)"),
    string_param("Position_RBV", "", R, group="Positions", doc="the last position attached"),
    int_param("Missing", 0, RW, also_setpoint=True, group="Positions",
              doc="positions skipped because their frames never arrived"),
    int_param("Duplicate", 0, RW, also_setpoint=True, group="Positions",
              doc="frames dropped because their id was already used"),
    int_param("ExpectedID_RBV", 1, R, group="Positions", doc="the id the next frame should have"),
    string_param("IDName", "", RW, group="Positions",
                 doc="the NDAttribute holding a frame's id; empty: its uniqueId"),
    int_param("IDStart", 1, RW, group="Positions", doc="ExpectedID when Running is written"),
    int_param("IDDifference", 1, RW, group="Positions", doc="added to ExpectedID per frame"),
)


# --- reading positions ----------------------------------------------------------------------------

@dataclass
class Positions:
    """A block of positions of one set of dimensions: `table[i, j]` is dimension `names[j]` of
    position i."""

    names: tuple[str, ...]
    table: np.ndarray  # (n, len(names)) float64


def _number(text: Any, where: str) -> float:
    if isinstance(text, bool):
        raise FileRefused(f"{where} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise FileRefused(f"{where} is not a number") from None
    if not math.isfinite(value):
        raise FileRefused(f"{where} is not a finite number")
    return value


def parse_xml(data: str | bytes, quote: bool = True) -> Positions:
    """ADCore's pos_layout XML. quote=False (a file): messages name positions by number and
    line only."""
    parser = expat.ParserCreate()
    names: list[str] = []
    rows: list[list[float]] = []
    state: dict[str, Any] = {"root": None}

    def no_doctype(*_: Any) -> None:
        raise FileRefused("XML with a DOCTYPE is not accepted")

    def start(tag: str, attrs: dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if state["root"] is None:
            state["root"] = tag
            if tag != "pos_layout":
                raise FileRefused(f"the root element is <{tag}>, not <pos_layout>" if quote
                                  else "the root element is not <pos_layout>")
        if tag == "dimension":
            name = attrs.get("name", "")
            if not name:
                raise FileRefused(f"the <dimension> on line {line} has no name")
            if name in names:
                raise FileRefused(f"the <dimension> on line {line} repeats "
                                  + (f"{name!r}" if quote else "an earlier name"))
            if rows:
                raise FileRefused(f"the <dimension> on line {line} comes after positions")
            names.append(name)
        elif tag == "position":
            n = len(rows) + 1
            if not names:
                raise FileRefused(f"position {n} (line {line}) comes before any <dimension>")
            row = []
            for j, name in enumerate(names):
                what = f"position {n} (line {line}) " + (f"{name}" if quote else
                                                          f"dimension {j + 1}")
                if name not in attrs:
                    raise FileRefused(f"{what} is missing")
                row.append(_number(attrs[name], what))
            rows.append(row)

    parser.StartDoctypeDeclHandler = no_doctype
    parser.EntityDeclHandler = no_doctype
    parser.StartElementHandler = start
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise FileRefused(f"not valid XML ({expat.ErrorString(exc.code)}, line {exc.lineno}, "
                          f"column {exc.offset})") from None
    if state["root"] is None:
        raise FileRefused("no XML element")
    return Positions(tuple(names), np.array(rows, dtype=np.float64).reshape(len(rows), len(names)))


def parse_json(data: str | bytes, quote: bool = True) -> Positions:
    """{"dimensions": [names], "positions": [{name: value} | [values], ...]}."""
    doc = strict_json(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("dimensions"), list) or \
            not isinstance(doc.get("positions"), list):
        raise FileRefused('JSON positions need an object with a "dimensions" list and a '
                          '"positions" list')
    names = doc["dimensions"]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise FileRefused('"dimensions" must be a list of names')
    if len(set(names)) != len(names):
        raise FileRefused('"dimensions" repeats a name')
    rows = []
    for i, entry in enumerate(doc["positions"], 1):
        if isinstance(entry, dict):
            row = []
            for j, name in enumerate(names):
                what = f"position {i} " + (name if quote else f"dimension {j + 1}")
                if name not in entry:
                    raise FileRefused(f"{what} is missing")
                row.append(_number(entry[name], what))
        elif isinstance(entry, list):
            if len(entry) != len(names):
                raise FileRefused(f"position {i} has {len(entry)} values for "
                                  f"{len(names)} dimensions")
            row = [_number(v, f"position {i} value {j + 1}") for j, v in enumerate(entry)]
        else:
            raise FileRefused(f"position {i} must be an object or a list")
        rows.append(row)
    return Positions(tuple(names), np.array(rows, dtype=np.float64).reshape(len(rows), len(names)))


def parse_positions(data: str | bytes, quote: bool = True) -> Positions:
    """XML or JSON, told apart by the first character."""
    head = data.lstrip()[:1]
    if head in ("<", b"<"):
        return parse_xml(data, quote)
    if head in ("{", b"{"):
        return parse_json(data, quote)
    raise FileRefused("neither XML (<pos_layout>...) nor JSON ({...})" if head else "empty")


def position_text(names: tuple[str, ...], values: np.ndarray) -> str:
    """Position_RBV as NDPosPlugin builds it: '[a=1,b=2.5]', names in std::map (sorted) order,
    values as an ostream prints a double (6 significant digits), cut to a stringin's 39."""
    parts = sorted(zip(names, values.tolist()))
    text = "[" + ",".join(f"{name}={value:g}" for name, value in parts) + "]"
    return text[: STRING_MAX - 1]


# --- the list of positions ------------------------------------------------------------------------

class PositionList:
    """Blocks of positions, the used ones of the first block dropped by advancing `start`
    (Discard mode costs O(1) per frame, as ADCore's std::list erase)."""

    def __init__(self) -> None:
        self._blocks: deque[list[Any]] = deque()  # [Positions, first row still in the list]
        self.size = 0

    def append(self, block: Positions) -> None:
        if len(block.table):
            self._blocks.append([block, 0])
            self.size += len(block.table)

    def clear(self) -> None:
        self._blocks.clear()
        self.size = 0

    def drop_front(self, count: int) -> None:
        """Remove the first `count` positions (at most all of them)."""
        count = min(count, self.size)
        self.size -= count
        while count and self._blocks:
            block = self._blocks[0]
            left = len(block[0].table) - block[1]
            if count >= left:
                self._blocks.popleft()
                count -= left
            else:
                block[1] += count
                count = 0

    def get(self, index: int) -> tuple[tuple[str, ...], np.ndarray]:
        """(names, values) of position `index` (0 = the first still in the list)."""
        for block, start in self._blocks:
            left = len(block.table) - start
            if index < left:
                return block.names, block.table[start + index]
            index -= left
        raise IndexError(index)


# --- the plugin -----------------------------------------------------------------------------------

class PosPlugin(Plugin):
    screen = "NDPos"
    kind = "pos"
    plugin_type = "NDPositionPlugin"
    channels_aware = True  # adds attributes, passes the pixels on
    PARAMS = Plugin.PARAMS + (POS_PARAMS,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._positions = PositionList()
        self._lock = threading.Lock()  # the list and the counters: puts and the data path
        self._run_done = Busy()  # put-callbacks of Running=1

    # --- file -----------------------------------------------------------------------------------
    async def put_Filename(self, value: str) -> str:
        """Read and check the positions off the event loop, then append them."""
        inline = value.lstrip()[:1] in ("<", "{")
        if not value.strip():
            self.set("FileValid_RBV", 0)
            self.message("Filename empty: nothing loaded", logging.WARNING)
            return value
        try:
            block = await asyncio.to_thread(self._read, value, inline)
        except FileRefused as exc:
            self.set("FileValid_RBV", 0)
            self.message(f"Filename: {exc}; nothing appended", logging.WARNING)
            return value
        with self._lock:
            self._positions.append(block)
            size = self._positions.size
        self.set_many({"FileValid_RBV": 1, "Qty_RBV": size})
        self.message(f"Filename: {len(block.table)} positions of "
                     f"{len(block.names)} dimensions appended ({size} in the list)")
        return value

    def _read(self, value: str, inline: bool) -> Positions:
        if inline:
            return parse_positions(value, quote=True)
        data = read_pv_file(value, self.site, "positions file", MAX_FILE_BYTES)
        try:
            return parse_positions(data, quote=False)
        except FileRefused as exc:
            raise FileRefused(f"{value.strip()}: {exc}") from None

    # --- commands -------------------------------------------------------------------------------
    async def put_Running(self, value: int) -> Any:
        """1 completes (put-callback) when the positions run out or Running is set to 0."""
        with self._lock:
            self.set("ExpectedID_RBV", self.values["IDStart"])
            if not value:
                self.set("Running", 0)
        if not value:
            self._run_done.release()
            return HANDLED
        waiting = self._run_done.arm()
        with self._lock:
            self.set("Running", 1)
        return await finish(waiting, self.publisher)

    def put_Reset(self, value: int) -> int:
        with self._lock:
            self.set_many({"Index_RBV": 0, "Position_RBV": ""})
        return 0

    def put_Delete(self, value: int) -> int:
        with self._lock:
            self._positions.clear()
            self.set_many({"Index_RBV": 0, "Position_RBV": "", "Qty_RBV": 0})
        return 0

    def put_Mode(self, value: int) -> int:
        with self._lock:
            self.values["Mode"] = value  # the data path reads it under the lock
            self.set("Index_RBV", 0)
        return value

    def put_IDName(self, value: str) -> str:
        with self._lock:
            self.values["IDName"] = value
        return value

    def put_IDDifference(self, value: int) -> int:
        with self._lock:
            self.values["IDDifference"] = value
        return value

    def _stop(self) -> None:
        """Back to Idle (lock held); completes the waiting Running=1 puts."""
        self.set("Running", 0)
        self._run_done.release()

    # --- frames ---------------------------------------------------------------------------------
    def process(self, array: NDArray) -> NDArray | None:
        with self._lock:
            return self._next(array)

    def process_missing(self, array: NDArray) -> NDArray | None:
        return array if self.values["Running"] else None

    def _frame_id(self, array: NDArray) -> int | None:
        name = self.values["IDName"]
        if not name:
            return array.unique_id
        attr = array.attributes.get(name)
        value = attr.number() if attr is not None else None
        if value is None or not math.isfinite(value):
            why = "has no attribute" if attr is None else "has a non-numeric attribute"
            self.message(f"array {array.unique_id} {why} {name!r} (IDName): stopped",
                         logging.WARNING)
            return None
        return int(value)

    def _next(self, array: NDArray) -> NDArray | None:
        """NDPosPlugin::processCallbacks, with the lock held."""
        v = self.values
        if not v["Running"]:
            return None
        positions = self._positions
        index = v["Index_RBV"]
        if index >= positions.size:
            self._stop()
            self.message("no positions left: Running is Idle")
            return None
        frame_id = self._frame_id(array)
        if frame_id is None:
            self._stop()
            return None
        expected, step, keep = v["ExpectedID_RBV"], v["IDDifference"], v["Mode"] == KEEP
        if expected < frame_id:  # frames lost: skip their positions
            available = positions.size - index if keep else positions.size
            wanted = -(-(frame_id - expected) // step) if step > 0 else available
            skipped = min(wanted, available)
            if keep:
                index += skipped
            else:
                positions.drop_front(skipped)
            expected += skipped * step
            self.set_many({"Missing": v["Missing"] + skipped, "ExpectedID_RBV": expected,
                           "Index_RBV": index, "Qty_RBV": positions.size})
            if skipped == available:
                self._stop()
                self.message(f"array {array.unique_id}: id {frame_id} is beyond the last "
                             "position: Running is Idle", logging.WARNING)
                return None
        elif expected > frame_id:  # a duplicate: not passed on
            self.set("Duplicate", v["Duplicate"] + 1)
            return None
        names, values = positions.get(index)
        out = array.derive(array.data)
        for name, value in zip(names, values.tolist()):
            out.attributes[name] = NDAttribute(name, float(value), DESCRIPTION,
                                               AttrSource.DRIVER, SOURCE)
        if keep:
            index += 1
        else:
            positions.drop_front(1)
        self.set_many({"Position_RBV": position_text(names, values), "Index_RBV": index,
                       "Qty_RBV": positions.size, "ExpectedID_RBV": expected + step})
        if positions.size == 0 or index >= positions.size:
            self._stop()
        return out
