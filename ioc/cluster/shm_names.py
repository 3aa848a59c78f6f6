"""MPICH's shared-memory segment of a host loses its name once every rank of the host has it.

Why: MPICH (ch4, POSIX shared memory) opens one segment per job and host by name,
``/dev/shm/mpich_shm_<world>_<node>``, and removes the name only in MPI_Finalize. A job whose
ranks never get there leaves the file behind, and with it its memory (/dev/shm is RAM), for as
long as the host runs: a rank killed or crashed, after which hydra SIGKILLs the others, or a
rank whose MPI_Finalize failed (ndflow.cluster._finalize says how a stop did that). 3 of 4 stops
of a 5-rank test IOC left a 5 MB file; 28 such files (100 MB) had piled up from test runs.

Once every rank of the host has mapped the segment, its name serves nobody: MPICH's bootstrap
of COMM_WORLD waits until every rank of the host has opened it, so after a barrier of
COMM_WORLD each rank may remove the name. The mappings keep the memory, which the kernel frees
when the last rank unmaps it or dies, however it dies. MPICH's own removal at finalize then
finds no name, which it ignores (MPL_initshm_freeall does not check shm_unlink).

Only segments this process has mapped (/proc/self/maps) are touched, so another job's files
are never removed. Elsewhere than Linux, nothing is done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("ndflow.cluster")

SHM_DIR = "/dev/shm/"
#: MPICH's names: the job's segment of one host, and its per-VCI one (more than one VCI)
PREFIXES = ("mpich_shm_", "mpich_vci_")
DELETED = " (deleted)"


def mapped_segments(maps: str) -> list[str]:
    """The paths of MPICH's named segments in a /proc/<pid>/maps text that still have their
    name (a removed one shows " (deleted)"), each once, in order."""
    found: list[str] = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue  # an anonymous mapping
        path = fields[5]
        if path.endswith(DELETED) or not path.startswith(SHM_DIR):
            continue
        if path[len(SHM_DIR):].startswith(PREFIXES) and path not in found:
            found.append(path)
    return found


def unlink_mapped(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """Remove the names of the MPICH segments this process maps (call it once every rank of
    the host has opened them: after a barrier of COMM_WORLD). Returns the names it removed;
    another rank of the host may have removed them first."""
    try:
        text = maps.read_text()
    except OSError:  # not Linux
        return []
    removed = []
    for path in mapped_segments(text):
        try:
            os.unlink(path)
        except FileNotFoundError:  # another rank of this host was first
            continue
        except OSError as exc:  # left to MPI_Finalize, as before
            log.warning("cannot remove the name of MPICH's shared memory %s: %s", path,
                        exc.strerror)
            continue
        removed.append(path)
    return removed
