"""The detector state machine as an explicit transition table.

States are ADCore's DetectorState_RBV strings. An event that the table does not allow from the
current state is a bug in a driver; it is logged and the state goes to Error rather than being
silently accepted.
"""

from __future__ import annotations

import enum
import logging
import threading

from .adcore import DETECTOR_STATES

log = logging.getLogger("ndflow.state")

DetectorState = enum.IntEnum("DetectorState", {name: i for i, name in enumerate(DETECTOR_STATES)})


class Event(enum.Enum):
    START = "start"  # Acquire=1 accepted
    EXPOSED = "exposed"  # exposure over, frame being read out
    WAIT = "wait"  # waiting for the rest of AcquirePeriod
    NEXT = "next"  # start the next exposure
    DONE = "done"  # all requested frames taken
    STOP = "stop"  # Acquire=0 during an acquisition
    STOPPED = "stopped"  # stop finished, Single/Multiple mode
    STOPPED_CONTINUOUS = "stopped_continuous"  # stop finished, Continuous mode (ADCore: Idle)
    FAULT = "fault"  # the driver reported an error
    RESET = "reset"  # leave Error


S, E = DetectorState, Event
_ACTIVE = (S.Acquire, S.Readout, S.Waiting)

TRANSITIONS: dict[tuple[DetectorState, Event], DetectorState] = {
    **{(s, E.START): S.Acquire for s in (S.Idle, S.Aborted, S.Error)},
    (S.Acquire, E.EXPOSED): S.Readout,
    (S.Readout, E.WAIT): S.Waiting,
    (S.Readout, E.NEXT): S.Acquire,
    (S.Waiting, E.NEXT): S.Acquire,
    (S.Readout, E.DONE): S.Idle,
    **{(s, E.STOP): S.Aborting for s in _ACTIVE},
    (S.Aborting, E.STOPPED): S.Aborted,
    (S.Aborting, E.STOPPED_CONTINUOUS): S.Idle,
    **{(s, E.FAULT): S.Error for s in DetectorState},
    (S.Error, E.RESET): S.Idle,
}


class StateMachine:
    def __init__(self, on_change) -> None:
        self.state = S.Idle
        self._on_change = on_change
        self._lock = threading.Lock()

    def fire(self, event: Event) -> DetectorState:
        with self._lock:
            new = TRANSITIONS.get((self.state, event))
            if new is None:
                log.error("detector state: event %s not allowed in state %s", event.value,
                          self.state.name)
                new = S.Error
            self.state = new
        self._on_change(new)
        return new

    def can(self, event: Event) -> bool:
        return (self.state, event) in TRANSITIONS


# --- the processing state of one acquisition (Lima2's run states) ------------------------------------

class RunState(enum.IntEnum):
    """Where one acquisition stands. Acquisition and processing end separately: a new acquisition
    may start while an earlier one is still in the pipeline (ACQ_DONE)."""

    RUNNING = 0
    ACQ_DONE = 1
    PROC_DONE = 2
    ACQ_FAILED = 3
    PROC_FAILED = 4




class RunEvent(enum.Enum):
    ACQUIRED = "acquired"  # the driver produced its last frame (or was stopped)
    ACQ_FAULT = "acq_fault"  # the driver failed
    DRAINED = "drained"  # every frame of the acquisition has left every plugin
    PROC_FAULT = "proc_fault"  # drained, but some frame failed in a plugin


R_, RE = RunState, RunEvent

RUN_TRANSITIONS: dict[tuple[RunState, RunEvent], RunState] = {
    (R_.RUNNING, RE.ACQUIRED): R_.ACQ_DONE,
    (R_.RUNNING, RE.ACQ_FAULT): R_.ACQ_FAILED,
    (R_.ACQ_DONE, RE.DRAINED): R_.PROC_DONE,
    (R_.ACQ_DONE, RE.PROC_FAULT): R_.PROC_FAILED,
    # a failed acquisition still drains what it produced; it stays failed
    (R_.ACQ_FAILED, RE.DRAINED): R_.ACQ_FAILED,
    (R_.ACQ_FAILED, RE.PROC_FAULT): R_.ACQ_FAILED,
}

#: states after which nothing of the acquisition is left in the pipeline
RUN_FINAL = frozenset({R_.PROC_DONE, R_.PROC_FAILED})


class RunMachine:
    """One acquisition's processing state. `on_enter(state)` runs after each transition, in the
    thread that fired it (entry actions: publish the state, resolve completions)."""

    def __init__(self, on_enter=None) -> None:
        self.state = R_.RUNNING
        self._on_enter = on_enter
        self._lock = threading.Lock()

    def fire(self, event: RunEvent) -> RunState | None:
        """Apply `event`; return the new state, or None (and leave the state) when the table
        does not allow it (an event arriving twice, or after a final state)."""
        with self._lock:
            new = RUN_TRANSITIONS.get((self.state, event))
            if new is None:
                log.debug("run state: event %s ignored in state %s", event.value, self.state.name)
                return None
            self.state = new
        if self._on_enter is not None:
            self._on_enter(new)
        return new
