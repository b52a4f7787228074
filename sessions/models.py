"""Coding sessions: the 12-state machine, its audit trail, checkpoints and event log.

The state machine lives here as django-fsm transitions that only change
fields; `sessions.services` wraps every transition in a transaction with the
row locked, writes the audit row and the event, and schedules side effects.
"""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.functions import Cast, Concat, LPad
from django.utils import timezone
from django_fsm import FSMField, FSMModelMixin, transition

from sessions import health_score, rules


class SessionStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    ORPHANED = "orphaned"
    DEGRADED = "degraded"


S = SessionStatus

TERMINAL_STATES = frozenset({S.COMPLETED, S.PARTIALLY_COMPLETED, S.CANCELLED})
RECOVERABLE_STATES = frozenset({S.FAILED, S.TIMEOUT, S.STOPPED, S.ORPHANED})
# A session in these states has (or is about to have) a worker executing it.
WORKER_STATES = frozenset({S.QUEUED, S.RUNNING, S.DEGRADED})
# The clock of the current attempt runs in these states.
CLOCK_STATES = frozenset({S.RUNNING, S.DEGRADED})

class SessionType(models.TextChoices):
    PLANNING = "planning"
    EXECUTION = "execution"
    REVIEW = "review"
    DEBUG = "debug"
    INTEGRATION = "integration"


class Priority(models.IntegerChoices):
    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3
    DEFERRED = 4


class ActorKind(models.TextChoices):
    USER = "user"
    WORKER = "worker"
    SYSTEM = "system"


def attempt_elapsed_seconds(*, status, attempt_seconds, run_started_at, now=None):
    """Running time of the current attempt, pauses excluded (what the deadline counts): the seconds
    of its earlier running stretches plus, while the clock runs, the current one."""
    elapsed = attempt_seconds
    if run_started_at is not None and status in CLOCK_STATES:
        elapsed += max(0.0, ((now or timezone.now()) - run_started_at).total_seconds())
    return elapsed


def _has_retries_left(session):
    return session.retry_count < session.max_retries


class CodingSession(FSMModelMixin, models.Model):
    # IND-000042, computed by the database from the id (so creating a session is one INSERT,
    # not an INSERT and an UPDATE); six digits at least, never truncated.
    reference = models.GeneratedField(
        expression=Concat(
            Value("IND-"),
            Case(
                When(id__lt=1_000_000, then=LPad(Cast("id", models.CharField()), 6, Value("0"))),
                default=Cast("id", models.CharField()),
            ),
        ),
        output_field=models.CharField(max_length=20),
        db_persist=True,
        unique=True,
    )
    title = models.CharField(max_length=rules.TITLE_MAX)
    description = models.TextField(blank=True, default="")
    session_type = models.CharField(max_length=20, choices=SessionType.choices, default=SessionType.EXECUTION)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.MEDIUM)
    initial_prompt = models.TextField()
    repository = models.CharField(max_length=rules.REPOSITORY_MAX)
    model_identifier = models.CharField(max_length=200, blank=True, default="")
    max_duration_seconds = models.PositiveIntegerField(default=rules.DURATION_DEFAULT)
    max_retries = models.PositiveSmallIntegerField(default=rules.RETRIES_DEFAULT)

    token_budget_soft = models.BigIntegerField(null=True, blank=True)
    token_budget_hard = models.BigIntegerField(null=True, blank=True)
    cost_budget_soft = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    cost_budget_hard = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    # {"bash": "ask", "edit": "allow", "webfetch": "deny"}: OpenCode's per-tool permission.
    permission_policy = models.JSONField(default=dict, blank=True)

    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    status = FSMField(default=S.PENDING, choices=SessionStatus.choices, protected=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    # Metrics.
    started_at = models.DateTimeField(null=True, blank=True)
    # Start of the current running stretch; null while the clock is stopped.
    run_started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Running time of every attempt, pauses excluded.
    duration_seconds = models.FloatField(default=0.0)
    # Running time of the current attempt before `run_started_at`; the deadline counts this.
    attempt_seconds = models.FloatField(default=0.0)
    retry_count = models.PositiveSmallIntegerField(default=0)
    checkpoint_count = models.PositiveIntegerField(default=0)
    last_checkpoint_at = models.DateTimeField(null=True, blank=True)
    # Never decreases: new checkpoints take the next number even after old ones are dropped.
    last_checkpoint_sequence = models.PositiveIntegerField(default=0)
    tokens_input = models.BigIntegerField(default=0)
    tokens_output = models.BigIntegerField(default=0)
    tokens_reasoning = models.BigIntegerField(default=0)
    tokens_cache_read = models.BigIntegerField(default=0)
    tokens_cache_write = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    api_calls = models.PositiveIntegerField(default=0)
    # {"type", "message", "context"} of the last failure; empty when none.
    error = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)

    # OpenCode bookkeeping, filled by the execution engine.
    opencode_session_id = models.CharField(max_length=200, blank=True, default="")
    opencode_server_url = models.CharField(max_length=500, blank=True, default="")
    workspace_path = models.CharField(max_length=1000, blank=True, default="")
    branch_name = models.CharField(max_length=250, blank=True, default="")
    worker_id = models.CharField(max_length=250, blank=True, default="")
    worker_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Dispatch: when the session last entered the queue, and (automatic retries) when it may start.
    queued_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    # Where the next run starts from: set by retry (latest checkpoint) and by restore.
    resume_checkpoint = models.ForeignKey(
        "coding_sessions.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "coding session"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "-id"], name="session_status_id"),
            models.Index(fields=["priority", "-id"], name="session_priority_id"),
            models.Index(fields=["session_type", "-id"], name="session_type_id"),
            models.Index(fields=["repository", "-id"], name="session_repository_id"),
            models.Index(fields=["agent", "-id"], name="session_agent_id"),
            models.Index(fields=["created_at", "id"], name="session_created"),
            models.Index(fields=["status", "priority", "queued_at", "id"], name="session_queue_order"),
            models.Index(fields=["status", "worker_heartbeat_at"], name="session_worker_heartbeat"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_duration_seconds__gte=rules.DURATION_MIN)
                & Q(max_duration_seconds__lte=rules.DURATION_MAX),
                name="session_max_duration_range",
            ),
            models.CheckConstraint(condition=Q(priority__lte=4), name="session_priority_range"),
        ]

    def __str__(self):
        return f"{self.reference or 'IND-?'} {self.title}"

    # --- computed ------------------------------------------------------------

    def elapsed_seconds(self, now=None):
        """Running time of the current attempt, pauses excluded (what the deadline counts)."""
        return attempt_elapsed_seconds(status=self.status, attempt_seconds=self.attempt_seconds,
                                       run_started_at=self.run_started_at, now=now)

    @property
    def health_score(self):
        return health_score.health_score(self.status, self.elapsed_seconds(), self.max_duration_seconds)

    @property
    def is_at_risk(self):
        return health_score.is_at_risk(self.status, self.elapsed_seconds(), self.max_duration_seconds)

    @property
    def is_deleted(self):
        return self.deleted_at is not None

    @property
    def is_recoverable(self):
        return self.status in RECOVERABLE_STATES and _has_retries_left(self)

    @property
    def priority_name(self):
        return rules.PRIORITY_NAMES.get(self.priority, str(self.priority))

    @property
    def tokens_total(self):
        return self.tokens_input + self.tokens_output + self.tokens_reasoning

    def allowed_actions(self):
        """Names of the transitions possible from the current state (conditions included)."""
        return sorted(t.name for t in self.get_available_status_transitions())

    # --- field changes shared by transitions -----------------------------------

    def _begin_run(self, now, worker_id):
        self.run_started_at = now
        if self.started_at is None:
            self.started_at = now
        fields = ["run_started_at", "started_at"]
        if worker_id is not None:
            self.worker_id = worker_id
            self.worker_heartbeat_at = now
            fields += ["worker_id", "worker_heartbeat_at"]
        return fields

    def _enter_queue(self, now, not_before):
        # Queue order is priority, then time queued; an automatic retry waits until not_before.
        self.queued_at = now
        self.not_before = not_before
        return ["queued_at", "not_before"]

    def _stop_clock(self, now):
        if self.run_started_at is not None:
            spent = max(0.0, (now - self.run_started_at).total_seconds())
            self.attempt_seconds += spent
            self.duration_seconds += spent
            self.run_started_at = None
        return ["run_started_at", "attempt_seconds", "duration_seconds"]

    def _end(self, now):
        self.ended_at = now
        return ["ended_at", *self._stop_clock(now)]

    # --- transitions: each returns the fields it changed ---------------------------

    @transition(field=status, source=S.PENDING, target=S.QUEUED)
    def start(self, *, now, not_before=None):
        return self._enter_queue(now, not_before)

    @transition(field=status, source=[S.PENDING, S.QUEUED, S.PAUSED], target=S.RUNNING)
    def run(self, *, now, worker_id=None):
        return self._begin_run(now, worker_id)

    @transition(field=status, source=S.PAUSED, target=S.QUEUED)
    def resume(self, *, now):
        return self._enter_queue(now, None)

    @transition(field=status, source=[S.RUNNING, S.DEGRADED], target=S.PAUSED)
    def pause(self, *, now):
        return self._stop_clock(now)

    @transition(field=status, source=S.RUNNING, target=S.DEGRADED)
    def degrade(self, *, now):
        return []

    @transition(field=status, source=S.DEGRADED, target=S.RUNNING)
    def recover(self, *, now):
        return []

    @transition(field=status, source=[S.RUNNING, S.DEGRADED], target=S.COMPLETED)
    def complete(self, *, now, result=None):
        self.completed_at = now
        self.result = result or {}
        return ["completed_at", "result", *self._end(now)]

    @transition(field=status, source=[S.RUNNING, S.DEGRADED], target=S.PARTIALLY_COMPLETED)
    def complete_partially(self, *, now, result=None):
        self.completed_at = now
        self.result = result or {}
        return ["completed_at", "result", *self._end(now)]

    @transition(field=status, source=[S.PENDING, S.QUEUED, S.RUNNING, S.DEGRADED], target=S.FAILED)
    def fail(self, *, now, error):
        self.failed_at = now
        self.error = error
        return ["failed_at", "error", *self._end(now)]

    @transition(field=status, source=[S.RUNNING, S.DEGRADED], target=S.TIMEOUT)
    def time_out(self, *, now, error):
        self.failed_at = now
        self.error = error
        return ["failed_at", "error", *self._end(now)]

    @transition(field=status, source=[S.RUNNING, S.DEGRADED], target=S.ORPHANED)
    def orphan(self, *, now, error):
        self.failed_at = now
        self.error = error
        return ["failed_at", "error", *self._end(now)]

    @transition(field=status, source=[S.RUNNING, S.DEGRADED, S.PAUSED], target=S.STOPPED)
    def stop(self, *, now):
        return self._end(now)

    @transition(field=status, source=[S.PENDING, S.QUEUED, S.PAUSED], target=S.CANCELLED)
    def cancel(self, *, now):
        return self._end(now)

    @transition(
        field=status, source=list(RECOVERABLE_STATES), target=S.PENDING, conditions=[_has_retries_left]
    )
    def retry(self, *, now, resume_checkpoint):
        self.retry_count += 1
        self.resume_checkpoint = resume_checkpoint
        self.ended_at = None
        self.attempt_seconds = 0.0
        self.error = {}
        self.worker_id = ""
        self.worker_heartbeat_at = None
        return [
            "retry_count", "resume_checkpoint", "ended_at", "attempt_seconds", "error",
            "worker_id", "worker_heartbeat_at",
        ]


class SessionTransition(models.Model):
    """Audit row: one per transition, never changed."""

    session = models.ForeignKey(CodingSession, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=30, choices=SessionStatus.choices)
    to_status = models.CharField(max_length=30, choices=SessionStatus.choices)
    action = models.CharField(max_length=40)
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The worker id for worker actors; empty otherwise.
    actor_label = models.CharField(max_length=250, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="transition_session_id")]

    def __str__(self):
        return f"{self.session_id}: {self.from_status} -> {self.to_status}"


class Checkpoint(models.Model):
    """A restorable point of a run; at most CHECKPOINTS_RETAINED kept per session."""

    session = models.ForeignKey(CodingSession, on_delete=models.CASCADE, related_name="checkpoints")
    sequence = models.PositiveIntegerField()
    data = models.JSONField(default=dict, blank=True)
    opencode_message_id = models.CharField(max_length=200, blank=True, default="")
    git_ref = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["sequence"]
        constraints = [
            models.UniqueConstraint(fields=["session", "sequence"], name="checkpoint_sequence_unique"),
        ]

    def __str__(self):
        return f"{self.session_id}#{self.sequence}"


CHECKPOINTS_RETAINED = 100


class SessionEvent(models.Model):
    """The durable, ordered log of a session; `id` is the cursor clients resume from."""

    id = models.BigAutoField(primary_key=True)
    session = models.ForeignKey(CodingSession, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="event_session_id")]

    def __str__(self):
        return f"{self.session_id}#{self.id} {self.type}"


class PermissionRequestStatus(models.TextChoices):
    PENDING = "pending", "Waiting for an answer"
    ANSWERED = "answered", "Answered by an operator"
    EXPIRED = "expired", "Default applied after expiry"


class PermissionReply(models.TextChoices):
    ONCE = "once", "Allow once"
    ALWAYS = "always", "Always allow"
    REJECT = "reject", "Reject"


class PermissionRequest(models.Model):
    """A tool permission OpenCode asked for (the session's policy said `ask`).

    Operators answer it (the row); the worker running the session forwards the
    answer to OpenCode (`forwarded_at`). Unanswered, it expires to the default.
    """

    session = models.ForeignKey(CodingSession, on_delete=models.CASCADE, related_name="permission_requests")
    task = models.ForeignKey("tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    opencode_id = models.CharField(max_length=200)
    opencode_session_id = models.CharField(max_length=200, blank=True, default="")
    permission = models.CharField(max_length=100)
    patterns = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=PermissionRequestStatus.choices, default=PermissionRequestStatus.PENDING
    )
    reply = models.CharField(max_length=10, choices=PermissionReply.choices, blank=True, default="")
    answered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    answered_at = models.DateTimeField(null=True, blank=True)
    forwarded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["session", "opencode_id"], name="permission_request_unique_per_session"),
        ]
        indexes = [models.Index(fields=["session", "status"], name="permission_request_open_idx")]

    def __str__(self):
        return f"{self.permission} {self.patterns} ({self.status})"
