"""Acceptance 5 and 6: run-time rewiring, and bad input answered without a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import epics
import pytest

from conftest import CA_ENV, NDFLOW, unique_prefix
from test_acquisition import get, put, wait_for

TWO_CAMERAS = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 64, max_size_y: 48}}
  - {type: sim, port: SIM2, prefix: "cam2:", options: {max_size_x: 32, max_size_y: 16}}
plugins:
  - {type: stdarrays, port: Image1, prefix: "image1:", input: SIM1, options: {nelm: 10000}}
"""


def acquire_one(p: str, cam: str) -> None:
    put(p + cam + "ImageMode", "Single")
    put(p + cam + "WaitForPlugins", "Yes")
    put(p + cam + "Acquire", 1)


def test_rewiring_moves_the_plugin_and_refuses_unknown_ports(start_ioc):
    p = unique_prefix()
    ioc = start_ioc(TWO_CAMERAS, prefix=p)
    acquire_one(p, "cam1:")
    assert get(p + "image1:ArraySize0_RBV") == 64
    put(p + "image1:NDArrayPort", "SIM2")
    assert wait_for(lambda: get(p + "image1:NDArrayPort_RBV") == "SIM2")
    acquire_one(p, "cam2:")
    assert get(p + "image1:ArraySize0_RBV") == 32
    counter = get(p + "image1:ArrayCounter_RBV")
    acquire_one(p, "cam1:")  # no longer connected to SIM1
    time.sleep(0.2)
    assert get(p + "image1:ArrayCounter_RBV") == counter

    put(p + "image1:NDArrayPort", "NOPE")
    assert wait_for(lambda: "NOPE" in get(p + "image1:StatusMessage_RBV", as_string=True))
    message = get(p + "image1:StatusMessage_RBV", as_string=True)
    assert "no port named 'NOPE'" in message and "SIM2" in message
    assert get(p + "image1:NDArrayPort_RBV") == "SIM2"
    assert get(p + "image1:NDArrayPort", use_monitor=False) == "SIM2"  # setpoint reverted
    put(p + "image1:NDArrayPort", "Image1")  # itself: a loop
    assert wait_for(lambda: "loop" in get(p + "image1:StatusMessage_RBV", as_string=True))
    acquire_one(p, "cam2:")
    assert get(p + "image1:ArrayCounter_RBV") == counter + 1  # still wired to SIM2
    assert "Traceback" not in ioc.log()


def test_bad_puts_get_errors_or_clamps_and_the_ioc_keeps_serving(start_ioc):
    p = unique_prefix()
    ioc = start_ioc(TWO_CAMERAS, prefix=p)
    # out of range: clamped like a DRVL, readback shows the value used
    put(p + "cam1:BinX", 0)
    assert get(p + "cam1:BinX_RBV") == 1
    put(p + "cam1:AcquireTime", -5)
    assert get(p + "cam1:AcquireTime_RBV") == 0.0
    # wrong type: a CA error, value unchanged (sent with caproto's client: pyepics refuses locally)
    from caproto import CaprotoError, ChannelType
    from caproto.sync.client import write as ca_write
    put(p + "cam1:Gain", 2.5)
    with pytest.raises(CaprotoError):
        ca_write(p + "cam1:Gain", "not a number", data_type=ChannelType.STRING, notify=True,
                 timeout=5)
    assert get(p + "cam1:Gain_RBV") == 2.5
    # invalid enum index: refused
    mode = epics.PV(p + "cam1:ImageMode")
    assert mode.wait_for_connection(5)
    try:
        mode.put(7, wait=True, timeout=5)
    except Exception:
        pass
    assert get(p + "cam1:ImageMode_RBV", as_string=True) in ("Single", "Multiple", "Continuous")
    # 10 kB into a 40-character string PV and into a 256-character text PV: truncated
    # (pyepics refuses to send >40 bytes as DBR_STRING; caproto's client sends them as CHAR[])
    ca_write(p + "image1:NDArrayPort", [ord("X")] * 10_000, data_type=ChannelType.CHAR,
             notify=True, timeout=5)
    assert get(p + "image1:NDArrayPort", use_monitor=False) == "SIM1"  # 39 X's: no such port
    assert "XXXXXXXX" in get(p + "image1:StatusMessage_RBV", as_string=True)
    epics.caput(p + "cam1:NDAttributesMacros", "Y" * 10_000, wait=True, timeout=5)
    stored = get(p + "cam1:NDAttributesMacros", as_string=True, use_monitor=False)
    assert set(stored) == {"Y"} and len(stored) <= 255
    # read-only PVs refuse writes
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        epics.caput(p + "cam1:DetectorState_RBV", 3, wait=True, timeout=2)
    # still serving, and every rejection was one line in the log
    acquire_one(p, "cam1:")
    assert get(p + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    log = ioc.log()
    assert "Traceback" not in log
    assert "BinX: 0 below minimum, clamped to 1" in log
    assert "cam1:Gain: put refused" in log
    assert "cam1:ImageMode: put refused" in log
    assert "Invalid write request" not in log


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(NDFLOW + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **CA_ENV})


def test_config_errors_name_the_key_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("drivers:\n  - type: sim\n    port: SIM1\n    colour: red\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ndflow: {bad} line 4: drivers[0].colour: unknown key"]

    bad.write_text("drivers:\n  - {type: sim, port: SIM1}\nplugins:\n"
                   "  - {type: stdarrays, port: I1, prefix: 'image1:', input: SIM9}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    assert "line 4: plugins[0].input: no port named 'SIM9'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    bad.write_text("drivers:\n  - {type: sim, port: SIM1, options: {max_size_x: big}}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2 and "drivers[0].options.max_size_x" in result.stderr

    bad.write_text("drivers:\n  - {type: camera9000, port: SIM1}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2 and "unknown driver type 'camera9000'" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("run", str(tmp_path / "missing.yml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr


def test_list_pvs_matches_adcore_names():
    result = run_cli("run", "--list-pvs", "--prefix", "XX:")
    assert result.returncode == 0
    names = set(result.stdout.split())
    for required in ("XX:cam1:Acquire", "XX:cam1:Acquire_RBV", "XX:cam1:DetectorState_RBV",
                     "XX:cam1:WaitForPlugins", "XX:cam1:SimMode_RBV", "XX:cam1:PeakWidthX",
                     "XX:image1:ArrayData", "XX:image1:NDArrayPort_RBV",
                     "XX:image1:PluginType_RBV", "XX:image1:ArraySize0"):
        assert required in names
    assert "XX:cam1:WaitForPlugins_RBV" not in names  # ADCore has no readback for it


def test_sigterm_and_ctrl_c_shut_down_cleanly(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        prefix = unique_prefix()
        proc = subprocess.Popen(NDFLOW + ["run", "--prefix", prefix], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **CA_ENV,
                                     "EPICS_CA_SERVER_PORT": os.environ["EPICS_CA_SERVER_PORT"]})
        deadline = time.monotonic() + 20
        # caget takes the connection's time off `timeout`: a short connection_timeout, not a
        # short timeout (that went negative while the IOC started: a warning per try)
        while time.monotonic() < deadline and epics.caget(
                prefix + "cam1:Acquire_RBV", timeout=5, connection_timeout=0.5) is None:
            pass
        put(prefix + "cam1:ImageMode", "Continuous")
        put(prefix + "cam1:Acquire", 1, wait=False)
        time.sleep(0.3)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        assert "shut down" in out


SLOW_TO_LOAD = '''
import time

from ndflow.algorithm import Algorithm, Output

time.sleep(60)  # the IOC is stopped while it waits for this algorithm to load


class SlowToLoad(Algorithm):
    count = Output(int)

    def process(self, image, params, attributes, metadata):
        return {"count": 1}
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_ioc_starts_is_one_line_and_leaves_no_child(tmp_path, sig):
    """Ctrl-C or SIGTERM while the IOC is still starting (an algorithm loading): one line,
    the shell's status for the signal, and the algorithm's child gone with it. Before, Ctrl-C
    printed a KeyboardInterrupt traceback."""
    import psutil

    (tmp_path / "slow_to_load.py").write_text(SLOW_TO_LOAD)
    config = tmp_path / "ioc.yml"
    config.write_text(f"algorithm_folders: ['{tmp_path}']\n"
                      "drivers:\n  - {type: sim, port: SIM1, prefix: 'cam1:'}\n"
                      "plugins:\n  - {type: python, port: PY1, prefix: 'Py1:', input: SIM1, "
                      "options: {file: slow_to_load.py, start_timeout_s: 120}}\n")
    # started as pytest-xdist starts it, SIGINT ignored (inherited): ndflow must not care
    proc = subprocess.Popen(NDFLOW + ["run", str(config), "--prefix", unique_prefix()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **CA_ENV},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        ioc = psutil.Process(proc.pid)
        assert wait_for(lambda: ioc.children(), timeout=30), "the algorithm's child never started"
        child = ioc.children()[0]
        time.sleep(0.5)  # the IOC waits for the child's declarations
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:  # never left behind to serve later on this worker's CA port
        if proc.poll() is None:
            for process in [*psutil.Process(proc.pid).children(recursive=True)]:
                process.kill()
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, out
    assert f"ndflow: stopped by {signal.Signals(sig).name} before it served" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert wait_for(lambda: not child.is_running() or
                    child.status() == psutil.STATUS_ZOMBIE, timeout=10)
