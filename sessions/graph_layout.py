"""A task graph laid out for drawing as SVG (plain Python and networkx, no Django).

Layered, left to right: a task's column is its topological generation (every prerequisite sits in
a column to its left), and within a column tasks are ordered by the mean row of their
prerequisites (one barycentre sweep, which removes most edge crossings of a plan's fan-out and
fan-in). The caller draws the boxes and paths this returns; nothing here knows about templates.
"""

from dataclasses import dataclass

import networkx as nx

NODE_WIDTH = 210
NODE_HEIGHT = 58
COLUMN_GAP = 70
ROW_GAP = 18
MARGIN = 12
TITLE_CHARS = 28


@dataclass(frozen=True)
class NodeBox:
    id: int
    x: int
    y: int
    width: int
    height: int
    title: str
    full_title: str
    status: str
    agent: str
    estimate: str
    critical: bool
    marker: str  # "merge", "integration" or ""
    column: int
    row: int


@dataclass(frozen=True)
class EdgePath:
    prerequisite: int
    dependent: int
    d: str
    critical: bool


@dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    nodes: list
    edges: list


def _short(text, limit=TITLE_CHARS):
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _estimate(hours):
    hours = float(hours or 0)
    if hours <= 0:
        return ""
    if hours < 1:
        return f"{round(hours * 60)} min"
    return f"{hours:.1f} h"


def columns_of(node_ids, edges):
    """The nodes in layers: each a list of ids whose prerequisites are all in earlier layers.

    `edges` are (prerequisite, dependent) pairs between listed nodes. A graph with a cycle (which
    the task services refuse, so only bad data) is drawn as one layer rather than not at all.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(node_ids)
    graph.add_edges_from((a, b) for a, b in edges if a in graph and b in graph)
    try:
        layers = [sorted(layer) for layer in nx.topological_generations(graph)]
    except nx.NetworkXUnfeasible:
        return [sorted(graph.nodes)]
    # Barycentre sweep: a node goes near the rows of its prerequisites in earlier layers.
    row_of = {node: row for row, node in enumerate(layers[0])} if layers else {}
    for layer in layers[1:]:
        def weight(node):
            rows = [row_of[p] for p in graph.predecessors(node) if p in row_of]
            return (sum(rows) / len(rows) if rows else float("inf"), node)
        layer.sort(key=weight)
        row_of.update({node: row for row, node in enumerate(layer)})
    return layers


def layout(nodes, edges, critical_path=()):
    """Boxes and edge paths for `nodes` (dicts: id, title, status, agent, expected_hours, marker)
    and `edges` ((prerequisite, dependent) pairs). Tasks on `critical_path` (ids in order) and the
    edges between consecutive ones are marked critical."""
    by_id = {node["id"]: node for node in nodes}
    edges = [(a, b) for a, b in edges if a in by_id and b in by_id]
    layers = columns_of(list(by_id), edges)
    critical = set(critical_path)
    critical_edges = set(zip(critical_path, list(critical_path)[1:], strict=False))
    tallest = max((len(layer) for layer in layers), default=0)
    boxes = {}
    for column, layer in enumerate(layers):
        # Shorter columns are centred, so a chain reads as a line through the middle.
        offset = (tallest - len(layer)) * (NODE_HEIGHT + ROW_GAP) // 2
        for row, node_id in enumerate(layer):
            node = by_id[node_id]
            boxes[node_id] = NodeBox(
                id=node_id,
                x=MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
                y=MARGIN + offset + row * (NODE_HEIGHT + ROW_GAP),
                width=NODE_WIDTH, height=NODE_HEIGHT,
                title=_short(node.get("title")), full_title=str(node.get("title") or ""),
                status=str(node.get("status") or ""), agent=_short(node.get("agent") or "", 22),
                estimate=_estimate(node.get("expected_hours")),
                critical=node_id in critical, marker=str(node.get("marker") or ""),
                column=column, row=row,
            )
    paths = []
    for a, b in edges:
        start, end = boxes[a], boxes[b]
        x1, y1 = start.x + start.width, start.y + start.height // 2
        x2, y2 = end.x, end.y + end.height // 2
        bend = max(20, (x2 - x1) // 2)
        paths.append(
            EdgePath(a, b, f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}", (a, b) in critical_edges)
        )
    # Critical edges last, so they are drawn over the others.
    paths.sort(key=lambda path: path.critical)
    width = MARGIN * 2 + max(0, len(layers) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP)
    height = MARGIN * 2 + max(0, tallest * (NODE_HEIGHT + ROW_GAP) - ROW_GAP)
    ordered = sorted(boxes.values(), key=lambda box: (box.column, box.row))
    return Drawing(width=width, height=height, nodes=ordered, edges=paths)
