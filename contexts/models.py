"""Contexts: versioned JSON documents shared by sessions and agents, with their history."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Scope(models.TextChoices):
    SESSION = "session", "Session"
    AGENT = "agent", "Agent"
    GLOBAL = "global", "Global"
    TEMPORARY = "temporary", "Temporary"


# How long a context is kept (SPEC, Contexts). A session context expires 24 h
# after its session ends and an agent context 7 days after its last use, so
# those two are counted from an event rather than from creation; a global
# context is kept.
RETENTION = {
    Scope.TEMPORARY: timedelta(hours=1),
    Scope.SESSION: timedelta(hours=24),
    Scope.AGENT: timedelta(days=7),
    Scope.GLOBAL: None,
}

SESSION_CONTEXT_NAME = "session"


class Context(models.Model):
    scope = models.CharField(max_length=20, choices=Scope.choices)
    session = models.ForeignKey(
        "coding_sessions.CodingSession",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="contexts",
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.CASCADE, related_name="contexts"
    )
    name = models.CharField(max_length=200)
    data = models.JSONField(default=dict, blank=True)
    # Starts at 1 and grows by one with every write; writers name the version
    # they read and a stale one is refused (optimistic locking).
    version = models.PositiveIntegerField(default=1)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(default=timezone.now)

    # Provenance of the latest share into this context; each change it made is
    # also in the history with a note naming the source.
    source_context = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="shared_into"
    )
    source_version = models.PositiveIntegerField(null=True, blank=True)
    source_strategy = models.CharField(max_length=30, blank=True, default="")
    shared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.CheckConstraint(
                name="context_owner_matches_scope",
                condition=(
                    Q(scope=Scope.SESSION, session__isnull=False, agent__isnull=True)
                    | Q(scope=Scope.AGENT, agent__isnull=False, session__isnull=True)
                    | Q(scope=Scope.GLOBAL, session__isnull=True, agent__isnull=True)
                    | Q(scope=Scope.TEMPORARY)
                ),
            ),
            models.UniqueConstraint(
                fields=["session", "name"], condition=Q(scope=Scope.SESSION), name="context_unique_session_name"
            ),
            models.UniqueConstraint(
                fields=["agent", "name"], condition=Q(scope=Scope.AGENT), name="context_unique_agent_name"
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(scope=Scope.GLOBAL), name="context_unique_global_name"
            ),
        ]

    def __str__(self):
        return f"{self.scope}:{self.owner_label}/{self.name}"

    @property
    def owner(self):
        return self.session or self.agent

    @property
    def owner_label(self):
        if self.session_id:
            return f"session {self.session_id}"
        if self.agent_id:
            return f"agent {self.agent_id}"
        return "-"

    def is_expired(self, now=None):
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class ChangeAction(models.TextChoices):
    ADD = "add", "Added"
    CHANGE = "change", "Changed"
    REMOVE = "remove", "Removed"


class ContextChange(models.Model):
    """One changed path of one write: the write that made `version`.

    `action` tells a stored null from an absent value: `old_value` means
    something only when the path existed before (change, remove) and
    `new_value` only when it exists after (add, change).
    """

    context = models.ForeignKey(Context, on_delete=models.CASCADE, related_name="changes")
    version = models.PositiveIntegerField()
    path = models.CharField(max_length=1000)
    action = models.CharField(max_length=10, choices=ChangeAction.choices)
    old_value = models.JSONField(null=True, blank=True)
    new_value = models.JSONField(null=True, blank=True)
    actor = models.CharField(max_length=250, blank=True, default="")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-version", "id"]
        indexes = [models.Index(fields=["context", "version"], name="context_change_version")]

    def __str__(self):
        return f"v{self.version} {self.action} {self.path}"
