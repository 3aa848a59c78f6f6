"""Free loopback ports, for whatever starts IOCs on 127.0.0.1: the tests, the benchmarks,
scripts. Channel Access and pvAccess each want a pair (the server port, and port+1 for CA's
repeater and beacons or PVA's searches), free for both TCP and UDP."""

from __future__ import annotations

import socket
from typing import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair(avoid: set[int] | None = None,
                   candidate: Callable[[], int] = free_port) -> int:
    """A port free for TCP and UDP on 127.0.0.1, with port+1 free too. `candidate` proposes
    ports (any free one by default; the tests give each pytest-xdist worker its own range);
    `avoid` holds ports already handed out and gets the pair returned."""
    for _ in range(200):
        port = candidate()
        if port > 65000 or (avoid is not None and (port in avoid or port + 1 in avoid)):
            continue
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", p))
        except OSError:
            continue
        if avoid is not None:
            avoid.update((port, port + 1))
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")
