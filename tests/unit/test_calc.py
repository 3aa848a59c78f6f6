"""ndflow.calc, the EPICS calc language of CircularBuff's TriggerCalc and Veto's VetoCalc:
values against what EPICS base's calcPerform gives, refusals with positions, and that no
expression reaches Python's eval."""

from __future__ import annotations

import builtins
import math
import warnings

import numpy as np
import pytest

from ndflow.calc import CalcError, attribute_number, compile_calc
from ndflow.ndarray import NDAttribute

ENV = {"A": 6.0, "B": 1.0, "C": 3.0, "D": 2.0}


@pytest.mark.parametrize("expression, expected", [
    ("A+B*C", 9.0), ("(A+B)*C", 21.0), ("A-B-C", 2.0), ("A/D/C", 1.0),
    ("2^3^2", 64.0),  # EPICS: left-associative
    ("-A^2", 36.0),  # unary minus binds tighter, as in postfix.c
    ("A>5 && B", 1.0), ("A<5 || !B", 0.0), ("A=6", 1.0), ("A#6", 0.0), ("A!=6", 0.0),
    ("A>=6?C:D", 3.0), ("A<6?C:B?D:0", 2.0),
    ("7%3", 1.0), ("-7%3", -1.0), ("5%0", math.nan),
    ("6&3", 2.0), ("6|3", 7.0), ("6 XOR 3", 5.0), ("1<<4", 16.0), ("-16>>2", -4.0),
    ("-16>>>28", 15.0), ("~0", -1.0), ("NOT 0", -1.0),
    ("MAX(A,B,C,9)", 9.0), ("MIN(A,B)", 1.0), ("MAX(A,NAN)", math.nan),
    ("ABS -A", 6.0), ("SQR(16)", 4.0), ("ATAN2(1,0)", 0.0), ("FMOD(7,4)", 3.0),
    ("NINT(2.5)", 3.0), ("NINT(-2.5)", -3.0), ("FLOOR(-1.5)", -2.0),
    ("LOG(1000)", 3.0), ("LN(1)", 0.0), ("ISNAN(0/0)", 1.0), ("FINITE(A,1/0)", 0.0),
    ("0x10+a", 22.0), ("1e2", 100.0), ("PI>3", 1.0), ("G+L", 0.0),
    ("SQRT(-1)", math.nan), ("1/0", math.inf), ("-1/0", -math.inf), ("0/0", math.nan),
    ("(-8)^(1/3)", math.nan), ("1e308*10", math.inf), ("LOG(0)", -math.inf), ("INF-INF", math.nan),
])
def test_values(expression, expected):
    value = compile_calc(expression)(ENV)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


@pytest.mark.parametrize("expression, where", [
    ("", 1), ("A+", 3), ("A B", 3), ("(A", 3), ("A)", 2), ("FOO(1)", 1), ("A:=1", 2),
    ("A;B", 2), ("MAX", 4), ("FMOD(1)", 1), ("A $ B", 3), ("__import__('os')", 12),
])
def test_refusals_name_the_position(expression, where):
    with pytest.raises(CalcError) as info:
        compile_calc(expression)
    assert info.value.position == where, str(info.value)


def test_deep_nesting_and_long_text_are_refused_not_crashed():
    with pytest.raises(CalcError, match="nested too deeply"):
        compile_calc("(" * 200 + "1" + ")" * 200)
    with pytest.raises(CalcError, match="nested too deeply"):
        compile_calc("-" * 500 + "1")
    assert compile_calc("+".join(["A"] * 128))(ENV) == 6.0 * 128  # a full 256-character calc
    with pytest.raises(CalcError, match="more than 200 operators"):  # 10 kB: refused, and an
        compile_calc("+".join(["A"] * 5000))  # evaluator of it would overflow the stack
    # the longest chains allowed, nested as deep as allowed, still evaluate
    nested = "(" * 39 + "+".join(["A"] * 150) + ")" * 39
    assert compile_calc(nested)(ENV) == 6.0 * 150
    with pytest.raises(CalcError):
        compile_calc("A" * 10_000 + "(")


def test_no_expression_reaches_eval(monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("eval/exec/compile called")
    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    assert compile_calc("A*2+SIN(0)")(ENV) == 12.0
    with pytest.raises(CalcError):
        compile_calc("().__class__")


def test_domain_errors_give_c_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning would raise here
        for text in ("1/0", "0/0", "LN(-1)", "ACOS(2)", "(-8)^0.5", "1e308*1e308", "FMOD(1,0)",
                     "A/B"):
            compile_calc(text)({"A": np.float32(1.0), "B": np.float32(0.0)})


def test_variables_are_floats_of_any_numeric_kind():
    assert compile_calc("A+B")({"A": np.float32(1.5), "B": np.int64(2)}) == 3.5


def test_attribute_number_reads_numbers_and_gives_nan_otherwise():
    attributes = {"T": NDAttribute("T", 4.5), "N": NDAttribute("N", np.array([7])),
                  "S": NDAttribute("S", "12")}
    assert attribute_number(attributes, "T") == 4.5
    assert attribute_number(attributes, "N") == 7.0
    assert math.isnan(attribute_number(attributes, "S"))  # text is not parsed (ADCore)
    assert math.isnan(attribute_number(attributes, "absent"))
    assert math.isnan(attribute_number(attributes, ""))
