"""Channel Access circuits send without Nagle's delay (TCP_NODELAY), as RSRV's do.

caproto listens on a socket made with proto 0, and asyncio sets TCP_NODELAY itself only on
sockets whose proto is IPPROTO_TCP: the connections it accepted kept Nagle's algorithm, and a
small reply written while the previous one was unacknowledged waited for the client's delayed
ACK (40 ms on Linux): every other caput(wait=True) took 40 ms instead of about 1."""

from __future__ import annotations

import asyncio
import socket

from ndflow.ca.server import _no_delay


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_circuit_accepted_from_a_proto_0_listener_gets_tcp_nodelay():
    async def main() -> tuple[int, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # as caproto makes it
        listener.bind(("127.0.0.1", 0))
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)

        server = await asyncio.start_server(on_client, sock=listener)
        reader, client = await asyncio.open_connection(*listener.getsockname())
        writer = await asyncio.wait_for(accepted, 5)
        sock = writer.transport.get_extra_info("socket")
        before = nodelay(sock)
        _no_delay(sock)
        after = nodelay(sock)
        for w in (writer, client):
            w.close()
        server.close()
        await server.wait_closed()
        return before, after

    before, after = asyncio.run(main())
    assert before == 0  # asyncio left Nagle on: why the circuit sets it
    assert after != 0
