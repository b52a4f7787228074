"""Graph analysis on small graphs whose answers are worked out by hand in the comments."""

import pytest

from tasks.graph import (
    CycleFound,
    Edge,
    analyse,
    build_graph,
    cycle_if_added,
    cycle_text,
    expand_to_leaves,
    topological_order,
    waves,
)


def test_critical_path_follows_durations_not_edge_count():
    # Chain A→B→C→D of 1 h each is 4 h over 3 edges; X→Y of 5 h + 1 h is 6 h over 1 edge.
    graph = build_graph(
        [("A", "A", 1), ("B", "B", 1), ("C", "C", 1), ("D", "D", 1), ("X", "X", 5), ("Y", "Y", 1)],
        [("A", "B"), ("B", "C"), ("C", "D"), ("X", "Y")],
    )
    analysis = analyse(graph)
    assert analysis.critical_path == ["X", "Y"]
    assert analysis.total_expected_hours == 6
    # The short-by-count chain has 2 h of slack everywhere.
    assert [analysis.slack[n] for n in "ABCD"] == [2, 2, 2, 2]
    assert analysis.slack["X"] == analysis.slack["Y"] == 0


def test_diamond_schedule_by_hand():
    #      B (4)
    #    /      \
    # A(2)        D(1)
    #    \      /
    #      C (1)
    graph = build_graph(
        [("A", "A", 2), ("B", "B", 4), ("C", "C", 1), ("D", "D", 1)],
        [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")],
    )
    analysis = analyse(graph)
    assert analysis.total_expected_hours == 7
    assert analysis.earliest_start == {"A": 0, "B": 2, "C": 2, "D": 6}
    assert analysis.latest_start == {"A": 0, "B": 2, "C": 5, "D": 6}
    assert analysis.slack == {"A": 0, "B": 0, "C": 3, "D": 0}
    assert analysis.critical_path == ["A", "B", "D"]
    assert analysis.waves == [["A"], ["B", "C"], ["D"]]
    assert analysis.order.index("A") < analysis.order.index("B") < analysis.order.index("D")


def test_independent_tasks_run_in_one_wave_and_the_longest_is_critical():
    graph = build_graph([(1, "one", 1), (2, "two", 3), (3, "three", 2)])
    analysis = analyse(graph)
    assert analysis.waves == [[1, 2, 3]]
    assert analysis.critical_path == [2]
    assert analysis.slack == {1: 2, 2: 0, 3: 1}


def test_start_to_start_lets_the_dependent_overlap():
    # B may start when A starts: both run from 0; total is max(3, 2) = 3.
    graph = build_graph([("A", "A", 3), ("B", "B", 2)], [Edge("A", "B", "start_to_start")])
    analysis = analyse(graph)
    assert analysis.earliest_start == {"A": 0, "B": 0}
    assert analysis.total_expected_hours == 3
    assert analysis.slack["B"] == 1


def test_finish_to_finish_holds_the_dependent_finish():
    # B (1 h) may not finish before A (4 h) finishes: B starts at 3 at the earliest.
    graph = build_graph([("A", "A", 4), ("B", "B", 1)], [Edge("A", "B", "finish_to_finish")])
    analysis = analyse(graph)
    assert analysis.earliest_start["B"] == 3
    assert analysis.earliest_finish["B"] == 4
    assert analysis.total_expected_hours == 4


def test_start_to_finish_binds_the_dependent_finish_to_the_prerequisite_start():
    # B waits for C (5 h, finish_to_start), so B starts at 5; D (3 h) may not finish
    # before B starts (start_to_finish), so D starts at 5 - 3 = 2.
    graph = build_graph(
        [("C", "C", 5), ("B", "B", 1), ("D", "D", 3)],
        [Edge("C", "B"), Edge("B", "D", "start_to_finish")],
    )
    analysis = analyse(graph)
    assert analysis.earliest_start["B"] == 5
    assert analysis.earliest_start["D"] == 2
    assert analysis.earliest_finish["D"] == 5


def test_topological_order_breaks_ties_by_order_then_id():
    graph = build_graph([(3, "c", 1, 0), (1, "a", 1, 2), (2, "b", 1, 1)])
    assert topological_order(graph) == [3, 2, 1]


def test_cycle_found_names_the_cycle():
    graph = build_graph([("A", "A", 1), ("B", "B", 1), ("C", "C", 1)], [("A", "B"), ("B", "C"), ("C", "A")])
    with pytest.raises(CycleFound) as caught:
        topological_order(graph)
    assert caught.value.text.count("→") == 3
    with pytest.raises(CycleFound):
        waves(graph)


def test_a_new_edge_closing_a_cycle_is_reported_from_its_dependent():
    graph = build_graph([("A", "A", 1), ("B", "B", 1), ("C", "C", 1)], [("A", "B"), ("B", "C")])
    cycle = cycle_if_added(graph, [("C", "A")])
    assert cycle_text(graph, cycle) == "A → B → C → A"
    # The graph is left as it was.
    assert not graph.has_edge("C", "A")


def test_an_edge_that_closes_no_cycle_is_fine():
    graph = build_graph([("A", "A", 1), ("B", "B", 1), ("C", "C", 1)], [("A", "B")])
    assert cycle_if_added(graph, [("A", "C"), ("C", "B")]) is None


def test_container_edges_expand_to_their_leaves():
    # Container K holds k1, k2; X → K and K → Y.
    children = {"K": ["k1", "k2"]}
    edges = expand_to_leaves([Edge("X", "K"), Edge("K", "Y", "start_to_start")], children)
    pairs = {(e.prerequisite, e.dependent, e.type) for e in edges}
    assert pairs == {
        ("X", "k1", "finish_to_start"), ("X", "k2", "finish_to_start"),
        ("k1", "Y", "start_to_start"), ("k2", "Y", "start_to_start"),
    }


def test_empty_graph_has_an_empty_schedule():
    analysis = analyse(build_graph([]))
    assert analysis.order == [] and analysis.critical_path == [] and analysis.total_expected_hours == 0
