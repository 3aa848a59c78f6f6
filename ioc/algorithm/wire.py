"""The control protocol between the IOC and an algorithm child: one message per exchange over an
AF_UNIX SOCK_SEQPACKET socket pair (message boundaries kept, EOF when the peer dies).

A message is a kind byte, a JSON header and optional binary blobs (numpy arrays in the header
are sent as raw bytes, not as JSON lists), plus optional file descriptors (new shared-memory
segments). Messages bigger than one packet are split into packets flagged MORE.

Both ends state PROTOCOL_VERSION: the IOC in the child's settings, the child in its DECLARE and
LOAD_ERROR replies, so an IOC and a child from different ndflow versions refuse each other with
one line naming both versions (`version_mismatch`) instead of misreading each other's messages.

Standard library and numpy only, and no import of its own package: the algorithm child (and a
test's stand-in child, loading this one file) imports it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from typing import Any

import numpy as np

# parent -> child
FRAME = b"F"  # a frame is ready in shared memory
PARAMS = b"P"  # new input values
RELOAD = b"R"  # load the algorithm file again
FORGET = b"X"  # drop mappings of closed segments
SHUTDOWN = b"Q"  # stop() and exit
# child -> parent
DECLARE = b"D"  # the algorithm's declarations (start-up and every successful reload)
LOAD_ERROR = b"L"  # the file could not be loaded; the previous version (if any) still runs
DONE = b"d"  # a frame's result

#: bumped whenever a message's kind or fields change meaning
PROTOCOL_VERSION = 2

PACKET = 64 * 1024
_MORE, _LAST = b"\x01", b"\x00"
_HEADER = struct.Struct("<cI")  # kind, JSON length
MAX_FDS = 8


def version_mismatch(ioc: object, child: object) -> str | None:
    """The one-line refusal when the two ends speak different protocol versions, else None."""
    if ioc == child:
        return None
    return (f"protocol mismatch: the IOC speaks algorithm protocol {ioc}, the child "
            f"{child if child is not None else 'none (an older ndflow)'}; restart the IOC (its "
            "ndflow files changed after it started)")


class ChannelClosed(EOFError):
    """The peer went away (process exit, crash or close)."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode(kind: bytes, header: dict[str, Any]) -> bytes:
    blobs: list[bytes] = []
    offset = 0

    def default(obj: Any) -> Any:
        nonlocal offset
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:  # raw bytes of Python object pointers mean nothing there
                raise TypeError(f"an array of dtype {obj.dtype} cannot be sent to the IOC")
            data = np.ascontiguousarray(obj).tobytes()
            ref = {"$a": [obj.dtype.str, list(obj.shape), offset, len(data)]}
            blobs.append(data)
            offset += len(data)
            return ref
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (set, tuple)):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} cannot be sent to the IOC")

    text = json.dumps(header, default=default, separators=(",", ":")).encode()
    return _HEADER.pack(kind, len(text)) + text + b"".join(blobs)


def decode(message: bytes) -> tuple[bytes, dict[str, Any]]:
    kind, n = _HEADER.unpack_from(message)
    start = _HEADER.size + n
    blob = memoryview(message)[start:]

    def hook(obj: dict) -> Any:
        ref = obj.get("$a")
        if ref is None or len(obj) != 1:
            return obj
        dtype, shape, offset, nbytes = ref
        return np.frombuffer(blob[offset:offset + nbytes], dtype=dtype).reshape(shape).copy()

    header = json.loads(message[_HEADER.size:start], object_hook=hook) if n else {}
    return kind, header


class Channel:
    """One end of the socket pair. `send` is safe from several threads; `recv` must be called
    from one thread only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(PACKET + 1)
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: bytes, header: dict[str, Any] | None = None,
             fds: list[int] | tuple[int, ...] = ()) -> None:
        if len(fds) > MAX_FDS:
            raise ValueError(f"{len(fds)} file descriptors in one message; at most {MAX_FDS}")
        data = memoryview(encode(kind, header or {}))  # pieces are views, not copies
        with self._send_lock:
            try:
                for i in range(0, max(len(data), 1), PACKET):
                    piece = data[i:i + PACKET]
                    flag = _MORE if i + PACKET < len(data) else _LAST
                    if fds and i == 0:
                        socket.send_fds(self.sock, [flag, piece], list(fds))
                    else:
                        self.sock.sendmsg([flag, piece])
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise ChannelClosed(str(exc)) from None

    def recv(self) -> tuple[bytes, dict[str, Any], list[int]]:
        """Block for one message: (kind, header, received fds)."""
        parts: list[bytes] = []
        fds: list[int] = []
        anc = socket.CMSG_SPACE(MAX_FDS * 4)
        while True:
            try:
                n, ancdata, flags, _ = self.sock.recvmsg_into([self._buf], anc)
            except (ConnectionResetError, OSError) as exc:
                raise ChannelClosed(str(exc)) from None
            if n == 0:
                raise ChannelClosed("peer closed the channel")
            if flags & socket.MSG_CTRUNC:  # descriptors were cut off: the message is not whole
                for level, typ, data in ancdata:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        for fd in struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]):
                            os.close(fd)
                raise ChannelClosed("a message's file descriptors were truncated")
            for level, typ, data in ancdata:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    count = len(data) // 4
                    fds.extend(struct.unpack(f"{count}i", data[:count * 4]))
            parts.append(bytes(memoryview(self._buf)[1:n]))  # one copy, not two
            if self._buf[0:1] == _LAST:
                break
        kind, header = decode(parts[0] if len(parts) == 1 else b"".join(parts))
        return kind, header, fds

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
