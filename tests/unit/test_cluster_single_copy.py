"""When ndflow switches MPICH's single-copy (CMA) transfers on: never over the user's choice,
never where the kernel refuses ptrace between the ranks."""

from __future__ import annotations

from ndflow.cluster import single_copy


def test_it_is_switched_on_where_the_kernel_allows(monkeypatch, tmp_path):
    monkeypatch.setattr(single_copy, "YAMA", tmp_path / "absent")  # no Yama: ptrace allowed
    env: dict[str, str] = {}
    assert single_copy.cma_allowed()  # process_vm_readv on this process works (no seccomp ban)
    assert single_copy.enable(env) and env == {single_copy.VARIABLE: "1"}


def test_yama_restricting_ptrace_keeps_it_off(monkeypatch, tmp_path):
    scope = tmp_path / "ptrace_scope"
    scope.write_text("1\n")
    monkeypatch.setattr(single_copy, "YAMA", scope)
    env: dict[str, str] = {}
    assert not single_copy.enable(env) and env == {}
    scope.write_text("0\n")
    assert single_copy.enable(env) and env[single_copy.VARIABLE] == "1"


def test_the_users_setting_wins(monkeypatch, tmp_path):
    monkeypatch.setattr(single_copy, "YAMA", tmp_path / "absent")
    off = {single_copy.VARIABLE: "0"}
    assert not single_copy.enable(off) and off == {single_copy.VARIABLE: "0"}
    on = {single_copy.VARIABLE: "1"}
    assert single_copy.enable(on)


def test_is_on_reads_what_enable_left():
    assert not single_copy.is_on({}) and not single_copy.is_on({single_copy.VARIABLE: " 0 "})
    assert not single_copy.is_on({single_copy.VARIABLE: ""})
    assert single_copy.is_on({single_copy.VARIABLE: "1"})
