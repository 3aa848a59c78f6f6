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
