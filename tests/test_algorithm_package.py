"""The algorithm child package (`ndflow.algorithm`) stands alone: each of its modules imports the
standard library, numpy and the package itself, nothing else; and the real child runs under a
virtual environment where ndflow is not installed, processing a frame through the real wire
protocol and shared memory, driven by the IOC's real Lane."""

from __future__ import annotations

import ast
import fcntl
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ndflow.algorithm
from ndflow.ndarray import NDArray
from ndflow.plugins.python.lane import ChildSpec, Lane, LaneState
from ndflow.plugins.python.supervisor import child_image

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(ndflow.algorithm.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))

CHECK = r"""
import sys
before = set(sys.modules)
import importlib
importlib.import_module(sys.argv[1])
new = sorted(set(sys.modules) - before)
allowed = set(sys.stdlib_module_names)
foreign = [m for m in new if m.split(".")[0] not in allowed and m.split(".")[0] != "numpy"
           and m != "ndflow" and not m.startswith("ndflow.algorithm")]
print("\n".join(foreign))
"""


def foreign_imports(module: str) -> list[str]:
    """Modules outside the standard library, numpy and the package that importing `module` in
    a fresh interpreter loads."""
    done = subprocess.run([sys.executable, "-c", CHECK, module], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_package_has_the_modules_the_child_needs():
    assert {"__init__", "api", "declare", "param", "wire", "segment", "child", "errors"} <= \
        set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_each_module_imports_only_stdlib_numpy_and_the_package(name):
    module = "ndflow.algorithm" if name == "__init__" else f"ndflow.algorithm.{name}"
    assert foreign_imports(module) == []


def test_every_import_statement_is_stdlib_numpy_or_relative():
    """What the fresh-interpreter check cannot see: imports inside functions."""
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    offenders = {}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:  # out of the package
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] not in allowed]
            if bad:
                offenders[path.name] = bad
    assert not offenders, offenders


def test_the_check_sees_a_foreign_import(tmp_path):  # the fresh-interpreter check can fail
    (tmp_path / "leaky.py").write_text("import ndflow.config\n")
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, "
                           f"{str(tmp_path)!r}); exec({CHECK!r})", "leaky"],
                          capture_output=True, text=True, timeout=60)
    assert "ndflow.config" in done.stdout.split()


# --- the child under a virtual environment without ndflow -----------------------------------------

ALGORITHM = '''
import importlib.util
import sys

import numpy as np

from ndflow.algorithm import Algorithm, Input, Output, read_file


class Scale(Algorithm):
    gain = Input(3.0)
    mode = Input("sum", choices=["sum", "max"])
    total = Output(float)
    ndflow_params_found = Output(False)
    python = Output("", length=200)
    note = Output("")

    def process(self, image, params, attributes, metadata):
        value = image.sum() if params.mode == "sum" else image.max()
        return {"total": float(value) * params.gain, "python": sys.executable,
                "ndflow_params_found": importlib.util.find_spec("ndflow.params") is not None,
                "note": read_file("note.txt").decode()}
'''


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A venv of the base interpreter (numpy from its site-packages), without ndflow."""
    where = tmp_path_factory.mktemp("bare-venv")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", "--system-site-packages", str(where)],
                   check=True, capture_output=True, timeout=60)
    python = where / "bin" / "python"
    ndflow_there = subprocess.run([str(python), "-c", "import ndflow"], capture_output=True,
                                  timeout=30)
    numpy_there = subprocess.run([str(python), "-c", "import numpy"], capture_output=True,
                                 timeout=30)
    if numpy_there.returncode != 0:
        pytest.skip("the base interpreter has no numpy to lend the venv")
    assert ndflow_there.returncode != 0, "ndflow is importable in the bare venv"
    return python


class Owner:
    """What the plugin would be: records what the lane reports."""

    inputs_version = 1

    def __init__(self) -> None:
        self.declared: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.results: list[tuple[dict[str, Any], Any]] = []
        self.lost: list[str] = []
        self.done = threading.Event()

    def lane_declared(self, lane, reply):
        self.declared.append(reply)

    def lane_load_error(self, lane, reply):
        self.errors.append(reply)

    def lane_result(self, lane, array, reply, image, seconds):
        self.results.append((reply, image))
        self.done.set()

    def lane_lost(self, lane, array, cause, message, timed_out):
        self.lost.append(message)
        self.done.set()

    def lane_died(self, lane, message, output):
        self.lost.append(f"{message}: {output}")

    def lane_state(self, lane):
        pass

    def input_values(self):
        return self.inputs_version, {"gain": 2.0, "mode": 0}  # stored form: "sum" is index 0


def test_the_child_runs_in_a_venv_without_ndflow(bare_venv, tmp_path):
    algorithm = tmp_path / "scale.py"
    algorithm.write_text(ALGORITHM)
    (tmp_path / "note.txt").write_text("read through safepath")
    owner = Owner()
    spec = ChildSpec("VENV1", str(bare_venv), algorithm, "", 0, 20.0, 30.0,
                     read_folders=(str(tmp_path),))
    lane = Lane(spec, 0, owner, depth=1)
    lane.start(wait=True)
    try:
        assert not owner.errors, owner.errors
        assert lane.state is LaneState.RUNNING
        declared = owner.declared[0]
        assert declared["python"] == str(bare_venv)
        assert declared["protocol"] == ndflow.algorithm.PROTOCOL_VERSION
        names = [d["param"]["name"] for d in declared["declarations"]]
        assert names == ["Gain", "Mode", "Total_RBV", "NdflowParamsFound_RBV", "Python_RBV",
                         "Note_RBV"]
        frame = NDArray.from_numpy(np.arange(12, dtype=np.uint16).reshape(3, 4), unique_id=7)
        assert lane.submit(frame) is None
        assert owner.done.wait(20), "no reply"
        reply, _ = owner.results[0]
        assert reply["status"] == "ok", reply
        assert reply["outputs"]["total"] == 66 * 2.0  # the sum (mode index 0) times the gain
        assert reply["outputs"]["python"] == str(bare_venv)
        assert reply["outputs"]["ndflow_params_found"] is False  # only ndflow.algorithm there
        assert reply["outputs"]["note"] == "read through safepath"  # read_file works there
    finally:
        lane.close()


def test_a_child_of_another_protocol_version_is_one_line_naming_both(tmp_path):
    """The IOC states its version in the settings; a child that speaks another refuses to load
    and says so in one line, and the lane reports it and stays failed."""
    algorithm = tmp_path / "scale.py"
    algorithm.write_text(ALGORITHM)
    owner = Owner()
    spec = ChildSpec("OLD1", sys.executable, algorithm, "", 0, 20.0, 30.0)
    lane = Lane(spec, 0, owner, depth=1)
    lane._settings = lambda: {"depth": 1, "protocol": 1}  # an IOC of protocol 1 started it
    lane.start(wait=True)
    try:
        assert lane.state is LaneState.FAILED
        message = owner.errors[0]["message"]
        assert "\n" not in message
        assert f"protocol 1, the child {ndflow.algorithm.PROTOCOL_VERSION}" in message, message
        frame = NDArray.from_numpy(np.zeros((2, 2), np.uint8), unique_id=1)
        assert lane.submit(frame) == "algorithm failed"
    finally:
        lane.close()


def test_the_child_image_holds_only_the_algorithm_package():
    """The child's ndflow is a zip in a sealed memfd: the package, nothing else,
    and nothing on disk to leave behind."""
    fd = child_image()
    with open(f"/proc/self/fd/{fd}", "rb") as data, zipfile.ZipFile(data) as image:
        names = sorted(image.namelist())
    assert names == sorted(["__main__.py", "ndflow/__init__.py"] +
                           [f"ndflow/algorithm/{m}.py" for m in MODULES])
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ndflow-algorithm-child")
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    want = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    assert seals & want == want
    with pytest.raises(PermissionError):  # sealed: a child cannot change what the next runs
        os.pwrite(fd, b"x", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1)
