"""The transition tables: the detector state (ADCore's DetectorState_RBV) and an acquisition's
processing state (Lima2's run states), with the Acquisition that drives the latter."""

from __future__ import annotations

import threading

import pytest

from ndflow.ndarray import Acquisition
from ndflow.state import (RUN_TRANSITIONS, TRANSITIONS, DetectorState, Event, RunEvent,
                          RunMachine, RunState, StateMachine)

S, E = DetectorState, Event


def test_a_single_acquisition_walks_adcore_states():
    seen = []
    machine = StateMachine(seen.append)
    for event in (E.START, E.EXPOSED, E.WAIT, E.NEXT, E.EXPOSED, E.DONE):
        machine.fire(event)
    assert seen == [S.Acquire, S.Readout, S.Waiting, S.Acquire, S.Readout, S.Idle]


@pytest.mark.parametrize("continuous, end", [(False, S.Aborted), (True, S.Idle)])
def test_stop_ends_aborted_or_idle_as_adcore(continuous, end):
    machine = StateMachine(lambda s: None)
    machine.fire(E.START)
    machine.fire(E.STOP)
    assert machine.state is S.Aborting
    machine.fire(E.STOPPED_CONTINUOUS if continuous else E.STOPPED)
    assert machine.state is end


def test_every_disallowed_event_goes_to_error_and_reset_leaves_it():
    for state in DetectorState:
        for event in Event:
            machine = StateMachine(lambda s: None)
            machine.state = state
            new = machine.fire(event)
            assert new is TRANSITIONS.get((state, event), S.Error)
    machine = StateMachine(lambda s: None)
    machine.fire(E.EXPOSED)  # not allowed from Idle
    assert machine.state is S.Error
    machine.fire(E.RESET)
    assert machine.state is S.Idle


def test_run_states_acquisition_then_processing():
    entered = []
    run = RunMachine(entered.append)
    assert run.fire(RunEvent.ACQUIRED) is RunState.ACQ_DONE
    assert run.fire(RunEvent.ACQUIRED) is None  # twice: ignored, state kept
    assert run.fire(RunEvent.DRAINED) is RunState.PROC_DONE
    assert run.fire(RunEvent.ACQ_FAULT) is None  # nothing after a final state
    assert entered == [RunState.ACQ_DONE, RunState.PROC_DONE]


def test_run_table_has_no_way_back_to_running():
    assert all(new is not RunState.RUNNING for new in RUN_TRANSITIONS.values())
    assert RUN_TRANSITIONS[(RunState.ACQ_DONE, RunEvent.PROC_FAULT)] is RunState.PROC_FAILED
    assert RUN_TRANSITIONS[(RunState.RUNNING, RunEvent.ACQ_FAULT)] is RunState.ACQ_FAILED


def test_processing_ends_when_the_last_frame_leaves_the_pipeline():
    states = []
    acquisition = Acquisition.start({}, on_state=lambda a, s: states.append(s))
    acquisition.in_flight.enter()  # two frames in plugins
    acquisition.in_flight.enter()
    acquisition.end_acquisition()
    assert acquisition.acquired.done() and not acquisition.processed.done()
    assert acquisition.state is RunState.ACQ_DONE
    acquisition.in_flight.leave()
    assert not acquisition.processed.done()
    done_in = []
    worker = threading.Thread(target=lambda: (acquisition.in_flight.leave(),
                                              done_in.append(threading.current_thread())))
    worker.start()
    worker.join()
    assert acquisition.processed.done() and acquisition.state is RunState.PROC_DONE
    assert states == [RunState.ACQ_DONE, RunState.PROC_DONE]


def test_a_frame_that_failed_in_a_plugin_makes_processing_failed():
    acquisition = Acquisition.start({})
    acquisition.processing_errors = True
    acquisition.end_acquisition()  # nothing in flight: drained at once
    assert acquisition.state is RunState.PROC_FAILED and acquisition.processed.done()


def test_a_failed_acquisition_stays_failed_and_still_completes_processing():
    acquisition = Acquisition.start({})
    acquisition.in_flight.enter()
    acquisition.end_acquisition(failed=True)
    assert acquisition.state is RunState.ACQ_FAILED and not acquisition.processed.done()
    acquisition.in_flight.leave()
    assert acquisition.state is RunState.ACQ_FAILED and acquisition.processed.done()
