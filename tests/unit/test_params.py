"""ndflow.params.Param.coerce for every Kind: the one validator behind every CA put.

Contract (docstring): returns (value, note); note says what was clamped or truncated; raises
ValueError when the value cannot be used at all. Component.handle_put turns TypeError and
ValueError into a put refusal; anything else escapes as an unexplained error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndflow.params import (STRING_MAX, Kind, array_param, bool_param, enum_param, float_param,
                           int_param, string_param, text_param)

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1

# --- INT ------------------------------------------------------------------------------------------
I = int_param("NumImages")


@pytest.mark.parametrize("raw, expected", [
    (5, 5), (-7, -7), (True, 1), (np.int64(12), 12), (np.uint16(9), 9),
    (2.9, 2), (-2.9, -2),  # truncation toward zero, as EPICS' double -> long
    ("3.7", 3), ("-3.7", -3), (" 12 ", 12), ("1e3", 1000), ("+4", 4), ("0", 0),
])
def test_int_accepts_numbers_and_numeric_strings(raw, expected):
    value, note = I.coerce(raw)
    assert value == expected and type(value) is int
    assert note is None


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), -float("inf"), "nan", "NaN", "inf",
                                 "-inf", np.float64("nan"), np.float64("inf")])
def test_int_refuses_nan_and_inf(raw):
    with pytest.raises(ValueError, match="is not a number"):
        I.coerce(raw)


@pytest.mark.parametrize("raw", ["", "   ", "abc", "1,5", "0x10"])
def test_int_refuses_non_numeric_strings(raw):
    with pytest.raises(ValueError):
        I.coerce(raw)


def test_int_refuses_none_with_type_error():
    with pytest.raises(TypeError):  # handle_put turns TypeError into a refusal too
        I.coerce(None)


def test_int_clamps_against_low_and_high_with_note():
    p = int_param("Gain", low=1, high=10)
    assert p.coerce(5) == (5, None)
    assert p.coerce(1) == (1, None) and p.coerce(10) == (10, None)
    assert p.coerce(0) == (1, "0 below minimum, clamped to 1")
    assert p.coerce(-3) == (1, "-3 below minimum, clamped to 1")
    assert p.coerce(11) == (10, "11 above maximum, clamped to 10")
    assert p.coerce("99.5") == (10, "99 above maximum, clamped to 10")
    value, _ = p.coerce(0)
    assert type(value) is int


def test_int_low_only_and_high_only():
    assert int_param("X", low=0).coerce(10 ** 6) == (10 ** 6, None)
    assert int_param("X", high=5).coerce(-10 ** 6) == (-10 ** 6, None)
    assert int_param("X", high=5).coerce(6) == (5, "6 above maximum, clamped to 5")


@pytest.mark.parametrize("raw", [3_000_000_000, "3e9", 2 ** 40, -(2 ** 31) - 1])
def test_int_out_of_int32_range_is_refused_or_clamped(raw):
    try:
        value, note = I.coerce(raw)
    except ValueError:
        return
    assert INT32_MIN <= value <= INT32_MAX
    assert note  # the operator is told


def test_int_refuses_float32_infinity_with_value_error():
    with pytest.raises(ValueError):
        I.coerce(np.float32("inf"))


def test_int_refuses_float32_nan():
    with pytest.raises(ValueError):
        I.coerce(np.float32("nan"))


# --- FLOAT ----------------------------------------------------------------------------------------
F = float_param("AcquireTime")


@pytest.mark.parametrize("raw, expected", [
    (1.5, 1.5), (3, 3.0), (True, 1.0), (np.float32(0.25), 0.25), (np.int32(-4), -4.0),
    ("1.5", 1.5), (" 2 ", 2.0), ("1e-3", 0.001), ("-0", -0.0),
])
def test_float_accepts_numbers_and_numeric_strings(raw, expected):
    value, note = F.coerce(raw)
    assert value == expected and type(value) is float
    assert note is None


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), -float("inf"), "nan", "inf",
                                 "-Infinity", np.float32("nan"), np.float32("inf"), 1e308 * 10])
def test_float_refuses_nan_and_inf(raw):
    with pytest.raises(ValueError, match="is not a finite number"):
        F.coerce(raw)


@pytest.mark.parametrize("raw", ["", "abc", "1.0.0"])
def test_float_refuses_non_numeric_strings(raw):
    with pytest.raises(ValueError):
        F.coerce(raw)


def test_float_refuses_none_with_type_error():
    with pytest.raises(TypeError):
        F.coerce(None)


def test_float_clamps_against_low_and_high_with_note():
    p = float_param("Period", low=0.5, high=2.0)
    assert p.coerce(1.0) == (1.0, None)
    assert p.coerce(0.1) == (0.5, "0.1 below minimum, clamped to 0.5")
    assert p.coerce(2.5) == (2.0, "2.5 above maximum, clamped to 2")
    assert p.coerce("3") == (2.0, "3.0 above maximum, clamped to 2")
    assert p.coerce(-1e-9) == (0.5, "-1e-09 below minimum, clamped to 0.5")
    value, _ = p.coerce(-5)
    assert type(value) is float


def test_float_nan_is_refused_not_clamped():
    p = float_param("Period", low=0.0, high=1.0)
    with pytest.raises(ValueError):
        p.coerce(float("nan"))


# --- ENUM -----------------------------------------------------------------------------------------
E = enum_param("ImageMode", ("Single", "Multiple", "Continuous"))


@pytest.mark.parametrize("raw, expected", [
    ("Single", 0), ("Multiple", 1), ("Continuous", 2),  # by string
    (0, 0), (2, 2), (np.int16(1), 1), (True, 1),  # by index
    ("1", 1), (" 2 ", 2),  # index as text (not a choice name)
    (1.0, 1), (1.7, 1),  # double -> enum truncates, as in EPICS
])
def test_enum_by_string_or_index(raw, expected):
    assert E.coerce(raw) == (expected, None)


@pytest.mark.parametrize("raw", [3, -1, 99, "3", "-1", 3.0])
def test_enum_index_out_of_range_refused(raw):
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        E.coerce(raw)


@pytest.mark.parametrize("raw", ["single", "Single ", "Off", "", "+1", "1.0"])
def test_enum_non_choice_string_refused_naming_the_choices(raw):
    with pytest.raises(ValueError) as info:
        E.coerce(raw)
    assert "['Single', 'Multiple', 'Continuous']" in str(info.value)


def test_enum_choice_names_win_over_index_text():
    """ADCore-style binning choices "1", "2", "4", "8": the string is the name, not the index."""
    p = enum_param("Bin", ("1", "2", "4", "8"))
    assert p.coerce("2") == (1, None)
    assert p.coerce("8") == (3, None)
    assert p.coerce(2) == (2, None)  # an int is still an index
    assert p.coerce("3") == (3, None)  # not a name: index 3


def test_bool_param():
    b = bool_param("WaitForPlugins")
    assert b.kind is Kind.ENUM and b.choices == ("No", "Yes")
    assert b.coerce("Yes") == (1, None) and b.coerce("No") == (0, None)
    assert b.coerce(1) == (1, None)
    with pytest.raises(ValueError):
        b.coerce(2)
    with pytest.raises(ValueError):
        b.coerce("yes")


@pytest.mark.parametrize("raw", [float("nan"), np.float64("nan")])
def test_enum_refuses_nan(raw):
    with pytest.raises(ValueError):
        E.coerce(raw)


@pytest.mark.parametrize("raw", [float("inf"), -float("inf")])
def test_enum_refuses_infinity_with_value_error(raw):
    with pytest.raises(ValueError):
        E.coerce(raw)


def test_enum_refuses_none_with_type_error():
    with pytest.raises(TypeError):
        E.coerce(None)


# --- STRING ---------------------------------------------------------------------------------------
S = string_param("FileName")


def test_string_limit_is_39_characters():
    assert STRING_MAX == 40
    s39 = "x" * 39
    assert S.coerce(s39) == (s39, None)
    assert S.coerce("y" * 40) == ("y" * 39, "40 characters truncated to 39")
    assert S.coerce("z" * 100) == ("z" * 39, "100 characters truncated to 39")
    assert S.coerce("") == ("", None)


def test_string_from_bytes_stops_at_nul_and_decodes_latin1():
    assert S.coerce(b"abc\0def") == ("abc", None)
    assert S.coerce(bytearray(b"xy\0\0\0")) == ("xy", None)
    assert S.coerce(b"\0abc") == ("", None)
    assert S.coerce(b"caf\xe9") == ("caf\xe9", None)
    assert S.coerce(b"a" * 40 + b"\0") == ("a" * 39, "40 characters truncated to 39")


def test_string_from_other_types_uses_str():
    assert S.coerce(5) == ("5", None)
    assert S.coerce(1.5) == ("1.5", None)


def test_string_keeps_whitespace():
    assert S.coerce("  a b  ") == ("  a b  ", None)


# --- TEXT -----------------------------------------------------------------------------------------
def test_text_truncates_to_length_minus_one():
    t = text_param("FilePath", length=10)
    assert t.coerce("a" * 9) == ("a" * 9, None)
    assert t.coerce("b" * 10) == ("b" * 9, "10 characters truncated to 9")
    assert t.coerce("c" * 300) == ("c" * 9, "300 characters truncated to 9")


def test_text_default_length_and_long_values():
    t = text_param("Path")  # 256 by default
    s = "/data/" + "d" * 249
    assert len(s) == 255
    assert t.coerce(s) == (s, None)
    assert t.coerce(s + "x") == (s, "256 characters truncated to 255")


def test_text_from_bytes_with_nul():
    t = text_param("FilePath", length=10)
    assert t.coerce(b"/tmp\0garbage") == ("/tmp", None)
    assert t.coerce(b"0123456789ab\0") == ("012345678", "12 characters truncated to 9")


def test_text_is_not_limited_to_40():
    t = text_param("Template", length=200)
    assert t.coerce("q" * 150) == ("q" * 150, None)


# --- ARRAY ----------------------------------------------------------------------------------------
def test_array_passes_through_untouched():
    a = array_param("ArrayData", "u2", 16)
    data = np.arange(16, dtype=np.uint16)
    value, note = a.coerce(data)
    assert value is data and note is None


# --- every kind covered ---------------------------------------------------------------------------
def test_every_kind_is_covered_here():
    covered = {Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.STRING, Kind.TEXT, Kind.ARRAY}
    assert covered == set(Kind), "a new Kind needs coerce tests"


def test_coerce_never_returns_non_finite_numbers():
    for p in (I, F, E):
        for raw in (float("nan"), float("inf")):
            try:
                value, _ = p.coerce(raw)
            except (ValueError, OverflowError):
                continue
            assert math.isfinite(value)
