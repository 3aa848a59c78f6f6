"""Two adjustments to caproto's server, applied once when Channel Access is loaded.

- A large waveform update is converted to its wire form once, by ndflow (`WireArray`), and
  caproto hands it on as it is instead of copying it again.
- A refused put no longer makes caproto re-evaluate every channel of the client's circuit.

Each checks that caproto still has the shape it expects, and does nothing otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np


# --- caproto: a large array is converted to its wire form once ------------------------------------
class WireArray(np.ndarray):
    """A waveform's value already in wire form (big-endian, the DBR's element type), as
    ParamChannel._read made it for one update."""


def _wire_passthrough() -> bool:
    """caproto's EventAddResponse converts its data with backend.python_to_epics, which always
    copies (`astype`) even when the array is already what the wire needs. A WireArray is handed
    on as it is (a plain view, contiguous). Every other value keeps caproto's conversion. Done
    once; again if a backend was selected since (select_backend replaces the function)."""
    from caproto._backend import backend

    current = backend.python_to_epics
    if current is None or getattr(current, "_ndflow", False):
        return False

    def python_to_epics(dtype: Any, values: Any, *, byteswap: bool = True,
                        convert_from: Any = None) -> Any:
        if type(values) is WireArray:
            plain = values.view(np.ndarray)
            if plain.dtype == backend.type_map.get(dtype):
                return plain if plain.flags.c_contiguous else np.ascontiguousarray(plain)
            values = plain  # another DBR type than it was made for: caproto converts
        return current(dtype, values, byteswap=byteswap, convert_from=convert_from)

    python_to_epics._ndflow = True  # type: ignore[attr-defined]
    backend.python_to_epics = python_to_epics
    return True


_wire_passthrough()


# --- caproto: a refused put must not cost the event loop O(channels) ------------------------------
def _circuit_commands_in_constant_time() -> bool:
    """caproto answers a refused put with an ErrorResponse, a circuit-level command, and after
    every such command re-evaluates the state of every channel of that client's circuit: with a
    client holding 2,000 channels, each refusal cost the event loop ~8 ms, so a fuzzing client
    could starve every other client. The re-evaluation can only change something when a role of
    the circuit is DISCONNECTED (caproto's state-triggered transitions all have that circuit
    state), so it is skipped otherwise: the same states, in constant time. Applied only if
    caproto's tables still have that shape."""
    from caproto import _state

    table = getattr(_state, "STATE_TRIGGERED_TRANSITIONS", None)
    circuit = getattr(_state, "CircuitState", None)
    if not isinstance(table, dict) or circuit is None or getattr(circuit, "_ndflow", False):
        return False
    if any(key[1] is not _state.DISCONNECTED for role in table.values() for key in role):
        return False
    original = circuit.process_command_type

    def process_command_type(self: Any, role: Any, command_type: Any) -> None:
        if _state.DISCONNECTED in self.states.values():
            return original(self, role, command_type)
        self._fire_command_triggered_transitions(role, command_type)
        if _state.DISCONNECTED in self.states.values():  # this command disconnected it
            for chan in self.channels.values():
                chan.states.update()

    circuit.process_command_type = process_command_type
    circuit._ndflow = True
    return True


_circuit_commands_in_constant_time()
