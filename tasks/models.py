"""Tasks: units of a session's work, their state machine and the dependencies between them.

Subtasks form a tree under the session's one root task. Only leaves are executed;
a task with subtasks is a container whose status is derived from its children
(see `tasks.readiness.container_status`) and written by the services, never by a
transition of its own. The transitions below only change fields; `tasks.services`
wraps each one in a transaction with the row locked.
"""

from decimal import Decimal

from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django_fsm import FSMField, FSMModelMixin, transition

from tasks import estimates
from tasks.graph import DEPENDENCY_TYPES


class TaskStatus(models.TextChoices):
    PENDING = "pending"
    READY = "ready"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


S = TaskStatus

TERMINAL_STATUSES = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED})


class TaskPriority(models.TextChoices):
    BLOCKER = "blocker"
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BACKGROUND = "background"


PRIORITY_RANK = {name: rank for rank, name in enumerate(TaskPriority.values)}


class Complexity(models.TextChoices):
    TRIVIAL = estimates.TRIVIAL
    SIMPLE = estimates.SIMPLE
    MODERATE = estimates.MODERATE
    COMPLEX = estimates.COMPLEX
    EXPERT = estimates.EXPERT


class DependencyType(models.TextChoices):
    FINISH_TO_START = DEPENDENCY_TYPES[0]
    START_TO_START = DEPENDENCY_TYPES[1]
    FINISH_TO_FINISH = DEPENDENCY_TYPES[2]
    START_TO_FINISH = DEPENDENCY_TYPES[3]


ESTIMATE_FIELDS = ("optimistic_hours", "likely_hours", "pessimistic_hours")
DERIVED_ESTIMATE_FIELDS = ("expected_hours", "sigma_hours", "complexity")


class Task(FSMModelMixin, models.Model):
    session = models.ForeignKey("coding_sessions.CodingSession", on_delete=models.CASCADE, related_name="tasks")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="subtasks")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    status = FSMField(default=S.PENDING, choices=S.choices, protected=True)
    priority = models.CharField(max_length=12, choices=TaskPriority.choices, default=TaskPriority.NORMAL)
    required_capabilities = models.JSONField(default=list, blank=True)

    optimistic_hours = models.FloatField(default=0.0)
    likely_hours = models.FloatField(default=0.0)
    pessimistic_hours = models.FloatField(default=0.0)
    # Derived from the three above on every save, stored so lists can filter and sort on them.
    expected_hours = models.FloatField(default=0.0, editable=False)
    sigma_hours = models.FloatField(default=0.0, editable=False)
    complexity = models.CharField(
        max_length=10, choices=Complexity.choices, default=Complexity.TRIVIAL, editable=False
    )
    estimated_tokens = models.BigIntegerField(default=0)
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))

    assigned_agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    result = models.JSONField(default=dict, blank=True)
    error = models.JSONField(default=dict, blank=True)
    output = models.TextField(blank=True, default="")
    opencode_session_id = models.CharField(max_length=200, blank=True, default="")

    order = models.PositiveIntegerField(default=0)
    decomposition_template = models.CharField(max_length=30, blank=True, default="")
    decomposition_reason = models.TextField(blank=True, default="")
    # From a plan (tasks.plans): its key, the files it owns and the command that accepts its work.
    plan_key = models.CharField(max_length=50, blank=True, default="")
    files = models.JSONField(default=list, blank=True)
    acceptance = models.TextField(blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session_id", "order", "id"]
        indexes = [
            models.Index(fields=["session", "status"], name="task_session_status"),
            models.Index(fields=["parent", "order"], name="task_parent_order"),
            models.Index(fields=["status", "-id"], name="task_status_id"),
            models.Index(fields=["assigned_agent", "status"], name="task_agent_status"),
        ]
        constraints = [
            # One root per session: the execution engine runs that root's tree.
            models.UniqueConstraint(fields=["session"], condition=Q(parent__isnull=True), name="task_one_root"),
            models.UniqueConstraint(fields=["session", "plan_key"], condition=~Q(plan_key=""),
                                    name="task_plan_key_unique"),
            models.CheckConstraint(
                condition=Q(optimistic_hours__gte=0)
                & Q(likely_hours__gte=F("optimistic_hours"))
                & Q(pessimistic_hours__gte=F("likely_hours")),
                name="task_estimate_ordered",
            ),
        ]

    def __str__(self):
        return self.title

    # --- estimates -----------------------------------------------------------

    @property
    def estimate(self):
        return estimates.Estimate(self.optimistic_hours, self.likely_hours, self.pessimistic_hours)

    def derive_estimate(self):
        """Recompute expected hours, sigma and complexity from the three-point estimate."""
        estimate = self.estimate
        self.expected_hours = estimate.expected
        self.sigma_hours = estimate.sigma
        self.complexity = estimate.complexity

    def save(self, *args, **kwargs):
        self.derive_estimate()
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            update_fields = set(update_fields)
            if update_fields & set(ESTIMATE_FIELDS):
                update_fields |= set(DERIVED_ESTIMATE_FIELDS)
            update_fields.add("updated_at")
            kwargs["update_fields"] = sorted(update_fields)
        self.updated_at = timezone.now()
        super().save(*args, **kwargs)

    @property
    def is_terminal(self):
        return self.status in TERMINAL_STATUSES

    def allowed_actions(self):
        return sorted(t.name for t in self.get_available_status_transitions())

    # --- transitions: each changes fields only and returns their names -------------

    @transition(field=status, source=S.PENDING, target=S.READY)
    def mark_ready(self):
        return []

    @transition(field=status, source=[S.PENDING, S.READY], target=S.ASSIGNED)
    def assign(self, *, agent):
        self.assigned_agent = agent
        return ["assigned_agent"]

    @transition(field=status, source=S.ASSIGNED, target=S.IN_PROGRESS)
    def start(self, *, now):
        self.started_at = now
        return ["started_at"]

    @transition(field=status, source=S.IN_PROGRESS, target=S.COMPLETED)
    def complete(self, *, now, result, output):
        self.completed_at = now
        self.ended_at = now
        self.result = result
        self.output = output
        return ["completed_at", "ended_at", "result", "output"]

    @transition(field=status, source=S.IN_PROGRESS, target=S.FAILED)
    def fail(self, *, now, error):
        self.ended_at = now
        self.error = error
        return ["ended_at", "error"]

    @transition(field=status, source=S.IN_PROGRESS, target=S.BLOCKED)
    def block(self, *, reason):
        self.error = {"type": "blocked", "message": reason} if reason else {}
        return ["error"]

    @transition(field=status, source=S.IN_PROGRESS, target=S.PAUSED)
    def pause(self):
        return []

    @transition(field=status, source=[S.BLOCKED, S.PAUSED], target=S.IN_PROGRESS)
    def resume(self):
        return []

    @transition(field=status, source=[S.PENDING, S.READY, S.ASSIGNED, S.BLOCKED, S.PAUSED], target=S.CANCELLED)
    def cancel(self, *, now, reason=""):
        self.ended_at = now
        if reason:
            self.error = {"type": "cancelled", "message": reason}
        return ["ended_at", "error"]

    @transition(field=status, source=[S.PENDING, S.READY], target=S.SKIPPED)
    def skip(self, *, now, reason=""):
        self.ended_at = now
        if reason:
            self.error = {"type": "skipped", "message": reason}
        return ["ended_at", "error"]


class TaskDependency(models.Model):
    """`dependent` waits for `prerequisite` as its type says; required ones gate readiness."""

    prerequisite = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="outgoing_dependencies")
    dependent = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="incoming_dependencies")
    dependency_type = models.CharField(
        max_length=20, choices=DependencyType.choices, default=DependencyType.FINISH_TO_START
    )
    is_required = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "task dependencies"
        constraints = [
            models.UniqueConstraint(fields=["prerequisite", "dependent"], name="task_dependency_unique"),
            models.CheckConstraint(condition=~Q(prerequisite=F("dependent")), name="task_dependency_not_self"),
        ]

    def __str__(self):
        return f"{self.prerequisite_id} → {self.dependent_id} ({self.dependency_type})"


class PlanStatus(models.TextChoices):
    PROPOSED = "proposed"
    APPROVED = "approved"
    SENT_BACK = "sent_back"
    SUPERSEDED = "superseded"


class SessionPlan(models.Model):
    """One version of a session's plan: the JSON as submitted, what the checks found, and its review.

    Versions count from 1 per session; the highest is the current plan, and its tasks are the
    session's task graph. A version replaced during review is `superseded`; one sent back holds the
    reviewer's comment, which the next planning turn reads (`revision_requested` until it does).
    """

    session = models.ForeignKey("coding_sessions.CodingSession", on_delete=models.CASCADE, related_name="plans")
    version = models.PositiveIntegerField()
    # "create" (supplied with the session), "api" (replaced through the plan API), "planner", "template".
    source = models.CharField(max_length=20, default="api")
    submitted = models.JSONField(default=dict, blank=True)
    findings = models.JSONField(default=list, blank=True)
    adjustments = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=12, choices=PlanStatus.choices, default=PlanStatus.PROPOSED)
    comment = models.TextField(blank=True, default="")
    revision_requested = models.BooleanField(default=False)
    created_by = models.CharField(max_length=250, blank=True, default="")
    decided_by = models.CharField(max_length=250, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session_id", "version"]
        constraints = [
            models.UniqueConstraint(fields=["session", "version"], name="session_plan_version_unique"),
        ]

    def __str__(self):
        return f"{self.session_id} plan v{self.version} ({self.status})"
