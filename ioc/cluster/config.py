"""The `cluster:` section of an IOC config: which MPI rank does what, and how frames travel.

Pure pydantic (no MPI here): `ndflow.config` validates it with the rest of the file, so a bad key
is one line naming the key and its line, and a config without the section never imports mpi4py.
What depends on the number of ranks mpiexec started is checked at run time (`check_roles`), and
the driver's module grid against the acquisition ranks once the IOC is built (`check_modules`),
with the same kind of message.

Roles: `control` (one rank), `acquisition` (one or more; the control rank may be one),
`processing` (the control rank cannot be one). Whole frames: each acquisition rank sends to every
processing rank (`ordering`, `dispatch`); several acquisition ranks of a driver without modules
share the frames, rank i making frames i, i+M, ... (`numbering`; the control rank then acquires
nothing). Partial frames: with a driver of several modules, the
rank at position m of `acquisition` produces detector module m (the sim's `modules: [X, Y]`
grid, module m at column m % X, row m // X: one module per acquisition rank, exactly), and
sends it to the ranks of `module_ranks[m]`; by default an acquisition rank that also processes
keeps its module (no MPI hop), and the others share the processing ranks that do not acquire,
round robin (module k of them gets every k-th one). Each processing rank's plugins see module
frames, or, with `assemble`, whole frames rebuilt from every module (`assembly`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

if TYPE_CHECKING:
    from ..config import LineMap


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control: int = Field(0, ge=0, description="the rank that serves CA/PVA, the PVs and the run "
                         "state")
    acquisition: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=256,
                                   description="ranks that run the driver (the control rank may "
                                   "be one of them). Several, with a driver of several modules "
                                   "(the sim's `modules` option): each produces one detector "
                                   "module (partial-frame dispatch), module m being the rank at "
                                   "position m here. Several, without modules: they share the "
                                   "whole frames, the rank at position i making frames i, i+M, "
                                   "... (M ranks), each paced at M x AcquirePeriod")
    processing: list[int] = Field(default_factory=list, description="ranks that run the "
                                  "plugin graph (empty: every rank but the control rank)")
    dispatch: Literal["round_robin", "credit"] = Field(
        "round_robin", description="round_robin: frame i goes to ordering[i % N]; credit: the "
        "least busy processing rank gets the next frame")
    ordering: list[int] = Field(default_factory=list, description="round_robin's order of "
                                "processing ranks (empty: `processing` in order; for several "
                                "acquisition ranks sharing whole frames, each keeps its frames "
                                "if it processes, else sends to the ranks that only process); "
                                "a rank may appear more than once to get a bigger share")
    credits: int = Field(8, ge=1, le=10_000, description="credit: frames a processing rank may "
                         "have in its pipeline before it gets no more; when every rank is full "
                         "the driver waits up to `window_s`, then the frame is dropped")
    window_s: float = Field(5.0, gt=0, le=3600, description="a frame not acknowledged by its "
                            "rank after this long becomes a missing frame (timeout)")
    module_ranks: list[list[int]] = Field(
        default_factory=list, max_length=256, description="partial frames: for module m "
        "(acquisition[m]), the processing ranks its frames go to (dispatch and ordering apply "
        "among them). Empty: an acquisition rank that is also a processing rank keeps its "
        "module (no MPI hop); the others get a round-robin share of the processing ranks that "
        "acquire nothing")
    assemble: bool = Field(False, description="partial frames: each processing rank rebuilds "
                           "whole frames from the modules before its plugins (for a plugin that "
                           "needs the whole image); every module's frames must reach the same "
                           "ranks in the same order: one module_ranks list for all, round_robin")
    report_interval_s: float = Field(0.2, gt=0, le=10, description="how often the other ranks "
                                     "send their counters (and acquisition ranks at least a "
                                     "heartbeat) to the control rank")
    #: the driver's number of detector modules, once known (`check_modules`)
    _modules: int | None = PrivateAttr(None)

    @field_validator("processing", "acquisition")
    @classmethod
    def _once(cls, ranks: list[int]) -> list[int]:
        if len(set(ranks)) != len(ranks):
            raise ValueError("a rank is listed twice")
        if any(r < 0 for r in ranks):
            raise ValueError("ranks are 0 or more")
        return ranks

    @model_validator(mode="after")
    def _roles(self) -> "ClusterConfig":
        if self.control in self.processing:
            raise ValueError("in this version the control rank cannot also be a processing "
                             "rank (its plugins are the cluster's facade and master writer)")
        unknown = sorted(set(self.ordering) - set(self.processing)) if self.processing else []
        if unknown:
            raise ValueError(f"ordering: rank {unknown[0]} is not a processing rank")
        return self

    def processing_ranks(self, size: int) -> list[int]:
        return list(self.processing) or [r for r in range(size) if r != self.control]

    def order(self, size: int) -> list[int]:
        return list(self.ordering) or self.processing_ranks(size)

    @property
    def partial(self) -> bool:
        """Whether frames travel as modules: a module map, or several acquisition ranks and
        a driver of several modules (before `check_modules` knows the driver: several
        acquisition ranks)."""
        if self.module_ranks:
            return True
        if self._modules is not None:
            return self._modules > 1
        return len(self.acquisition) > 1

    @property
    def shared(self) -> bool:
        """Whether several acquisition ranks share whole frames (`numbering`)."""
        return len(self.acquisition) > 1 and not self.partial

    def set_modules(self, modules: int) -> None:
        """The driver's number of detector modules (`check_modules`; `run` before
        `check_roles`, from the config's driver options)."""
        self._modules = modules

    def module_of(self, rank: int) -> int | None:
        """The module acquisition rank `rank` produces (partial frames), else None."""
        return self.acquisition.index(rank) if self.partial and rank in self.acquisition \
            else None

    def targets(self, rank: int, size: int) -> list[int]:
        """The processing ranks acquisition rank `rank` sends its frames to, in dispatch order
        (round robin's ordering; a rank may repeat). Shared whole frames without an ordering:
        an acquisition rank that processes keeps its frames (no MPI hop), the others send to
        the processing ranks that acquire nothing."""
        if not self.partial:
            if not self.shared or self.ordering:
                return self.order(size)
            processing = self.processing_ranks(size)
            if rank in processing:
                return [rank]
            return [p for p in processing if p not in self.acquisition] or processing
        m = self.acquisition.index(rank)
        if self.module_ranks:
            return list(self.module_ranks[m])
        processing = self.processing_ranks(size)
        if rank in processing:
            return [rank]
        feeders = [a for a in self.acquisition if a not in processing]
        pool = [p for p in processing if p not in self.acquisition] or processing
        k = feeders.index(rank)
        if len(pool) >= len(feeders):
            return [p for i, p in enumerate(pool) if i % len(feeders) == k]
        return [pool[k % len(pool)]]

    def feeders(self, rank: int, size: int) -> list[int]:
        """The acquisition ranks that send frames to processing rank `rank`."""
        return [a for a in self.acquisition if rank in self.targets(a, size)]

    def module_groups(self, size: int) -> list[list[int]]:
        """Per module, its processing ranks (one group of every processing rank for whole
        frames, assembled ones included): a frame is captured once every group has it."""
        if not self.partial or self.assemble:
            return [self.processing_ranks(size)]
        return [sorted(set(self.targets(a, size))) for a in self.acquisition]


def check_roles(cluster: ClusterConfig, size: int, lines: "LineMap") -> None:
    """Refuse roles that name ranks mpiexec did not start (ConfigError naming the key)."""
    if cluster.control >= size:
        raise lines.error(("cluster", "control"), f"rank {cluster.control}, but mpiexec started "
                          f"{size} rank{'s' * (size != 1)} (0..{size - 1})")
    for key in ("processing", "ordering"):
        for i, rank in enumerate(getattr(cluster, key)):
            if rank >= size:
                raise lines.error(("cluster", key, i), f"rank {rank}, but mpiexec started "
                                  f"{size} ranks (0..{size - 1})")
    for i, rank in enumerate(cluster.acquisition):
        if rank >= size:
            raise lines.error(("cluster", "acquisition", i), f"rank {rank}, but mpiexec "
                              f"started {size} ranks (0..{size - 1})")
    if size > 1 and not cluster.processing_ranks(size):
        raise lines.error(("cluster", "processing"), "no processing rank")
    idle = sorted(set(range(size)) - {cluster.control} - set(cluster.processing_ranks(size))
                  - set(cluster.acquisition))
    if idle:
        raise lines.error(("cluster", "processing"), f"mpiexec started rank {idle[0]}, which "
                          "has no role: list it here or start fewer ranks")
    if cluster.partial:
        _check_modules(cluster, size, lines)
        return
    fed = {p for a in cluster.acquisition for p in cluster.targets(a, size)}
    missing = sorted(set(cluster.processing_ranks(size)) - fed)
    if missing:
        raise lines.error(("cluster", "ordering"), f"processing rank {missing[0]} never gets "
                          "a frame: add it to the ordering")


def _check_modules(cluster: ClusterConfig, size: int, lines: "LineMap") -> None:
    processing = cluster.processing_ranks(size)
    if cluster.ordering:
        raise lines.error(("cluster", "ordering"), "with several acquisition ranks (partial "
                          "frames) each module's ranks come from module_ranks: leave ordering "
                          "out")
    if cluster.module_ranks and len(cluster.module_ranks) != len(cluster.acquisition):
        raise lines.error(("cluster", "module_ranks"), f"{len(cluster.module_ranks)} "
                          f"entr{'y' if len(cluster.module_ranks) == 1 else 'ies'}, but "
                          f"{len(cluster.acquisition)} acquisition ranks (one list of "
                          "processing ranks per module)")
    for m, ranks in enumerate(cluster.module_ranks):
        if not ranks:
            raise lines.error(("cluster", "module_ranks", m), "no processing rank for module "
                              f"{m}")
        for j, rank in enumerate(ranks):
            if rank not in processing:
                raise lines.error(("cluster", "module_ranks", m, j), f"rank {rank} is not a "
                                  "processing rank")
    if cluster.assemble:
        lists = {tuple(cluster.targets(a, size)) for a in cluster.acquisition}
        if len(lists) > 1 or cluster.dispatch != "round_robin":
            raise lines.error(("cluster", "assemble"), "every module's frames must reach the "
                              "same processing ranks in the same order: give every module the "
                              "same module_ranks list, with dispatch: round_robin")
    fed = {p for a in cluster.acquisition for p in cluster.targets(a, size)}
    idle = sorted(set(processing) - fed)
    if idle:
        key = ("cluster", "module_ranks") if cluster.module_ranks else \
            ("cluster", "processing")
        raise lines.error(key, f"processing rank {idle[0]} gets no module's frames")


def check_modules(cluster: ClusterConfig, grid: tuple[int, int], lines: "LineMap",
                  driver: Any) -> None:
    """The driver's module grid against the acquisition ranks: one module per rank; several
    ranks share whole frames only for a driver that can (`Driver.shares_frames`; `driver`:
    its class or instance)."""
    modules = grid[0] * grid[1]
    if modules == 1 and not cluster.module_ranks:
        cluster.set_modules(1)  # whole frames: several acquisition ranks share them
        if cluster.shared and not getattr(driver, "shares_frames", False):
            kind = getattr(driver, "kind", type(driver).__name__)
            raise lines.error(("cluster", "acquisition"), f"{len(cluster.acquisition)} "
                              f"acquisition ranks sharing whole frames, but the {kind} driver "
                              "cannot share them (each rank would make every frame): one "
                              "acquisition rank")
        if cluster.shared and cluster.control in cluster.acquisition:
            raise lines.error(("cluster", "acquisition"), f"rank {cluster.control} is the "
                              "control rank: with several acquisition ranks sharing whole "
                              "frames it cannot be one of them (its driver shows the "
                              "cluster's counters)")
        return
    cluster.set_modules(modules)
    if modules != len(cluster.acquisition):
        more = "more" if modules > len(cluster.acquisition) else "fewer"
        raise lines.error(("cluster", "acquisition"), f"{len(cluster.acquisition)} acquisition "
                          f"rank{'s' * (len(cluster.acquisition) != 1)}, but the driver has "
                          f"{modules} module{'s' * (modules != 1)} ({grid[0]}x{grid[1]}, "
                          f"{more} modules than ranks): each acquisition rank produces one "
                          "module")
