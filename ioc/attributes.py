"""NDAttributesFile: the XML list of attributes a port attaches to every array it produces.

The format is ADCore's (`<Attributes><Attribute name= type= source= datatype= description=/>`).
The PV takes either the XML itself (what ophyd-async's `setup_ndattributes` writes) or the name
of a file. `$(NAME)` macros are expanded from NDAttributesMacros ("NAME=value,OTHER=value").

Sources: PARAM reads one of the port's own parameters by its PV name (`Gain`, `ArrayCounter`;
ADCore's drvInfo strings such as GAIN are not known here), CONST is the source text itself.
EPICS_PV and FUNCT need a CA client or compiled functions inside the IOC and are refused with a
message naming the attribute.

Security: the PV is writable by anyone on the network, so a file name is read only when it lies
under one of the allowed folders (the config file's folder and the data roots).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .config import inside
from .ndarray import AttrSource, NDAttribute

# NDAttributesStatus choices (NDArrayBase.template)
OK, FILE_NOT_FOUND, XML_SYNTAX_ERROR, MACRO_ERROR = range(4)

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


def expand_macros(text: str, macros: str) -> str:
    table = dict(part.split("=", 1) for part in macros.split(",") if "=" in part)
    table = {k.strip(): v.strip() for k, v in table.items()}

    def substitute(match: re.Match) -> str:
        name, default = match.group(1).strip(), match.group(2)
        if name in table:
            return table[name]
        if default is not None:
            return default
        raise AttributesError(MACRO_ERROR, f"macro $({name}) has no value in NDAttributesMacros")
    return _MACRO.sub(substitute, text)


def read_source(value: str, allowed: Iterable[Path], base: Path | None) -> str:
    """The XML text the NDAttributesFile value stands for."""
    if value.lstrip().startswith("<"):
        return value
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    path = path.resolve()
    folders = [Path(f).resolve() for f in allowed]
    if not inside(path, folders):
        raise AttributesError(FILE_NOT_FOUND, f"{value}: attribute files are read only from "
                              f"{', '.join(map(str, folders)) or 'no folder'}")
    try:
        return path.read_text()
    except OSError as exc:
        raise AttributesError(FILE_NOT_FOUND, f"{value}: {exc.strerror}") from None


def parse(xml_text: str, known_params: Callable[[str], bool]) -> list[AttributeSpec]:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise AttributesError(XML_SYNTAX_ERROR, f"attribute XML: {exc}") from None
    if root.tag != "Attributes":
        raise AttributesError(XML_SYNTAX_ERROR,
                              f"attribute XML: root element is <{root.tag}>, not <Attributes>")
    specs = []
    for element in root.iter("Attribute"):
        name = element.get("name", "").strip()
        kind = element.get("type", "").strip().upper()
        source = element.get("source", "")
        if not name:
            raise AttributesError(XML_SYNTAX_ERROR, "attribute XML: an <Attribute> has no name")
        if kind == "PARAM":
            if not known_params(source):
                raise AttributesError(XML_SYNTAX_ERROR, f"attribute {name}: no parameter "
                                      f"{source!r} (give the PV name, e.g. Gain)")
            source_type = AttrSource.PARAM
        elif kind == "CONST":
            source_type = AttrSource.CONST
        elif kind in ("EPICS_PV", "FUNCT"):
            raise AttributesError(XML_SYNTAX_ERROR, f"attribute {name}: type {kind} is not "
                                  "supported by ndflow (use PARAM or CONST)")
        else:
            raise AttributesError(XML_SYNTAX_ERROR, f"attribute {name}: unknown type {kind!r}")
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
        raw = values.get(spec.source) if spec.source_type is AttrSource.PARAM else spec.source
        try:
            value = spec.convert(raw)
        except (TypeError, ValueError):
            value = raw
        attributes[spec.name] = NDAttribute(spec.name, value, spec.description,
                                            spec.source_type, spec.source)
