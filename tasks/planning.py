"""Storing a checked plan (tasks.plans) as a session's task graph: every write is here.

The plan's tasks become the subtasks of the session's root task (the engine runs the root's leaves),
with their `after` lists (and the edges the overlap check added) as finish-to-start dependencies, and
their three-point estimates, from which the graph's PERT figures and critical path are derived
(tasks.selectors.task_graph). Replacing a plan replaces the tasks that have not started, in one
transaction: a reader sees the old graph or the new one, never a mix.
"""

from django.db import transaction

from orchestrator.errors import Conflict, ValidationFailed
from tasks import services as task_services
from tasks.models import DependencyType, SessionPlan, Task, TaskDependency, TaskStatus
from tasks.plans import CheckedPlan

S = TaskStatus
NOT_STARTED = (S.PENDING, S.READY)


def plan_store_graph(*, session, checked: CheckedPlan) -> dict:
    """Make the checked plan the session's task graph; returns {key: Task}.

    Subtasks of the root that have not started (pending or ready) are deleted with their
    dependencies; tasks that started or finished stay (a replan covers the remaining work), and a
    new key equal to one of theirs is refused. Refused with Conflict when the root itself has run
    as a single task (a started leaf cannot become a container). Runs in the caller's transaction,
    or in one of its own.
    """
    if not checked.ok:
        raise ValueError("only a plan without findings can be stored")
    with transaction.atomic():
        root = task_services.task_root_for_session(session=session)
        root = Task.objects.select_for_update().get(pk=root.pk)
        below = list(Task.objects.filter(session_id=root.session_id).exclude(pk=root.pk).values_list(
            "id", "status", "plan_key", "order"))
        if not below and root.status not in NOT_STARTED:
            raise Conflict(
                f"The session's task '{root.title}' is {root.status}: it ran as a single task and cannot take a plan",
                details={"current": root.status, "allowed_states": list(NOT_STARTED)},
            )
        replaced = [pk for pk, status, _key, _order in below if status in NOT_STARTED]
        kept = {key: status for _pk, status, key, _order in below if status not in NOT_STARTED and key}
        taken = [task.key for task in checked.tasks if task.key in kept]
        if taken:
            raise ValidationFailed(errors={
                f"tasks[{task.order}].key": [f"key {task.key} belongs to a task that is already {kept[task.key]}"]
                for task in checked.tasks if task.key in kept
            })
        Task.objects.filter(pk__in=replaced).delete()
        first_order = 1 + max((order for pk, _s, _k, order in below if pk not in replaced), default=-1)
        rows = []
        for task in checked.tasks:
            row = Task(
                session_id=root.session_id, parent=root, title=task.title[:200], description=task.prompt,
                priority=root.priority, required_capabilities=list(task.capabilities),
                optimistic_hours=task.estimate.optimistic, likely_hours=task.estimate.likely,
                pessimistic_hours=task.estimate.pessimistic, order=first_order + task.order,
                plan_key=task.key, files=list(task.files), acceptance=task.acceptance,
            )
            row.derive_estimate()
            rows.append(row)
        Task.objects.bulk_create(rows)
        by_key = {row.plan_key: row for row in rows}
        TaskDependency.objects.bulk_create([
            TaskDependency(prerequisite=by_key[edge.prerequisite], dependent=by_key[edge.dependent],
                           dependency_type=DependencyType.FINISH_TO_START)
            for edge in checked.edges
        ])
        task_services.task_refresh_readiness(session=session)
    return by_key


def plan_record_version(*, session, submitted, checked: CheckedPlan, source: str, status: str,
                        actor_label: str = "") -> SessionPlan:
    """Add the next version of the session's plan (the JSON as submitted, findings, adjustments).

    The caller holds the session row lock, which serialises version numbers per session.
    """
    last = SessionPlan.objects.filter(session=session).order_by("-version").values_list("version", flat=True).first()
    return SessionPlan.objects.create(
        session=session, version=(last or 0) + 1, source=source, submitted=submitted,
        findings=[finding.as_dict() for finding in checked.findings],
        adjustments=[adjustment.as_dict() for adjustment in checked.adjustments],
        status=status, created_by=actor_label,
    )


# Planning turns are tasks of the session too (their agent, turns and answer are shown like any task's),
# keyed `@<kind>-<n>`: `@` is not in a plan's slug keys, so a plan never collides with them, and the
# engine leaves them out of the session's outcome (sessions.planning.selectors.plan_outcome_excluded).
PLANNING_KEY_PREFIX = "@"


def plan_add_planning_task(*, session, kind: str, title: str, prompt: str,
                           capabilities: tuple = ("task_decomposition",)) -> Task:
    """A new planning task under the session's root (kind: plan, revision, replan), after every task
    it has; refused with Conflict when the root ran as a single task (it cannot take subtasks).

    The root may be a finished container here (a replan after the graph ran out of work): like
    plan_store_graph, this adds below it anyway, and the readiness refresh moves it back."""
    with transaction.atomic():
        root = task_services.task_root_for_session(session=session)
        root = Task.objects.select_for_update().get(pk=root.pk)
        below = list(Task.objects.filter(session_id=root.session_id).exclude(pk=root.pk)
                     .values_list("order", flat=True))
        if not below and root.status not in NOT_STARTED:
            raise Conflict(
                f"The session's task '{root.title}' is {root.status}: it ran as a single task and cannot be planned",
                details={"current": root.status, "allowed_states": list(NOT_STARTED)},
            )
        number = 1 + Task.objects.filter(session_id=root.session_id,
                                         plan_key__startswith=f"{PLANNING_KEY_PREFIX}{kind}-").count()
        row = Task.objects.create(
            session_id=root.session_id, parent=root, title=title[:200], description=prompt,
            priority=root.priority, required_capabilities=list(capabilities),
            order=1 + max(below, default=-1), plan_key=f"{PLANNING_KEY_PREFIX}{kind}-{number}",
        )
        task_services.task_refresh_readiness(session=session)
    return row
