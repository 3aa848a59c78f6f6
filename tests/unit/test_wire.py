"""The IOC <-> algorithm-child control protocol (ndflow.algorithm.wire) over a real
AF_UNIX SOCK_SEQPACKET socket pair: framing, numpy blobs, multi-packet messages, fd passing,
and EOF / truncation giving ChannelClosed instead of a hang."""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any, Callable

import numpy as np
import pytest

from ndflow.algorithm import wire

pytestmark = pytest.mark.timeout(20)  # a hang fails fast instead of after the suite's 120 s


@pytest.fixture
def pair():
    a, b = wire.socket_pair()
    ca, cb = wire.Channel(a), wire.Channel(b)
    yield ca, cb
    ca.close()
    cb.close()


def within(fn: Callable[[], Any], seconds: float = 2.0) -> Any:
    """Run fn in a thread; its result or exception, failing the test if it does not return."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


class Receiver:
    """Receives `n` messages in a thread started before the sender sends: a message larger than
    the socket buffer blocks send() until the peer reads."""

    def __init__(self, channel: wire.Channel, n: int = 1) -> None:
        self.got: list[Any] = []
        self.error: BaseException | None = None

        def run() -> None:
            try:
                for _ in range(n):
                    self.got.append(channel.recv())
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, seconds: float = 2.0) -> list[Any]:
        self.thread.join(seconds)
        assert not self.thread.is_alive(), f"recv did not return within {seconds} s"
        if self.error is not None:
            raise self.error
        return self.got


def roundtrip(pair, kind: bytes, header: dict | None, fds=()) -> tuple[bytes, dict, list[int]]:
    ca, cb = pair
    rx = Receiver(cb)
    ca.send(kind, header, fds)
    return rx.result()[0]


# --- each message kind ----------------------------------------------------------------------------
FRAME_HEADER = {
    "id": 17, "ts": 1.0e9 + 0.25, "ets": [1000000000, 250000000], "seg": 3, "off": 4096,
    "shape": [4, 6], "strides": [12, 2], "dtype": "<u2", "color": "Mono",
    "dims": [[6, 0, 1, False], [4, 0, 1, False]], "tf": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
    "attrs": {"Exposure": 0.1, "Name": "cam", "Flag": True, "None": None}, "new": [3],
}

MESSAGES = [
    (wire.FRAME, FRAME_HEADER),
    (wire.PARAMS, {"values": {"threshold": 10.5, "mode": 2, "label": "x"}, "initial": True}),
    (wire.RELOAD, {}),
    (wire.FORGET, {"ids": [1, 2, 3]}),
    (wire.SHUTDOWN, {}),
    (wire.DECLARE, {"declarations": [{"attr": "threshold", "direction": "in", "kind": "float",
                                      "default": 10.0, "choices": [], "low": 0, "high": None}],
                    "class": "Centroid", "loads": 1, "python": "/usr/bin/python3", "pid": 1234}),
    (wire.LOAD_ERROR, {"message": "SyntaxError: invalid syntax (a.py line 3)",
                       "traceback": "Traceback...\n  ünïcødé\n", "running": False}),
    (wire.DONE, {"id": 17, "t": 0.001, "status": "ok", "message": "", "outputs": {"cx": 1.5},
                 "attrs": {}, "remove": [], "image": {"shape": [2, 2], "dtype": "<f4",
                                                      "slot": 0}, "out_segment": 9}),
]


@pytest.mark.parametrize("kind, header", MESSAGES, ids=[k.decode() for k, _ in MESSAGES])
def test_each_kind_roundtrips(pair, kind, header):
    got_kind, got, fds = roundtrip(pair, kind, header)
    assert got_kind == kind
    assert got == header
    assert fds == []


def test_kinds_are_distinct_single_bytes():
    kinds = [k for k, _ in MESSAGES]
    assert len(set(kinds)) == len(kinds) == 8
    assert all(isinstance(k, bytes) and len(k) == 1 for k in kinds)


def test_send_without_header_gives_empty_dict(pair):
    ca, cb = pair
    ca.send(wire.RELOAD)
    assert within(cb.recv) == (wire.RELOAD, {}, [])


def test_messages_arrive_in_order_both_ways(pair):
    ca, cb = pair
    rx = Receiver(cb, 50)
    for i in range(50):
        ca.send(wire.PARAMS, {"i": i})
    cb.send(wire.DONE, {"back": True})
    assert [m[1]["i"] for m in rx.result()] == list(range(50))
    assert within(ca.recv) == (wire.DONE, {"back": True}, [])


# --- numpy values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("array", [
    np.arange(12, dtype="<u2").reshape(3, 4),
    np.arange(6, dtype=">i4").reshape(2, 3),  # byte order kept
    np.linspace(0, 1, 5, dtype="f8"),
    np.array([1 + 2j, 3 - 4j], dtype="c16"),
    np.array([True, False, True]),
    np.zeros((0, 3), dtype="f4"),  # empty
    np.array(7.5),  # 0-d
    np.arange(24, dtype="i2").reshape(4, 6)[:, ::2],  # not contiguous
    np.asfortranarray(np.arange(6, dtype="u1").reshape(2, 3)),
    np.array(["ab", "cde"]),  # fixed-width unicode
])
def test_numpy_arrays_roundtrip_as_blobs(pair, array):
    _, header, _ = roundtrip(pair, wire.DONE, {"outputs": {"a": array, "n": 1}, "b": [array]})
    for got in (header["outputs"]["a"], header["b"][0]):
        assert isinstance(got, np.ndarray)
        assert got.dtype == array.dtype and got.shape == array.shape
        assert np.array_equal(got, array)
        assert got.flags.writeable  # a copy, not a view of the receive buffer
    assert header["outputs"]["n"] == 1


def test_arrays_are_blobs_not_json_lists():
    big = np.zeros(10_000, dtype="f8")
    message = wire.encode(wire.DONE, {"a": big})
    kind, n = struct.unpack_from("<cI", message)
    assert kind == wire.DONE
    assert n < 200  # the JSON part only references the blob
    assert len(message) == 5 + n + big.nbytes


def test_numpy_scalars_sets_and_tuples(pair):
    header = {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True), "t": (1, 2),
              "s": {4}}
    _, got, _ = roundtrip(pair, wire.DONE, header)
    assert got == {"f": 0.5, "i": 3, "b": True, "t": [1, 2], "s": [4]}
    assert type(got["i"]) is int and type(got["f"]) is float


def test_unencodable_value_raises_type_error(pair):
    ca, cb = pair
    with pytest.raises(TypeError, match="object cannot be sent"):
        ca.send(wire.DONE, {"x": object()})
    ca.send(wire.DONE, {"ok": 1})  # nothing half-sent before it
    assert within(cb.recv) == (wire.DONE, {"ok": 1}, [])


def test_object_array_is_refused_at_encode():
    with pytest.raises(TypeError):
        wire.encode(wire.DONE, {"outputs": {"names": np.array(["a", None], dtype=object)}})


# --- messages over one packet ---------------------------------------------------------------------
def test_message_over_64kb(pair):
    image = np.random.default_rng(1).integers(0, 65535, (300, 400), dtype=np.uint16)  # 240 kB
    _, header, fds = roundtrip(pair, wire.DONE, {"id": 1, "image": image, "tail": "end"})
    assert np.array_equal(header["image"], image)
    assert header["tail"] == "end" and fds == []


def encoded_of_length(target: int) -> dict:
    """A header whose encoded message is exactly `target` bytes."""
    for n in range(max(target - 200, 0), target):
        header = {"a": np.zeros(n, dtype="u1")}
        if len(wire.encode(wire.DONE, header)) == target:
            return header
    raise AssertionError(f"no header encodes to {target} bytes")


@pytest.mark.parametrize("size", [
    wire.PACKET - 1, wire.PACKET, wire.PACKET + 1, 2 * wire.PACKET, 2 * wire.PACKET + 1,
    5 * wire.PACKET + 17,
])
def test_packet_boundaries(pair, size):
    header = encoded_of_length(size)
    header["a"][:] = np.arange(header["a"].size) % 251
    ca, cb = pair
    rx = Receiver(cb, 2)
    ca.send(wire.DONE, header)
    ca.send(wire.PARAMS, {"next": True})  # the following message is not swallowed
    (_, got, _), second = rx.result()
    assert np.array_equal(got["a"], header["a"])
    assert second == (wire.PARAMS, {"next": True}, [])


def test_concurrent_senders_do_not_interleave_packets(pair):
    """send() is documented safe from several threads: multi-packet messages stay whole."""
    ca, cb = pair
    per_thread, nthreads = 15, 4
    size = 3 * wire.PACKET + 100

    def sender(k: int) -> None:
        for i in range(per_thread):
            ca.send(wire.DONE, {"k": k, "i": i, "a": np.full(size, k, dtype="u1")})

    ts = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(nthreads)]
    for t in ts:
        t.start()
    seen: dict[int, list[int]] = {k: [] for k in range(nthreads)}
    for _ in range(per_thread * nthreads):
        _, h, _ = within(cb.recv)
        assert h["a"].size == size and (h["a"] == h["k"]).all()
        seen[h["k"]].append(h["i"])
    for t in ts:
        t.join(5)
    assert all(seen[k] == list(range(per_thread)) for k in seen)


# --- file descriptors -----------------------------------------------------------------------------
def _memfd(content: bytes) -> int:
    fd = os.memfd_create("wire-test")
    os.write(fd, content)
    return fd


def _read_all(fd: int) -> bytes:
    return os.pread(fd, 1 << 20, 0)


def test_memfd_passes_with_message(pair):
    fd = _memfd(b"segment 1")
    try:
        kind, header, fds = roundtrip(pair, wire.FRAME, {"seg": 1, "new": [1]}, [fd])
    finally:
        os.close(fd)
    assert kind == wire.FRAME and header == {"seg": 1, "new": [1]}
    assert len(fds) == 1 and fds[0] != fd
    try:
        assert _read_all(fds[0]) == b"segment 1"  # still open after the sender closed its copy
    finally:
        os.close(fds[0])


def test_pipe_fd_passes_and_works(pair):
    r, w = os.pipe()
    try:
        _, _, fds = roundtrip(pair, wire.FRAME, {"x": 1}, [w])
        os.write(fds[0], b"through the passed fd")
        os.close(fds[0])
        assert os.read(r, 100) == b"through the passed fd"
    finally:
        os.close(r)
        os.close(w)


def test_several_fds_on_a_multi_packet_message(pair):
    contents = [f"seg{i}".encode() for i in range(wire.MAX_FDS)]
    mine = [_memfd(c) for c in contents]
    big = np.arange(100_000, dtype="u4")  # 400 kB: seven packets
    try:
        _, header, fds = roundtrip(pair, wire.DONE, {"a": big}, mine)
    finally:
        for fd in mine:
            os.close(fd)
    try:
        assert np.array_equal(header["a"], big)
        assert [_read_all(fd) for fd in fds] == contents
    finally:
        for fd in fds:
            os.close(fd)


def test_fds_belong_to_their_own_message(pair):
    ca, cb = pair
    fd = _memfd(b"only the first")
    try:
        ca.send(wire.FRAME, {"n": 1}, [fd])
        ca.send(wire.FRAME, {"n": 2})
    finally:
        os.close(fd)
    _, h1, fds1 = within(cb.recv)
    _, h2, fds2 = within(cb.recv)
    assert (h1["n"], len(fds1)) == (1, 1)
    assert (h2["n"], fds2) == (2, [])
    os.close(fds1[0])


def test_more_than_max_fds_is_refused_or_delivered_whole(pair):
    ca, cb = pair
    mine = [_memfd(b"x") for _ in range(wire.MAX_FDS + 1)]
    fds: list[int] = []
    try:
        try:
            ca.send(wire.FRAME, {}, mine)
        except (ValueError, wire.ChannelClosed):
            return  # refusing up front is fine
        try:
            _, _, fds = within(cb.recv)
        except wire.ChannelClosed:
            return  # so is reporting the truncation
        assert len(fds) == len(mine)
    finally:
        for fd in mine + fds:
            os.close(fd)


# --- EOF, truncation, dead peers ------------------------------------------------------------------
def test_peer_close_gives_channel_closed(pair):
    ca, cb = pair
    ca.close()
    with pytest.raises(wire.ChannelClosed, match="peer closed"):
        within(cb.recv)
    assert issubclass(wire.ChannelClosed, EOFError)


def test_pending_messages_are_delivered_before_eof(pair):
    ca, cb = pair
    ca.send(wire.DONE, {"last": "words"})
    ca.close()
    assert within(cb.recv) == (wire.DONE, {"last": "words"}, [])
    with pytest.raises(wire.ChannelClosed):
        within(cb.recv)


def test_truncated_multi_packet_message_gives_channel_closed_not_hang(pair):
    """The peer dies after the first packet of a long message (flag MORE, nothing after)."""
    ca, cb = pair
    message = wire.encode(wire.DONE, {"a": np.zeros(3 * wire.PACKET, dtype="u1")})
    ca.sock.sendmsg([b"\x01", message[:wire.PACKET]])  # MORE, then the peer goes away
    ca.close()
    with pytest.raises(wire.ChannelClosed):
        within(cb.recv)


def test_recv_blocks_until_a_message_then_returns(pair):
    ca, cb = pair
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.setdefault("m", cb.recv()), daemon=True)
    t.start()
    t.join(0.05)
    assert t.is_alive()  # nothing sent yet: still waiting
    ca.send(wire.SHUTDOWN)
    t.join(2)
    assert result["m"] == (wire.SHUTDOWN, {}, [])


def test_send_to_closed_peer_raises_channel_closed(pair):
    ca, cb = pair
    cb.close()
    with pytest.raises(wire.ChannelClosed):
        ca.send(wire.FRAME, {"id": 1})
    with pytest.raises(wire.ChannelClosed):  # also for a multi-packet message
        ca.send(wire.DONE, {"a": np.zeros(4 * wire.PACKET, dtype="u1")})


def test_close_is_idempotent(pair):
    ca, _ = pair
    ca.close()
    ca.close()


def test_socket_pair_keeps_message_boundaries():
    a, b = wire.socket_pair()
    try:
        assert a.family == socket.AF_UNIX and a.type == socket.SOCK_SEQPACKET
        a.send(b"one")
        a.send(b"two")
        assert b.recv(100) == b"one" and b.recv(100) == b"two"
    finally:
        a.close()
        b.close()
