"""Every write to tasks: creation, edits, decomposition, transitions; dependencies (tasks/dependencies.py)
and the readiness refresh (tasks/graph_state.py) are re-exported here.

Rules the execution engine relies on:
- A session has one root task (`task_root_for_session`); a task created without a
  parent goes under that root.
- Only leaves are executed. A task with subtasks is a container: its status is
  derived from its children by `tasks.readiness.container_status` and written by
  `task_refresh_readiness`; its own transitions are refused, except cancel and skip,
  which apply to the leaves below it that still allow them.
- The readiness refresh (`tasks.graph_state.plan_refresh`) is the one place where pending tasks
  become ready, dependents of failed, skipped or cancelled prerequisites become skipped
  and containers follow their children. Every transition runs it on the plan it read for
  its checks before returning; `task_refresh_readiness` and `task_refresh_plan` (in
  tasks/graph_state.py, re-exported here) run it on a fresh read, and the engine may call them
  at any time: it is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django_fsm import can_proceed

from orchestrator.errors import Conflict, NotFound, TransitionRefused, ValidationFailed
from tasks import readiness
from tasks.decomposition import CAPABILITIES, plan_decomposition
from tasks.dependencies import task_add_dependency as task_add_dependency
from tasks.dependencies import task_remove_dependency as task_remove_dependency
from tasks.estimates import Estimate, validate_estimate
from tasks.graph_state import INTERRUPTED, plan_load, plan_refresh, sync_ancestors
from tasks.graph_state import PlanState as PlanState
from tasks.graph_state import task_plan_finished as task_plan_finished
from tasks.graph_state import task_refresh_plan as task_refresh_plan
from tasks.graph_state import task_refresh_readiness as task_refresh_readiness
from tasks.models import (
    Task,
    TaskDependency,
    TaskPriority,
    TaskStatus,
)

if TYPE_CHECKING:
    from agents.models import Agent
    from sessions.models import CodingSession

S = TaskStatus
TITLE_MAX = 200
EDITABLE_FIELDS = frozenset(
    {
        "title", "description", "priority", "required_capabilities", "optimistic_hours", "likely_hours",
        "pessimistic_hours", "estimated_tokens", "estimated_cost", "order",
    }
)


# --- validation ---------------------------------------------------------------------


def _validate_fields(values):
    """Check the editable fields present in `values`; raise ValidationFailed naming each broken rule."""
    errors = {}
    if "title" in values:
        title = values["title"]
        if not isinstance(title, str) or not title.strip():
            errors["title"] = ["must not be blank"]
        elif len(title) > TITLE_MAX:
            errors["title"] = [f"must be at most {TITLE_MAX} characters"]
    if "priority" in values and values["priority"] not in TaskPriority.values:
        errors["priority"] = [f"must be one of {', '.join(TaskPriority.values)}"]
    if "required_capabilities" in values:
        capabilities = values["required_capabilities"]
        if not isinstance(capabilities, (list, tuple)) or not all(isinstance(c, str) for c in capabilities):
            errors["required_capabilities"] = ["must be a list of capability names"]
        else:
            unknown = sorted(set(capabilities) - CAPABILITIES)
            if unknown:
                errors["required_capabilities"] = [f"unknown capabilities: {', '.join(unknown)}"]
    for name in ("estimated_tokens", "order"):
        if name in values and (isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 0):
            errors[name] = ["must be a non-negative integer"]
    if "estimated_cost" in values:
        try:
            if Decimal(str(values["estimated_cost"])) < 0:
                errors["estimated_cost"] = ["must not be negative"]
        except (InvalidOperation, ValueError):
            errors["estimated_cost"] = ["must be a number"]
    if errors:
        raise ValidationFailed(errors=errors)


def _dedupe(capabilities):
    return list(dict.fromkeys(capabilities))


# --- creation and edits -------------------------------------------------------------


@transaction.atomic
def task_create(
    *,
    session: CodingSession,
    title: str,
    description: str = "",
    parent: Task | None = None,
    priority: str = TaskPriority.NORMAL,
    required_capabilities: Sequence[str] = (),
    optimistic_hours: float = 0.0,
    likely_hours: float = 0.0,
    pessimistic_hours: float = 0.0,
    estimated_tokens: int = 0,
    estimated_cost: Decimal = Decimal("0"),
    order: int | None = None,
) -> Task:
    """Create a pending task in `session`.

    With no parent, the first task of a session becomes its root and any later one
    goes under the root. A parent must belong to the same session and must not have
    started (a started leaf cannot turn into a container) or finished.
    """
    values = {
        "title": title, "priority": priority, "required_capabilities": list(required_capabilities),
        "estimated_tokens": estimated_tokens, "estimated_cost": estimated_cost,
    }
    if order is not None:
        values["order"] = order
    _validate_fields(values)
    validate_estimate(optimistic_hours, likely_hours, pessimistic_hours)

    root = Task.objects.select_for_update().filter(session=session, parent__isnull=True).first()
    if parent is None:
        parent = root
    if parent is not None:
        parent = Task.objects.select_for_update().get(pk=parent.pk)
        if parent.session_id != session.pk:
            raise ValidationFailed(field="parent", rule="must belong to the same session")
        _refuse_new_children(parent)
    if order is None:
        last = (
            Task.objects.filter(session=session, parent=parent)
            .order_by("-order")
            .values_list("order", flat=True)
            .first()
            if parent is not None
            else None
        )
        order = 0 if last is None else last + 1
    task = Task(
        session=session,
        parent=parent,
        title=title.strip(),
        description=description or "",
        priority=priority,
        required_capabilities=_dedupe(required_capabilities),
        optimistic_hours=float(optimistic_hours),
        likely_hours=float(likely_hours),
        pessimistic_hours=float(pessimistic_hours),
        estimated_tokens=estimated_tokens,
        estimated_cost=Decimal(str(estimated_cost)),
        order=order,
    )
    try:
        with transaction.atomic():
            task.save()
    except IntegrityError:
        # Another request created the session's root between the read and the insert.
        raise Conflict("The session's root task was created concurrently; retry") from None
    if parent is not None:
        sync_ancestors(task)
    return task


def _refuse_new_children(parent):
    has_children = parent.subtasks.exists()
    if parent.status in readiness.TERMINAL:
        raise Conflict(f"Task '{parent.title}' is {parent.status}; it takes no new subtasks")
    if not has_children and parent.status not in (S.PENDING, S.READY):
        raise Conflict(f"Task '{parent.title}' is {parent.status}; a started task cannot take subtasks")


@transaction.atomic
def task_update(*, task: Task, **changes: Any) -> Task:
    """Change editable fields (title, description, priority, capabilities, estimates, order).

    Expected hours, sigma and complexity are recomputed. Status is never edited here:
    it changes through the transition services.
    """
    unknown = sorted(set(changes) - EDITABLE_FIELDS)
    if unknown:
        raise ValidationFailed(errors={name: ["cannot be changed here"] for name in unknown})
    _validate_fields(changes)
    locked = Task.objects.select_for_update().get(pk=task.pk)
    estimate = {
        name: changes.get(name, getattr(locked, name))
        for name in ("optimistic_hours", "likely_hours", "pessimistic_hours")
    }
    validate_estimate(*estimate.values())
    for name, value in changes.items():
        if name == "title":
            value = value.strip()
        elif name == "required_capabilities":
            value = _dedupe(value)
        elif name == "estimated_cost":
            value = Decimal(str(value))
        elif name in estimate:
            value = float(value)
        setattr(locked, name, value)
    if changes:
        locked.save(update_fields=list(changes))
    return locked


# --- decomposition -----------------------------------------------------------------


def _descendant_ids(task_id):
    """Ids below a task, one query per level."""
    found, frontier = [], [task_id]
    while frontier:
        frontier = list(Task.objects.filter(parent_id__in=frontier).values_list("id", flat=True))
        found.extend(frontier)
    return found


@transaction.atomic
def task_decompose(*, task: Task, template: str | None = None, max_depth: int = 3, auto_estimate: bool = True,
                   replace: bool = False) -> dict:
    """Break `task` into subtasks with a decomposition template (see tasks.decomposition).

    The template is the one named, or chosen from the title and description; the
    choice and its reason are stored on the task. With auto_estimate the subtasks
    carry the template's PERT estimates (scaled to the task's own estimate when it
    has one) and a task without an estimate takes the sum of its leaves; without it
    they are left at zero for a person to fill in. Refused with Conflict when the
    task already has subtasks (unless replace=True, which deletes them provided
    none has started) or has itself started. Returns {"template", "reason",
    "created", "subtasks"}.
    """
    locked = Task.objects.select_for_update().get(pk=task.pk)
    existing = _descendant_ids(locked.pk)
    if existing and not replace:
        raise Conflict(
            f"Task '{locked.title}' already has subtasks; decompose with replace=true to rebuild them",
            details={"subtasks": len(existing)},
        )
    if existing:
        started = Task.objects.filter(pk__in=existing).exclude(status__in=[S.PENDING, S.READY]).count()
        if started:
            raise Conflict(f"{started} subtasks of '{locked.title}' have started or finished; they cannot be replaced")
        Task.objects.filter(pk__in=existing).delete()
    elif locked.status not in (S.PENDING, S.READY):
        raise Conflict(f"Task '{locked.title}' is {locked.status}; only a task that has not started can be decomposed")

    own = locked.estimate
    plan = plan_decomposition(
        title=locked.title, description=locked.description, template=template, max_depth=max_depth,
        estimate=own if own.expected > 0 else None,
    )
    created = _create_plan(locked, plan, auto_estimate=auto_estimate)

    locked.decomposition_template = plan.template
    locked.decomposition_reason = plan.reason
    fields = ["decomposition_template", "decomposition_reason"]
    if auto_estimate and own.expected == 0:
        total = plan.leaf_estimate
        locked.optimistic_hours, locked.likely_hours, locked.pessimistic_hours = (
            total.optimistic, total.likely, total.pessimistic,
        )
        locked.estimated_tokens = sum(t.estimated_tokens for t in plan.walk() if not t.children)
        fields += ["optimistic_hours", "likely_hours", "pessimistic_hours", "estimated_tokens"]
    locked.save(update_fields=fields)
    task_refresh_readiness(session=locked.session)
    return {
        "template": plan.template,
        "reason": plan.reason,
        "created": len(created),
        "subtasks": [t for t in created if t.parent_id == locked.pk],
    }


def _create_plan(parent, plan, *, auto_estimate):
    """Insert the planned tree level by level (one INSERT per level) and its dependencies."""
    created = []
    links = []
    level = [(planned, parent) for planned in plan.subtasks]
    while level:
        rows = []
        for planned, owner in level:
            estimate = planned.estimate if auto_estimate else Estimate(0.0, 0.0, 0.0)
            row = Task(
                session_id=parent.session_id,
                parent=owner,
                title=planned.title[:TITLE_MAX],
                description=planned.description,
                priority=parent.priority,
                required_capabilities=list(planned.capabilities),
                optimistic_hours=estimate.optimistic,
                likely_hours=estimate.likely,
                pessimistic_hours=estimate.pessimistic,
                estimated_tokens=planned.estimated_tokens if auto_estimate else 0,
                order=planned.order,
                decomposition_template=planned.template if planned.children else "",
                decomposition_reason=planned.children[0].reason if planned.children else "",
            )
            row.derive_estimate()
            rows.append(row)
        Task.objects.bulk_create(rows)
        created.extend(rows)
        next_level = []
        siblings = {}
        for (planned, owner), row in zip(level, rows, strict=True):
            siblings.setdefault(owner.pk, []).append((planned, row))
            next_level.extend((child, row) for child in planned.children)
        for group in siblings.values():
            for planned, row in group:
                for index, dependency_type in planned.depends_on:
                    links.append(
                        TaskDependency(prerequisite=group[index][1], dependent=row, dependency_type=dependency_type)
                    )
        level = next_level
    TaskDependency.objects.bulk_create(links)
    return created


# --- helpers for the execution engine ---------------------------------------------


def task_root_for_session(*, session: CodingSession) -> Task:
    """The session's root task, created from the session's title and prompt if missing."""
    root = Task.objects.filter(session=session, parent__isnull=True).first()
    if root is not None:
        return root
    try:
        with transaction.atomic():
            return Task.objects.create(
                session=session, title=(session.title or "Session")[:TITLE_MAX], description=session.initial_prompt
            )
    except IntegrityError:
        return Task.objects.get(session=session, parent__isnull=True)


def _leaves(queryset):
    return queryset.annotate(has_subtasks=Exists(Task.objects.filter(parent_id=OuterRef("pk")))).filter(
        has_subtasks=False
    )


# --- transitions ------------------------------------------------------------------


def _refused(task, attempted, message=None):
    return TransitionRefused(
        kind="task", current=task.status, attempted=attempted, allowed=task.allowed_actions(), message=message
    )


def _transition(task, attempted, *, check=None, **kwargs):
    """Run one transition on the locked row, save it, then refresh the session's readiness."""
    return _transitions(task, [(attempted, check, kwargs)])


def _transitions(task, steps):
    """Run transitions [(name, check, kwargs)] one after the other on the locked row, then save it
    once and refresh the session's readiness; any refusal leaves the row as it was.

    The session's plan is read once, after the lock: the checks (prerequisites, own and
    inherited) and the refresh both use it. Returns the locked instance, which is as stored:
    the refresh never changes the task itself (a leaf that has just moved), and a fresh read
    would be one more query (refresh_from_db() is never used on these FSM models: django-fsm's
    refresh toggles the field's class-wide `protected` flag, which races between a worker's threads)."""
    with transaction.atomic():
        try:
            locked = Task.objects.select_for_update().get(pk=task.pk)
        except Task.DoesNotExist:
            raise NotFound("Task not found") from None
        plan = plan_load(locked.session_id)
        if plan.has_subtasks(locked.pk):
            raise TransitionRefused(
                kind="task", current=locked.status, attempted=steps[0][0], allowed=["cancel", "skip"],
                message=f"Task '{locked.title}' has subtasks; its status follows them (only cancel and skip apply)",
            )
        fields = set()
        for attempted, check, kwargs in steps:
            method = getattr(locked, attempted)
            if not can_proceed(method):
                raise _refused(locked, attempted)
            if check is not None:
                check(locked, plan)
            fields.update(method(**kwargs))
        locked.save(update_fields=["status", *sorted(fields)])
        plan.statuses[locked.pk] = locked.status
        plan_refresh(plan)
    return locked


def _first_blocker(task, plan, blockers):
    """(type, prerequisite status, prerequisite title) of the first link in `blockers` holding `task` back, or None."""
    links = blockers(task.pk, plan.statuses, plan.parents, plan.links)
    if not links:
        return None
    link = links[0]
    title = Task.objects.filter(pk=link.prerequisite).values_list("title", flat=True).first()
    return link.type, plan.statuses[link.prerequisite], title


def _check_start(task, plan):
    waiting = _first_blocker(task, plan, readiness.start_blockers)
    if waiting:
        kind, status, title = waiting
        raise _refused(task, "start", f"Cannot start '{task.title}': its {kind} prerequisite '{title}' is {status}")


def _check_finish(task, plan):
    waiting = _first_blocker(task, plan, readiness.finish_blockers)
    if waiting:
        kind, status, title = waiting
        raise _refused(
            task, "complete", f"Cannot complete '{task.title}' yet: its {kind} prerequisite '{title}' is {status}"
        )


def task_mark_ready(*, task: Task) -> Task:
    """pending → ready by hand; refused while a required prerequisite holds it back."""
    return _transition(task, "mark_ready", check=_check_start_for_ready)


def _check_start_for_ready(task, plan):
    waiting = _first_blocker(task, plan, readiness.start_blockers)
    if waiting:
        kind, status, title = waiting
        raise _refused(
            task, "mark_ready", f"'{task.title}' is not ready: its {kind} prerequisite '{title}' is {status}"
        )


def _check_capabilities(task, agent):
    missing = sorted(set(task.required_capabilities) - set(getattr(agent, "capabilities", task.required_capabilities)))
    if missing:
        raise ValidationFailed(
            f"Agent {agent} lacks the capabilities {', '.join(missing)}",
            errors={"agent": [f"lacks {', '.join(missing)}"]},
        )


def task_assign(*, task: Task, agent: Agent, start: bool = False) -> Task:
    """pending or ready → assigned to `agent` (capacity is reserved by the agents app's routing);
    with `start`, on to in_progress in the same transaction (a worker that runs it now)."""
    _check_capabilities(task, agent)
    steps = [("assign", None, {"agent": agent})]
    if start:
        steps.append(("start", _check_start, {"now": timezone.now()}))
    return _transitions(task, steps)


def task_start(*, task: Task) -> Task:
    """assigned → in_progress; refused while a required start prerequisite is unmet."""
    return _transition(task, "start", check=_check_start, now=timezone.now())


def task_complete(*, task: Task, result: dict | None = None, output: str = "") -> Task:
    """in_progress → completed; refused while a finish_to_finish or start_to_finish prerequisite is unmet."""
    return _transition(
        task, "complete", check=_check_finish, now=timezone.now(), result=result or {}, output=output or ""
    )


def task_fail(*, task: Task, error: dict | str) -> Task:
    """in_progress → failed; its pending and ready dependents are skipped by the refresh."""
    if isinstance(error, str):
        error = {"type": "error", "message": error}
    return _transition(task, "fail", now=timezone.now(), error=error or {})


def task_block(*, task: Task, reason: str = "") -> Task:
    return _transition(task, "block", reason=reason)


def task_pause(*, task: Task) -> Task:
    return _transition(task, "pause")


def task_resume(*, task: Task) -> Task:
    """blocked or paused → in_progress."""
    return _transition(task, "resume")


def task_cancel(*, task: Task, reason: str = "") -> Task:
    """Cancel a leaf, or every cancellable leaf below a container (running ones are left running)."""
    return _cascade_or_transition(task, "cancel", reason=reason)


def task_skip(*, task: Task, reason: str = "") -> Task:
    """Skip a pending or ready leaf, or every such leaf below a container."""
    return _cascade_or_transition(task, "skip", reason=reason)


def _cascade_or_transition(task, attempted, *, reason):
    if not Task.objects.filter(parent_id=task.pk).exists():
        return _transition(task, attempted, now=timezone.now(), reason=reason)
    sources = {"cancel": [S.PENDING, S.READY, S.ASSIGNED, S.BLOCKED, S.PAUSED], "skip": [S.PENDING, S.READY]}[attempted]
    target = {"cancel": S.CANCELLED, "skip": S.SKIPPED}[attempted]
    with transaction.atomic():
        locked = Task.objects.select_for_update().select_related("session").get(pk=task.pk)
        leaves = _leaves(Task.objects.filter(pk__in=_descendant_ids(locked.pk), status__in=sources))
        now = timezone.now()
        error = {"type": target, "message": reason or f"{attempted} of '{locked.title}'"}
        changed = Task.objects.filter(pk__in=list(leaves.values_list("id", flat=True)), status__in=sources).update(
            status=target, ended_at=now, updated_at=now, error=error
        )
        if not changed:
            raise TransitionRefused(
                kind="task", current=locked.status, attempted=attempted, allowed=[],
                message=f"Nothing below '{locked.title}' can be {target} any more",
            )
        task_refresh_readiness(session=locked.session)
    # A fresh instance, not refresh_from_db(): django-fsm's refresh toggles the field's
    # class-wide `protected` flag, which races with other threads of a worker.
    return Task.objects.get(pk=locked.pk)



def task_set_opencode_session(*, task: Task, opencode_session_id: str) -> None:
    """Record which OpenCode session runs the task (the execution engine calls this)."""
    Task.objects.filter(pk=task.pk).update(opencode_session_id=opencode_session_id)
    task.opencode_session_id = opencode_session_id


def task_interrupted_for_session(*, session: CodingSession) -> QuerySet[Task]:
    """Leaves a pause or a lost worker interrupted (assigned, in progress or paused), oldest first."""
    return _leaves(
        Task.objects.filter(session=session, status__in=INTERRUPTED)
    ).select_related("assigned_agent").order_by("order", "id")
