"""NDFileNexus (`Nexus1:`): arrays to NeXus-structured HDF5 (h5py), laid out by an XML template.

The template is ADCore's (NDFileNexus.cpp, iocSimDetector/NexusTemplate.xml):
- the root element is `NXroot`;
- an element named after a NeXus base class (NXentry, NXinstrument, NXdetector, NXdata, ...), or
  any element with type="UserGroup", is a group: HDF5 name its `name` attribute (else the element
  name), `NX_class` the element name;
- type="pArray": the dataset the arrays go in (one template node; Single mode: the array's shape,
  Capture/Stream: one row per array, the first axis growing);
- type="ND_ATTR" source="X": a dataset holding NDAttribute X of the file's first array (skipped,
  and said, when the array has no such attribute, as ADCore logs it);
- type="CONST" outtype="NX_CHAR|NX_INT8..NX_UINT32|NX_FLOAT32|NX_FLOAT64": a constant;
- no type: a text dataset (an empty one holds "LEFT BLANK", as ADCore writes);
- `<Attr name=... type="ND_ATTR|CONST" ...>`: an HDF5 attribute of the enclosing group or dataset.
ndflow adds type="NXlink" target="/path": a NeXus link (an HDF5 hard link, with the NeXus `target`
attribute on the object) to a dataset written elsewhere, so NXdata can point at the detector's
data as NeXus asks. The shipped default template (nexus_default.xml, used while TemplateFileName
is empty) writes /entry (NXentry) / instrument (NXinstrument) / detector (NXdetector) / data and
/entry/data (NXdata, signal="data") linking to it.

Templates are read when TemplateFilePath or TemplateFileName is written (TemplateFilePath +
TemplateFileName, as ADCore joins them), only from the IOC's read folders (the config file's folder
and the data roots; no '..', no links, at most 1 MB), and checked completely then: unknown types,
an outtype whose text is not a number, a name HDF5 cannot hold, a missing or second pArray node, a
DTD (entities) are refused with the reason on StatusMessage_RBV and FileTemplateValid=No. While
the template is not valid, no file is opened (WriteMessage says why).

What ndflow adds per file: `<entry>/ndflow` (NXcollection) with `unique_id`, `timestamp` and
`status` per row (0: a frame, otherwise the code of the missing cause listed in its `codes`
attribute), so a lost frame keeps its row (the data row holds 0) with its cause.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ndflow import __version__
from ndflow.ndarray import MissingCause, NDArray, NDAttribute
from ndflow.params import R, RW, bool_param, enum_param, text_param
from ndflow.plugins.file_writer import SINGLE, FileWriter, WriteError
from ndflow.plugins.pv_files import FileRefused, read_pv_file

MAX_TEMPLATE_BYTES = 1 << 20
MAX_NODES = 10000
MAX_DEPTH = 64
STATUS_CODES = {cause: i + 1 for i, cause in enumerate(MissingCause)}

#: the NeXus base classes ADCore's NDFileNexus makes groups of (its processNode list)
NX_GROUPS = frozenset((
    "NXentry NXinstrument NXsample NXmonitor NXsource NXuser NXdata NXdetector NXaperature "
    "NXattenuator NXbeam_stop NXbending_magnet NXcollimator NXcrystal NXdisk_chopper "
    "NXfermi_chopper NXfilter NXflipper NXguide NXinsertion_device NXmirror NXmoderator "
    "NXmonochromator NXpolarizer NXpositioner NXvelocity_selector NXevent_data NXprocess "
    "NXcharacterization NXlog NXnote NXbeam NXgeometry NXtranslation NXshape NXorientation "
    "NXenvironment NXsensor NXcapillary NXcollection NXdetector_group NXparameters NXsubentry "
    "NXxraylens").split())
#: outtype -> numpy type (None: text)
OUT_TYPES: dict[str, np.dtype | None] = {
    "NX_CHAR": None, "NX_INT8": np.dtype("i1"), "NX_UINT8": np.dtype("u1"),
    "NX_INT16": np.dtype("i2"), "NX_UINT16": np.dtype("u2"), "NX_INT32": np.dtype("i4"),
    "NX_UINT32": np.dtype("u4"), "NX_FLOAT32": np.dtype("f4"), "NX_FLOAT64": np.dtype("f8")}

NEXUS_PARAMS = (
    enum_param("FileFormat", ("NeXus", "Invalid"), 0, RW, rbv_choices=("NeXus", "Undefined"),
               group="File"),
    text_param("TemplateFilePath", 256, "", RW, group="Template",
               doc="folder of the XML template (the config file's folder or a data root)"),
    text_param("TemplateFileName", 256, "", RW, group="Template",
               doc="XML template file; empty: ndflow's default NeXus layout"),
    bool_param("FileTemplateValid", "No", "Yes", 1, R, group="Template"),
)


class TemplateError(ValueError):
    """A template that cannot be used; the message says where and why (one line)."""


@dataclass(frozen=True)
class Attr:
    """An `<Attr>`: an HDF5 attribute of its parent."""

    name: str
    source: str  # ND_ATTR: the NDAttribute's name; "" for a constant
    value: Any = None  # CONST: the typed value


@dataclass(frozen=True)
class Node:
    """A group or dataset of the template, checked when the template was read."""

    kind: str  # "group", "pArray", "ND_ATTR", "CONST" (text included), "NXlink"
    name: str
    nx_class: str = ""  # groups
    source: str = ""  # ND_ATTR
    value: Any = None  # CONST
    target: str = ""  # NXlink
    attrs: tuple[Attr, ...] = ()
    children: tuple["Node", ...] = ()


@dataclass(frozen=True)
class Template:
    origin: str  # shown in messages: a file name or "the default template"
    nodes: tuple[Node, ...]
    data_path: tuple[str, ...]  # the names from the root to the pArray dataset


def _text(element: ET.Element) -> str:
    return "".join(element.itertext()) if len(element) else (element.text or "")


def _name(element: ET.Element, where: str) -> str:
    name = (element.get("name") or element.tag).strip()
    if not name or "/" in name or name in (".", "..") or len(name) > 255:
        raise TemplateError(f"{where}: {name!r} cannot be an HDF5 name")
    return name


def _constant(text: str, outtype: str | None, where: str) -> Any:
    """A CONST node's value as `outtype` says (NX_CHAR when absent)."""
    outtype = (outtype or "NX_CHAR").strip()
    if outtype not in OUT_TYPES:
        raise TemplateError(f"{where}: outtype {outtype!r} is not one of "
                            f"{', '.join(OUT_TYPES)}")
    dtype = OUT_TYPES[outtype]
    if dtype is None:
        return text
    try:
        number = float(text) if dtype.kind == "f" else int(text.strip())
    except ValueError:
        raise TemplateError(f"{where}: {text.strip()[:40]!r} is not an {outtype}") from None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not info.min <= number <= info.max:
            raise TemplateError(f"{where}: {number} does not fit {outtype}")
    return dtype.type(number)


def _attr(element: ET.Element, where: str) -> Attr:
    name = (element.get("name") or "").strip()
    if not name or len(name) > 255:
        raise TemplateError(f"{where}: an Attr needs a name")
    kind = element.get("type")
    if kind == "ND_ATTR":
        source = (element.get("source") or "").strip()
        if not source:
            raise TemplateError(f"{where}: Attr {name!r} of type ND_ATTR needs a source")
        return Attr(name, source)
    if kind == "CONST":
        return Attr(name, "", _constant(_text(element), element.get("outtype"), where))
    raise TemplateError(f"{where}: Attr {name!r} needs type ND_ATTR or CONST")


def _node(element: ET.Element, path: tuple[str, ...], count: list[int],
          found: list[tuple[str, ...]]) -> Node:
    count[0] += 1
    if count[0] > MAX_NODES or len(path) > MAX_DEPTH:
        raise TemplateError(f"more than {MAX_NODES} nodes or {MAX_DEPTH} levels")
    name = _name(element, "/".join(path) or "/")
    here = (*path, name)
    where = "/" + "/".join(here)
    kind = element.get("type")
    attrs = tuple(_attr(c, where) for c in element if c.tag == "Attr")
    others = [c for c in element if c.tag != "Attr"]
    if element.tag in NX_GROUPS or kind == "UserGroup":
        children = tuple(_node(c, here, count, found) for c in others)
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise TemplateError(f"{where}: two children with one name")
        return Node("group", name, element.tag, attrs=attrs, children=children)
    if others:
        raise TemplateError(f"{where}: a dataset holds only Attr elements, not "
                            f"<{others[0].tag}>")
    if kind == "pArray":
        found.append(here)
        return Node("pArray", name, attrs=attrs)
    if kind == "ND_ATTR":
        source = (element.get("source") or "").strip()
        if not source:
            raise TemplateError(f"{where}: type ND_ATTR needs a source")
        return Node("ND_ATTR", name, source=source, attrs=attrs)
    if kind == "CONST":
        return Node("CONST", name, value=_constant(_text(element), element.get("outtype"),
                                                   where), attrs=attrs)
    if kind == "NXlink":
        target = (element.get("target") or "").strip()
        if not target.startswith("/"):
            raise TemplateError(f"{where}: an NXlink needs an absolute target")
        return Node("NXlink", name, target=target, attrs=attrs)
    if kind is not None:
        raise TemplateError(f"{where}: type {kind!r} is not one of UserGroup, pArray, "
                            "ND_ATTR, CONST, NXlink")
    text = _text(element).strip() or "LEFT BLANK"
    return Node("CONST", name, value=text, attrs=attrs)


def parse_template(data: bytes, origin: str) -> Template:
    """A checked template, or TemplateError saying what is wrong."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise TemplateError(f"{origin}: DTDs and entities are not allowed in templates")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise TemplateError(f"{origin}: not well-formed XML ({exc})") from None
    if root.tag != "NXroot":
        raise TemplateError(f"{origin}: the root element must be NXroot, not <{root.tag}>")
    found: list[tuple[str, ...]] = []
    count = [0]
    try:
        nodes = tuple(_node(c, (), count, found) for c in root if c.tag != "Attr")
    except TemplateError as exc:
        raise TemplateError(f"{origin}: {exc}") from None
    if len(found) != 1:
        raise TemplateError(f"{origin}: needs exactly one node of type pArray (found "
                            f"{len(found)})")
    return Template(origin, nodes, found[0])


def default_template() -> Template:
    data = resources.files("ndflow.plugins").joinpath("nexus_default.xml").read_bytes()
    return parse_template(data, "the default template")


def _h5_value(value: Any) -> Any:
    """An NDAttribute's value as h5py stores it (text as a UTF-8 string)."""
    if isinstance(value, (bool, np.bool_)):
        return np.uint8(value)
    if isinstance(value, (int, float, np.number, np.ndarray)):
        return value
    return str(value)


class Nexus(FileWriter):
    screen = "NDFileNexus"
    kind = "nexus"
    plugin_type = "NDFileNexus"
    PARAMS = (*FileWriter.PARAMS, NEXUS_PARAMS)
    extension = ".h5"
    compression_aware = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._template: Template | None = default_template()
        self._template_error = ""
        self._file: h5py.File | None = None
        self._data: h5py.Dataset | None = None
        self._rows: dict[str, h5py.Dataset] = {}
        self._growing = False
        self._missing_said: set[str] = set()

    # --- the template (read off the event loop when its PVs are written) ------------------------
    async def put_TemplateFilePath(self, value: str) -> str:
        await self._load(value, self.values["TemplateFileName"])
        return value

    async def put_TemplateFileName(self, value: str) -> str:
        await self._load(self.values["TemplateFilePath"], value)
        return value

    async def _load(self, folder: str, name: str) -> None:
        try:
            template = await asyncio.to_thread(self._read_template, folder, name)
        except (TemplateError, FileRefused) as exc:
            self._template, self._template_error = None, str(exc)
            self.set("FileTemplateValid", 0)
            self.message(f"Nexus template not valid: {exc}")
            return
        self._template, self._template_error = template, ""
        self.set("FileTemplateValid", 1)
        self.message(f"Nexus template {template.origin} loaded")

    def _read_template(self, folder: str, name: str) -> Template:
        if not name.strip():
            return default_template()
        if folder.strip() and not folder.endswith("/"):
            folder += "/"
        full = folder.strip() + name.strip()
        data = read_pv_file(full, self.site, "Nexus template", MAX_TEMPLATE_BYTES)
        return parse_template(data, full)

    # --- the format ---------------------------------------------------------------------------------
    def open_file(self, path: Path, first: NDArray) -> None:
        template = self._template
        if template is None:
            raise WriteError(f"the Nexus template is not valid ({self._template_error}); "
                             "no file written")
        data = first.data
        assert data is not None
        self._growing = self._open_params["FileWriteMode"] != SINGLE
        self._file = f = self.open_hdf5(path)
        try:
            f.attrs["creator"] = f"ndflow {__version__} NDFileNexus"
            f.attrs["file_name"] = str(path)
            f.attrs["file_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["NX_class"] = "NXroot"
            f.attrs["HDF5_Version"] = h5py.version.hdf5_version
            links: list[tuple[h5py.Group, Node]] = []
            for node in template.nodes:
                self._build(f, node, first, links)
            for group, node in links:
                self._link(f, group, node)
            entry = f["/" + template.data_path[0]] if len(template.data_path) > 1 else f
            self._make_rows(entry)
        except BaseException:
            self.close_file()
            raise

    def _build(self, parent: h5py.Group, node: Node, first: NDArray,
               links: list[tuple[h5py.Group, Node]]) -> None:
        obj: Any
        if node.kind == "group":
            obj = parent.create_group(node.name)
            obj.attrs["NX_class"] = node.nx_class
            for child in node.children:
                self._build(obj, child, first, links)
        elif node.kind == "pArray":
            data = first.data
            assert data is not None
            if self._growing:
                obj = parent.create_dataset(node.name, shape=(0, *data.shape),
                                            maxshape=(None, *data.shape), dtype=data.dtype,
                                            chunks=(1, *data.shape))
            else:
                obj = parent.create_dataset(node.name, shape=data.shape, dtype=data.dtype)
            self._data = obj
        elif node.kind == "ND_ATTR":
            attr = self._attribute(first, node.source, parent.name + "/" + node.name)
            if attr is None:
                return
            value = _h5_value(attr.value)
            obj = parent.create_dataset(node.name, data=np.atleast_1d(value)
                                        if not isinstance(value, str) else value)
        elif node.kind == "CONST":
            obj = parent.create_dataset(node.name, data=node.value)
        else:  # NXlink: made once every dataset exists
            links.append((parent, node))
            return
        for a in node.attrs:
            if a.source:
                found = self._attribute(first, a.source, f"{obj.name}@{a.name}")
                if found is not None:
                    obj.attrs[a.name] = _h5_value(found.value)
            else:
                obj.attrs[a.name] = a.value

    def _link(self, f: h5py.File, parent: h5py.Group, node: Node) -> None:
        target = f.get(node.target)
        if target is None:
            self.notes.line("link", f"NXlink {parent.name}/{node.name}: {node.target} is not "
                                    "in the file; no link made")
            return
        parent[node.name] = target  # a hard link: one object, two names (NeXus links)
        target.attrs["target"] = target.name
        for a in node.attrs:
            if not a.source:
                target.attrs[a.name] = a.value

    def _attribute(self, array: NDArray, name: str, where: str) -> NDAttribute | None:
        attr = array.attributes.get(name)
        if attr is None and where not in self._missing_said:
            self._missing_said.add(where)
            self.notes.line("ndattr", f"{where}: array {array.unique_id} has no NDAttribute "
                                      f"{name!r}; left out (as ADCore)")
        return attr

    def _make_rows(self, entry: h5py.Group) -> None:
        group = entry.create_group("ndflow")
        group.attrs["NX_class"] = "NXcollection"
        self._rows = {}
        for name, dtype in (("unique_id", "i4"), ("timestamp", "f8"), ("status", "i1")):
            self._rows[name] = group.create_dataset(name, shape=(0,), maxshape=(None,),
                                                    dtype=dtype, chunks=(64,))
        self._rows["status"].attrs["codes"] = "0 valid; " + "; ".join(
            f"{code} {cause.value}" for cause, code in STATUS_CODES.items())

    def _row(self, array: NDArray, status: int) -> int:
        rows = self._rows
        n = rows["unique_id"].shape[0]
        for name, value in (("unique_id", array.unique_id), ("timestamp", array.timestamp),
                            ("status", status)):
            rows[name].resize((n + 1,))
            rows[name][n] = value
        return n

    def write_array(self, array: NDArray) -> None:
        data, dataset = array.data, self._data
        assert data is not None and dataset is not None
        expected = dataset.shape[1:] if self._growing else dataset.shape
        if data.shape != expected or data.dtype != dataset.dtype:
            self.notes.line("shape", f"array {array.unique_id} is {data.dtype} {data.shape}, "
                                     f"the file holds {dataset.dtype} {expected}: its row "
                                     "is left empty")
            self._lost(array, STATUS_CODES[MissingCause.PROCESSING_ERROR])
            return
        n = self._row(array, 0)
        if self._growing:
            dataset.resize((n + 1, *expected))
            dataset[n] = data
        elif n == 0:
            dataset[...] = data

    def write_missing(self, array: NDArray) -> None:
        if self._data is None:
            return
        cause = array.status.missing
        self._lost(array, STATUS_CODES.get(cause, 127) if cause else 127)

    def _lost(self, array: NDArray, code: int) -> None:
        n = self._row(array, code)
        if self._growing and self._data is not None:
            self._data.resize((n + 1, *self._data.shape[1:]))  # the row keeps 0

    def flush_file(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close_file(self) -> None:
        f, self._file = self._file, None
        self._data = None
        self._rows = {}
        self._missing_said = set()
        if f is not None:
            f.close()
