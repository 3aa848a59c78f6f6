"""The core knows no transport: no module of `ndflow` outside its transport packages imports a
protocol library, and importing the core (server, replay, screens) loads none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "ioc"
TRANSPORT_PACKAGES = {"ca", "pva"}
PROTOCOL_LIBRARIES = {"caproto", "p4p", "pvaccess", "epics", "softioc", "aioca"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:  # relative: a transport package?
            first = node.module.split(".")[0]
            if node.level == 1 and first in TRANSPORT_PACKAGES:
                names.add(f"ndflow.{first}")
    return names


def test_no_core_module_imports_a_protocol_library_or_a_transport():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE)
        if relative.parts[0] in TRANSPORT_PACKAGES:
            continue
        bad = imported_modules(path) & (PROTOCOL_LIBRARIES | {f"ndflow.{t}" for t in
                                                               TRANSPORT_PACKAGES})
        if bad:
            offenders[str(relative)] = sorted(bad)
    assert not offenders, offenders


def test_the_check_sees_an_import():  # the scanner itself can fail
    sample = CORE.parent / "tests" / "unit" / "_layering_sample.py"
    sample.write_text("import caproto\nfrom p4p.server import Server\nfrom .ca import channels\n")
    try:
        assert {"caproto", "p4p", "ndflow.ca"} <= imported_modules(sample)
    finally:
        sample.unlink()


def test_importing_the_core_loads_no_protocol_library():
    code = ("import sys, ndflow.server, ndflow.replay, ndflow.component, ndflow.publisher, "
            "ndflow.plugin, ndflow.driver, ndflow.screens.generate; "
            f"print(sorted(m for m in {sorted(PROTOCOL_LIBRARIES)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
