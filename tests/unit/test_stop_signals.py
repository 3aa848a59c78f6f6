"""A stop signal that lands while asyncio closes its loop ends the process quietly.

mpiexec forwards SIGTERM to every rank, and again while it tears down; CI once caught the
second one between asyncio closing its self-pipe and removing its handlers, which printed
"Exception ignored ... Bad file descriptor" with a traceback into the IOC's log."""

from __future__ import annotations

import subprocess
import sys

# the loop sends itself that second SIGTERM inside asyncio's window, every time
SCRIPT = """
import asyncio, os, signal
from ndflow.stop_signals import cancel_on_stop_signals

class Loop(asyncio.SelectorEventLoop):
    def _close_self_pipe(self):
        super()._close_self_pipe()
        os.kill(os.getpid(), signal.SIGTERM)

async def serve():
    release = cancel_on_stop_signals(asyncio.get_running_loop(), asyncio.current_task())
    try:
        await asyncio.sleep(0.01)
    finally:
        release()

loop = Loop()
loop.run_until_complete(serve())
loop.close()
"""


def test_a_repeated_stop_signal_while_the_loop_closes_is_not_a_traceback():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_stop_signal_while_serving_cancels_the_task():
    script = """
import asyncio, os, signal
from ndflow.stop_signals import cancel_on_stop_signals

async def serve():
    release = cancel_on_stop_signals(asyncio.get_running_loop(), asyncio.current_task())
    try:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("cancelled")
    finally:
        release()

asyncio.run(serve())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "cancelled", done.stderr
