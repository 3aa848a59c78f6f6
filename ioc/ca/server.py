"""Channel Access transport: caproto's asyncio server over the PVs of every component.

caproto looks every search up in the plain `pvdb` dict handed to its Context, so PVs added and
withdrawn while serving (an algorithm's reload) are dict changes made in the event loop's thread.

Our circuits differ from caproto's in how they send and in what they tell:
- caproto sends a batch by joining its buffers into one bytes object (a copy of a whole image)
  and writing that; ours hand the buffers to the socket as they are (`os.writev`, images from
  the circuit's sender thread, see .writer), so an image costs one conversion to big-endian and
  the kernel's copy, and the next image is written the moment the last one has gone;
- caproto waits up to 10 ms for more updates before sending a batch; ours send what is queued
  (the publisher hands its updates over in bursts already);
- they count what of their queue they have taken to write and what they have written: the
  publisher posts an array's next update once the last one has been taken by every circuit
  (`ParamChannel.sent`), and a put completes once the updates queued before its response have
  been written (`settle`), so its client sees them first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from contextvars import ContextVar
from typing import Any, Iterable, Mapping

import caproto as ca
from caproto import MAX_TOTAL_SUBSCRIPTION_BACKLOG
from caproto.asyncio.server import Context as _CaprotoContext
from caproto.asyncio.server import VirtualCircuit as _CaprotoCircuit

from ..access import AccessSecurity
from ..params import Kind
from ..transport import PVSpec
from .channels import CLIENT_ADDRESS, ParamChannel, make_channel
from .queues import CountingQueue
from .writer import SENDER_THREAD_BYTES, CircuitWriter, after, parts_of, write_now

log = logging.getLogger("ndflow.ca")

#: a circuit with updates to write that has written none for this long has stalled (its client
#: stopped reading, or reads slower than this per update): a settle that is not a put of its
#: own (a pvAccess put's completion) no longer waits for it
STALLED_S = 0.5
#: the circuit whose request is being handled (a put's completion waits for its updates only)
CURRENT_CIRCUIT: ContextVar[Any] = ContextVar("ndflow_ca_circuit", default=None)


class SupersededUpdates(logging.Filter):
    """caproto warns "High load. Dropped N responses." each time a circuit skips monitor updates
    that newer ones superseded while its client was reading: every batch of a client that reads
    slower than the values change (10 lines a second beside a 10 Hz image viewer). That is how
    a slow client gets the newest, so the counts are summed and said at most once per PERIOD_S,
    as one INFO line."""

    PERIOD_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        self._said: float | None = None  # when the last line went out

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("High load. Dropped"):
            return True
        try:
            self._count += int(record.args[0])  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            pass
        now = time.monotonic()
        if self._said is not None and now - self._said < self.PERIOD_S:
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = ("%d monitor updates skipped as superseded for clients that read slower "
                      "than the values change (each gets the newest; said at most once a minute)")
        record.args = (self._count,)
        self._count, self._said = 0, now
        return True


_SUPERSEDED = SupersededUpdates()


def _limit_caproto_batching() -> None:
    """caproto's circuit may hold a batch of monitor updates (while more are queued) for up to a
    latency limit that doubles with every batch while a client is busy, up to MAX_LATENCY (1 s).
    Ours never waits for more than is queued, but a batch taken while updates keep coming is
    still bounded by that limit: capped at 10 ms, as caproto starts."""
    from caproto.server import common
    common.MAX_LATENCY = min(common.MAX_LATENCY, common.HIGH_LOAD_TIMEOUT)


class _Circuit(_CaprotoCircuit):
    """caproto's asyncio circuit, sending without copying large buffers and counting how much
    of its subscription queue it has taken to send (`subscription_queue.gets`: every update up
    to that queue position is written, being written, or dropped as superseded) and how much
    has been written (`ndflow_sent`).

    A large batch (an image) is written to the socket by the circuit's sender thread
    (`CircuitWriter`), as RSRV's send threads do, and so is everything sent after it until it
    has gone (the order on the wire is the order sent). The event loop meanwhile takes the next
    update and hands it over, so the thread starts it as soon as the last one has gone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscription_queue = CountingQueue(MAX_TOTAL_SUBSCRIPTION_BACKLOG)
        self.ndflow_sent = 0  # every update up to this queue position is written (or dropped)
        self._fd: int | None = None  # our duplicate of the socket's descriptor
        self._out: CircuitWriter | None = None  # the sender thread, once a large batch came
        self.ndflow_progress = time.monotonic()  # when it last took or wrote an update
        transport = getattr(getattr(self.client, "writer", None), "transport", None)
        if transport is not None:
            # drain() returns once the buffer is empty, not below 64 KiB: the circuit takes
            # its next update only once the last one has gone to the socket, and that one can
            # go straight to the socket
            transport.set_write_buffer_limits(high=0)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _no_delay(sock)
            if sock is not None and hasattr(os, "writev"):  # POSIX
                self._fd = os.dup(sock.fileno())

    async def _process_command(self, command: Any) -> Any:
        # the access rules may match the client's address (client_ip): caproto's check_access
        # is told only the names the client reported, so the address rides in the task's context
        CLIENT_ADDRESS.set(self.circuit.address[0] if self.circuit.address else "")
        CURRENT_CIRCUIT.set(self)
        return await super()._process_command(command)

    def ndflow_stalled(self) -> bool:
        """It has updates queued or being written, and has taken or written none for
        STALLED_S."""
        return (self.ndflow_sent < self.subscription_queue.puts
                and time.monotonic() - self.ndflow_progress > STALLED_S)

    async def ndflow_rights_changed(self) -> None:
        """Tell this client its rights on every channel it has open (the rules were reloaded),
        as EPICS does after asInit: it learns at once that a put would now be refused."""
        CLIENT_ADDRESS.set(self.circuit.address[0] if self.circuit.address else "")
        updates = []
        for chan in list(self.circuit.channels.values()):
            try:
                entry = self.context[chan.name]
            except KeyError:  # withdrawn since
                continue
            rights = entry.check_access(self.client_hostname, self.client_username)
            updates.append(ca.AccessRightsResponse(cid=chan.cid, access_rights=rights))
        if updates:
            await self.send(*updates)

    async def get_from_sub_queue(self, timeout: float | None = None) -> Any:
        """The subscription loop's next update, or None if there is none now (caproto asks
        with a timeout while it has a batch in hand, to gather more for up to 10 ms: the
        publisher already hands over its updates in bursts, so a batch is what is queued, sent
        at once). It takes one only once the batches before the one being written have gone
        (send returns then), so an update taken has at most one batch ahead of it."""
        queue = self.subscription_queue
        if not queue.empty():
            item = queue.get_nowait()
        elif timeout is not None:
            return None
        else:  # no batch in hand: all taken before is written (or dropped as superseded)
            self._when_written(queue.gets)  # once the sender thread has written it
            item = await queue.get()
        self.ndflow_progress = time.monotonic()
        if self.context.ndflow_waiting:
            self.context.ndflow_notify()
        return item

    async def send(self, *commands: Any) -> None:
        taken = self.subscription_queue.gets
        await super().send(*commands)
        if asyncio.current_task() is self._sub_task:  # a batch of the subscription loop
            self._when_written(taken)

    def _sent_through(self, position: int) -> None:
        if position > self.ndflow_sent:
            self.ndflow_sent = position
            self.ndflow_progress = time.monotonic()
            if self.context.ndflow_settlers:
                self.context.ndflow_settle_check()

    async def _on_disconnect(self) -> None:
        try:
            await super()._on_disconnect()
        finally:
            self._close_fd()
            self.context.ndflow_notify()
            self.context.ndflow_settle_check()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        out, self._out = self._out, None
        if out is not None:  # the sender thread closes the descriptor once it has stopped
            out.close()
        elif fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self._close_fd()
        except Exception:
            pass

    def _when_written(self, position: int) -> None:
        """Every update up to subscription-queue `position` has been taken: note it as sent
        once what the sender thread holds has been written."""
        out = self._out
        if out is None or out.idle:
            self._sent_through(position)
        else:
            out.last.add_done_callback(lambda _: self._sent_through(position))

    async def _send_buffers(self, *buffers: Any) -> None:
        """Write the buffers of one batch with as few copies as possible: straight to the
        socket (writev) while nothing is waiting to be written, a large batch by the sender
        thread (which also writes what the socket did not take once it has one). It returns
        once the batches before this one have been written, so the circuit's next batch is
        ready for the thread while this one is written."""
        client = self.client
        writer = client.writer
        transport = writer.transport
        parts = parts_of(buffers)
        async with client.send_lock:
            out, fd = self._out, self._fd
            if out is not None and out.error is not None:
                raise out.error
            if fd is None or transport.is_closing():
                await _buffered(writer, parts)
                return
            large = sum(len(part) for part in parts) >= SENDER_THREAD_BYTES
            if out is None or out.idle:
                if transport.get_write_buffer_size():
                    if not large:
                        await _buffered(writer, parts)  # behind what the transport holds
                        return
                    await writer.drain()  # what the transport holds goes first
                if not large:
                    parts = after(parts, write_now(fd, parts))
                    if not parts:
                        return
                    if out is None:  # no sender thread: the transport buffers the rest
                        await _buffered(writer, parts)
                        return
            if out is None:
                self._out = out = CircuitWriter(fd)
            before = out.last
            out.submit(parts)
            if before is not None and not before.done():
                await asyncio.shield(before)


async def _buffered(writer: Any, parts: list[memoryview]) -> None:
    """caproto's way: the transport copies what the socket does not take at once."""
    for part in parts:
        writer.write(part)
    await writer.drain()


def _no_delay(sock: Any) -> None:
    """TCP_NODELAY on a circuit, as RSRV sets it. asyncio sets it itself only on sockets made
    with proto IPPROTO_TCP, and caproto's listening socket has proto 0: without it, a small
    reply written while the previous one was not yet acknowledged waited for the client's
    delayed ACK, and every other caput(wait=True) took 40 ms instead of 1."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not TCP (a test's socket pair): nothing to delay
        pass


class _Context(_CaprotoContext):
    """caproto's asyncio context with our circuits, knowing which channels wait for their
    updates to leave (`ParamChannel.sent`)."""

    CircuitClass = _Circuit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscription_queue = CountingQueue(context=self)
        self.ndflow_waiting: set[ParamChannel] = set()
        self.ndflow_dispatched = 0  # items of subscription_queue handed to the circuits
        self.ndflow_settlers: list[tuple[Any, asyncio.Future]] = []

    async def _subscription_queue_iteration(self, sub_specs: Any, *args: Any) -> None:
        entry = getattr(sub_specs[0], "db_entry", None) if sub_specs else None
        try:
            await super()._subscription_queue_iteration(sub_specs, *args)
        finally:
            self.ndflow_dispatched += 1
            if isinstance(entry, ParamChannel):
                entry._ca_unsent = max(0, entry._ca_unsent - 1)
                if self.ndflow_waiting:
                    self.ndflow_notify()
            if self.ndflow_settlers:
                self.ndflow_settle_check()

    async def _subscription_queue_send(self, sub_spec: Any, sub: Any, *args: Any,
                                       **kwargs: Any) -> None:
        queue = sub.circuit.subscription_queue
        before = getattr(queue, "puts", None)
        await super()._subscription_queue_send(sub_spec, sub, *args, **kwargs)
        entry = sub.db_entry
        if before is not None and queue.puts != before and isinstance(entry, ParamChannel) \
                and entry.param.kind is Kind.ARRAY and _whole(sub, kwargs.get("values")):
            entry._ca_marks[sub.circuit] = queue.puts  # its update is at this position

    def ndflow_notify(self) -> None:
        """Something has left (or a circuit went away): wake the channels now drained."""
        if self.ndflow_waiting:
            self.ndflow_waiting = {channel for channel in self.ndflow_waiting
                                   if not channel._ca_wake()}

    async def ndflow_settle(self) -> None:
        """Return once every monitor update queued so far has been written to its client's
        socket (or dropped as superseded, or its circuit has gone or stalled). Asked while
        handling a client's request (a put), only that client's circuit is waited for: the
        order on its own connection is what the client sees."""
        target = self.subscription_queue.puts
        await self._ndflow_until(lambda: self.ndflow_dispatched >= target)
        current = CURRENT_CIRCUIT.get()
        circuits = [current] if current is not None else \
            [circuit for circuit in list(self.circuits) if isinstance(circuit, _Circuit)]
        marks = [(circuit, circuit.subscription_queue.puts) for circuit in circuits]
        await self._ndflow_until(lambda: all(
            circuit.ndflow_sent >= mark or not circuit.connected or circuit.ndflow_stalled()
            for circuit, mark in marks))

    async def _ndflow_until(self, done: Any) -> None:
        """Wait until done() holds, looking again on every progress and twice per STALLED_S
        (a circuit may stall meanwhile: nothing else would say so)."""
        loop = asyncio.get_running_loop()
        while not done():
            waiter = loop.create_future()
            self.ndflow_settlers.append((done, waiter))
            try:
                await asyncio.wait_for(waiter, STALLED_S / 2)
            except TimeoutError:
                pass
            finally:
                if not waiter.done():  # cancelled (the caller's timeout)
                    self.ndflow_settlers = [(d, w) for d, w in self.ndflow_settlers
                                            if w is not waiter]

    def ndflow_settle_check(self) -> None:
        waiting = []
        for done, waiter in self.ndflow_settlers:
            if waiter.done():
                continue
            if done():
                waiter.set_result(None)
            else:
                waiting.append((done, waiter))
        self.ndflow_settlers = waiting


def _whole(sub: Any, values: Any) -> bool:
    """Whether the subscription receives (at least half of) this update's array: what paces
    the array's updates (ParamChannel.sent). A client that asked for a few elements would
    have images posted as fast as it takes ten numbers."""
    count = getattr(sub, "data_count", 0) or 0
    try:
        length = len(values)
    except TypeError:
        return True
    return not count or 2 * count >= length


class CATransport:
    """Serves every PV over Channel Access (caproto), record fields included."""

    name = "ca"

    def __init__(self) -> None:
        self.pvdb: dict[str, Any] = {}
        self.context: Any = None
        self._access = AccessSecurity()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def access(self) -> AccessSecurity:
        """The IOC's access rules: every channel answers caproto's check_access from them."""
        return self._access

    @access.setter
    def access(self, security: AccessSecurity) -> None:
        self._access = security
        for channel in self.pvdb.values():
            if isinstance(channel, ParamChannel):
                channel.ca_access = security
        security.listeners.append(self._rights_changed)

    def _rights_changed(self) -> None:
        """After a reload (called in the event loop's thread): every connected client is told
        its rights anew."""
        context, loop = self.context, self._loop
        if context is None or loop is None:
            return
        for circuit in list(context.circuits):
            if isinstance(circuit, _Circuit):
                loop.create_task(circuit.ndflow_rights_changed())

    def endpoint(self, spec: PVSpec, value: Any) -> ParamChannel | None:
        return make_channel(spec, value)

    def add(self, endpoints: Mapping[str, ParamChannel]) -> None:
        for name, channel in endpoints.items():
            channel.pvname = name
            channel.ca_access = self._access
            self.pvdb[name] = channel

    def withdraw(self, names: Iterable[str]) -> None:
        names = set(names)
        # caproto caches record-field channels ("X.DESC") in the pvdb too
        for key in [k for k in self.pvdb if k.split(".", 1)[0] in names]:
            del self.pvdb[key]

    def names(self) -> list[str]:
        return [name for name in self.pvdb if "." not in name]

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        from .caproto_fixes import _wire_passthrough
        _limit_caproto_batching()
        _wire_passthrough()  # again, in case a caproto backend was selected since import
        circuits_log = logging.getLogger("caproto.circ")
        if _SUPERSEDED not in circuits_log.filters:
            circuits_log.addFilter(_SUPERSEDED)
        self._loop = loop
        self.context = _Context(self.pvdb)
        await self.context.run(log_pv_names=False)

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait until caproto has written the monitor updates queued so far to the clients'
        sockets, so a put's response sent next reaches its client after them (at most
        `timeout`: a client that stopped reading must not hold every put)."""
        ctx = self.context
        if ctx is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await ctx.ndflow_settle()
        except TimeoutError:
            pass
