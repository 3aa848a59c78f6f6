"""ndflow.pva.pvxs_send: PVXS sends a large value in large pieces, and the same bytes arrive.

- The two stubs of machine code do what they say: called through ctypes with a Python function
  as their target, they pass the first argument unchanged and the second raised to the minimum
  (reservations) or lowered to the maximum (single writes), unsigned, edges included.
- In a server process of its own (the patch is per process), `apply` redirects exactly
  libpvxs's two slots to the stubs and says so, and `batch_sender` puts the server's one PVXTCP
  thread under SCHED_BATCH; NDFLOW_PVXS_SEND=0 leaves both alone.
- A patched server sends arrays of many sizes and every element type, and scalars, to a
  client that reads them back equal; a put from a patched client arrives equal too.
- It is what makes the difference: a patched server writes a 16 MiB value in a quarter of the
  write() calls of an unpatched one (counted by the kernel in /proc/PID/io: one per writev), where
  libevent's 16 KiB limit alone meant 1024.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ndflow.pva import pvxs_send

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or
                                os.uname().machine != "x86_64",
                                reason="the patch applies on Linux x86-64 only")

PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
U64 = (1 << 64) - 1


def test_stubs_adjust_the_second_argument_and_pass_the_first() -> None:
    seen: list[tuple[int, int]] = []
    target = PROTO(lambda first, second: seen.append((first, second)) or 42)
    address = ctypes.cast(target, ctypes.c_void_p).value
    stubs = pvxs_send.Stubs([pvxs_send.at_least(16384, address),
                             pvxs_send.at_most(pvxs_send.SSIZE_MAX, address)])
    at_least, at_most = PROTO(stubs.address(0)), PROTO(stubs.address(1))
    for size in (0, 1, 16383, 16384, 16385, 1 << 40, U64):
        assert at_least(7, size) == 42
    assert seen == [(7, 16384)] * 4 + [(7, 16385), (7, 1 << 40), (7, U64)]
    seen.clear()
    for size in (0, 1, pvxs_send.SSIZE_MAX, pvxs_send.SSIZE_MAX + 1, U64):
        assert at_most(9, size) == 42
    assert seen == [(9, 0), (9, 1)] + [(9, pvxs_send.SSIZE_MAX)] * 3


SERVER = textwrap.dedent("""
    import json, os, sys, ctypes
    import numpy as np
    from p4p import Value
    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV
    from ndflow.pva import pvxs_send
    said = pvxs_send.apply()
    slots = {}
    pvxs = pvxs_send.mapped("libpvxs.so")
    found = pvxs_send.plt_slots(pvxs[0], pvxs[1], (pvxs_send.RESERVE, pvxs_send.MAX_WRITE))
    stubs = pvxs_send._kept.get("stubs")
    for name, slot in found.items():
        now = ctypes.c_void_p.from_address(slot.address).value
        slots[name] = bool(stubs) and stubs.base <= now < stubs.base + 4096
    pvs = {"big": SharedPV(nt=NTScalar("aB"), initial=np.zeros(1, np.uint8)),
           "put": SharedPV(nt=NTScalar("ad"), initial=np.zeros(1))}

    @pvs["put"].put
    def on_put(pv, op):
        pv.post(op.value())
        op.done()

    server = Server(providers=[pvs], useenv=False,
                    conf={"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
                          "EPICS_PVAS_SERVER_PORT": "0", "EPICS_PVAS_BROADCAST_PORT": "0",
                          "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO"})
    batched = pvxs_send.batch_sender()
    policies = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "PVXTCP":
                policies.append(os.sched_getscheduler(int(tid)) == os.SCHED_BATCH)
    print(json.dumps({"said": said, "slots": slots, "pid": os.getpid(), "batched": batched,
                      "sender_batch": policies,
                      "port": server.conf()["EPICS_PVAS_SERVER_PORT"]}), flush=True)
    for line in sys.stdin:  # "<dtype> <n>": post that array (arange, wrapped), then say so
        dtype, n = line.split()
        pvs["big"].close()
        pvs["big"].open(np.arange(int(n)).astype(dtype), nt=NTScalar(
            {"u1": "aB", "i1": "ab", "u2": "aH", "i2": "ah", "u4": "aI", "i4": "ai",
             "u8": "aL", "i8": "al", "f4": "af", "f8": "ad"}[np.dtype(dtype).str[1:]]))
        print("posted", flush=True)
""")


class ServerProcess:
    """A p4p server in a child process, patched or not; this process reads it as a client."""

    def __init__(self, patched: bool) -> None:
        env = {**os.environ, "NDFLOW_PVXS_SEND": "1" if patched else "0"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())
        from p4p.client.thread import Context
        self.ctxt = Context("pva", nt=False, useenv=False,
                            conf={"EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{self.info['port']}",
                                  "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": ""})

    def post(self, dtype: str, n: int) -> None:
        self.proc.stdin.write(f"{dtype} {n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "posted"

    def get(self, name: str) -> np.ndarray:
        return self.ctxt.get(name, timeout=20)["value"]

    def writes(self) -> int:
        with open(f"/proc/{self.info['pid']}/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("syscw:"))

    def close(self) -> None:
        self.ctxt.close()
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def patched():
    server = ServerProcess(patched=True)
    yield server
    server.close()


def test_apply_redirects_the_two_slots_and_the_switch_leaves_them(patched) -> None:
    assert patched.info["said"].startswith("applied"), patched.info["said"]
    assert patched.info["slots"] == {pvxs_send.RESERVE: True, pvxs_send.MAX_WRITE: True}
    assert patched.info["sender_batch"] == [True], patched.info["batched"]
    alone = ServerProcess(patched=False)
    try:
        assert alone.info["said"] == "left alone (NDFLOW_PVXS_SEND=0)"
        assert alone.info["slots"] == {pvxs_send.RESERVE: False, pvxs_send.MAX_WRITE: False}
        assert alone.info["sender_batch"] == [False]
    finally:
        alone.close()


@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"])
def test_a_patched_server_sends_every_type_equal(patched, dtype: str) -> None:
    for n in (0, 1, 1023, 16383, 16384 + 7, 300_001):
        patched.post(dtype, n)
        got = patched.get("big")
        expected = np.arange(n).astype(dtype)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (dtype, n)


def test_a_16_mib_value_and_a_put_arrive_equal(patched) -> None:
    n = 16 * 1024 * 1024 + 3
    patched.post("u1", n)
    assert np.array_equal(patched.get("big"), np.arange(n).astype("u1"))
    values = np.linspace(-1.0, 1.0, 200_000)
    patched.ctxt.put("put", values, timeout=20, wait=True)
    assert np.array_equal(patched.get("put"), values)


def test_a_patched_server_writes_a_large_value_in_few_calls(patched) -> None:
    alone = ServerProcess(patched=False)
    try:
        counts = {}
        for name, server in (("patched", patched), ("alone", alone)):
            server.post("u1", 16 * 1024 * 1024)
            server.get("big")  # connected, the first copy sent
            time.sleep(0.2)
            before = server.writes()
            assert server.get("big").size == 16 * 1024 * 1024
            counts[name] = server.writes() - before
        assert counts["alone"] >= 1000, counts  # 16 KiB at a time: what the patch is for
        assert counts["patched"] * 4 <= counts["alone"], counts
    finally:
        alone.close()
