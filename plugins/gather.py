"""NDPluginGather (`Gather1:`): one stream made of the arrays of up to 8 upstream ports.

Why: after NDPluginScatter has spread frames over several instances of a plugin, a file writer
or viewer needs them back as one stream. Every other plugin reads one port; Gather reads several.

Follows NDPluginGather.cpp (ADCore 3.14) and NDGather.template / NDGatherN.template:
- Input N (1..8) is `NDArrayPort_N` / `NDArrayAddress_N` (+ `_RBV`). In ADCore these are the
  NDPluginDriver port/address parameters at asyn address N-1, so input 1 *is* the plugin's
  `NDArrayPort` / `NDArrayAddress` (writing either name changes both). An empty port leaves the
  input unconnected. Writing a port rewires that input at once; a port that does not exist or
  would close a loop is refused (the previous port stays, StatusMessage_RBV says why).
- Every array from any input goes into the plugin's one input queue (QueueSize, drops counted
  in DroppedArrays) and is passed on unchanged to all downstream plugins, with the
  NDAttributesFile attributes added.
- Order: with SortMode=Unsorted (ADCore's default) arrays leave in the order they arrive, which
  after a Scatter is the order the parallel plugins finish them, not uniqueId order. With
  SortMode=Sorted they leave in uniqueId order, each waiting at most SortTime for the ids before
  it, with at most SortSize held (NDPluginDriver's sorting, as ADCore's docs example uses). Here
  that sorting applies with one thread too, since the disorder comes from the several inputs.
- commonPlugins.cmd loads 8 inputs, all defaulting to the driver port: enabling Gather1 there
  receives each frame 8 times, as in ADCore. Configure `options: {inputs: [...]}` to read other
  ports.

How: the port graph gives each listener one source, so inputs 2..8 are small listener objects
(`GatherInput`) that hand what they receive to this plugin's `receive()`; input 1 is the plugin
itself, as for any plugin. The listeners carry the plugin's port name, so a rewiring that would
feed Gather's output back into one of its inputs is refused like any loop.
"""

from __future__ import annotations

import logging
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field

from ndflow.graph import GraphError
from ndflow.ndarray import NDArray
from ndflow.params import RW, ParamTable, int_param, string_param
from ndflow.plugin import Plugin, Sorter

MAX_PORTS = 8


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: str = Field(description="upstream port (NDArrayPort_N)")
    address: int = Field(0, ge=0, description="upstream address (NDArrayAddress_N)")


class GatherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Union[str, InputConfig]] = Field(
        default_factory=list, max_length=MAX_PORTS,
        description="inputs 1..N: a port name or {port, address}; input 1 is also `input`")
    max_ports: int = Field(MAX_PORTS, ge=1, le=MAX_PORTS,
                           description="inputs served (NDGatherConfigure maxPorts)")


def input_params(count: int) -> list:
    """NDGatherN.template's records for inputs 1..count."""
    params = []
    for n in range(1, count + 1):
        params.append(string_param(f"NDArrayPort_{n}", "", RW, group="Inputs",
                                   doc=f"upstream port of input {n}; writing it rewires"))
        params.append(int_param(f"NDArrayAddress_{n}", 0, RW, low=0, group="Inputs",
                                doc=f"upstream address of input {n}"))
    return params


class GatherInput:
    """Input N>1 of a Gather in the port graph: what the graph delivers goes to the Gather's
    queue. It answers what upstream code asks a listener (its port name for loop checks, how
    full the queue is for a pausing driver, the values Scatter checks)."""

    def __init__(self, gather: "Gather", number: int) -> None:
        self.gather = gather
        self.number = number

    @property
    def port(self) -> str:
        return self.gather.port

    @property
    def values(self) -> dict[str, Any]:
        return self.gather.values

    @property
    def _last_callback(self) -> float:
        return self.gather._last_callback

    def receive(self, array: NDArray) -> None:
        self.gather.receive(array)

    def queue_fill(self) -> float:
        return self.gather.queue_fill()

    @property
    def queued(self) -> int:
        """Frames waiting in the Gather's queue (shared by its inputs): what NumQueuedArrays of
        an upstream port counts."""
        return self.gather.queued

    def __repr__(self) -> str:
        return f"<{self.gather.port} input {self.number}>"


class _SortAlways(Sorter):
    """SortMode=Sorted sorts even with one thread: the inputs themselves are out of order."""

    def _sorting(self) -> bool:
        return bool(self.plugin.values["SortMode"])


class Gather(Plugin):
    screen = "NDGather8"
    kind = "gather"
    plugin_type = "NDPluginGather"
    channels_aware = True  # passes arrays on unchanged
    Options = GatherOptions

    def __init__(self, *args: Any, options: GatherOptions | None = None, **kw: Any) -> None:
        self.options = options or GatherOptions()
        super().__init__(*args, **kw)
        inputs = [InputConfig(port=i) if isinstance(i, str) else i for i in self.options.inputs]
        if len(inputs) > self.options.max_ports:
            raise ValueError(f"{len(inputs)} inputs but max_ports is {self.options.max_ports}")
        given = self.values["NDArrayPort"]
        if inputs:
            if given and (given, self.values["NDArrayAddress"]) != \
                    (inputs[0].port, inputs[0].address):
                raise ValueError(f"input {given!r} and options.inputs[0] "
                                 f"{inputs[0].port!r} disagree: input 1 is both")
            self.values["NDArrayPort"] = inputs[0].port
            self.values["NDArrayAddress"] = inputs[0].address
        for n in range(1, self.options.max_ports + 1):
            port, address = (inputs[n - 1].port, inputs[n - 1].address) if n <= len(inputs) \
                else ("", 0)
            if n == 1:
                port, address = self.values["NDArrayPort"], self.values["NDArrayAddress"]
            self.values[f"NDArrayPort_{n}"] = port
            self.values[f"NDArrayAddress_{n}"] = address
        self._inputs = {n: GatherInput(self, n) for n in range(2, self.options.max_ports + 1)}
        self._sorter = _SortAlways(self)
        for n in range(1, self.options.max_ports + 1):
            for kind in ("NDArrayPort", "NDArrayAddress"):
                self.put_hooks[f"{kind}_{n}"] = \
                    lambda value, n=n, kind=kind: self._put_input(n, kind, value)

    def declare(self) -> ParamTable:
        table = super().declare()
        count = getattr(self, "options", GatherOptions()).max_ports
        for p in input_params(count):
            table.params[p.name] = p
        return table

    # --- wiring ---------------------------------------------------------------------------------
    def start(self) -> None:
        # options.inputs are not checked by the config loader (only `input` is): a port that
        # does not exist leaves its input unconnected, said on StatusMessage_RBV and the log
        port = self.values["NDArrayPort"]
        if port and port not in self.graph.ports:
            self.values["NDArrayPort"] = self.values["NDArrayPort_1"] = ""
            self.message(f"input 1: no port named {port!r}; left unconnected", logging.WARNING)
        super().start()  # input 1: the plugin itself, as NDArrayPort
        for n, listener in self._inputs.items():
            port = self.values[f"NDArrayPort_{n}"]
            if not port:
                continue
            try:
                self.graph.connect(listener, port, self.values[f"NDArrayAddress_{n}"])
            except GraphError as exc:
                self.values[f"NDArrayPort_{n}"] = ""
                self.message(f"input {n}: {exc}; left unconnected", logging.WARNING)

    def shutdown(self) -> None:
        for listener in self._inputs.values():
            try:
                self.graph.connect(listener, "")
            except GraphError:  # pragma: no cover - disconnecting cannot fail
                pass
        super().shutdown()

    def _rewire_input(self, n: int, port: str, address: int, name: str, requested: Any) -> Any:
        """Connect input `n` (>1) to (port, address); the value to store for `name` (the old
        one if refused, as for NDArrayPort)."""
        try:
            self.graph.connect(self._inputs[n], port, address)
        except GraphError as exc:
            self.message(f"{name} {requested!r} refused: {exc}; kept "
                         f"{self.values[name]!r}", logging.WARNING)
            return self.values[name]
        self.message(f"input {n} connected to {port or 'nothing'} address {address}")
        return requested

    def put_NDArrayPort(self, value: str) -> str:
        result = super().put_NDArrayPort(value)
        self.set("NDArrayPort_1", result)
        return result

    def put_NDArrayAddress(self, value: int) -> int:
        result = super().put_NDArrayAddress(value)
        self.set("NDArrayAddress_1", result)
        return result

    def _put_input(self, n: int, kind: str, value: Any) -> Any:
        """A put of NDArrayPort_N / NDArrayAddress_N."""
        if n == 1:  # the plugin's own NDArrayPort/NDArrayAddress under a second name
            if kind == "NDArrayPort":
                result = Plugin.put_NDArrayPort(self, value)
            else:
                result = Plugin.put_NDArrayAddress(self, value)
            self.set(kind, result)
            return result
        name = f"{kind}_{n}"
        if kind == "NDArrayPort":
            return self._rewire_input(n, value, self.values[f"NDArrayAddress_{n}"], name, value)
        return self._rewire_input(n, self.values[f"NDArrayPort_{n}"], value, name, value)

    # --- data path ------------------------------------------------------------------------------
    def process(self, array: NDArray) -> NDArray:
        # a new NDArray sharing the pixels, for the NDAttributesFile attributes
        return array.derive(array.data)
