"""A session's plan: its read, the readiness refresh, and the outcome the engine reads from it.

The readiness refresh (`plan_refresh`: `tasks.readiness.plan_readiness` on the plan read, then
compare-and-set writes) is the one place where pending tasks become ready, dependents of failed,
skipped or cancelled prerequisites become skipped and containers follow their children. Every task
transition (tasks.services) runs it on the plan it read for its checks; `task_refresh_readiness` and
`task_refresh_plan` run it on a fresh read, and the engine may call them at any time: it is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from tasks import readiness, sql
from tasks.models import PRIORITY_RANK, Task, TaskStatus

if TYPE_CHECKING:
    from sessions.models import CodingSession

S = TaskStatus
# Leaves a pause or a lost worker interrupted.
INTERRUPTED = (S.ASSIGNED, S.IN_PROGRESS, S.PAUSED)


def task_refresh_readiness(*, session: CodingSession) -> dict:
    """Apply the readiness rules (tasks.readiness) to every task of `session`.

    Pending leaves whose required dependencies allow them to start become ready;
    pending or ready leaves with a failed, skipped or cancelled required prerequisite
    become skipped (transitively); containers take the status their children give
    them. Each write is a compare-and-set on the status read, so a task that moved
    meanwhile is left alone (the next refresh sees it). Two queries when nothing
    changes. Returns {"ready": [ids], "skipped": [ids], "containers": {id: status}}.
    """
    changes = plan_refresh(plan_load(session.pk))
    return {"ready": changes.ready, "skipped": list(changes.skipped), "containers": changes.containers}


def task_refresh_plan(*, session: CodingSession) -> PlanState:
    """task_refresh_readiness for the execution engine: the statuses after the refresh, from which
    it reads the ready leaves and, once nothing is left, the plan's outcome (no further queries)."""
    plan = plan_load(session.pk)
    changes = plan_refresh(plan)
    statuses = dict(plan.statuses)
    statuses.update({pk: S.READY for pk in changes.ready})
    statuses.update({pk: S.SKIPPED for pk in changes.skipped})
    statuses.update(changes.containers)
    return PlanState(statuses=statuses, parents=plan.parents, ranks=plan.ranks)


@dataclass
class Plan:
    """A session's task statuses, parents and dependency links, as the readiness rules take them."""

    statuses: dict
    parents: dict
    links: list
    ranks: dict  # pk -> (priority rank, order, pk): most urgent first

    def has_subtasks(self, pk):
        return pk in self.parents.values()


@dataclass
class PlanState:
    """Statuses of a session's tasks after a readiness refresh (task_refresh_plan)."""

    statuses: dict
    parents: dict
    ranks: dict

    def leaves(self):
        containers = set(self.parents.values())
        return [pk for pk in self.statuses if pk not in containers]

    def ready(self):
        """Ready leaves, most urgent first: priority (blocker first), then order, then id."""
        return sorted((pk for pk in self.leaves() if self.statuses[pk] == S.READY), key=self.ranks.__getitem__)

    def interrupted(self):
        """Leaves a pause or a lost worker interrupted (as task_interrupted_for_session, unordered)."""
        return [pk for pk in self.leaves() if self.statuses[pk] in INTERRUPTED]

    def summary(self):
        return readiness.plan_summary(self.statuses[pk] for pk in self.leaves())


def plan_load(session_id: int) -> Plan:
    """The session's plan (tasks.sql.plan_rows, two statements), as the readiness rules take it."""
    rows = sql.plan_rows(session_id)
    statuses, parents, ranks = {}, {}, {}
    for row in rows.tasks:
        statuses[row.id] = row.status
        parents[row.id] = row.parent_id
        ranks[row.id] = (PRIORITY_RANK.get(row.priority, len(PRIORITY_RANK)), row.order, row.id)
    return Plan(statuses, parents, rows.links, ranks)


def plan_refresh(plan: Plan) -> readiness.ReadinessChanges:
    """Write what the readiness rules ask of `plan` (in the caller's transaction, or one of its own:
    no savepoint, which would cost two statements for nothing here)."""
    changes = readiness.plan_readiness(plan.statuses, plan.parents, plan.links)
    if changes:
        with transaction.atomic(savepoint=False):
            _write_readiness(changes, plan.statuses)
    return changes


def _write_readiness(changes, statuses):
    now = timezone.now()
    if changes.ready:
        Task.objects.filter(pk__in=changes.ready, status=S.PENDING).update(status=S.READY, updated_at=now)
    by_cause = {}
    for pk, cause in changes.skipped.items():
        by_cause.setdefault(cause, []).append(pk)
    if by_cause:
        causes = dict(Task.objects.filter(pk__in=list(by_cause)).values_list("id", "title"))
        for cause, pks in by_cause.items():
            status = changes.containers.get(cause, statuses[cause])
            Task.objects.filter(pk__in=pks, status__in=[S.PENDING, S.READY]).update(
                status=S.SKIPPED,
                ended_at=now,
                updated_at=now,
                error={
                    "type": "prerequisite_not_completed",
                    "message": f"Skipped: required prerequisite '{causes.get(cause, cause)}' {status}",
                    "prerequisite": cause,
                },
            )
    by_move = {}
    for pk, status in changes.containers.items():
        by_move.setdefault((statuses[pk], status), []).append(pk)
    for (old, new), pks in by_move.items():
        values = {"status": new, "updated_at": now}
        if new in readiness.TERMINAL:
            values["ended_at"] = now
        if new == S.COMPLETED:
            values["completed_at"] = now
        if new in readiness.STARTED:
            Task.objects.filter(pk__in=pks, started_at__isnull=True).update(started_at=now)
        Task.objects.filter(pk__in=pks, status=old).update(**values)


def sync_ancestors(task: Task) -> None:
    """Re-derive the containers above `task` from their children (one query per level)."""
    parent_id = task.parent_id
    now = timezone.now()
    while parent_id is not None:
        children = list(Task.objects.filter(parent_id=parent_id).values_list("status", flat=True))
        parent = Task.objects.filter(pk=parent_id).values_list("status", "parent_id").first()
        if parent is None:
            return
        derived = readiness.container_status(children)
        if derived is not None and derived != parent[0]:
            Task.objects.filter(pk=parent_id, status=parent[0]).update(status=derived, updated_at=now)
        parent_id = parent[1]


def task_plan_finished(*, session: CodingSession) -> dict:
    """Counts of the session's leaves by outcome, and whether the plan has finished
    (tasks.readiness.plan_summary: total, completed, failed, skipped, cancelled, other,
    finished, outcome)."""
    plan = plan_load(session.pk)
    return PlanState(statuses=plan.statuses, parents=plan.parents, ranks=plan.ranks).summary()
