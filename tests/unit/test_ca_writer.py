"""A circuit's sender thread (ndflow.ca.writer) over a real socket pair.

It writes the batches handed to it in order and in full, waiting for a slow reader itself (an
image is megabytes; the socket takes a few hundred kB at a time), so the next image starts as
soon as the last has gone. A reader that went away is an error it keeps, not a dead thread; a
circuit that closes stops a write that waits for a reader that no longer reads."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import numpy as np
import pytest

from ndflow.ca.writer import JOIN_BELOW, CircuitWriter, parts_of, write_now


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, non-blocking, small buffers so a batch cannot fit at once; client end)."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.setblocking(False)
    return server, client


def read_exactly(sock: socket.socket, size: int, pause_s: float = 0.0) -> bytes:
    """Read `size` bytes, pausing between reads (a client slower than the server)."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if pause_s:
            time.sleep(pause_s)
    return b"".join(chunks)


def frames(count: int, nbytes: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes() for _ in range(count)]


def test_batches_arrive_whole_and_in_order_to_a_slow_reader():
    server, client = socket_pair()
    batches = frames(4, 1_000_000)  # each ~15x what the socket holds
    small = b"put-response"
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(
        read_exactly(client, 4 * 1_000_000 + len(small), pause_s=0.0005)))
    reader.start()

    async def main() -> None:
        out = CircuitWriter(os.dup(server.fileno()))
        for batch in batches:
            out.submit(parts_of([memoryview(batch)]))
        assert not out.idle  # the thread holds them: the loop goes on
        last = out.submit(parts_of([small]))
        await asyncio.wait_for(last, 30)
        assert out.idle and out.error is None
        out.close()

    asyncio.run(main())
    reader.join(30)
    assert received == [b"".join(batches) + small]
    server.close()
    client.close()


def test_a_reader_that_went_away_is_an_error_kept_not_a_dead_thread():
    server, client = socket_pair()
    client.close()

    async def main() -> CircuitWriter:
        out = CircuitWriter(os.dup(server.fileno()))
        await asyncio.wait_for(out.submit(parts_of([b"x" * 500_000])), 10)
        await asyncio.wait_for(out.submit(parts_of([b"y" * 10])), 10)  # skipped, not raised
        return out

    out = asyncio.run(main())
    assert isinstance(out.error, (BrokenPipeError, ConnectionResetError))
    out.close()
    server.close()


def test_closing_stops_a_write_waiting_for_a_reader_that_does_not_read():
    server, client = socket_pair()
    fd = os.dup(server.fileno())

    async def main() -> float:
        out = CircuitWriter(fd)
        waiting = out.submit(parts_of([b"z" * 4_000_000]))  # never read
        await asyncio.sleep(0.2)
        assert not waiting.done()  # it waits for the socket, as RSRV's send thread does
        started = time.monotonic()
        out.close()
        await asyncio.wait_for(waiting, 5)
        return time.monotonic() - started

    stopped_after = asyncio.run(main())
    assert stopped_after < 2.0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the thread closes its descriptor once it has stopped
        try:
            os.fstat(fd)
        except OSError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the sender thread did not close its descriptor")
    server.close()
    client.close()


def test_large_buffers_go_as_views_and_small_neighbours_are_joined():
    image = np.arange(100_000, dtype=">i2")
    header = b"h" * 16
    parts = parts_of([header, b"", memoryview(image), header, header])
    assert [len(p) for p in parts] == [16, image.nbytes, 32]
    assert parts[1].obj is image  # the image is not copied
    assert all(len(p) < JOIN_BELOW for p in (parts[0], parts[2]))


def test_write_now_takes_what_the_socket_takes_and_says_how_much():
    server, client = socket_pair()
    written = write_now(server.fileno(), parts_of([b"a" * 2_000_000]))
    assert 0 < written < 2_000_000  # a full socket: the rest waits, nothing raised
    assert read_exactly(client, written) == b"a" * written
    server.close()
    client.close()


def test_an_unexpected_error_in_the_thread_ends_the_circuit_not_the_wait(monkeypatch):
    """Whatever goes wrong in the sender thread, every batch handed over is resolved (a
    circuit waiting for it would hang forever) and the error is kept for the circuit."""
    from ndflow.ca import writer

    def broken(fd, parts, stop):
        raise ValueError("a bug")

    monkeypatch.setattr(writer, "write_all", broken)
    server, client = socket_pair()

    async def main() -> CircuitWriter:
        out = CircuitWriter(os.dup(server.fileno()))
        await asyncio.wait_for(out.submit(parts_of([b"x" * 10])), 5)
        await asyncio.wait_for(out.submit(parts_of([b"y" * 10])), 5)
        return out

    out = asyncio.run(main())
    assert isinstance(out.error, OSError) and "a bug" in str(out.error)
    out.close()
    server.close()
    client.close()
