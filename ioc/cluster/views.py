"""What the control rank serves about the other ranks: aggregates and per-rank values.

Each processing rank sends the values of its plugins that changed (counters, rates, status
readbacks) every `report_interval_s`. On the control rank:
- the plugin's own PVs (the facade: same names as a single-process IOC) show the aggregate over
  ranks: counts and rates (ArrayCounter, DroppedArrays, FramesReceived, NumCaptured,
  ArrayRate_RBV, ...) summed, times (ExecutionTime_RBV) averaged, and every other status readback
  (Stats' MeanValue_RBV, UniqueId_RBV, ArraySize*) from the rank that processed the most recent
  frame (the highest UniqueId_RBV);
- each rank's own values of the summed and averaged parameters are served as
  `$(P)R<rank>:<plugin prefix><name>`, e.g. `13SIM1:R1:Stats1:ArrayCounter_RBV`, read-only;
- `$(P)Cluster:...` (ClusterStatus) says how the frames travel: dispatched, acknowledged, in
  order, missing, late, and which ranks answer.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Iterable

from ..component import Component
from ..params import Access, Kind, Param, ParamTable, R, int_param, string_param, text_param

SUMMED = ("ArrayCounter", "DroppedArrays", "FramesReceived_RBV", "FramesThrottled_RBV",
          "NumCaptured_RBV", "ArrayRate_RBV", "DisorderedArrays", "DroppedOutputArrays")
AVERAGED = ("ExecutionTime_RBV",)
PER_RANK = SUMMED + AVERAGED + ("UniqueId_RBV", "FullFileName_RBV", "WriteStatus",
                                "WriteMessage", "StatusMessage_RBV")
#: values the control rank's own component owns (its file, its capture, its wiring)
OWN = {"FullFileName_RBV", "FilePathExists_RBV", "Capture", "FileNumber", "WriteFile",
       "FileName", "NumCapture",  # per rank by design (node.ControlNode.mirror)
       "PortName_RBV", "PluginType_RBV", "QueueFree", "NumQueuedArrays", "QueueUse",
       "SortFree", "MaxThreads_RBV", "EffectiveParams_RBV", "BlockedUpstream_RBV",
       "PoolMaxMem", "PoolUsedMem", "PoolAllocBuffers", "PoolFreeBuffers", "PoolUsedBuffers",
       "SWMRActive_RBV", "SWMRCbCounter_RBV", "WriteStatus", "WriteMessage",
       "StatusMessage_RBV"}
#: the largest array a rank reports (a histogram; never a frame)
MAX_REPORTED_ELEMENTS = 4096


def reported(param: Param) -> bool:
    """Whether processing ranks send this parameter's changes to the control rank: all but
    frames and big arrays. A rank sends only what its data path changed (results, counters,
    and a setting the data path moves, such as AutoOffsetScale), never a value a mirrored put
    set, so a report cannot overwrite a client's newer put on the control rank."""
    return not (param.kind is Kind.NDARRAY or (param.kind is Kind.ARRAY and
                                               param.length > MAX_REPORTED_ELEMENTS))


def readonly(param: Param) -> Param:
    """`param` as a read-only value under its readback name (the per-rank copy)."""
    name = param.readback_name or param.name
    return replace(param, name=name, access=Access.R, rbv_name=None, also_setpoint=False,
                   aliases=(), coalesce=True)


class RankView(Component):
    """One processing rank's values of one plugin, read-only, under `R<rank>:<prefix>`."""

    screen = "NDClusterRank"

    def __init__(self, plugin: Component, rank: int) -> None:
        self._declared = [readonly(plugin.params[n]) for n in PER_RANK if n in plugin.params]
        #: source name in the plugin -> name here
        self.names = {n: readonly(plugin.params[n]).name for n in PER_RANK if n in plugin.params}
        super().__init__(f"{plugin.port}_R{rank}", f"R{rank}:{plugin.prefix}")
        self.rank = rank

    def declare(self) -> ParamTable:
        return ParamTable.of(self._declared)


CLUSTER_PARAMS = (
    int_param("NumRanks_RBV", 1, R, group="Cluster", doc="ranks mpiexec started"),
    string_param("Dispatch_RBV", "", R, group="Cluster", doc="round_robin or credit"),
    text_param("ProcessingRanks_RBV", 256, "", R, group="Cluster"),
    text_param("AcquisitionRanks_RBV", 256, "", R, group="Cluster",
               doc="ranks that run the driver; with several, rank at position m makes module m"),
    int_param("FramesDispatched_RBV", 0, R, group="Cluster",
              doc="frames sent to processing ranks"),
    int_param("FramesAcknowledged_RBV", 0, R, group="Cluster",
              doc="frames the processing ranks said they received"),
    int_param("FramesInOrder_RBV", 0, R, group="Cluster",
              doc="frames through the reorder stage: the contiguous prefix in global order"),
    int_param("FramesMissing_RBV", 0, R, group="Cluster",
              doc="frames that became missing: not acknowledged within the window, or dropped "
                  "at dispatch for want of a free rank"),
    int_param("FramesLate_RBV", 0, R, group="Cluster",
              doc="acknowledgements that came after their frame was declared missing"),
    int_param("RanksAnswering_RBV", 0, R, group="Cluster"),
    text_param("SilentRanks_RBV", 256, "", R, group="Cluster",
               doc="ranks that owe something (a processing rank frames outstanding, an "
                   "acquisition rank the running acquisition's frames) and sent nothing for a "
                   "window: those frames become missing"),
    text_param("MasterFile_RBV", 512, "", R, group="Cluster",
               doc="the last master HDF5 file written"),
)


class ClusterStatus(Component):
    screen = "NDCluster"
    PARAMS = (CLUSTER_PARAMS,)

    def __init__(self) -> None:
        super().__init__("CLUSTER", "Cluster:")


class Aggregator:
    """Per-rank reported values -> the facade's aggregate and the per-rank views (any thread,
    under its own lock)."""

    def __init__(self, facades: dict[str, Component], views: dict[tuple[int, str], RankView],
                 ranks: Iterable[int], groups: list[list[int]] | None = None) -> None:
        """`groups`: per detector module, its processing ranks (partial frames): a frame is
        captured (NumCaptured_RBV) once every module's ranks have it; default one group."""
        self.facades = facades
        self.views = views
        self.ranks = list(ranks)
        self.groups = groups or [self.ranks]
        self._values: dict[tuple[int, str], dict[str, Any]] = {}
        self._latest: dict[str, int] = {}  # port -> rank with the most recent frame
        self._lock = threading.Lock()

    def value(self, rank: int, port: str, name: str, default: Any = None) -> Any:
        return self._values.get((rank, port), {}).get(name, default)

    def update(self, rank: int, changes: dict[str, dict[str, Any]]) -> set[str]:
        """Apply a rank's report; returns the ports whose aggregates changed."""
        with self._lock:
            for port, values in changes.items():
                self._values.setdefault((rank, port), {}).update(values)
                view = self.views.get((rank, port))
                if view is not None:
                    for name, value in values.items():
                        target = view.names.get(name)
                        if target is not None:
                            view.set(target, value)
                self._aggregate(port, rank, values)
        return set(changes)

    def _aggregate(self, port: str, rank: int, values: dict[str, Any]) -> None:
        facade = self.facades.get(port)
        if facade is None:
            return
        per_rank = [self._values.get((r, port), {}) for r in self.ranks]
        for name in SUMMED:
            if name in values and name in facade.params:
                total = sum(v.get(name, 0) for v in per_rank)
                if name == "NumCaptured_RBV":
                    total = self._captured(port, total)
                    if facade.values.get("NumCapture"):
                        total = min(total, facade.values["NumCapture"])
                if facade.values.get(name) != total:
                    facade.set(name, total)
        for name in AVERAGED:
            if name in values and name in facade.params:
                got = [v[name] for v in per_rank if name in v]
                facade.set(name, sum(got) / len(got))
        latest_rank = self._latest.get(port)
        mine = self._values[(rank, port)].get("UniqueId_RBV", 0)
        theirs = self.value(latest_rank, port, "UniqueId_RBV", -1) if latest_rank is not None \
            else -1
        if latest_rank is None or rank == latest_rank or mine > theirs:
            switched = latest_rank != rank
            self._latest[port] = rank
            source = self._values[(rank, port)] if switched else values
            for name, value in source.items():
                if name in SUMMED or name in AVERAGED or name in OWN or \
                        name not in facade.params:
                    continue
                facade.set(name, value)
        errors = [(r, self.value(r, port, "WriteMessage", "")) for r in self.ranks
                  if self.value(r, port, "WriteStatus", 0)]
        if "WriteStatus" in facade.params and errors:
            r, text = errors[0]
            facade.set("WriteStatus", 1)
            facade.set("WriteMessage", f"rank {r}: {text}"[:255])

    def _captured(self, port: str, total: int) -> int:
        """Whole frames captured: with one group of ranks per module, the fewest any module's
        ranks wrote; when modules share ranks, the module frames written over the number of
        modules (each module frame is written once, by the rank it went to)."""
        if len(self.groups) == 1:
            return total
        ranks = [r for group in self.groups for r in group]
        if len(ranks) == len(set(ranks)):
            return min(sum(self.value(r, port, "NumCaptured_RBV", 0) for r in group)
                       for group in self.groups)
        return total // len(self.groups)

    def forget(self, port: str, name: str, value: Any = 0) -> None:
        """Every rank's `name` is `value` now (NumCaptured_RBV at a new capture), until the
        ranks say otherwise: an old total must not end the new capture."""
        with self._lock:
            for rank in self.ranks:
                self._values.setdefault((rank, port), {})[name] = value

    def reapply_rates(self, port: str) -> None:
        """After the facade's own once-a-second rate computation: the summed rate again."""
        facade = self.facades.get(port)
        if facade is None or "ArrayRate_RBV" not in facade.params:
            return
        with self._lock:
            total = sum(self._values.get((r, port), {}).get("ArrayRate_RBV", 0.0)
                        for r in self.ranks)
        facade.set("ArrayRate_RBV", total)
