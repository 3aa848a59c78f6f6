"""EPICS access security files: parsing (errors name the line) and what a client may do."""

from __future__ import annotations

import pytest

from ndflow.access import OPEN, ACFError, Access, parse

ACF = """
# operators write from the control room; everyone else reads
UAG(ops) {op, alice}
HAG(control) {ctl01, LocalHost}
ASG(DEFAULT) {
    RULE(1, READ)
    RULE(1, WRITE, TRAPWRITE) {
        UAG(ops)
        HAG(control)
    }
}
ASG(FILES) {
    RULE(0, READ)
    RULE(1, WRITE) { UAG(ops) }
}
ASG(LOCKED)
ASG(CALCULATED) {
    INPA("13SIM1:cam1:Acquire")
    RULE(1, WRITE) { CALC("A=0") }
    RULE(1, READ)
}
"""


@pytest.fixture
def policy():
    return parse(ACF, "beamline.acf")


def test_write_needs_every_clause_of_the_rule(policy):
    assert policy.access("DEFAULT", "op", "ctl01") is Access.WRITE
    assert policy.access("DEFAULT", "op", "localhost") is Access.WRITE  # hosts: any case
    assert policy.access("DEFAULT", "op", "laptop") is Access.READ  # wrong host
    assert policy.access("DEFAULT", "eve", "ctl01") is Access.READ  # wrong user
    assert policy.access("DEFAULT", "Op", "ctl01") is Access.READ  # users: exact case


def test_an_undefined_group_is_default_and_an_empty_group_grants_nothing(policy):
    assert policy.access("NO_SUCH_GROUP", "op", "ctl01") is Access.WRITE
    assert policy.access("LOCKED", "op", "ctl01") is Access.NONE


def test_levels_rule_level_covers_pvs_of_that_level_and_below(policy):
    assert policy.access("FILES", "eve", "x", level=0) is Access.READ
    assert policy.access("FILES", "eve", "x", level=1) is Access.NONE  # RULE(0) not for ASL1
    assert policy.access("FILES", "alice", "x", level=1) is Access.WRITE


def test_unsupported_calc_rules_grant_nothing(policy):
    assert policy.access("CALCULATED", "op", "ctl01") is Access.READ


def test_trapwrite(policy):
    assert policy.trapwrite("DEFAULT", "op", "ctl01")
    assert not policy.trapwrite("FILES", "op", "ctl01")


def test_a_file_without_default_denies_everything_unassigned():
    policy = parse("ASG(OTHER) { RULE(1, WRITE) }")
    assert policy.access("DEFAULT", "anyone", "anywhere") is Access.NONE
    assert policy.access("OTHER", "anyone", "anywhere") is Access.WRITE


def test_no_file_is_open():
    assert OPEN.access("DEFAULT", "anyone", "anywhere") is Access.WRITE


def test_client_ip_compares_addresses():
    policy = parse("HAG(local) {localhost}\nASG(DEFAULT) { RULE(1, WRITE) { HAG(local) } }",
                   client_ip=True)
    assert policy.access("DEFAULT", "u", "127.0.0.1") is Access.WRITE
    assert policy.access("DEFAULT", "u", "localhost") is Access.NONE  # a name is not an address
    assert policy.access("DEFAULT", "u", "10.1.2.3") is Access.NONE


@pytest.mark.parametrize("text, line, words", [
    ("UAG(ops) {op}\nASG(DEFAULT) {\n  RULE(1, WRITE) { UAG(nobody) }\n}", 3, "UAG(nobody)"),
    ("ASG(DEFAULT) {\n  RULE(1, MAYBE)\n}", 2, "NONE|READ|WRITE"),
    ("ASG(DEFAULT) {\n  RULE(1, READ)\n", 2, "end of file"),
    ("\n\nFOO(x)", 3, "expected UAG, HAG or ASG"),
    ("ASG(DEFAULT) {\n RULE(1, WRITE, SOMETIMES)\n}", 2, "TRAPWRITE"),
])
def test_errors_name_the_file_line_and_what_was_expected(text, line, words):
    with pytest.raises(ACFError) as info:
        parse(text, "bad.acf")
    assert str(info.value).startswith(f"bad.acf line {line}:"), str(info.value)
    assert words in str(info.value)
