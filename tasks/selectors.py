"""Reads: task lookups, lists and the analysed dependency graph of a task or a session."""

from django.db.models import Exists, OuterRef, Q, QuerySet

from orchestrator.errors import NotFound
from tasks import graph as graphs
from tasks.models import Task, TaskDependency

NODE_FIELDS = (
    "id", "parent_id", "title", "status", "priority", "order", "optimistic_hours", "likely_hours",
    "pessimistic_hours", "expected_hours", "sigma_hours", "complexity", "assigned_agent_id",
)
EDGE_FIELDS = ("id", "prerequisite_id", "dependent_id", "dependency_type", "is_required")


def task_get(*, task_id: int) -> Task:
    """The task with its session and agent, or NotFound."""
    try:
        return Task.objects.select_related("session", "assigned_agent").get(pk=task_id)
    except (Task.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"Task {task_id} not found") from None


def task_dependency_get(*, task: Task, dependency_id: int) -> TaskDependency:
    """A dependency that `task` takes part in (at either end), or NotFound."""
    dependency = (
        TaskDependency.objects.select_related("dependent__session")
        .filter(Q(dependent=task) | Q(prerequisite=task), pk=dependency_id)
        .first()
    )
    if dependency is None:
        raise NotFound(f"Dependency {dependency_id} not found on task {task.pk}")
    return dependency


def task_list(
    *, session_id: int | None = None, status: str | None = None, parent_id: int | None = None
) -> QuerySet[Task]:
    """Tasks with their agent and whether each has subtasks, in plan order."""
    queryset = Task.objects.select_related("assigned_agent").annotate(
        has_subtasks=Exists(Task.objects.filter(parent_id=OuterRef("pk")))
    )
    if session_id is not None:
        queryset = queryset.filter(session_id=session_id)
    if status is not None:
        queryset = queryset.filter(status=status)
    if parent_id is not None:
        queryset = queryset.filter(parent_id=parent_id)
    return queryset.order_by("session_id", "parent_id", "order", "id")


def session_graph_rows(session_id: int) -> tuple[list[dict], list[dict]]:
    """Every task of a session as a dict, and every dependency between them: two queries."""
    nodes = [
        dict(zip(NODE_FIELDS, row, strict=True))
        for row in Task.objects.filter(session_id=session_id).order_by().values_list(*NODE_FIELDS)
    ]
    edges = [
        dict(zip(EDGE_FIELDS, row, strict=True))
        for row in TaskDependency.objects.filter(dependent__session_id=session_id).order_by().values_list(*EDGE_FIELDS)
    ]
    return nodes, edges


def task_graph(*, task: Task | None = None, session_id: int | None = None) -> dict:
    """The analysed graph of a task's subtree (or of a whole session), in two queries.

    Nodes are the tasks below `task` (or `task` itself when it has none; every task
    but the root for a session); edges are the stored dependencies between them. The
    schedule runs over the leaves, the executed tasks, with a dependency on a container
    applied to each of its leaves; a container spans its leaves (earliest start, latest
    finish, least slack). Times are hours from the start of the subtree's work.
    """
    if task is not None:
        session_id = task.session_id
    rows, edge_rows = session_graph_rows(session_id)
    by_id = {row["id"]: row for row in rows}
    children = {}
    for row in rows:
        if row["parent_id"] is not None:
            children.setdefault(row["parent_id"], []).append(row["id"])
    for kids in children.values():
        kids.sort(key=lambda pk: (by_id[pk]["order"], pk))
    if task is None:
        root_ids = [row["id"] for row in rows if row["parent_id"] is None]
        scope_root = root_ids[0] if root_ids else None
    else:
        scope_root = task.pk
    scope = _subtree(scope_root, children) if scope_root is not None else []
    if not scope and scope_root is not None:
        scope = [scope_root]
    in_scope = set(scope)
    scoped_children = {node: kids for node, kids in children.items() if node in in_scope}
    edges = [row for row in edge_rows if row["prerequisite_id"] in in_scope and row["dependent_id"] in in_scope]
    leaves = [node for node in scope if node not in scoped_children]

    leaf_edges = graphs.expand_to_leaves(
        [graphs.Edge(e["prerequisite_id"], e["dependent_id"], e["dependency_type"], e["is_required"]) for e in edges],
        scoped_children,
    )
    graph = graphs.build_graph(
        ((node, by_id[node]["title"], by_id[node]["expected_hours"], by_id[node]["order"]) for node in leaves),
        leaf_edges,
    )
    analysis = graphs.analyse(graph)
    return _graph_payload(scope_root, scope, scoped_children, by_id, edges, analysis)


def _subtree(root, children):
    found, stack = [], list(reversed(children.get(root, [])))
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(reversed(children.get(node, [])))
    return found


def _graph_payload(scope_root, scope, children, by_id, edges, analysis):
    wave_of = {node: index for index, wave in enumerate(analysis.waves) for node in wave}
    critical = set(analysis.critical_path)
    leaves_below = graphs.leaves_of(children)
    nodes = []
    for node in scope:
        row = by_id[node]
        if node in children:
            leaves = leaves_below(node)
            timing = {
                "earliest_start": min(analysis.earliest_start[leaf] for leaf in leaves),
                "earliest_finish": max(analysis.earliest_finish[leaf] for leaf in leaves),
                "latest_start": min(analysis.latest_start[leaf] for leaf in leaves),
                "latest_finish": max(analysis.latest_finish[leaf] for leaf in leaves),
                "slack": min(analysis.slack[leaf] for leaf in leaves),
                "wave": None,
                "critical": any(leaf in critical for leaf in leaves),
            }
        else:
            timing = {
                "earliest_start": analysis.earliest_start[node],
                "earliest_finish": analysis.earliest_finish[node],
                "latest_start": analysis.latest_start[node],
                "latest_finish": analysis.latest_finish[node],
                "slack": analysis.slack[node],
                "wave": wave_of[node],
                "critical": node in critical,
            }
        nodes.append(
            {
                "id": node,
                "parent": row["parent_id"],
                "title": row["title"],
                "status": row["status"],
                "priority": row["priority"],
                "order": row["order"],
                "is_container": node in children,
                "assigned_agent": row["assigned_agent_id"],
                "estimate": {
                    "optimistic_hours": row["optimistic_hours"],
                    "likely_hours": row["likely_hours"],
                    "pessimistic_hours": row["pessimistic_hours"],
                    "expected_hours": row["expected_hours"],
                    "sigma_hours": row["sigma_hours"],
                    "complexity": row["complexity"],
                },
                "earliest_start": round(timing["earliest_start"], 6),
                "earliest_finish": round(timing["earliest_finish"], 6),
                "latest_start": round(timing["latest_start"], 6),
                "latest_finish": round(timing["latest_finish"], 6),
                "slack": round(timing["slack"], 6),
                "wave": timing["wave"],
                "critical": timing["critical"],
            }
        )
    return {
        "task": scope_root,
        "nodes": nodes,
        "edges": [
            {
                "id": e["id"],
                "prerequisite": e["prerequisite_id"],
                "dependent": e["dependent_id"],
                "type": e["dependency_type"],
                "is_required": e["is_required"],
            }
            for e in edges
        ],
        "topological_order": analysis.order,
        "waves": analysis.waves,
        "critical_path": analysis.critical_path,
        "total_expected_hours": round(analysis.total_expected_hours, 6),
    }
