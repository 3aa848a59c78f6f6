"""NDAttributesFile: the XML list of attributes a port attaches to every array it produces.

The format is ADCore's (`<Attributes><Attribute name= type= source= datatype= description=/>`).
The PV takes either the XML itself (what ophyd-async's `setup_ndattributes` writes) or the name
of a file. `$(NAME)` macros are expanded from NDAttributesMacros ("NAME=value,OTHER=value").

Sources: PARAM reads one of the port's own parameters by its PV name (`Gain`, `ArrayCounter`;
ADCore's drvInfo strings such as GAIN are not known here), CONST is the source text itself.
EPICS_PV is the latest value of a PV of this IOC or any other (`NAME` over Channel Access,
`pva://NAME` over pvAccess), kept by a monitor (`ndflow.pvwatch`): a frame takes what is there
and never waits on the network; before the first update the value is NaN (DOUBLE) or None.
FUNCT needs compiled functions inside the IOC and is refused with a message naming the
attribute.

Security: the PV is writable by anyone on the network. So a file name is read only from the
configured folders (`Site.read_folders`: the config file's folder and the data roots; never the
IOC's working directory). A relative name is relative to the config file's folder, '..' is
refused, and the file is opened through `ndflow.safepath` (one component at a time from the
folder's descriptor, symbolic links refused, regular files of at most MAX_BYTES only). Error
messages about a file never quote it: they say what is wrong and where (line, column, the Nth
<Attribute>), because the file may be anything the IOC can read in those folders. Inline XML
came from the client itself, so its messages name its attributes and macros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from xml.parsers import expat

from . import pvwatch, safepath
from .ndarray import AttrSource, NDAttribute
from .safepath import PathRefused

# NDAttributesStatus choices (NDArrayBase.template)
OK, FILE_NOT_FOUND, XML_SYNTAX_ERROR, MACRO_ERROR = range(4)

#: an attribute file larger than this is refused (ADCore's files are a few kB)
MAX_BYTES = 1 << 20

_DATATYPES = {"INT": int, "DOUBLE": float, "STRING": str}
_MACRO = re.compile(r"\$\(([^)=,]+)(?:=([^)]*))?\)")


class AttributesError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    source_type: AttrSource
    source: str
    datatype: str = "DOUBLE"
    description: str = ""

    def convert(self, value: Any) -> Any:
        kind = _DATATYPES.get(self.datatype.upper())
        if kind is None:  # UNKNOWN/AUTO: keep the parameter's own type
            return value
        return kind(value)


def expand_macros(text: str, macros: str, quote: bool = True) -> str:
    """`text` with $(NAME) and $(NAME=default) replaced from `macros`. With quote=False (text
    from a file) an error gives the macro's line, not its name."""
    table = dict(part.split("=", 1) for part in macros.split(",") if "=" in part)
    table = {k.strip(): v.strip() for k, v in table.items()}

    def substitute(match: re.Match) -> str:
        name, default = match.group(1).strip(), match.group(2)
        if name in table:
            return table[name]
        if default is not None:
            return default
        if quote:
            raise AttributesError(MACRO_ERROR,
                                  f"macro $({name}) has no value in NDAttributesMacros")
        line = text.count("\n", 0, match.start()) + 1
        raise AttributesError(MACRO_ERROR, f"line {line}: a macro has no value in "
                              "NDAttributesMacros (and no default)")
    return _MACRO.sub(substitute, text)


def load(value: str, macros: str, folders: Iterable[Path], base: Path | None,
         known_params: Callable[[str], bool]) -> list[AttributeSpec]:
    """The attributes an NDAttributesFile value stands for: inline XML, or a file read from
    `folders` (a relative name: from `base`, the config file's folder)."""
    if value.lstrip().startswith("<"):
        return _watched(parse(expand_macros(value, macros), known_params))
    name = value.strip()
    data = read_file(name, folders, base)
    return _watched(_load_file(name, data, macros, known_params))


def _watched(specs: list[AttributeSpec]) -> list[AttributeSpec]:
    """Start the monitors of the EPICS_PV attributes now (off the frame path; never waits),
    so the first frames already find values."""
    for spec in specs:
        if spec.source_type is AttrSource.EPICS_PV:
            try:
                pvwatch.shared().watch(spec.source)
            except pvwatch.PVNameError:  # the only refusal left: too many names
                raise AttributesError(XML_SYNTAX_ERROR, "EPICS_PV: at most "
                                      f"{pvwatch.MAX_PVS} PVs are monitored at once") from None
    return specs


def _load_file(name: str, data: bytes, macros: str,
               known_params: Callable[[str], bool]) -> list[AttributeSpec]:
    try:
        # Is it XML with <Attributes> at the top, before anything of it may be shown? Macros
        # are plain text to XML, so the file as stored must already be well formed.
        _elements(data, quote=False)
        text = data.decode("utf-8")
    except AttributesError as exc:
        raise AttributesError(exc.status, f"{name}: {exc}") from None
    except UnicodeDecodeError:
        raise AttributesError(XML_SYNTAX_ERROR, f"{name}: not UTF-8 text") from None
    try:
        return parse(expand_macros(text, macros, quote=False), known_params, quote=False)
    except AttributesError as exc:
        raise AttributesError(exc.status, f"{name}: {exc}") from None


def read_file(name: str, folders: Iterable[Path], base: Path | None) -> bytes:
    """The bytes of the attribute file `name`, if it lies in one of `folders` (no '..', no
    links followed, a regular file of at most MAX_BYTES). Refusals use FILE_NOT_FOUND."""
    folders = [Path(f) for f in folders]
    where_text = ", ".join(map(str, folders)) or "no folder"
    if not name:
        raise AttributesError(FILE_NOT_FOUND, "no file name")
    if safepath.has_parent_parts(name):
        raise AttributesError(FILE_NOT_FOUND, f"{name}: '..' is not allowed in attribute file "
                              "names")
    path = Path(name)
    if not path.is_absolute():
        if base is None:
            raise AttributesError(FILE_NOT_FOUND, f"{name}: give an absolute path")
        path = base / path
    try:
        where = safepath.locate(path, folders, "the attribute folders")
    except PathRefused:
        raise AttributesError(FILE_NOT_FOUND, f"{name}: attribute files are read only from "
                              f"{where_text}") from None
    try:
        return safepath.read_file(where, MAX_BYTES)
    except FileNotFoundError:
        raise AttributesError(FILE_NOT_FOUND, f"{name}: no such file") from None
    except PathRefused as exc:
        raise AttributesError(FILE_NOT_FOUND, f"{name}: {exc}") from None
    except OSError as exc:
        raise AttributesError(FILE_NOT_FOUND, f"{name}: {exc.strerror}") from None


def _elements(xml: str | bytes, quote: bool = True) -> list[tuple[str, dict[str, str], int]]:
    """(tag, attributes, line) of every element, checking the root is <Attributes>. Errors are
    expat's own descriptions plus positions; with quote=False they never contain the text."""
    parser = expat.ParserCreate()
    found: list[tuple[str, dict[str, str], int]] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        found.append((tag, attrs, parser.CurrentLineNumber))
    parser.StartElementHandler = start
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as exc:
        raise AttributesError(XML_SYNTAX_ERROR, f"not valid XML ({expat.ErrorString(exc.code)}"
                              f", line {exc.lineno}, column {exc.offset})") from None
    root = found[0][0]
    if root != "Attributes":
        raise AttributesError(XML_SYNTAX_ERROR, "attribute XML: the root element is "
                              + (f"<{root}>, not <Attributes>" if quote else
                                 "not <Attributes>"))
    return found


def parse(xml_text: str, known_params: Callable[[str], bool],
          quote: bool = True) -> list[AttributeSpec]:
    """The attribute list of ADCore attribute XML. quote=False (text from a file): messages
    point at an <Attribute> by line instead of quoting its name or values."""
    specs = []
    for tag, element, line in _elements(xml_text, quote):
        if tag != "Attribute":
            continue
        name = element.get("name", "").strip()
        kind = element.get("type", "").strip().upper()
        source = element.get("source", "")
        what = f"attribute {name}" if quote else f"the <Attribute> on line {line}"
        if not name:
            raise AttributesError(XML_SYNTAX_ERROR, f"attribute XML: the <Attribute> on line "
                                  f"{line} has no name")
        if kind == "PARAM":
            if not known_params(source):
                raise AttributesError(XML_SYNTAX_ERROR, f"{what}: no parameter "
                                      + (f"{source!r} " if quote else "by that source ")
                                      + "(give the PV name, e.g. Gain)")
            source_type = AttrSource.PARAM
        elif kind == "CONST":
            source_type = AttrSource.CONST
        elif kind == "EPICS_PV":
            try:
                pvwatch.check_name(source)
            except pvwatch.PVNameError as exc:
                raise AttributesError(XML_SYNTAX_ERROR, f"{what}: " + (
                    str(exc) if quote else "the source is not a PV name")) from None
            source_type = AttrSource.EPICS_PV
            source = source.strip()
        elif kind == "FUNCT":
            raise AttributesError(XML_SYNTAX_ERROR, f"{what}: type {kind} is not "
                                  "supported by ndflow (use PARAM, CONST or EPICS_PV)")
        else:
            raise AttributesError(XML_SYNTAX_ERROR, f"{what}: unknown type"
                                  + (f" {kind!r}" if quote else "")
                                  + " (use PARAM, CONST or EPICS_PV)")
        datatype = element.get("datatype", element.get("dbrtype", "DOUBLE")).strip().upper()
        if datatype.startswith("DBR_"):
            datatype = {"DBR_STRING": "STRING", "DBR_LONG": "INT", "DBR_SHORT": "INT",
                        "DBR_ENUM": "INT", "DBR_CHAR": "INT"}.get(datatype, "DOUBLE")
        specs.append(AttributeSpec(name, source_type, source, datatype,
                                   element.get("description", "")))
    return specs


def attach(specs: Iterable[AttributeSpec], values: Mapping[str, Any],
           attributes: dict[str, NDAttribute]) -> None:
    """Add the attributes to an array's attribute dict, reading PARAM values now."""
    for spec in specs:
        if spec.source_type is AttrSource.EPICS_PV:
            latest = pvwatch.shared().latest(spec.source)  # a dict lookup: never waits
            if latest is None:  # not connected yet
                value = float("nan") if spec.datatype.upper() == "DOUBLE" else None
                attributes[spec.name] = NDAttribute(spec.name, value, spec.description,
                                                    spec.source_type, spec.source)
                continue
            raw = latest[0]
        elif spec.source_type is AttrSource.PARAM:
            raw = values.get(spec.source)
        else:
            raw = spec.source
        try:
            value = spec.convert(raw)
        except (TypeError, ValueError):
            value = raw
        attributes[spec.name] = NDAttribute(spec.name, value, spec.description,
                                            spec.source_type, spec.source)
