"""SIGINT/SIGTERM end a served IOC: they cancel its main task, once.

asyncio's `loop.close()` closes its self-pipe *before* it removes its signal handlers, so a
signal landing in between makes the C handler write to a closed wakeup fd and print "Exception
ignored ... OSError: [Errno 9] Bad file descriptor" with a traceback. A second SIGTERM there is
ordinary: mpiexec forwards the one it gets to every rank, and again while it tears down.
`release()` hands the signals back before the loop closes. What runs after it is asyncio's own
teardown (every ndflow resource is closed by then), so a repeated signal at that point ends the
process at once, with status 0: the shutdown asked for is done.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cancel_on_stop_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> Callable[[], None]:
    """Make SIGINT and SIGTERM cancel `task`; return the function that hands them back."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)

    def release() -> None:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)  # the last removal also clears the wakeup fd
            signal.signal(sig, _leave_now)

    return release


def _leave_now(signum: int, frame: object) -> None:
    os._exit(0)
