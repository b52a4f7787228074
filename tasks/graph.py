"""Task graph analysis with networkx (plain Python, no Django).

Nodes carry a duration (a task's expected hours); edges run from prerequisite to
dependent and carry a dependency type. Scheduling is the critical path method on
start times, generalised to the four precedence types, each one a lower bound on
the dependent's start S(d) given the prerequisite p:

    finish_to_start   S(d) >= S(p) + D(p)          (d starts after p finishes)
    start_to_start    S(d) >= S(p)                  (d starts once p has started)
    finish_to_finish  S(d) >= S(p) + D(p) - D(d)    (d finishes no earlier than p)
    start_to_finish   S(d) >= S(p) - D(d)           (d finishes no earlier than p starts)

With only finish_to_start edges this is the classic longest path weighted by node
durations, so a short chain of long tasks beats a long chain of short ones.
"""

import heapq
from dataclasses import dataclass, field
from typing import NamedTuple

import networkx as nx

FINISH_TO_START = "finish_to_start"
START_TO_START = "start_to_start"
FINISH_TO_FINISH = "finish_to_finish"
START_TO_FINISH = "start_to_finish"
DEPENDENCY_TYPES = (FINISH_TO_START, START_TO_START, FINISH_TO_FINISH, START_TO_FINISH)

ARROW = " → "
# Durations are sums of float hours; anything closer than this is the same instant.
EPSILON = 1e-9


class Edge(NamedTuple):
    prerequisite: object
    dependent: object
    type: str = FINISH_TO_START
    required: bool = True


@dataclass
class Analysis:
    """The schedule of a graph; every dict is keyed by node id, times in hours from the start."""

    order: list
    waves: list
    critical_path: list
    total_expected_hours: float
    earliest_start: dict = field(default_factory=dict)
    earliest_finish: dict = field(default_factory=dict)
    latest_start: dict = field(default_factory=dict)
    latest_finish: dict = field(default_factory=dict)
    slack: dict = field(default_factory=dict)


class CycleFound(Exception):
    """The graph has a cycle; `cycle` lists its nodes in edge order, the first one repeated last."""

    def __init__(self, cycle, text):
        super().__init__(f"dependency cycle: {text}")
        self.cycle = cycle
        self.text = text


def build_graph(nodes, edges=()):
    """A DiGraph from plain data.

    `nodes`: iterable of (id, name, duration_hours[, order]), `order` breaking ties in
    orderings; `edges`: iterable of Edge or (prerequisite, dependent[, type[, required]])
    tuples whose ends are listed nodes.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(
        (node[0], {"name": node[1], "duration": float(node[2] or 0), "order": node[3] if len(node) > 3 else 0})
        for node in nodes
    )
    graph.add_edges_from(_checked_edges(graph, edges))
    return graph


def _checked_edges(graph, edges):
    """(prerequisite, dependent, data) for each edge; KeyError or ValueError at the first bad one."""
    known = set(graph)
    for edge in edges:
        prerequisite, dependent, kind, required = edge if len(edge) == 4 else Edge(*edge)
        if prerequisite not in known or dependent not in known:
            raise KeyError(f"edge {prerequisite!r} -> {dependent!r} names an unknown node")
        if kind not in DEPENDENCY_TYPES:
            raise ValueError(f"unknown dependency type {kind!r}")
        yield prerequisite, dependent, {"type": kind, "required": required}


def adjacency(graph):
    """(successors, predecessors): node -> {neighbour: edge data}, as the plain dicts networkx keeps.

    `DiGraph.adjacency()` yields them as they are, for the graph and for its reverse view;
    reading them through `graph.succ[node]` and `graph.pred[node]` wraps each in a read-only
    view, which cost a third of the analysis of a 30,000-edge graph.
    """
    return dict(graph.adjacency()), dict(graph.reverse(copy=False).adjacency())


def cycle_text(graph, cycle):
    """Names along a cycle: "A → B → C → A" (the cycle lists the first node again at its end)."""
    return ARROW.join(str(graph.nodes[node].get("name", node)) for node in cycle)


def find_cycle(graph, *, start_at=None):
    """The nodes of one cycle (first repeated last), or None when the graph is acyclic.

    `start_at`: nodes to search from, in preference order; the answer is rotated so it
    begins at the first of them that lies on the cycle.
    """
    sources = list(start_at) if start_at else None
    try:
        cycle_edges = nx.find_cycle(graph, source=sources)
    except nx.NetworkXNoCycle:
        return None
    nodes = [u for u, _v in cycle_edges]
    for preferred in sources or ():
        if preferred in nodes:
            index = nodes.index(preferred)
            nodes = nodes[index:] + nodes[:index]
            break
    return nodes + [nodes[0]]


def cycle_if_added(graph, new_edges):
    """The cycle that adding `new_edges` ((prerequisite, dependent) pairs) would close, or None.

    The graph is left as it was. The cycle starts at the dependent of the first new
    edge on it, so adding C → A to A → B → C reads "A → B → C → A".
    """
    new_edges = [(p, d) for p, d in new_edges if not graph.has_edge(p, d)]
    for prerequisite, dependent in new_edges:
        if prerequisite == dependent:
            return [dependent, dependent]
    graph.add_edges_from(new_edges)
    try:
        return find_cycle(graph, start_at=[d for _p, d in new_edges])
    finally:
        graph.remove_edges_from(new_edges)


def _sort_key(graph):
    def key(node):
        return (graph.nodes[node].get("order", 0), node)

    return key


def topological_order(graph):
    """Nodes with every prerequisite before its dependents; ties broken by (order, id). Raises CycleFound."""
    key = _sort_key(graph)
    remaining = dict(graph.in_degree())
    heap = [(key(node), node) for node, degree in remaining.items() if degree == 0]
    heapq.heapify(heap)
    order = []
    succ = dict(graph.adjacency())
    while heap:
        _key, node = heapq.heappop(heap)
        order.append(node)
        for dependent in succ[node]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0:
                heapq.heappush(heap, (key(dependent), dependent))
    if len(order) != len(remaining):
        cycle = find_cycle(graph)
        raise CycleFound(cycle, cycle_text(graph, cycle))
    return order


def _waves_from_order(graph, order, pred):
    level = {}
    for node in order:
        level[node] = max((level[p] + 1 for p in pred[node]), default=0)
    result = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for node in order:
        result[level[node]].append(node)
    key = _sort_key(graph)
    return [sorted(wave, key=key) for wave in result]


def waves(graph):
    """Parallel waves: wave k holds the nodes whose longest chain of prerequisites has k edges."""
    try:
        generations = list(nx.topological_generations(graph))
    except nx.NetworkXUnfeasible:
        cycle = find_cycle(graph)
        raise CycleFound(cycle, cycle_text(graph, cycle)) from None
    key = _sort_key(graph)
    return [sorted(generation, key=key) for generation in generations]


def _lag(edge_type, duration_prerequisite, duration_dependent):
    """The minimum gap S(dependent) - S(prerequisite) that an edge of this type demands."""
    if edge_type == START_TO_START:
        return 0.0
    if edge_type == FINISH_TO_FINISH:
        return duration_prerequisite - duration_dependent
    if edge_type == START_TO_FINISH:
        return -duration_dependent
    return duration_prerequisite


def analyse(graph, *, order=None):
    """Topological order, waves, earliest/latest start and finish, slack and the critical path.

    The critical path is the chain of binding constraints that ends at the last
    finishing node, listed from the first task to the last. Raises CycleFound.
    """
    order = order if order is not None else topological_order(graph)
    duration = {node: data["duration"] for node, data in graph.nodes(data=True)}
    succ, pred = adjacency(graph)

    earliest = {}
    for node in order:
        start = 0.0
        for prerequisite, data in pred[node].items():
            candidate = earliest[prerequisite] + _lag(data["type"], duration[prerequisite], duration[node])
            if candidate > start:
                start = candidate
        earliest[node] = start
    earliest_finish = {node: earliest[node] + duration[node] for node in order}
    total = max(earliest_finish.values(), default=0.0)

    latest = {}
    for node in reversed(order):
        start = total - duration[node]
        for dependent, data in succ[node].items():
            candidate = latest[dependent] - _lag(data["type"], duration[node], duration[dependent])
            if candidate < start:
                start = candidate
        latest[node] = start
    slack = {node: max(0.0, latest[node] - earliest[node]) for node in order}

    return Analysis(
        order=order,
        waves=_waves_from_order(graph, order, pred),
        critical_path=_critical_path(pred, order, earliest, earliest_finish, duration, total),
        total_expected_hours=total,
        earliest_start=earliest,
        earliest_finish=earliest_finish,
        latest_start=latest,
        latest_finish={node: latest[node] + duration[node] for node in order},
        slack={node: (0.0 if value < EPSILON else value) for node, value in slack.items()},
    )


def _critical_path(pred, order, earliest, earliest_finish, duration, total):
    if not order:
        return []
    position = {node: index for index, node in enumerate(order)}
    last = min((n for n in order if abs(earliest_finish[n] - total) < EPSILON), key=position.__getitem__)
    path = [last]
    node = last
    while True:
        binding = [
            prerequisite
            for prerequisite, data in pred[node].items()
            if abs(earliest[prerequisite] + _lag(data["type"], duration[prerequisite], duration[node]) - earliest[node])
            < EPSILON
        ]
        if not binding:
            break
        # Among equally binding prerequisites, follow the one finishing latest, then the earliest in order.
        node = min(binding, key=lambda p: (-earliest_finish[p], position[p]))
        path.append(node)
    path.reverse()
    return path


def leaves_of(children):
    """A function node -> its leaf descendants (itself when it has no children); memoised."""
    cache = {}

    def leaves(node):
        if node in cache:
            return cache[node]
        kids = children.get(node)
        if not kids:
            result = [node]
        else:
            stack, result = list(reversed(kids)), []
            while stack:
                current = stack.pop()
                if current in cache:
                    result.extend(cache[current])
                    continue
                grandchildren = children.get(current)
                if grandchildren:
                    stack.extend(reversed(grandchildren))
                else:
                    result.append(current)
        cache[node] = result
        return result

    return leaves


def expand_to_leaves(edges, children):
    """Rewrite edges that touch containers (nodes with children) as edges between their leaves.

    A container runs as its leaves, so "X before container C" means X before each
    leaf of C, and "C before Y" means every leaf of C before Y. When two edges land on
    the same pair the first is kept, except that a required edge beats an optional one.
    """
    leaves = leaves_of(children)
    expanded = {}
    for edge in edges:
        edge = edge if isinstance(edge, Edge) else Edge(*edge)
        if edge.prerequisite not in children and edge.dependent not in children:
            pair = (edge.prerequisite, edge.dependent)
            existing = expanded.get(pair)
            if existing is None or (edge.required and not existing.required):
                expanded[pair] = edge
            continue
        for prerequisite in leaves(edge.prerequisite):
            for dependent in leaves(edge.dependent):
                pair = (prerequisite, dependent)
                existing = expanded.get(pair)
                if existing is None or (edge.required and not existing.required):
                    expanded[pair] = Edge(prerequisite, dependent, edge.type, edge.required)
    return list(expanded.values())
