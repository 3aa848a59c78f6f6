"""ndflow.params.Param.coerce for every Kind: the one validator behind every CA put.

Contract (docstring): returns (value, note); note says what was clamped or truncated; raises
ValueError when the value cannot be used at all. Component.handle_put turns TypeError and
ValueError into a put refusal; anything else escapes as an unexplained error.

Also here, as they are the same rules seen from the wire: how a CA put's value reaches coerce
(ndflow.ca.channels.wire_value) and the per-PV rate limit of refusal lines (RefusalLog).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndflow.params import (STRING_MAX, Access, Kind, array_param, bool_param, enum_param,
                           float_param, int_param, string_param, text_param)

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
def test_a_frame_parameter_refuses_every_put():
    from ndflow.params import ndarray_param
    frame = ndarray_param("Image")
    for raw in (0, "x", np.zeros(4), None):
        with pytest.raises((ValueError, TypeError)):
            frame.coerce(raw)


def test_every_kind_is_covered_here():
    covered = {Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.STRING, Kind.TEXT, Kind.ARRAY, Kind.NDARRAY}
    assert covered == set(Kind), "a new Kind needs coerce tests"


def test_coerce_never_returns_non_finite_numbers():
    for p in (I, F, E):
        for raw in (float("nan"), float("inf")):
            try:
                value, _ = p.coerce(raw)
            except (ValueError, OverflowError):
                continue
            assert math.isfinite(value)


# --- rules added for bad CA puts (refused cleanly, with a reason that fits one log line) ----------
@pytest.mark.parametrize("p", [I, F])
@pytest.mark.parametrize("raw", ["", "   ", b"", "\0"])
def test_empty_string_into_a_number_is_refused(p, raw):
    """caproto turned "" into 0 before coerce saw it; EPICS' own cvt_st_* too. Refused now."""
    with pytest.raises(ValueError, match="an empty string is not a number"):
        p.coerce(raw)


@pytest.mark.parametrize("p", [I, F])
def test_number_as_bytes_is_read_like_a_string(p):
    assert p.coerce(b"12") == (12, None)
    assert p.coerce(bytearray(b" 3\0junk")) == (3, None)


def test_huge_python_int_is_refused_not_overflow_error():
    with pytest.raises(ValueError, match="32-bit range"):
        I.coerce(10 ** 400)
    with pytest.raises(ValueError, match="not a finite number"):
        F.coerce(10 ** 400)  # float() raises OverflowError: a refusal, not a crash
    with pytest.raises(ValueError, match="32-bit range"):
        I.coerce(1e300)


def test_refusals_quote_a_long_value_shortly():
    for p in (I, F, E):
        with pytest.raises(ValueError) as info:
            p.coerce("x" * 10_000)
        assert len(str(info.value)) < 200 and "10000 characters" in str(info.value)


@pytest.mark.parametrize("raw", [123.5, 7, np.float64(1.0), np.int32(3), True, float("nan")])
def test_text_pv_refuses_a_number(raw):
    """A char waveform (paths, file names, templates) stored a number as character codes."""
    t = text_param("FilePath")
    with pytest.raises(ValueError, match="FilePath takes text, not the number"):
        t.coerce(raw)
    assert t.coerce("123.5") == ("123.5", None)  # the same, written as text, is a name


def test_string_pv_still_takes_a_number_as_its_text():
    """A stringout converts a DBR_DOUBLE put to text (EPICS); unchanged."""
    assert S.coerce(7.5) == ("7.5", None)


@pytest.mark.parametrize("p", [S, text_param("FilePath")])
def test_strings_stop_at_the_first_nul(p):
    assert p.coerce("/tmp\0garbage") == ("/tmp", None)
    assert p.coerce("\0") == ("", None)


def test_integer_array_refuses_nan_inf_and_values_out_of_its_type():
    a = array_param("Dimensions", "i4", 10, access=Access.RW)
    value, note = a.coerce(np.array([1.9, -2.9]))
    assert value.dtype == np.int32 and list(value) == [1, -2] and note is None
    for bad in ([1.0, float("nan")], [float("inf")], [2.0 ** 40], [-(2 ** 31) - 1]):
        with pytest.raises(ValueError):
            a.coerce(np.array(bad))
    with pytest.raises(ValueError, match="takes numbers"):
        a.coerce(np.array(["1"], dtype=object))
    assert a.coerce([3, 4])[0].dtype == np.int32


def test_float_array_keeps_nan():
    a = array_param("Profile", "f8", 4, access=Access.RW)
    value, _ = a.coerce(np.array([1, 2], dtype=np.int16))
    assert value.dtype == np.float64
    assert math.isnan(a.coerce(np.array([np.nan], dtype=np.float32))[0][0])


# --- a put's value off the wire (ndflow.ca.channels.wire_value) --------------------------------------
def _wire(p, values, ctype):
    from caproto import ChannelType

    from ndflow.ca.channels import wire_value
    kind = getattr(ChannelType, ctype)
    if ctype == "STRING":
        data = [v.encode() if isinstance(v, str) else v for v in values]
    else:
        dtype = {"DOUBLE": ">f8", "LONG": ">i4", "CHAR": "u1", "ENUM": ">u2"}[ctype]
        data = np.array(values, dtype=dtype)
    return wire_value(p, data, kind)


def test_wire_values_reach_coerce_as_plain_python():
    assert _wire(I, [float("nan")], "DOUBLE") != _wire(I, [float("nan")], "DOUBLE")  # NaN itself
    assert _wire(I, [2.0 ** 40], "DOUBLE") == 2.0 ** 40  # not wrapped to a 32-bit int
    assert _wire(F, [""], "STRING") == ""  # not 0.0
    assert _wire(E, ["2"], "STRING") == "2"
    assert _wire(S, list(b"abc\0def"), "CHAR") == "abc"
    assert _wire(text_param("FilePath"), [123.5], "DOUBLE") == 123.5  # refused by coerce
    with pytest.raises(ValueError, match="3 values for a scalar PV"):
        _wire(I, [1, 2, 3], "LONG")
    with pytest.raises(ValueError, match="empty put"):
        _wire(F, [], "DOUBLE")
    with pytest.raises(ValueError, match="2 strings for a scalar PV"):
        _wire(E, ["a", "b"], "STRING")
    with pytest.raises(ValueError, match="11 elements for a waveform of 10"):
        _wire(array_param("Dimensions", "i4", 10, access=Access.RW), [0] * 11, "LONG")


def test_wire_refuses_non_plain_dbr_types():
    from caproto import ChannelType

    from ndflow.ca.channels import wire_value
    with pytest.raises(ValueError, match="plain DBR type"):
        wire_value(F, np.array([1.0]), ChannelType.TIME_DOUBLE)


# --- one log line per PV per interval (ndflow.refusals.RefusalLog) --------------------------------
def test_refusal_log_rate_limits_per_pv(caplog, monkeypatch):
    import logging

    from ndflow import refusals as channels
    clock = [100.0]
    monkeypatch.setattr(channels.time, "monotonic", lambda: clock[0])
    limiter = channels.RefusalLog(interval=5.0)
    logger = logging.getLogger("test.refusals")
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        assert limiter.refuse(logger, "P:A", "nan", "not a number")
        assert not limiter.refuse(logger, "P:A", "inf", "not a number")  # within 5 s: held
        assert limiter.refuse(logger, "P:B", "1", "other PV")  # each PV has its own limit
        clock[0] += 4.9
        assert not limiter.line(logger, "P:A", "P:A: 9 above maximum, clamped to 1")
        clock[0] += 0.2  # the interval is over: a line, with the count of those held back
        assert limiter.refuse(logger, "P:A", "''", "an empty string is not a number")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["P:A: put refused, value nan: not a number",
                     "P:B: put refused, value 1: other PV",
                     "P:A: put refused, value '': an empty string is not a number (2 more "
                     "refused or clamped puts of this PV were not logged)"]


def test_refusal_log_counts_held_lines_when_the_interval_ends(caplog):
    """In the event loop, the count comes when the interval ends, without a further put."""
    import asyncio
    import logging

    from ndflow import refusals as channels
    limiter = channels.RefusalLog(interval=0.05)
    logger = logging.getLogger("test.refusals")

    async def flood():
        for _ in range(100):
            limiter.refuse(logger, "P:C", "nan", "not a number")
        await asyncio.sleep(0.2)

    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "P:C: put refused, value nan: not a number"
    assert lines[1].startswith("P:C: 99 more refused or clamped puts in the last")
    assert len(lines) == 2
