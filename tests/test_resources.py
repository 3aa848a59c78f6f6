"""IOC-wide resources and overload: the IOC: PVs against psutil, the memory budget that bounds a
never-ending Capture, the driver's Pause policy, and the overload case where every frame the
driver made has its HDF5 row (data, or fill with the cause). Real IOCs, pyepics, h5py."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import h5py
import psutil
import pytest

from test_acquisition import get, put, wait_for

MB = 1024 * 1024


def config(root: Path, screens: Path, budget_mb: float = 0, driver_policy: str = "drop",
           size: int = 256, extra: str = "") -> str:
    return textwrap.dedent(f"""
        data_roots: ["{root}"]
        screens_dir: "{screens}"
        memory_budget_mb: {budget_mb}
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:", loss_policy: {driver_policy},
             options: {{max_size_x: {size}, max_size_y: {size}, data_type: UInt16}}}}
        plugins:
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SIM1, enabled: true}}
          - {{type: process, port: PROC1, prefix: "Proc1:", input: SIM1, enabled: true}}
          - {{type: hdf5, port: FileHDF1, prefix: "HDF1:", input: SIM1, enabled: true}}
        {extra}""")


def setup(p: str, root: Path, name: str, mode: str, num: int) -> None:
    for field, value in (("FilePath", str(root)), ("FileName", name),
                         ("FileTemplate", "%s%s_%3.3d.h5"), ("FileWriteMode", mode),
                         ("NumCapture", num), ("AutoIncrement", "Yes"),
                         ("Compression", "zlib"), ("ZLevel", 1)):
        put(p + "HDF1:" + field, value)
    for name_, value in (("ImageMode", "Continuous"), ("AcquireTime", 0.0),
                         ("AcquirePeriod", 0.0)):
        put(p + "cam1:" + name_, value)


def test_resource_pvs_match_psutil_and_have_a_screen(start_ioc, tmp_path):
    root, screens = tmp_path / "data", tmp_path / "screens"
    root.mkdir()
    ioc = start_ioc(config(root, screens, budget_mb=2000), prefix="RES1:")
    p = ioc.prefix
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", 20)
    put(p + "cam1:Acquire", 1)
    time.sleep(2.5)  # two refreshes
    process = psutil.Process(ioc.proc.pid)
    rss = process.memory_info().rss / MB
    assert get(p + "IOC:MemUsed_RBV") == pytest.approx(rss, rel=0.10)
    assert get(p + "IOC:MemBudget_RBV") == 2000
    pools = get(p + "IOC:PoolMem_RBV")
    assert 0 < pools < rss  # the sim's frames live in its shared-memory pool
    assert get(p + "IOC:BudgetUse_RBV") == pytest.approx(100 * pools / 2000, rel=0.05)
    assert get(p + "IOC:ShmMem_RBV") >= pools * 0.5
    assert get(p + "IOC:Children_RBV") == len(process.children(recursive=True))
    cpu = json.loads(get(p + "IOC:ComponentCPU_RBV", as_string=True))
    assert set(cpu) >= {"SIM1", "STATS1", "PROC1", "FileHDF1"}
    assert get(p + "IOC:CPU_RBV") >= 0.0
    # the generated screens show them: the IOC's own screen and a row on the overview
    assert (screens / "ndflowIOC.bob").exists()
    overview = (screens / "ndflow.bob").read_text()
    assert "$(P)IOC:MemUsed_RBV" in overview and "ndflowIOC.bob" in overview


def test_a_capture_that_never_ends_is_bounded_by_the_memory_budget(start_ioc, tmp_path):
    """NumCapture=0, Capture=1 while acquiring: frames past the budget become missing frames
    (counted), the process does not grow."""
    root, screens = tmp_path / "data", tmp_path / "screens"
    root.mkdir()
    budget = 150
    ioc = start_ioc(config(root, screens, budget_mb=budget), prefix="RES2:")
    p = ioc.prefix
    setup(p, root, "forever", "Capture", 0)
    baseline = psutil.Process(ioc.proc.pid).memory_info().rss / MB
    put(p + "HDF1:Capture", 1, wait=False)
    put(p + "cam1:Acquire", 1, wait=False)
    time.sleep(4)
    rss = psutil.Process(ioc.proc.pid).memory_info().rss / MB
    lost = get(p + "cam1:FramesLost_RBV")
    held = get(p + "HDF1:NumCaptured_RBV")
    status = get(p + "cam1:StatusMessage_RBV", as_string=True)  # before Stop replaces it
    put(p + "cam1:Acquire", 0)
    put(p + "HDF1:Capture", 0)
    assert rss < baseline + budget * 1.2, (baseline, rss)
    assert lost > 0 and held > 0  # past the budget frames became missing, counted
    assert "budget" in status, status


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_overload_every_frame_has_its_row(start_ioc, tmp_path, policy):
    """Stats1 + Proc1 + HDF1 (Stream) at 512x512 UInt16, unpaced: frames acquired = rows.
    Drop: rows without data carry their cause. Block (HDF1): every row is data, and the driver
    simply made fewer frames."""
    root, screens = tmp_path / "data", tmp_path / "screens"
    root.mkdir()
    extra = ""
    ioc = start_ioc(config(root, screens, size=512, extra=extra), prefix=f"OVL{policy}:")
    p = ioc.prefix
    setup(p, root, "overload", "Stream", 0)
    put(p + "HDF1:LossPolicy", "Block" if policy == "block" else "Drop")
    put(p + "cam1:NumImages", 1)
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:Acquire", 1)  # one frame gives the stream file its layout
    put(p + "HDF1:Capture", 1, wait=False)
    assert wait_for(lambda: get(p + "HDF1:Capture_RBV") == 1), \
        get(p + "HDF1:WriteMessage", as_string=True)
    first = get(p + "cam1:ArrayCounter_RBV") + 1
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:Acquire", 1, wait=False)
    time.sleep(3)
    put(p + "cam1:Acquire", 0)
    last = get(p + "cam1:ArrayCounter_RBV")
    assert wait_for(lambda: get(p + "cam1:ProcessingPending_RBV") == 0, 60)
    put(p + "HDF1:Capture", 0)
    dropped = get(p + "HDF1:DroppedArrays")
    path = Path(get(p + "HDF1:FullFileName_RBV", as_string=True))
    with h5py.File(path) as f:
        attrs = f["entry/instrument/NDAttributes"]
        ids, status = attrs["NDArrayUniqueId"][:], attrs["NDArrayStatus"][:]
        missing = f["entry/ndflow/missing"][:]
    assert list(ids) == list(range(first, last + 1))  # frames acquired = rows, in order
    assert sorted(missing["unique_id"]) == sorted(ids[status != 0])  # each with its cause
    assert len(missing) == dropped
    if policy == "drop":
        assert dropped > 0, "HDF1 kept up: the overload did not happen"
        assert get(p + "cam1:FramesLost_RBV") >= dropped
    else:
        assert dropped == 0 and (status == 0).all()


def test_pause_policy_waits_for_room_instead_of_losing(start_ioc, tmp_path):
    root, screens = tmp_path / "data", tmp_path / "screens"
    root.mkdir()
    ioc = start_ioc(config(root, screens, driver_policy="pause"), prefix="RES3:")
    p = ioc.prefix
    assert get(p + "cam1:LossPolicy", as_string=True) == "Pause"
    put(p + "Proc1:EnableFilter", "Enable")  # Proc1 is the slow one: float64 work per frame
    put(p + "Proc1:QueueSize", 5)
    put(p + "Stats1:ComputeCentroid", "Yes")
    for name, value in (("ImageMode", "Multiple"), ("NumImages", 300), ("AcquireTime", 0.0),
                        ("AcquirePeriod", 0.0), ("WaitForPlugins", "Yes")):
        put(p + "cam1:" + name, value)
    put(p + "cam1:Acquire", 1, timeout=60)
    assert get(p + "cam1:PausedTime_RBV") > 0  # it did wait for the plugins
    assert get(p + "cam1:FramesLost_RBV") == 0
    for plugin in ("Stats1:", "Proc1:", "HDF1:"):
        assert get(p + plugin + "DroppedArrays") == 0
    assert get(p + "Proc1:ArrayCounter_RBV") == 300 and get(p + "Stats1:ArrayCounter_RBV") == 300
