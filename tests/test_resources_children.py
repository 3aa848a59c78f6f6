"""IOC:Children_RBV and ChildrenMem_RBV count the IOC's whole process tree (children and
theirs, as an algorithm child's own subprocesses), found from /proc without scanning every
process of the host."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from ndflow.resources import Resources


def test_children_and_grandchildren_are_counted():
    # each child starts a grandchild and waits for it: two processes per tree
    trees = [subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "'import time; time.sleep(30)'])"]) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                sum(len(psutil.Process(t.pid).children()) for t in trees) < 3:
            time.sleep(0.05)
        resources = Resources([])
        resources.periodic(1.0)
        expected = len(psutil.Process().children(recursive=True))
        assert expected >= 6
        assert resources.values["Children_RBV"] == expected
        assert resources.values["ChildrenMem_RBV"] > 0
    finally:
        for tree in trees:
            for p in psutil.Process(tree.pid).children(recursive=True):
                p.kill()
            tree.kill()
            tree.wait()
