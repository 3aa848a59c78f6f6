"""IOC-wide resources (`$(P)IOC:`): what the process holds and spends, and its memory budget.

Memory: the process's resident set, the bytes in every array pool (frames held by queues, file
writers' Capture buffers, deferred processing) and in shared-memory segments, and the algorithm
children's resident sets. CPU: the process, each driver's and plugin's own threads (from the
kernel's per-thread CPU clocks), and the children. MemBudget is the pools' common limit
(`ndflow.pool.BUDGET`): past it a new frame buffer is refused, which a driver turns into a
missing frame, or a pause when its OverloadPolicy says so. Values refresh once a second.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable

import psutil

from . import shm
from .component import Component
from .access import ACFError, AccessSecurity
from .component import PutRefused
from .params import R, RW, W, bool_param, float_param, int_param, text_param
from .pool import BUDGET

MB = 1024 * 1024
log = logging.getLogger("ndflow.resources")

RESOURCE_PARAMS = (
    float_param("MemBudget", 0.0, RW, low=0.0, precision=0, units="MB", group="Memory",
                doc="what all array pools may hold together; 0 = no limit"),
    float_param("BudgetUse_RBV", 0.0, R, precision=1, units="%", group="Memory",
                doc="pool memory as a share of MemBudget"),
    float_param("MemUsed_RBV", 0.0, R, precision=1, units="MB", group="Memory",
                doc="resident memory of the IOC process"),
    float_param("PoolMem_RBV", 0.0, R, precision=1, units="MB", group="Memory",
                doc="bytes in every array pool, free or in use"),
    float_param("ShmMem_RBV", 0.0, R, precision=1, units="MB", group="Memory",
                doc="shared-memory segments mapped by the IOC"),
    int_param("Children_RBV", 0, R, group="Children", doc="algorithm child processes"),
    float_param("ChildrenMem_RBV", 0.0, R, precision=1, units="MB", group="Children",
                doc="resident memory of the algorithm children"),
    float_param("CPU_RBV", 0.0, R, precision=1, units="%", group="CPU",
                doc="CPU of the IOC process (100 = one core)"),
    float_param("ChildrenCPU_RBV", 0.0, R, precision=1, units="%", group="CPU",
                doc="CPU of the algorithm children (100 = one core)"),
    text_param("ComponentCPU_RBV", 4096, "{}", R, group="CPU",
               doc="JSON: CPU % of each driver's and plugin's own threads"),
    float_param("Uptime_RBV", 0.0, R, precision=0, units="s", group="CPU"),
    bool_param("ACFReload", "Done", "Reload", 0, W, group="Access security",
               doc="read the access security file again (a file that does not parse leaves "
                   "the rules in force)"),
    text_param("ACFStatus_RBV", 256, "", R, group="Access security",
               doc="the access security file loaded, or why it was not"),
)


class Resources(Component):
    kind = "ioc"
    screen = "ndflowIOC"
    PARAMS = (RESOURCE_PARAMS,)

    def __init__(self, components: Iterable[Component], budget_mb: float = 0.0,
                 prefix: str = "IOC:", access: AccessSecurity | None = None) -> None:
        super().__init__("IOC", prefix)
        self.components = list(components)
        self.access = access or AccessSecurity()
        self.values["ACFStatus_RBV"] = _acf_status(self.access)
        self.values["MemBudget"] = budget_mb
        BUDGET.max_bytes = int(budget_mb * MB)
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first call only starts the measurement
        self._children: dict[int, psutil.Process] = {}
        self._proc_children = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
        self._thread_cpu: dict[int, float] = {}  # thread ident -> CPU seconds at last refresh
        self._started = time.monotonic()

    async def put_ACFReload(self, value: int) -> int:
        """Reload the access security file; the rules change for every transport at once."""
        if not value:
            return 0
        try:
            status = self.access.reload()
        except ACFError as exc:
            self.set("ACFStatus_RBV", f"not reloaded: {exc}"[:255])
            raise PutRefused(f"access security file not reloaded: {exc}") from None
        self.set("ACFStatus_RBV", status[:255])
        self.message(status)
        return 0

    def put_MemBudget(self, value: float) -> float:
        BUDGET.max_bytes = int(value * MB)
        return value

    def periodic(self, elapsed: float) -> None:
        pools = BUDGET.used()
        budget = BUDGET.max_bytes
        values: dict[str, Any] = {
            "MemUsed_RBV": self._process.memory_info().rss / MB,
            "PoolMem_RBV": pools / MB,
            "BudgetUse_RBV": 100.0 * pools / budget if budget else 0.0,
            "ShmMem_RBV": shm.mapped_bytes() / MB,
            "CPU_RBV": self._process.cpu_percent(None),
            "Uptime_RBV": time.monotonic() - self._started,
        }
        values.update(self._children_usage())
        values["ComponentCPU_RBV"] = json.dumps(self._component_cpu(elapsed),
                                                separators=(",", ":"))
        self.set_many(values)

    def _children_usage(self) -> dict[str, Any]:
        rss = cpu = 0.0
        alive = {}
        for pid in self._descendants():
            known = self._children.get(pid)
            if known is None:
                try:
                    known = psutil.Process(pid)
                except psutil.Error:
                    continue
            try:
                rss += known.memory_info().rss
                cpu += known.cpu_percent(None)  # 0.0 the first time a child is seen
            except psutil.Error:
                continue
            alive[pid] = known
        self._children = alive
        return {"Children_RBV": len(alive), "ChildrenMem_RBV": rss / MB,
                "ChildrenCPU_RBV": cpu}

    def _descendants(self) -> list[int]:
        """The IOC's child processes and theirs, from the kernel's per-thread lists of
        children (/proc/PID/task/TID/children): a few small reads. psutil's
        children(recursive=True) reads the stat file of every process on the host: 6 ms of
        CPU a second with 120 processes, on every rank of a cluster."""
        if not self._proc_children:  # a kernel without CONFIG_PROC_CHILDREN
            try:
                return [c.pid for c in self._process.children(recursive=True)]
            except psutil.Error:
                return []
        found: list[int] = []
        parents = [self._process.pid]
        while parents:
            pid = parents.pop()
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:  # a child that has just ended
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        kids = [int(k) for k in f.read().split()]
                except OSError:  # the thread has ended
                    continue
                found.extend(kids)
                parents.extend(kids)
        return found

    def _component_cpu(self, elapsed: float) -> dict[str, float]:
        """CPU % of each component's own threads since the last refresh."""
        usage: dict[str, float] = {}
        seen: dict[int, float] = {}
        for component in self.components:
            spent = 0.0
            for thread in component.threads():
                ident = thread.ident
                if ident is None or not thread.is_alive():
                    continue
                try:
                    now = time.clock_gettime(time.pthread_getcpuclockid(ident))
                except (OSError, ValueError):
                    continue
                seen[ident] = now
                spent += now - self._thread_cpu.get(ident, now)
            usage[component.port] = round(100.0 * spent / elapsed, 1) if elapsed > 0 else 0.0
        self._thread_cpu = seen
        return usage


def _acf_status(access: AccessSecurity) -> str:
    if access.path is None:
        return "no access security file: every client may read and write"
    return f"{access.path.name}: {len(access.policy.groups)} groups loaded"
