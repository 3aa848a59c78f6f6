"""The sim's `nice` option (issue 13, acceptance 6(b)): a real IOC whose config says
`options: {nice: 7}` runs the thread that makes the sim's frames at nice 7 -- that thread only,
as `ps -L` shows it -- while frames keep flowing to a CA client; a nice outside 0..19 is one line
naming the key."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from conftest import running_ioc
from test_acquisition import get, put, wait_for
from test_rewire_and_errors import run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="thread priorities are set on Linux only")

CONFIG = textwrap.dedent("""
    drivers:
      - type: sim
        port: SIM1
        prefix: "cam1:"
        options: {max_size_x: 64, max_size_y: 64, data_type: UInt16, nice: 7}
    plugins:
      - {type: stdarrays, port: Image1, prefix: "image1:", input: SIM1,
         options: {data_type: Int16, nelm: 4096}}
    """)


def threads(pid: int) -> dict[int, tuple[int, int]]:
    """{thread id: (nice, CPU ticks)} of a process's threads, from /proc as ps -L reads it."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        # fields[0] is stat's field 3 (state): utime 14, stime 15, nice 19
        out[int(task.name)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return out


def test_nice_option_lowers_the_sim_thread_only(tmp_path):
    with running_ioc(CONFIG, tmp_path) as ioc:
        p, pid = ioc.prefix, ioc.proc.pid
        for name, value in (("ImageMode", "Continuous"), ("AcquireTime", 0),
                            ("AcquirePeriod", 0)):
            put(p + "cam1:" + name, value)
        put(p + "cam1:Acquire", 1, wait=False)
        assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") > 50, 20)
        before = threads(pid)
        niced = [tid for tid, (nice, _) in before.items() if nice == 7]
        assert len(niced) == 1, before
        assert niced[0] != pid, "the IOC's main thread was niced"
        assert all(nice == 0 for tid, (nice, _) in before.items() if tid != niced[0]), before
        images = get(p + "image1:ArrayCounter_RBV")
        assert wait_for(lambda: get(p + "image1:ArrayCounter_RBV") > images + 50, 20)
        after = threads(pid)
        assert after[niced[0]][1] > before[niced[0]][1], "the niced thread made no frames"
        put(p + "cam1:Acquire", 0)
        put(p + "cam1:ImageMode", "Single")
        put(p + "cam1:Acquire", 1)  # a second acquisition: same thread, same nice, no warning
        assert threads(pid)[niced[0]][0] == 7
        assert "nice" not in get(p + "cam1:StatusMessage_RBV", as_string=True)
        assert "nice" not in ioc.log()


@pytest.mark.parametrize("value", ["20", "-1", "low"])
def test_bad_nice_names_the_key(tmp_path, value):
    bad = tmp_path / "bad.yml"
    bad.write_text(f"drivers:\n  - type: sim\n    port: SIM1\n    options: {{nice: {value}}}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 4: drivers[0].options.nice: " in lines[0], result.stderr
    assert "Traceback" not in result.stderr
