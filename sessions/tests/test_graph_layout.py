"""The task graph's layout (plain functions): layers, order within a layer, critical path, paths."""

from sessions import graph_layout


def node(id, title="", status="pending", hours=1.0, **extra):
    return {"id": id, "title": title or f"Task {id}", "status": status, "agent": "", "expected_hours": hours, **extra}


def test_each_task_sits_in_a_column_right_of_all_its_prerequisites():
    edges = [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5), (1, 5)]
    drawing = graph_layout.layout([node(n) for n in (5, 4, 3, 2, 1)], edges)
    column = {box.id: box.column for box in drawing.nodes}
    assert column == {1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
    x = {box.id: box.x for box in drawing.nodes}
    assert all(x[a] + graph_layout.NODE_WIDTH < x[b] for a, b in edges)
    assert drawing.width == 2 * graph_layout.MARGIN + 4 * graph_layout.NODE_WIDTH + 3 * graph_layout.COLUMN_GAP
    assert drawing.height == 2 * graph_layout.MARGIN + 2 * graph_layout.NODE_HEIGHT + graph_layout.ROW_GAP


def test_a_layer_is_ordered_by_the_rows_of_its_prerequisites():
    # 10 and 20 start two chains; 11 follows 20 and 21 follows 10 (ids would put 11 first).
    layers = graph_layout.columns_of([10, 20, 11, 21], [(20, 11), (10, 21)])
    assert layers == [[10, 20], [21, 11]]


def test_the_critical_path_marks_its_tasks_and_only_the_edges_along_it():
    edges = [(1, 2), (1, 3), (2, 4), (3, 4)]
    drawing = graph_layout.layout([node(1), node(2, hours=5), node(3), node(4)], edges, critical_path=[1, 2, 4])
    assert {box.id for box in drawing.nodes if box.critical} == {1, 2, 4}
    assert {(p.prerequisite, p.dependent) for p in drawing.edges if p.critical} == {(1, 2), (2, 4)}
    assert drawing.edges[-1].critical  # drawn last, over the others


def test_paths_run_from_the_right_edge_of_a_task_to_the_left_edge_of_its_dependent():
    drawing = graph_layout.layout([node(1), node(2)], [(1, 2)])
    first, second = drawing.nodes
    path = drawing.edges[0].d
    assert path.startswith(f"M{first.x + first.width},{first.y + first.height // 2} ")
    assert path.endswith(f" {second.x},{second.y + second.height // 2}")


def test_labels_are_shortened_and_estimates_read_in_minutes_or_hours():
    long_title = "Write the migration that splits the invoices table in two"
    drawing = graph_layout.layout([node(1, long_title, hours=0.5), node(2, hours=3.25), node(3, hours=0)], [])
    boxes = {box.id: box for box in drawing.nodes}
    assert boxes[1].title.endswith("…") and len(boxes[1].title) == graph_layout.TITLE_CHARS
    assert boxes[1].full_title == long_title
    assert (boxes[1].estimate, boxes[2].estimate, boxes[3].estimate) == ("30 min", "3.2 h", "")


def test_edges_to_unknown_tasks_are_ignored_and_a_cycle_is_drawn_as_one_layer():
    drawing = graph_layout.layout([node(1), node(2)], [(1, 2), (2, 99)])
    assert [(p.prerequisite, p.dependent) for p in drawing.edges] == [(1, 2)]
    assert graph_layout.columns_of([1, 2, 3], [(1, 2), (2, 1), (2, 3)]) == [[1, 2, 3]]
    assert graph_layout.layout([], []).nodes == []
