"""ndflow.graph.PortGraph with stand-in components (anything with a `.port`)."""

from __future__ import annotations

import threading

import pytest

from ndflow.graph import GraphError, PortGraph


class Node:
    """A stand-in for a driver or plugin: the graph only needs `.port` and identity."""

    def __init__(self, port: str) -> None:
        self.port = port

    def __repr__(self) -> str:
        return f"Node({self.port})"


def make(*ports: str) -> tuple[PortGraph, dict[str, Node]]:
    g = PortGraph()
    nodes = {p: Node(p) for p in ports}
    for n in nodes.values():
        g.add(n)
    return g, nodes


def wiring(g: PortGraph, nodes: dict[str, Node]) -> dict[str, tuple[str, int] | None]:
    return {p: g.source_of(n) for p, n in nodes.items()}


def subs(g: PortGraph, port: str, address: int = 0) -> set[str]:
    return {n.port for n in g.subscribers(port, address)}


# --- ports ----------------------------------------------------------------------------------------
def test_add_and_iterate():
    g, n = make("SIM1", "STATS1", "ROI1")
    assert set(g) == set(n.values())
    assert g.ports["SIM1"] is n["SIM1"]


def test_duplicate_port_refused():
    g, n = make("SIM1")
    with pytest.raises(GraphError, match="SIM1"):
        g.add(Node("SIM1"))
    assert g.ports["SIM1"] is n["SIM1"]


# --- connect / subscribers ------------------------------------------------------------------------
def test_connect_and_subscribers():
    g, n = make("SIM1", "STATS1", "ROI1")
    assert g.subscribers("SIM1") == ()
    g.connect(n["STATS1"], "SIM1")
    g.connect(n["ROI1"], "SIM1")
    assert subs(g, "SIM1") == {"STATS1", "ROI1"}
    assert len(g.subscribers("SIM1")) == 2
    assert g.source_of(n["STATS1"]) == ("SIM1", 0)
    assert g.source_of(n["SIM1"]) is None
    assert g.subscribers("STATS1") == ()


def test_address_separates_subscribers():
    g, n = make("SIM1", "A", "B")
    g.connect(n["A"], "SIM1", 0)
    g.connect(n["B"], "SIM1", 1)
    assert subs(g, "SIM1", 0) == {"A"}
    assert subs(g, "SIM1", 1) == {"B"}
    assert g.subscribers("SIM1", 2) == ()
    assert g.source_of(n["B"]) == ("SIM1", 1)


def test_connecting_twice_to_same_port_does_not_duplicate():
    g, n = make("SIM1", "A")
    g.connect(n["A"], "SIM1")
    g.connect(n["A"], "SIM1")
    assert g.subscribers("SIM1") == (n["A"],)


def test_subscribers_snapshot_is_not_mutated_by_later_changes():
    g, n = make("SIM1", "A", "B")
    g.connect(n["A"], "SIM1")
    snap = g.subscribers("SIM1")
    g.connect(n["B"], "SIM1")
    g.connect(n["A"], "")
    assert snap == (n["A"],)
    assert g.subscribers("SIM1") == (n["B"],)


# --- refusals -------------------------------------------------------------------------------------
def test_unknown_port_refused_naming_known_ports():
    g, n = make("SIM1", "STATS1", "ROI1")
    g.connect(n["STATS1"], "SIM1")
    before = wiring(g, n)
    with pytest.raises(GraphError) as info:
        g.connect(n["ROI1"], "NOPE")
    text = str(info.value)
    assert "NOPE" in text
    assert "known: ROI1, SIM1, STATS1" in text  # sorted, every port
    assert wiring(g, n) == before
    assert subs(g, "SIM1") == {"STATS1"}


def test_unknown_port_in_empty_graph_says_none():
    g = PortGraph()
    with pytest.raises(GraphError, match=r"known: none"):
        g.connect(Node("A"), "SIM1")


def test_port_names_are_case_sensitive():
    g, n = make("SIM1", "A")
    with pytest.raises(GraphError, match="sim1"):
        g.connect(n["A"], "sim1")


def test_self_loop_refused():
    g, n = make("A")
    with pytest.raises(GraphError, match="loop"):
        g.connect(n["A"], "A")
    assert g.source_of(n["A"]) is None
    assert g.subscribers("A") == ()


def test_two_node_cycle_refused():
    g, n = make("A", "B")
    g.connect(n["B"], "A")
    with pytest.raises(GraphError, match="loop"):
        g.connect(n["A"], "B")
    assert wiring(g, n) == {"A": None, "B": ("A", 0)}


def test_cycle_through_several_plugins_refused_and_graph_unchanged():
    g, n = make("SIM1", "A", "B", "C", "D")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "A")
    g.connect(n["C"], "B")
    g.connect(n["D"], "C")
    before = wiring(g, n)
    listeners = {p: g.subscribers(p) for p in n}
    for victim, target in (("A", "C"), ("A", "D"), ("B", "D"), ("A", "B")):
        with pytest.raises(GraphError, match=f"connecting {victim} to {target} would make a loop"):
            g.connect(n[victim], target)
        assert wiring(g, n) == before
        assert {p: g.subscribers(p) for p in n} == listeners


def test_cycle_refused_whatever_the_address():
    g, n = make("A", "B", "C")
    g.connect(n["B"], "A", 3)
    g.connect(n["C"], "B", 1)
    with pytest.raises(GraphError):
        g.connect(n["A"], "C", 0)
    assert g.source_of(n["A"]) is None


def test_diamond_is_not_a_cycle():
    g, n = make("SIM1", "A", "B", "C")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "SIM1")
    g.connect(n["C"], "A")
    g.connect(n["C"], "B")  # C moves from A to B: fine, no loop
    assert g.source_of(n["C"]) == ("B", 0)
    assert subs(g, "A") == set()
    assert subs(g, "B") == {"C"}


# --- rewiring -------------------------------------------------------------------------------------
def test_rewire_moves_plugin_between_ports():
    g, n = make("SIM1", "SIM2", "A")
    g.connect(n["A"], "SIM1")
    g.connect(n["A"], "SIM2", 2)
    assert g.subscribers("SIM1") == ()
    assert g.subscribers("SIM2", 2) == (n["A"],)
    assert g.source_of(n["A"]) == ("SIM2", 2)


def test_rewire_that_breaks_a_chain_makes_a_former_loop_legal():
    g, n = make("SIM1", "A", "B", "C")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "A")
    g.connect(n["C"], "B")
    with pytest.raises(GraphError):
        g.connect(n["A"], "C")
    g.connect(n["B"], "SIM1")  # B no longer below A
    g.connect(n["A"], "C")  # SIM1 -> B -> C -> A: no loop now
    assert wiring(g, n) == {"SIM1": None, "A": ("C", 0), "B": ("SIM1", 0), "C": ("B", 0)}
    with pytest.raises(GraphError):  # and B under A is a loop again
        g.connect(n["B"], "A")


def test_failed_rewire_keeps_old_wiring():
    g, n = make("SIM1", "A", "B")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "A")
    with pytest.raises(GraphError):
        g.connect(n["A"], "B")
    with pytest.raises(GraphError):
        g.connect(n["A"], "GONE")
    assert g.source_of(n["A"]) == ("SIM1", 0)
    assert g.subscribers("SIM1") == (n["A"],)


# --- disconnect -----------------------------------------------------------------------------------
def test_disconnect_with_empty_port():
    g, n = make("SIM1", "A", "B")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "A")
    g.connect(n["A"], "")
    assert g.source_of(n["A"]) is None
    assert g.subscribers("SIM1") == ()
    assert g.source_of(n["B"]) == ("A", 0)  # downstream wiring stays
    g.connect(n["A"], "")  # disconnecting twice is fine
    g.connect(Node("stranger"), "")  # so is a plugin the graph never saw
    assert g.source_of(n["A"]) is None


def test_disconnected_plugin_can_take_a_former_loop_position():
    g, n = make("A", "B")
    g.connect(n["B"], "A")
    g.connect(n["B"], "")
    g.connect(n["A"], "B")
    assert g.source_of(n["A"]) == ("B", 0)


# --- remove ---------------------------------------------------------------------------------------
def test_remove_drops_port_source_and_listeners():
    g, n = make("SIM1", "A", "B", "C")
    g.connect(n["A"], "SIM1")
    g.connect(n["B"], "A")
    g.connect(n["C"], "A", 1)
    g.remove(n["A"])
    assert "A" not in g.ports
    assert n["A"] not in set(g)
    assert g.source_of(n["A"]) is None
    assert g.subscribers("SIM1") == ()
    assert g.source_of(n["B"]) is None and g.source_of(n["C"]) is None
    assert g.subscribers("A") == () and g.subscribers("A", 1) == ()
    with pytest.raises(GraphError, match="no port named 'A'"):
        g.connect(n["B"], "A")


def test_remove_then_add_same_port_again():
    g, n = make("SIM1", "A")
    g.connect(n["A"], "SIM1")
    g.remove(n["A"])
    new = Node("A")
    g.add(new)
    g.connect(new, "SIM1")
    assert g.subscribers("SIM1") == (new,)


def test_remove_unknown_component_is_harmless():
    g, n = make("SIM1", "A")
    g.connect(n["A"], "SIM1")
    g.remove(Node("ghost"))
    assert g.subscribers("SIM1") == (n["A"],)


# --- threads --------------------------------------------------------------------------------------
def test_concurrent_opposite_connects_cannot_both_succeed():
    """Two CA puts racing to wire A under B and B under A: exactly one wins, never a loop."""
    for _ in range(200):
        g, n = make("A", "B")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def wire(plugin: str, port: str) -> None:
            barrier.wait()
            try:
                g.connect(n[plugin], port)
                outcomes.append("ok")
            except GraphError:
                outcomes.append("refused")

        ts = [threading.Thread(target=wire, args=("A", "B")),
              threading.Thread(target=wire, args=("B", "A"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(5)
        assert sorted(outcomes) == ["ok", "refused"]
        a, b = g.source_of(n["A"]), g.source_of(n["B"])
        assert (a is None) != (b is None)


def test_readers_see_consistent_tuples_while_rewiring():
    g, n = make("SIM1", "SIM2", "A", "B")
    stop = threading.Event()
    bad: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            for port in ("SIM1", "SIM2"):
                s = g.subscribers(port)
                if not isinstance(s, tuple) or len(set(s)) != len(s):
                    bad.append(s)

    r = threading.Thread(target=reader)
    r.start()
    try:
        for i in range(2000):
            g.connect(n["A"], "SIM1" if i % 2 else "SIM2")
            g.connect(n["B"], "SIM2" if i % 2 else "SIM1")
    finally:
        stop.set()
        r.join(5)
    assert not bad
    assert subs(g, "SIM1") == {"A"} and subs(g, "SIM2") == {"B"}
