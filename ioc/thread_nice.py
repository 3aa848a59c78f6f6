"""Lower the CPU priority of the calling thread (Linux), for producers that may yield.

Why: a free-running simulated detector makes frames as fast as a core allows; on a small host
that also runs the CA server's threads and the clients, those frames take CPU the server needs
to send the frames the clients do receive. A nice value on the producing thread alone (Linux
schedules threads as tasks: setpriority on a thread id changes that thread only) lets the
scheduler prefer the rest of the IOC without slowing it.
"""

from __future__ import annotations

import os
import sys
import threading

MAX_NICE = 19


def nice_current_thread(value: int) -> str:
    """Set this thread's nice value to `value` (0..19); the empty string when done, else why
    not (another platform, or the OS refused: lowering a raised value needs privileges)."""
    if not 0 <= value <= MAX_NICE:
        return f"nice {value}: 0 to {MAX_NICE}"
    if not sys.platform.startswith("linux"):
        return f"nice {value}: thread priorities are set on Linux only"
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, value)
    except OSError as exc:
        return f"nice {value}: {exc.strerror}"
    return ""
