"""The `cluster:` section of an IOC config: which MPI rank does what, and how frames travel.

Pure pydantic (no MPI here): `ndflow.config` validates it with the rest of the file, so a bad key
is one line naming the key and its line, and a config without the section never imports mpi4py.
What depends on the number of ranks mpiexec started is checked at run time (`check_roles`), with
the same kind of message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from ..config import LineMap


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control: int = Field(0, ge=0, description="the rank that serves CA/PVA, the PVs and the run "
                         "state (and, in this version, runs the driver)")
    acquisition: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=1,
                                   description="ranks that run the driver (one, the control "
                                   "rank, in this version)")
    processing: list[int] = Field(default_factory=list, description="ranks that run the "
                                  "plugin graph (empty: every rank but the control rank)")
    dispatch: Literal["round_robin", "credit"] = Field(
        "round_robin", description="round_robin: frame i goes to ordering[i % N]; credit: the "
        "least busy processing rank gets the next frame")
    ordering: list[int] = Field(default_factory=list, description="round_robin's order of "
                                "processing ranks (empty: `processing` in order); a rank may "
                                "appear more than once to get a bigger share")
    credits: int = Field(8, ge=1, le=10_000, description="credit: frames a processing rank may "
                         "have in its pipeline before it gets no more; when every rank is full "
                         "the driver waits up to `window_s`, then the frame is dropped")
    window_s: float = Field(5.0, gt=0, le=3600, description="a frame not acknowledged by its "
                            "rank after this long becomes a missing frame (timeout)")
    report_interval_s: float = Field(0.2, gt=0, le=10, description="how often processing ranks "
                                     "send their counters to the control rank")

    @model_validator(mode="after")
    def _roles(self) -> "ClusterConfig":
        if self.acquisition != [self.control]:
            raise ValueError("in this version the acquisition rank must be the control rank "
                             f"(acquisition: [{self.control}])")
        if self.control in self.processing:
            raise ValueError("in this version the control rank cannot also be a processing "
                             "rank (its plugins are the cluster's facade and master writer)")
        if len(set(self.processing)) != len(self.processing):
            raise ValueError("processing: a rank is listed twice")
        unknown = sorted(set(self.ordering) - set(self.processing)) if self.processing else []
        if unknown:
            raise ValueError(f"ordering: rank {unknown[0]} is not a processing rank")
        return self

    def processing_ranks(self, size: int) -> list[int]:
        return list(self.processing) or [r for r in range(size) if r != self.control]

    def order(self, size: int) -> list[int]:
        return list(self.ordering) or self.processing_ranks(size)


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
    if size > 1 and not cluster.processing_ranks(size):
        raise lines.error(("cluster", "processing"), "no processing rank")
    idle = sorted(set(range(size)) - {cluster.control} - set(cluster.processing_ranks(size)))
    if idle:
        raise lines.error(("cluster", "processing"), f"mpiexec started rank {idle[0]}, which "
                          "has no role: list it here or start fewer ranks")
    order = cluster.order(size)
    missing = sorted(set(cluster.processing_ranks(size)) - set(order))
    if missing:
        raise lines.error(("cluster", "ordering"), f"processing rank {missing[0]} never gets "
                          "a frame: add it to the ordering")
