"""EPICS access security over both transports: an ACF file decides who may write what (here WRITE
for user ndflowops from host localhost, READ for everyone else; with client_ip the HAG's names
are resolved and matched against the client's address, as asCheckClientIP), over Channel Access (libca through pyepics, and caproto's client as another user) and pvAccess (p4p)
alike; a reload changes the rights of clients already connected, without a reconnect.

libca and PVXS report the account of the process (here the test's own user); caproto's client
reports `LOGNAME`, so a caproto client in a child process plays the operator of the UAG."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import textwrap
import time

import epics
import pytest

from conftest import CA_ENV, IOCProcess, unique_prefix
from test_acquisition import get

OPERATOR = "ndflowops"
RESTRICTED = f"""
UAG(ops) {{{OPERATOR}}}
HAG(local) {{localhost}}
ASG(DEFAULT) {{
    RULE(1, READ)
    RULE(1, WRITE) {{ UAG(ops) HAG(local) }}
}}
ASG(OPEN) {{
    RULE(1, WRITE)
}}
"""
EVERYONE = """
ASG(DEFAULT) {
    RULE(1, WRITE)
}
ASG(OPEN) {
    RULE(1, WRITE)
}
"""


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acf")
    (folder / "rules.acf").write_text(RESTRICTED)
    config = textwrap.dedent(f"""
        access_security: {{file: rules.acf, client_ip: true}}
        screens_dir: ""
        drivers:
          - {{type: sim, port: SIM1, prefix: "cam1:",
             options: {{max_size_x: 64, max_size_y: 64}}}}
        plugins:
          - {{type: stats, port: STATS1, prefix: "Stats1:", input: SIM1, asg: OPEN}}
        """)
    # the config is written next to the ACF, which it names relative to itself
    process = IOCProcess(config, folder, unique_prefix())
    try:
        process.wait_ready()
        process.acf = folder / "rules.acf"
        yield process
    finally:
        process.stop()


def caproto_put_as(user: str, ioc: IOCProcess, name: str, value: object) -> str:
    """A put by caproto's threading client in a child process whose LOGNAME is `user`; returns
    what the client printed (the value read back, or the error)."""
    script = textwrap.dedent(f"""
        from caproto.threading.client import Context
        ctx = Context()
        pv, = ctx.get_pvs({name!r}, timeout=10)
        try:
            pv.write({value!r}, wait=True, timeout=10)
            print("ok", pv.read(timeout=10).data[0])
        except Exception as exc:
            print("refused", type(exc).__name__, exc)
        """)
    env = {**os.environ, **CA_ENV, "LOGNAME": user, "USER": user,
           "EPICS_CA_SERVER_PORT": str(ioc.port)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    return done.stdout.strip() or done.stderr.strip()[-400:]


def pva_put(ioc: IOCProcess, name: str, value: object) -> str:
    from p4p.client.thread import Context
    with Context("pva", nt=False) as ctx:  # the search list of conftest's CA_ENV
        try:
            ctx.put(name, value, wait=True, timeout=10)
            return "ok"
        except Exception as exc:
            return f"refused {exc}"


def test_a_user_outside_the_uag_reads_but_cannot_write_over_ca(ioc):
    name = ioc.prefix + "cam1:AcquireTime"
    pv = epics.PV(name)
    assert pv.wait_for_connection(10)
    assert pv.read_access and not pv.write_access  # told at channel creation, as by RSRV
    before = pv.get()
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        pv.put(before + 0.5, wait=True, timeout=5)  # libca refuses before sending
    assert get(name + "_RBV") == pytest.approx(before)
    # a record of another access security group (the component's asg) stays writable
    enable = epics.PV(ioc.prefix + "Stats1:EnableCallbacks")
    assert enable.wait_for_connection(10) and enable.write_access
    epics.caput(enable.pvname, 1, wait=True, timeout=5)
    assert get(ioc.prefix + "Stats1:EnableCallbacks_RBV") == 1


def test_caproto_client_refused_on_the_wire_then_the_operator_writes(ioc):
    """caproto's client sends the put whatever the rights say: the IOC refuses it (one log
    line, no traceback); the operator's put goes through."""
    name = ioc.prefix + "cam1:AcquireTime"
    assert caproto_put_as("someoneelse", ioc, name, 0.125).startswith("refused")
    assert get(name + "_RBV") != pytest.approx(0.125)
    assert f"no write access for someoneelse@" in ioc.log()
    done = caproto_put_as(OPERATOR, ioc, name, 0.125)
    assert done.startswith("ok"), done
    assert get(name + "_RBV") == pytest.approx(0.125)
    assert "Traceback" not in ioc.log()


def test_pva_puts_follow_the_same_rules(ioc):
    me = getpass.getuser()
    assert me != OPERATOR
    assert pva_put(ioc, ioc.prefix + "cam1:Gain", 3.0).startswith("refused")
    assert get(ioc.prefix + "cam1:Gain_RBV") != pytest.approx(3.0)
    assert pva_put(ioc, ioc.prefix + "Stats1:ComputeCentroid", 1) == "ok"
    assert get(ioc.prefix + "Stats1:ComputeCentroid_RBV") == 1


def test_a_reload_gives_connected_clients_their_new_rights(ioc):
    pv = epics.PV(ioc.prefix + "cam1:NumImages")
    assert pv.wait_for_connection(10) and not pv.write_access
    ioc.acf.write_text(EVERYONE)
    # IOC:ACFReload is itself ruled by the file: the operator reloads it
    done = caproto_put_as(OPERATOR, ioc, ioc.prefix + "IOC:ACFReload", 1)
    assert done.startswith("ok"), done
    deadline = time.monotonic() + 10
    while not pv.write_access and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pv.write_access, "the connected libca channel was not told its new rights"
    epics.caput(pv.pvname, 7, wait=True, timeout=5)
    assert get(ioc.prefix + "cam1:NumImages_RBV") == 7
    assert pva_put(ioc, ioc.prefix + "cam1:Gain", 2.0) == "ok"
    # and back: the rights are withdrawn from the connected client
    ioc.acf.write_text(RESTRICTED)
    assert caproto_put_as(OPERATOR, ioc, ioc.prefix + "IOC:ACFReload", 1).startswith("ok")
    deadline = time.monotonic() + 10
    while pv.write_access and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pv.write_access
    assert "groups loaded" in get(ioc.prefix + "IOC:ACFStatus_RBV", as_string=True)
