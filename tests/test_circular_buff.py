"""NDPluginCircularBuff through a real IOC: pre/post counts and the unique ids around a trigger,
soft triggers in both flush modes, attribute (calc) triggers with PresetTriggerCount, the
ophyd-async continuous-acquisition sequence, and bad input; plus the calc evaluator as a unit."""

from __future__ import annotations

import math
import time

import epics
import pytest

from conftest import REPO, running_ioc
from test_acquisition import get, put, wait_for

CONFIG = f"""
algorithm_folders: ['{REPO / "tests" / "algorithms"}']
drivers:
  - {{type: sim, port: SIM1, prefix: "cam1:", options: {{max_size_x: 64, max_size_y: 48}}}}
plugins:
  - {{type: circularbuff, port: CB1, prefix: "CB1:", input: SIM1,
     options: {{pre_count: 3, post_count: 2}}}}
  - {{type: python, port: REC, prefix: "Rec:", input: CB1, options: {{file: recorder.py}}}}
"""
COUNTER_XML = ('<Attributes><Attribute name="Counter" type="PARAM" source="ArrayCounter" '
               'datatype="INT" description="frame counter"/></Attributes>')


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("cb"), timeout=60) as ioc:
        for name, value in [("WaitForPlugins", "Yes"), ("AcquireTime", 0.001),
                            ("AcquirePeriod", 0.0), ("NDAttributesFile", COUNTER_XML)]:
            put(ioc.prefix + "cam1:" + name, value)
        yield ioc


@pytest.fixture
def p(ioc):
    """Idle buffer with PreCount 3, PostCount 2, one trigger, ids restarting at 1."""
    p = ioc.prefix
    put(p + "CB1:Capture", 0)
    put(p + "cam1:ArrayCounter", 0)
    for name, value in [("PreCount", 3), ("PostCount", 2), ("PresetTriggerCount", 1),
                        ("FlushOnSoftTrg", "OnNewImage"), ("TriggerCalc", "0"),
                        ("TriggerA", ""), ("TriggerB", "")]:
        put(p + "CB1:" + name, value)
    return p


def acquire(p: str, frames: int) -> None:
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", frames)
    put(p + "cam1:Acquire", 1, timeout=30)


class Received:
    """The unique ids the recorder downstream of CB1 got since this object was made."""

    def __init__(self, p: str) -> None:
        self.p = p
        self.start = get(p + "Rec:Received_RBV")

    def count(self) -> int:
        return get(self.p + "Rec:Received_RBV") - self.start

    def ids(self) -> list[int]:
        n = self.count()
        return [int(i) for i in get(self.p + "Rec:Ids_RBV")][-n:] if n else []


def busy_put(pv_name: str, value: int) -> epics.PV:
    """Start a put-callback; `pv.put_complete` says when the record finished."""
    pv = epics.PV(pv_name)
    assert pv.wait_for_connection(5)
    pv.put(value, wait=False, use_complete=True)
    return pv


def start_capture(p: str) -> epics.PV:
    capture = busy_put(p + "CB1:Capture", 1)
    assert wait_for(lambda: get(p + "CB1:Capture_RBV", as_string=True) == "Capturing")
    return capture


def test_soft_trigger_on_new_image_emits_pre_and_post_arrays(p):
    rec = Received(p)
    capture = start_capture(p)
    acquire(p, 5)  # ids 1..5: held, only the last 3 kept
    assert rec.count() == 0
    assert get(p + "CB1:CurrentQty_RBV") == 3
    assert get(p + "CB1:StatusMessage") == "Buffer Wrapping"
    trigger = busy_put(p + "CB1:Trigger", 1)
    assert wait_for(lambda: get(p + "CB1:Trigger_RBV", as_string=True) == "Triggered")
    time.sleep(0.2)
    assert rec.count() == 0  # OnNewImage: the ring waits for the next array
    assert not trigger.put_complete
    acquire(p, 4)  # 6 triggers: 3,4,5,6 go out; 7 is the second post array; 8, 9 dropped
    assert wait_for(lambda: rec.count() == 5)
    assert rec.ids() == [3, 4, 5, 6, 7]
    assert wait_for(lambda: trigger.put_complete and capture.put_complete)
    assert get(p + "CB1:Capture_RBV", as_string=True) == "Done"
    assert get(p + "CB1:Trigger_RBV", as_string=True) == "Done"
    assert get(p + "CB1:ActualTriggerCount_RBV") == 1
    assert get(p + "CB1:PostTriggerQty_RBV") == 2
    assert get(p + "CB1:StatusMessage") == "Acquisition Completed"
    time.sleep(0.2)
    assert rec.count() == 5


def test_soft_trigger_immediately_flushes_at_the_put(p):
    put(p + "CB1:FlushOnSoftTrg", "Immediately")
    rec = Received(p)
    capture = start_capture(p)
    acquire(p, 5)
    trigger = busy_put(p + "CB1:Trigger", 1)
    assert wait_for(lambda: rec.count() == 3)  # no new array needed
    assert rec.ids() == [3, 4, 5]
    assert get(p + "CB1:CurrentQty_RBV") == 0
    acquire(p, 3)  # 6 and 7 are the post-trigger arrays, 8 comes after the capture
    assert wait_for(lambda: rec.count() == 5)
    assert rec.ids() == [3, 4, 5, 6, 7]
    assert wait_for(lambda: trigger.put_complete and capture.put_complete)
    assert get(p + "CB1:FlushOnSoftTrg_RBV", as_string=True) == "Immediately"


def test_attribute_calc_triggers_until_the_preset_count(p):
    put(p + "CB1:PreCount", 1)
    put(p + "CB1:PostCount", 2)
    put(p + "CB1:PresetTriggerCount", 2)
    put(p + "CB1:TriggerA", "Counter")
    put(p + "CB1:TriggerB", "NoSuchAttribute")
    put(p + "CB1:TriggerCalc", "A%4=0 && ISNAN(B)")
    assert get(p + "CB1:TriggerCalc_RBV", as_string=True) == "A%4=0 && ISNAN(B)"
    rec = Received(p)
    capture = start_capture(p)
    acquire(p, 12)
    # trigger 1 at id 4: ring [3], then 4, 5; re-armed, trigger 2 at id 8: [7], 8, 9; stop
    assert wait_for(lambda: rec.count() == 6)
    assert rec.ids() == [3, 4, 5, 7, 8, 9]
    assert wait_for(lambda: capture.put_complete)
    assert get(p + "CB1:ActualTriggerCount_RBV") == 2
    assert get(p + "CB1:TriggerAVal") == 8.0  # the last evaluated array triggered
    assert math.isnan(get(p + "CB1:TriggerBVal"))
    assert get(p + "CB1:TriggerCalcVal") == 1.0
    assert get(p + "CB1:Capture", as_string=True) == "Done"


def test_unlimited_triggers_keep_capturing(p):
    put(p + "CB1:PreCount", 0)
    put(p + "CB1:PostCount", 1)
    put(p + "CB1:PresetTriggerCount", 0)
    put(p + "CB1:TriggerA", "Counter")
    put(p + "CB1:TriggerCalc", "A>=3 & A<=6")  # bitwise AND of two comparisons
    rec = Received(p)
    start_capture(p)
    acquire(p, 8)
    assert wait_for(lambda: rec.count() == 4)
    assert rec.ids() == [3, 4, 5, 6]
    assert get(p + "CB1:ActualTriggerCount_RBV") == 4
    assert get(p + "CB1:Capture_RBV", as_string=True) == "Capturing"
    assert get(p + "CB1:StatusMessage") == "Dropping frames"
    put(p + "CB1:Capture", 0)
    assert get(p + "CB1:StatusMessage") == "Acquisition Stopped"


def test_ophyd_async_continuous_acquisition_sequence(p):
    """ContAcqDetector: camera already acquiring continuously; PreCount 0, PostCount n,
    PresetTriggerCount 1, OnNewImage; Capture=1 is the acquire signal (then Trigger=1, as
    ophyd-async's fix for the never-triggered buffer does)."""
    put(p + "cam1:ImageMode", "Continuous")
    put(p + "cam1:AcquirePeriod", 0.01)
    put(p + "cam1:Acquire", 1, wait=False)
    try:
        assert wait_for(lambda: get(p + "cam1:ArrayCounter_RBV") >= 3)
        for name, value in [("EnableCallbacks", "Enable"), ("PreCount", 0), ("PostCount", 5),
                            ("PresetTriggerCount", 1), ("FlushOnSoftTrg", "OnNewImage")]:
            put(p + "CB1:" + name, value)
            assert get(p + "CB1:" + name + "_RBV", as_string=isinstance(value, str)) == value
        rec = Received(p)
        capture = start_capture(p)
        time.sleep(0.1)
        assert rec.count() == 0  # PreCount 0 and no trigger yet: frames are dropped
        put(p + "CB1:Trigger", 1)  # completes when the 5 arrays are out
        assert wait_for(lambda: capture.put_complete)
        assert get(p + "CB1:Capture_RBV", as_string=True) == "Done"
        assert wait_for(lambda: rec.count() >= 5)
        time.sleep(0.2)  # the camera goes on; the buffer does not
        assert rec.count() == 5
        ids = rec.ids()
        assert ids == list(range(ids[0], ids[0] + 5))
    finally:
        put(p + "cam1:Acquire", 0)
        put(p + "cam1:AcquirePeriod", 0.0)


def test_bad_input_is_reported_and_the_ioc_keeps_serving(p, tmp_path):
    marker = tmp_path / "pwned"
    for text, reason in [("A>", "end of expression at character 3"),
                         ("(A>5", "expected ')'"),
                         (f"__import__('os').system('touch {marker}')", "unexpected"),
                         ("EXEC(A)", "unknown name 'EXEC'"),
                         ("A:=1", "not supported")]:
        put(p + "CB1:TriggerCalc", text)
        assert get(p + "CB1:TriggerCalc_RBV", as_string=True) == text  # kept, as ADCore
        assert get(p + "CB1:StatusMessage").startswith("TriggerCalc:")
        assert reason in get(p + "CB1:StatusMessage_RBV", as_string=True)
    assert not marker.exists()
    rec = Received(p)
    start_capture(p)
    acquire(p, 4)  # the bad calc never triggers
    assert get(p + "CB1:CurrentQty_RBV") == 3 and rec.count() == 0
    put(p + "CB1:PreCount", 7)  # refused while capturing
    assert get(p + "CB1:PreCount_RBV") == 3
    assert get(p + "CB1:StatusMessage") == "Stop acquisition to set pre-count"
    put(p + "CB1:TriggerCalc", " ")  # blank means "0", as ADCore
    assert get(p + "CB1:TriggerCalc_RBV", as_string=True) == "0"
    put(p + "CB1:Capture", 0)
    put(p + "CB1:Trigger", 1)  # not capturing: completes at once, says why
    assert "not capturing" in get(p + "CB1:StatusMessage_RBV", as_string=True)
    assert get(p + "CB1:PluginType_RBV") == "NDPluginCircularBuff"


# --- the calc evaluator as a unit ---------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("A>5", 1.0), ("(A>5)&&(B<2)", 1.0), ("A#B", 1.0), ("A=6", 1.0), ("A==B", 0.0),
    ("ABS(-A)>1", 1.0), ("abs b", 1.0), ("-A^2", 36.0), ("2^3^2", 64.0), ("2**-1", 0.5),
    ("A%4", 2.0), ("-7%4", -3.0), ("A?B:C", 1.0), ("0?1:B?2:3", 2.0), ("MAX(A,B,C)", 6.0),
    ("MIN(A,NAN)", math.nan), ("1/0", math.inf), ("LOG(100)", 2.0), ("LN(0)", -math.inf),
    ("SQRT(-1)", math.nan), ("0x10 | 1", 17.0), ("6 AND 3", 2.0), ("6 XOR 3", 5.0),
    ("~0", -1.0), ("!A", 0.0), ("1<<33", 2.0), ("-1>>>28", 15.0), ("ATAN2(1,0)", 0.0),
    ("NINT(-2.5)", -3.0), ("FINITE(A,B)", 1.0), ("ISNAN(G)", 0.0), ("PI>3.14", 1.0),
    ("1e2+.5", 100.5), ("C*D-E", 3.0),
])
def test_calc_matches_epics_semantics(expression, expected):
    from ndflow.plugins.circular_buff import compile_calc
    value = compile_calc(expression)({"A": 6.0, "B": 1.0, "C": 3.0, "D": 2.0, "E": 3.0})
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


@pytest.mark.parametrize("expression, position", [
    ("A>", 3), ("A)", 2), ("A $ B", 3), ("FOO(1)", 1), ("MAX", 4), ("ATAN2(1)", 1),
    ("A B", 3), ("1;2", 2), ("(" * 60 + "A" + ")" * 60, 41), ("", 1),
])
def test_calc_errors_say_where(expression, position):
    from ndflow.plugins.circular_buff import CalcError, compile_calc
    with pytest.raises(CalcError) as info:
        compile_calc(expression)
    assert info.value.position == position
