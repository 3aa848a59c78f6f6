"""Component: a driver or plugin instance, i.e. a named port whose declared parameters are PVs.

Values live in `self.values` (the *user* parameter set: what was last written or measured). The
data path changes them with `set()`, which costs a dict store and a set insertion: the publisher
collects the names marked dirty at most once per publish interval, so a value that changes at every
frame reaches Channel Access at the publish rate, never the frame rate. Values a client must see
in order (Acquire_RBV 0->1->0, declared `coalesce=False`) and large arrays are handed to the
publisher at once. Every transport serves each parameter's PVs with an endpoint of its own
(`attach()`); a client's write, whatever the protocol, arrives through `handle_put()`, which
validates the value against its declaration and then calls an optional `put_<Name>` method so a
subclass can act on it, change it or refuse it.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import threading
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol

from .config import Site
from .params import Access, Kind, Param, ParamTable, short_value
from .publisher import Publisher
from .refusals import REFUSALS
from .transport import HANDLED, Endpoint, PVSpec, Transport

#: a component's PVs as one transport serves them: suffix -> endpoint
Served = dict[Transport, dict[str, Endpoint]]


#: the PV whose put hook is running (in the put's task), for message()
_PUT_PV: contextvars.ContextVar[str | None] = contextvars.ContextVar("ndflow_put_pv",
                                                                    default=None)


class PutRefused(Exception):
    """Raised by a put hook: the client gets an error carrying this message (a CA error, a
    failed PVA put), and handle_put logs it (one line naming the PV and the value)."""

    ndflow_logged = False  # True once handle_put has logged it


class PVRegistry(Protocol):
    """Where a running component's PVs are served (the IOC's transports)."""

    def add_pvs(self, component: "Component", served: Served) -> None: ...
    def withdraw_pvs(self, component: "Component", suffixes: Iterable[str]) -> None: ...


class Component:
    #: declaration groups, merged in order; later names override earlier ones
    PARAMS: ClassVar[tuple[Iterable[Param], ...]] = ()
    #: what `ndflow` calls this kind of component in configs ("sim", "stdarrays", ...)
    kind: ClassVar[str] = ""
    #: the name of this kind's Phoebus screen, `<screen>.bob` (ADCore's, e.g. "NDStats"); one
    #: screen serves every instance through the R macro
    screen: ClassVar[str] = ""

    def __init__(self, port: str, prefix: str) -> None:
        self.port = port
        self.prefix = prefix  # the R macro, e.g. "cam1:"
        self.params = self.declare()
        self.values: dict[str, Any] = {p.name: p.default for p in self.params}
        self.publisher: Publisher | None = None
        #: parameter name -> the endpoints (every transport) its value changes are sent to
        self._targets: dict[str, list[Endpoint]] = {}
        self.endpoints: dict[str, list[Endpoint]] = {}  # PV suffix -> one per transport
        self.transports: list[Transport] = []
        self.asg = "DEFAULT"  # the access security group of its PVs (config key asg)
        self.pv_registry: PVRegistry | None = None
        self.site: "Site | None" = getattr(self, "site", None)  # set by the IOC (folders, roots)
        #: put hooks registered by name: for parameters no `put_<Name>` method can spell (names
        #: with ':', "TS:TSAcquire"), made per instance (Gather's NDArrayPort_<n>), or given by
        #: an object the component holds (a time series, an overlay's shapes)
        self.put_hooks: dict[str, Callable[[Any], Any]] = {}
        #: called after the parameter list changed while the IOC runs (see add_params)
        self._declaration_watchers: list[Callable[["Component"], None]] = []
        self._declaring = 0  # nesting depth of changing_declarations()
        self._count_lock = threading.Lock()
        #: names set since the publisher last collected them (set.add and set.pop are atomic)
        self._dirty: set[str] = set()
        #: names whose every change is handed to the publisher at once (see set())
        self._immediate: frozenset[str] = frozenset()
        #: bumped by every change of a writable parameter (a CA write, or the data path setting
        #: one), so a data-path owner knows to take a new snapshot before its next frame
        self.params_version = 0
        self._settable = frozenset(p.name for p in self.params if p.setting)
        self.log = logging.getLogger(f"ndflow.{port}")
        if "PortName_RBV" in self.params:
            self.values["PortName_RBV"] = port
        if "AsynIO.PORT" in self.params:  # the asyn record's port (adcore.ASYN_RECORD)
            self.values["AsynIO.PORT"] = port

    def declare(self) -> ParamTable:
        return ParamTable.of(*self.PARAMS)

    def result_params(self) -> list[str]:
        """The parameters that hold this component's results for a frame (an algorithm's
        outputs): a replay writes a table column for each. None by default."""
        return []

    @property
    def screen_name(self) -> str:
        return self.screen or type(self).__name__

    @property
    def screen_title(self) -> str:
        return self.screen_name

    # --- values -----------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        return self.values[name]

    def set(self, name: str, value: Any) -> None:
        """Change a value from the data path (any thread); it is published within one publish
        interval (at once for ordered values and large arrays)."""
        if name in self._immediate:
            self._set_now(name, value)
        else:
            self.values[name] = value
            self._dirty.add(name)
        if name in self._settable:  # the data path changed a setting (AutoOffsetScale)
            self.params_version += 1

    def _set_now(self, name: str, value: Any) -> None:
        """Store an ordered value and queue it on every channel of its parameter as one step.
        Two threads may set the same one at once (a put's Capture=1 in the event loop, the
        worker's Capture=0 at the next frame): done channel by channel, their posts interleave
        (setpoint 1, setpoint 0, readback 0, readback 1), the readback is left at 1 after the
        capture ended and the next 1 is skipped as unchanged; and `values` may end with the other
        thread's value. Under the publisher's (reentrant) lock, a thread that sees the new value
        in `values` posts after it on every channel."""
        publisher = self.publisher
        if publisher is None:
            self.values[name] = value
            return
        param = self.params[name]
        if param.kind is Kind.NDARRAY:  # a frame: sent from this thread, nothing coalesced
            self.values[name] = value
            for endpoint in self._targets.get(name, ()):
                endpoint.post_frame(value)
            return
        with publisher.ordered():
            self.values[name] = value
            for channel in self._targets.get(name, ()):
                if param.kind is Kind.ARRAY:
                    publisher.post_array(channel, channel.to_wire(value))
                else:
                    publisher.post(channel, channel.to_wire(value), coalesce=False)

    def collect(self, post: Callable[[Endpoint, Any], None]) -> None:
        """Hand every value set since the last call to `post` (the publisher, under its lock).
        A bug in `before_publish` costs only what it would have set: the other values still go
        out, and it is logged at most once per interval (not at every flush)."""
        try:
            self.before_publish()
        except Exception as exc:
            REFUSALS.line(self.log, f"{self.port}:before_publish",
                          f"{self.port}: values derived for publishing failed: "
                          f"{type(exc).__name__}: {exc}", logging.ERROR)
        dirty, values = self._dirty, self.values
        while dirty:
            try:
                name = dirty.pop()
            except KeyError:  # emptied by another collector meanwhile
                break
            if name not in values:  # withdrawn meanwhile
                continue
            value = values[name]
            for channel in self._targets.get(name, ()):
                post(channel, channel.to_wire(value))

    def before_publish(self) -> None:
        """Turn per-frame state into values just before they are published (a subclass may
        defer work here that would otherwise cost every frame)."""

    def increment(self, name: str, by: int = 1) -> int:
        """Add to a counter from any thread without losing a count; returns the new value."""
        with self._count_lock:
            value = self.values[name] + by
            self.set(name, value)
        return value

    def set_many(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            self.set(name, value)

    def message(self, text: str, level: int = logging.INFO, log: bool = True) -> None:
        """Show a one-line status to operators (StatusMessage_RBV) and in the log (unless the
        caller logs it its own way). A warning or error said by a put hook (a rewiring refused,
        a path not usable) is a put's refusal: its line names the PV and shares the PV's rate
        limit with the other refusals (refusals.REFUSALS), so a client repeating the put cannot
        flood the log."""
        if "StatusMessage_RBV" in self.params:
            self.set("StatusMessage_RBV", text[: self.params["StatusMessage_RBV"].length - 1])
        if log:
            pv = _PUT_PV.get()
            if pv is not None and level >= logging.WARNING:
                REFUSALS.line(self.log, pv, f"{pv}: {text}", level)
            else:
                self.log.log(level, "%s", text)

    # --- transports -------------------------------------------------------------------------------
    def attach(self, publisher: Publisher, transports: list[Transport]) -> Served:
        """Make every transport's endpoints for every declared parameter; the caller serves
        them under the IOC's prefix."""
        self.publisher = publisher
        self.transports = list(transports)
        self.endpoints = {}
        served: Served = {t: {} for t in self.transports}
        for p in self.params:
            self._merge(served, self._endpoints_for(p))
        publisher.add_source(self)
        return served

    def _merge(self, into: Served, more: Served) -> None:
        for transport, endpoints in more.items():
            into.setdefault(transport, {}).update(endpoints)
            for suffix, endpoint in endpoints.items():
                self.endpoints.setdefault(suffix, []).append(endpoint)

    def _endpoints_for(self, p: Param) -> Served:
        value = self.values[p.name]
        served: Served = {t: {} for t in self.transports}
        targets: list[Endpoint] = []
        views: list[tuple[PVSpec, bool]] = []  # (spec, receives the data path's changes)
        if p.setpoint_name:
            views.append((PVSpec(p.setpoint_name, p, False, self._put_handler(p), self.asg),
                          p.also_setpoint or p.access is Access.W))
        if p.readback_name:
            views.append((PVSpec(p.readback_name, p, True, None, self.asg), True))
        views.extend((PVSpec(alias, p, True, None, self.asg), True) for alias in p.aliases)
        for spec, target in views:
            for transport in self.transports:
                endpoint = transport.endpoint(spec, value)
                if endpoint is None:  # a kind this transport does not carry
                    continue
                served[transport][spec.suffix] = endpoint
                if target:
                    targets.append(endpoint)
        self._targets[p.name] = targets
        if not p.coalesce or (p.kind is Kind.ARRAY and p.length > 64) or p.kind is Kind.NDARRAY:
            self._immediate = self._immediate | {p.name}
        return served

    # --- parameters that come and go while the IOC runs (algorithm declarations) ------------------
    def watch_declarations(self, watcher: Callable[["Component"], None]) -> None:
        """Call `watcher(component)` after each change of the parameter list (add_params,
        remove_params, or one changing_declarations() block): how screens follow an algorithm
        whose inputs changed, without the component knowing about screens."""
        self._declaration_watchers.append(watcher)

    @contextlib.contextmanager
    def changing_declarations(self) -> Iterator[None]:
        """Group several add_params/remove_params into one change for the watchers."""
        self._declaring += 1
        try:
            yield
        finally:  # a change that failed half-way has still changed the list
            self._declaring -= 1
            self._declarations_changed()

    def _declarations_changed(self) -> None:
        if getattr(self, "_declaring", 0):
            return
        for watcher in list(getattr(self, "_declaration_watchers", ())):
            try:
                watcher(self)
            except Exception as exc:  # a screen that cannot be written must not stop the data
                self.log.warning("%s: after its parameters changed: %s: %s", self.port,
                                 type(exc).__name__, exc)

    def add_params(self, params: Iterable[Param], values: Mapping[str, Any]) -> None:
        """Declare more parameters; once serving, their PVs appear at once."""
        added: Served = {}
        for p in params:
            self.params.params[p.name] = p
            if p.setting:
                self._settable = self._settable | {p.name}
            self.values[p.name] = values.get(p.name, p.default)
            if self.publisher is not None:
                self._merge(added, self._endpoints_for(p))
        if any(added.values()) and self.pv_registry is not None:
            self.pv_registry.add_pvs(self, added)
        self._declarations_changed()

    def remove_params(self, names: Iterable[str]) -> None:
        """Withdraw parameters; once serving, their PVs stop answering searches."""
        gone: list[str] = []
        for name in names:
            p = self.params.params.pop(name, None)
            if p is None:
                continue
            self.values.pop(name, None)
            self._targets.pop(name, None)
            for suffix in p.pv_suffixes:
                if self.endpoints.pop(suffix, None) is not None:
                    gone.append(suffix)
        if gone and self.pv_registry is not None:
            self.pv_registry.withdraw_pvs(self, gone)
        self._declarations_changed()

    def _put_handler(self, param: Param):
        async def on_put(value: Any, source: Endpoint | None = None) -> Any:
            return await self.handle_put(param, value, source)
        return on_put

    async def handle_put(self, param: Param, raw: Any, source: Endpoint | None = None) -> Any:
        """Validate a client's value against its declaration (`Param.coerce`), let the
        `put_<Name>` hook act on it, store it and update the readbacks. A refusal is a
        PutRefused (the client gets a CA error carrying its message); a refusal or a clamp is
        one log line naming the PV and the value, at most one per PV every few seconds
        (refusals.REFUSALS), and shown on StatusMessage_RBV. Returns the stored value (the
        writing endpoint shows it its own way) or HANDLED; every other endpoint of the
        parameter, on every transport, is updated before the put completes."""
        pv = self._pv_name(param)
        try:
            value, note = param.coerce(raw)
        except (TypeError, ValueError) as exc:
            raise self._refused(pv, param, raw, str(exc)) from None
        if note:  # clamped or truncated: the operator sees why the readback differs
            REFUSALS.line(self.log, pv, f"{pv}: {note}")
            self.message(f"{param.name} {note}", log=False)
        hook = self.put_hooks.get(param.name) or getattr(self, f"put_{param.name}", None)
        if hook is not None:
            token = _PUT_PV.set(pv)  # what the hook says is about this put (see message())
            try:
                result = hook(value)
                if inspect.isawaitable(result):
                    result = await result
            except PutRefused as exc:  # the hook refused the value, with its reason
                if exc.ndflow_logged:
                    raise
                raise self._refused(pv, param, raw, str(exc)) from None
            finally:
                _PUT_PV.reset(token)
            if result is HANDLED:
                return HANDLED
            if result is not None:
                value = result
        self.values[param.name] = value
        self.params_version += 1
        self.after_put(param, value)
        await self._publish_readbacks(param, value, source)
        return value

    def _pv_name(self, param: Param) -> str:
        """The full PV name a client wrote (with the IOC's prefix once served)."""
        endpoints = self.endpoints.get(param.setpoint_name or "")
        name = getattr(endpoints[0], "pvname", "") if endpoints else ""
        return name if name and name != param.name else f"{self.prefix}{param.name}"

    def _refused(self, pv: str, param: Param, raw: Any, reason: str) -> "PutRefused":
        REFUSALS.refuse(self.log, pv, short_value(raw), reason)
        self.message(f"{param.name}: put refused: {reason}", log=False)
        refusal = PutRefused(f"{pv}: {reason}")
        refusal.ndflow_logged = True
        return refusal

    def after_put(self, param: Param, value: Any) -> None:
        """Called after any accepted CA write (for components whose parameters are not known
        when the class is written, so they cannot have put_<Name> hooks)."""

    async def _publish_readbacks(self, param: Param, value: Any,
                                 source: Endpoint | None) -> None:
        """Update the _RBV before the put completes, as an asyn readback record does, so a
        client that reads it right after caput(wait=True) sees the new value, and with it any
        value the put hook set. The setpoint's endpoints on the other transports show the new
        value too (the writing one shows it itself)."""
        shown = [e for e in self.endpoints.get(param.setpoint_name or "", ()) if e is not source]
        shown += [e for e in self._targets.get(param.name, ()) if e.readback]
        for endpoint in shown:
            await endpoint.publish_value(endpoint.to_wire(value))
        if self.publisher is not None:
            await self.publisher.flush_values()

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Called once the server is up (threads start here, not in __init__)."""

    def shutdown(self) -> None:
        """Stop threads; called on IOC exit."""

    def periodic(self, elapsed: float) -> None:
        """Called about once a second from the event loop (rates, pool figures)."""

    def threads(self) -> list[threading.Thread]:
        """The threads this component owns (for its CPU figure)."""
        return []

