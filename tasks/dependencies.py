"""Dependencies between a session's tasks: adding one (refusing cycles and links that could not
hold) and removing one. Statuses are left to the next readiness refresh (tasks/graph_state.py)."""

from django.db import transaction

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from tasks import readiness
from tasks.graph import ARROW, build_graph, cycle_if_added, cycle_text, expand_to_leaves, leaves_of
from tasks.models import DependencyType, Task, TaskDependency, TaskStatus

S = TaskStatus


def _session_structure(session_id):
    """(titles, parents, children, stored edges) of a session's tasks in two queries."""
    titles, parents, children = {}, {}, {}
    for pk, parent_id, title in Task.objects.filter(session_id=session_id).values_list("id", "parent_id", "title"):
        titles[pk] = title
        parents[pk] = parent_id
        if parent_id is not None:
            children.setdefault(parent_id, []).append(pk)
    edges = list(
        TaskDependency.objects.filter(dependent__session_id=session_id).values_list(
            "prerequisite_id", "dependent_id", "dependency_type", "is_required"
        )
    )
    return titles, parents, children, edges


def _ancestors(parents, node):
    node = parents.get(node)
    while node is not None:
        yield node
        node = parents.get(node)


def _link_satisfied_for(leaf_status, dependency_type, prerequisite_status):
    """Whether a new required link is already met for a leaf that is past `pending`."""
    if leaf_status == S.PENDING or leaf_status in (S.FAILED, S.CANCELLED, S.SKIPPED):
        return True
    start_ok = readiness.start_allows(dependency_type, prerequisite_status)
    if leaf_status == S.COMPLETED:
        return start_ok and readiness.finish_allows(dependency_type, prerequisite_status)
    return start_ok


def task_add_dependency(
    *,
    prerequisite: Task,
    dependent: Task,
    dependency_type: str = DependencyType.FINISH_TO_START,
    is_required: bool = True,
) -> TaskDependency:
    """Make `dependent` wait for `prerequisite`.

    Refused with ValidationFailed, writing nothing: a task depending on itself, on
    its own ancestor or descendant, on a task of another session, a pair that is
    already linked, and any link that would close a cycle (the message names it:
    "A → B → C → A"). Refused with Conflict: a required link that an already ready
    or started dependent would not satisfy (it cannot go back to pending).
    Edits of one session's graph are serialised by locking the session's root task.
    Statuses are left alone: the next `task_refresh_readiness` applies the new link.
    """
    if dependency_type not in DependencyType.values:
        raise ValidationFailed(field="dependency_type", rule=f"must be one of {', '.join(DependencyType.values)}")
    if prerequisite.pk == dependent.pk:
        raise ValidationFailed(
            f"A task cannot depend on itself: {dependent.title}{ARROW}{dependent.title}",
            errors={"prerequisite": ["must differ from the dependent"]},
        )
    if prerequisite.session_id != dependent.session_id:
        raise ValidationFailed(field="prerequisite", rule="must belong to the dependent's session")

    with transaction.atomic():
        list(Task.objects.select_for_update().filter(session_id=dependent.session_id, parent__isnull=True))
        titles, parents, children, edges = _session_structure(dependent.session_id)
        if prerequisite.pk not in titles or dependent.pk not in titles:
            raise NotFound("Task not found")
        if prerequisite.pk in set(_ancestors(parents, dependent.pk)) or dependent.pk in set(
            _ancestors(parents, prerequisite.pk)
        ):
            raise ValidationFailed(
                f"'{dependent.title}' and '{prerequisite.title}' are in one subtree; a container already "
                "follows its subtasks",
                errors={"prerequisite": ["must not be an ancestor or descendant of the dependent"]},
            )
        if any(p == prerequisite.pk and d == dependent.pk for p, d, _t, _r in edges):
            raise ValidationFailed(
                f"'{dependent.title}' already depends on '{prerequisite.title}'",
                errors={"prerequisite": ["this dependency already exists"]},
            )
        _refuse_cycle(titles, children, edges, prerequisite.pk, dependent.pk)
        if is_required:
            _refuse_unsatisfiable(children, prerequisite.pk, dependent.pk, dependency_type)
        link = TaskDependency.objects.create(
            prerequisite_id=prerequisite.pk,
            dependent_id=dependent.pk,
            dependency_type=dependency_type,
            is_required=is_required,
        )
    return link


def _refuse_cycle(titles, children, edges, prerequisite_id, dependent_id):
    # First at the level the caller works at, then through containers (a link to a
    # container binds each of its leaves).
    nodes = [(pk, title, 0) for pk, title in titles.items()]
    stored = build_graph(nodes, [(p, d) for p, d, _t, _r in edges])
    cycle = cycle_if_added(stored, [(prerequisite_id, dependent_id)])
    if cycle is None and children:
        leaves = build_graph(nodes, [(e.prerequisite, e.dependent) for e in expand_to_leaves(edges, children)])
        new = [(e.prerequisite, e.dependent) for e in expand_to_leaves([(prerequisite_id, dependent_id)], children)]
        cycle = cycle_if_added(leaves, new)
        stored = leaves
    if cycle is not None:
        text = cycle_text(stored, cycle)
        raise ValidationFailed(
            f"This dependency would create a cycle: {text}",
            errors={"prerequisite": [f"would create the cycle {text}"]},
        )


def _refuse_unsatisfiable(children, prerequisite_id, dependent_id, dependency_type):
    # A container's stored status is already the one derived from its children.
    prerequisite_status = Task.objects.values_list("status", flat=True).get(pk=prerequisite_id)
    leaf_ids = leaves_of(children)(dependent_id)
    for _pk, title, status in Task.objects.filter(pk__in=leaf_ids).exclude(status=S.PENDING).values_list(
        "id", "title", "status"
    ):
        if not _link_satisfied_for(status, dependency_type, prerequisite_status):
            raise Conflict(
                f"Task '{title}' is already {status}; a required {dependency_type} prerequisite that is "
                f"{prerequisite_status} cannot hold it back. Add the dependency as not required, or earlier."
            )


def task_remove_dependency(*, dependency: TaskDependency) -> None:
    """Delete a dependency; tasks it held back become ready at the next refresh."""
    deleted, _ = TaskDependency.objects.filter(pk=dependency.pk).delete()
    if not deleted:
        raise NotFound("Dependency not found")
