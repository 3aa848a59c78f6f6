"""Scale-out on MPI: `mpiexec -n N ndflow run CONFIG` is one IOC made of N ranks.

Design (DESIGN.md §6; Lima2's MPI layout, `reference/lima2.md`):

- **Same IOC everywhere.** Every rank builds the same IOC from the same config, so every port,
  parameter and default exists on every rank. Only the *control* rank serves transports
  (CA/PVA): clients see one IOC with the names of a single-process one. The `cluster:` section
  (`ndflow.cluster.config`) gives the roles: the control rank (PVs, run state, master file),
  the *acquisition* ranks (each runs the driver; the control rank may be one) and the
  *processing* ranks (the plugin graph). A rank may hold several roles (acquisition with
  processing: its own frames go into its own plugin graph, no MPI hop). Without the section
  nothing here is imported, nor is mpi4py; with one rank the plain IOC runs.
- **Shared whole frames.** With several acquisition ranks and a driver without modules, rank i
  of M makes frames i, i+M, ... of each acquisition, numbered and (the sim) computed as one
  process would, each rank paced at M x AcquirePeriod (`numbering`); the control rank's driver
  shows the highest uniqueId and the summed NumImagesCounter.
- **Modules (partial frames).** With several acquisition ranks and a driver of several
  modules, each produces one detector module (module m = `acquisition[m]`; the sim's
  `modules: [X, Y]` grid), and a module's frames go to the processing ranks in charge of it
  (`module_ranks`, or by default the acquisition rank itself when it also processes, else a
  round-robin share of the others). With
  `assemble` a processing rank rebuilds whole frames from the modules before its plugins
  (`assembly`), each tile placed by its recorded offset, dims and transform the whole frame's.
- **Puts mirrored.** A put accepted on the control rank's plugin is sent, in order, to the same
  plugin on every processing rank, and a put on its driver to every other acquisition rank;
  each applies it through its own `handle_put` (the same validation and hooks). Acquire=1 is
  not mirrored: the control rank's acquisition is started on the acquisition ranks by START,
  with its id. Two values are per rank: a file writer's FileName gets `_r<rank>` (each rank
  writes its own file) and NumCapture is 0 there (the control rank ends the capture when the
  total over ranks is reached).
- **Frames dispatched.** On each acquisition rank the driver's delivery is replaced by the
  dispatcher (`acquisition`): each frame goes whole to one of its processing ranks, strict round
  robin over an ordering or by credit (least busy first), as a small pickled header and its
  pixel buffer with the uppercase (buffer) API (`wire`, `link`); between ranks of one host
  in one copy where the kernel allows it (MPICH's CMA, `single_copy`). On the processing rank
  (`processing`) the frame enters the plugin graph through the driver's port, as if that rank's
  driver had made it. Frames of one acquisition carry its id; the rank keeps a copy of the
  acquisition so its plugins and files record it as in one process.
- **Order and completeness.** Per acquisition rank (module), a lookup table records frame ->
  (rank, local index) and a reorder stage gives the contiguous prefix in unique-id order
  (`control`); it learns where frames went from the dispatcher (directly on the control rank,
  else DISPATCHED notes) and what arrived from the processing ranks' acknowledgements; a frame
  not acknowledged within `window_s` becomes a missing frame (timeout, naming the rank) on the
  acquisition. A frame the dispatcher cannot place within the window (every rank full) is sent
  as a placeholder (dropped, with its cause), so the rank's sinks record it in its place.
- **One IOC to clients.** Other ranks report their changed values every `report_interval_s`;
  the control rank's plugins show the aggregate (sum of counts and rates, mean of times, the
  latest frame's status values) and each rank's own values under `$(P)R<rank>:<plugin prefix>`
  (`views`); its driver shows the first acquisition rank's counters. Acquire's put-completion
  with WaitForPlugins=Yes waits for every rank: each processing rank holds the acquisition's
  in-flight count until it reports the acquisition's frames have left its plugins (DRAINED),
  and the acquisition is over when every acquisition rank said so (ACQ_DONE).
- **Files.** Each processing rank's writer writes its own file; when a capture ends the control
  rank writes the master HDF5 file named by its own FilePath/FileName/FileTemplate: a virtual
  dataset in global order over the rank files (for modules: the whole detector image, each
  module's tile at its recorded offset), the NDAttributes and the missing rows (`capture`,
  `master`). Its FullFileName_RBV names the master, so ophyd-async's stream resource does.
- **Threads.** Every MPI call is made in one thread per rank (`link.Link`; needs
  MPI_THREAD_SERIALIZED); the event loop only queues messages. On a processing rank a feeder
  thread hands received frames to the plugins, so a blocking plugin never stalls MPI.

Modules: `control` (the control rank), `runs` (its acquisitions), `watch` (silent ranks),
`numbering` (shared whole frames), `capture` (the master capture), `worker` (any other rank:
its roles behind one link), `acquisition`, `processing`, `assembly`, `mirror` (puts applied, values
reported), `common` (what they share), `dispatch` (pure rules), `wire`, `link`, `views`,
`master`, `config`, `single_copy` (CMA), `shm_names` (MPICH's shared memory outlives no job).

What MPI does not give: a rank that dies takes the job down (hydra, MPICH's mpiexec, ends
every rank); a rank that stops answering (stopped, hung) is not noticed by MPICH, its messages
just wait: the control rank finds it by its silence (`watch`: every rank reports at least every
`report_interval_s`), lists it on `Cluster:SilentRanks_RBV`, and makes its frames missing with
the cause: a processing rank's outstanding ones at once, an acquisition rank's owed ones as
the others make theirs (`runs`: sent as placeholders so every sink records their rows; the driver
shows Error), but it cannot be replaced while the job runs. If it answers again it leaves the
list, and what it still sends for that acquisition is dropped, counted late. User algorithms
still run in supervised children inside each rank, so their crashes never reach MPI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ..stop_signals import cancel_on_stop_signals
from .config import ClusterConfig, check_modules, check_roles

__all__ = ["ClusterConfig", "check_roles", "launched_size", "run"]

#: at shutdown, how long a rank waits for the others to have shut down (their files closed)
SHUTDOWN_WAIT_S = 10.0


def _driver(ioc: Any) -> Any:
    """The IOC's driver (None without one)."""
    from ..driver import Driver
    return next((c for c in ioc.components if isinstance(c, Driver)), None)


def _module_grid(driver: Any) -> tuple[int, int]:
    """The driver's detector-module grid (the sim's `modules` option); (1, 1) for a driver
    without modules."""
    return tuple(getattr(driver, "module_grid", (1, 1)))  # type: ignore[return-value]


def _configured_modules(config: Any) -> int:
    """The first driver's module count as its options say (the sim's `modules`), so the
    roles are checked for module or shared whole frames before the IOC is built."""
    drivers = getattr(config, "drivers", None) or []
    grid = drivers[0].options.get("modules") if drivers else None
    try:
        return int(grid[0]) * int(grid[1]) if grid else 1
    except (TypeError, ValueError, IndexError):
        return 1  # the driver's own options check says what is wrong


def launched_size() -> int:
    """The number of ranks the MPI launcher started, from its environment (no MPI import):
    1 when not started by a launcher."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def run(config: Any, lines: Any, make_ioc: Any, write_screens: Any) -> int:
    """Serve this rank's part of the IOC until stopped (`ndflow run` under mpiexec).
    `make_ioc(transports)` builds the IOC; raises ConfigError for a bad cluster section."""
    from . import shm_names, single_copy

    cma = single_copy.enable()  # before MPI starts: frames between ranks of one host in one copy
    from mpi4py import MPI

    from .control import ControlNode

    world = MPI.COMM_WORLD
    world.Barrier()  # every rank of each host has MPICH's shared memory open:
    shm_names.unlink_mapped()  # its name is not needed, and would outlive a killed job
    comm = world.Dup()  # the IOC's traffic, never freed (see _finalize)
    rank, size = comm.Get_rank(), comm.Get_size()
    cluster: ClusterConfig = config.cluster
    cluster.set_modules(_configured_modules(config))  # checked against the driver below
    check_roles(cluster, size, lines)
    _tag_logs(rank)
    control = rank == cluster.control
    if control and not cma:
        logging.getLogger("ndflow.cluster").warning(
            "MPICH's single-copy transfers (CMA) are off (%s): large frames between ranks on "
            "one host move slowly; allow ptrace between the ranks (kernel.yama.ptrace_scope=0) "
            "or place them on separate hosts", "MPIR_CVAR_CH4_CMA_ENABLE=0"
            if single_copy.VARIABLE in os.environ else "ptrace between processes is refused")
    ioc = make_ioc(None if control else [])  # only the control rank serves transports
    try:
        driver = _driver(ioc)
        check_modules(cluster, _module_grid(driver), lines, driver)
    except Exception:
        ioc.shutdown()  # algorithm children started while it was built
        raise
    node: Any = None
    if control:
        node = ControlNode(ioc, cluster, comm)
        node.install()
        write_screens(ioc)
    try:
        return asyncio.run(_serve(ioc, node, cluster, comm, control))
    finally:
        everyone = _every_rank_stopped(comm)
        if control and node is not None:
            if not everyone:
                logging.getLogger("ndflow.cluster").warning(
                    "not every rank shut down within %g s: a master file written now holds "
                    "what their files hold so far", SHUTDOWN_WAIT_S)
            node.write_masters_at_shutdown()
        _finalize(MPI)


def _every_rank_stopped(comm: Any) -> bool:
    """Wait until every rank has shut its IOC down (its files closed), at most
    SHUTDOWN_WAIT_S (a rank stopped or gone never comes). Called by every rank once its MPI
    thread has ended; a non-blocking barrier, on the IOC's communicator."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _finalize(MPI: Any) -> None:
    """End MPI once the rank's MPI thread has stopped.

    Why here and on a communicator of our own: a stop reaches the ranks at slightly different
    times, so a rank's MPI thread may end while another still sends to it (a value report, a
    frame). MPI_Finalize refuses to free COMM_WORLD with an unmatched message in it, and returns
    before telling the process manager the rank has finished; hydra then takes the rank's exit
    for a crash and SIGKILLs every other rank ("BAD TERMINATION ... Killed (signal 9)", exit
    code 9; 13 of 20 Ctrl-C stops during an acquisition did so). The IOC's messages go over a
    duplicate of COMM_WORLD that is never freed, so what was still on its way when the ranks
    stopped is dropped with it. mpi4py's own finalize at exit hid the error; this one says it."""
    try:
        MPI.Finalize()
    except Exception as exc:
        logging.getLogger("ndflow.cluster").error("MPI_Finalize failed: %s",
                                                  " ".join(str(exc).split()))


async def _serve(ioc: Any, node: Any, cluster: ClusterConfig, comm: Any, control: bool) -> int:
    from .worker import WorkerNode

    log = logging.getLogger("ndflow.cluster")
    loop = asyncio.get_running_loop()
    release = cancel_on_stop_signals(loop, asyncio.current_task())
    if not control:
        node = WorkerNode(ioc, cluster, comm, loop)
        node.install()
    runner = asyncio.create_task(ioc.run(serve=control))
    try:
        if control:
            log.info("control rank of %d: acquisition ranks %s, processing ranks %s, %s "
                     "dispatch", comm.Get_size(), cluster.acquisition, node.workers,
                     cluster.dispatch)
            await runner
        else:
            stopped = asyncio.create_task(node.stopped.wait())
            await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        log.info("shut down")
    finally:
        try:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            node.stop()
        finally:
            release()
    return 0


def _tag_logs(rank: int) -> None:
    """Every log line says which rank wrote it (mpiexec merges the ranks' output)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s R{rank} %(levelname)s %(name)s: %(message)s"))
