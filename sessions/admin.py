"""Admin for coding sessions: read-only records, transitions as actions that call the services.

django-fsm-2's own admin buttons call the model directly and would skip the
audit row, the event and the side effects, so they are not used.
"""

from django.contrib import admin, messages
from django.db.models import Q
from django.utils import timezone
from django.utils.timesince import timesince

from orchestrator.errors import DomainError
from sessions import services
from sessions.models import Checkpoint, CodingSession, SessionEvent, SessionTransition

RECENT_EVENTS = 50


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class CheckpointInline(ReadOnlyInline):
    model = Checkpoint
    fields = readonly_fields = ["sequence", "created_at", "opencode_message_id", "git_ref", "data"]
    ordering = ["-sequence"]


class TransitionInline(ReadOnlyInline):
    model = SessionTransition
    fields = readonly_fields = [
        "created_at",
        "from_status",
        "to_status",
        "action",
        "actor_kind",
        "actor_label",
        "reason",
    ]
    ordering = ["-id"]


class RecentEventInline(ReadOnlyInline):
    model = SessionEvent
    verbose_name_plural = f"recent events (last {RECENT_EVENTS})"
    fields = readonly_fields = ["id", "created_at", "type", "payload"]
    ordering = ["-id"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        object_id = (request.resolver_match.kwargs if request.resolver_match else {}).get("object_id")
        if not object_id or not str(object_id).isdigit():
            return queryset
        # The formset filters by session after this; cut at the Nth newest id so
        # a long log does not render thousands of rows.
        threshold = list(
            SessionEvent.objects.filter(session_id=int(object_id)).order_by("-id").values_list("id", flat=True)[
                RECENT_EVENTS - 1 : RECENT_EVENTS
            ]
        )
        return queryset.filter(id__gte=threshold[0]) if threshold else queryset


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", "Not deleted"), ("yes", "Deleted")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


def _run_per_session(modeladmin, request, queryset, verb, call):
    """Call a service for each selected session; report each success and refusal."""
    done = []
    for session in queryset.order_by("pk"):
        try:
            call(session)
        except DomainError as exc:
            modeladmin.message_user(request, f"{session.reference}: {exc.message}", messages.ERROR)
        else:
            done.append(session.reference)
    if done:
        modeladmin.message_user(request, f"{verb}: {', '.join(done)}", messages.SUCCESS)


def _transition_action(name, verb, service, description):
    def run(modeladmin, request, queryset):
        actor = services.Actor.of_user(request.user)
        _run_per_session(
            modeladmin, request, queryset, verb,
            lambda session: service(session=session, actor=actor, reason=f"admin: {verb.lower()}"),
        )

    run.__name__ = name
    run.short_description = description
    run.allowed_permissions = ("change",)
    return run


@admin.register(CodingSession)
class CodingSessionAdmin(admin.ModelAdmin):
    list_display = [
        "reference", "title", "status", "priority", "session_type", "health", "agent", "age", "deleted",
    ]
    list_filter = ["status", "priority", "session_type", DeletedFilter, "created_at"]
    search_fields = ["reference", "title", "repository"]
    list_select_related = ["agent"]
    list_per_page = 50
    show_full_result_count = False
    inlines = [CheckpointInline, TransitionInline, RecentEventInline]
    actions = [
        _transition_action("start_sessions", "Started", services.session_start, "Start (queue for execution)"),
        _transition_action("pause_sessions", "Paused", services.session_pause, "Pause"),
        _transition_action("resume_sessions", "Resumed", services.session_resume, "Resume (queue again)"),
        _transition_action("stop_sessions", "Stopped", services.session_stop, "Stop"),
        _transition_action("cancel_sessions", "Cancelled", services.session_cancel, "Cancel"),
        _transition_action("complete_sessions", "Completed", services.session_complete, "Mark completed"),
        _transition_action("fail_sessions", "Failed", services.session_fail, "Mark failed"),
        _transition_action("retry_sessions", "Retried", services.session_retry, "Retry (back to pending)"),
        _transition_action("time_out_sessions", "Timed out", services.session_timeout, "Mark timed out"),
        _transition_action("degrade_sessions", "Degraded", services.session_degrade, "Mark degraded"),
        _transition_action("recover_sessions", "Recovered", services.session_recover, "Mark recovered"),
        _transition_action("orphan_sessions", "Orphaned", services.session_orphan, "Mark orphaned"),
        "soft_delete_sessions",
    ]
    fieldsets = [
        (None, {"fields": [
            "reference", "title", "status", "description", "session_type", "priority", "repository",
            "model_identifier", "agent", "parent", "tags", "created_by", "created_at", "updated_at", "deleted_at",
        ]}),
        ("Prompt and limits", {"fields": [
            "initial_prompt", "max_duration_seconds", "max_retries", "token_budget_soft", "token_budget_hard",
            "cost_budget_soft", "cost_budget_hard", "permission_policy", "metadata",
        ]}),
        ("Metrics", {"fields": [
            "health", "started_at", "completed_at", "failed_at", "ended_at", "duration_seconds", "retry_count",
            "checkpoint_count", "last_checkpoint_at", "last_checkpoint_sequence", "tokens_input", "tokens_output",
            "tokens_reasoning", "tokens_cache_read", "tokens_cache_write", "cost", "api_calls", "error", "result",
        ]}),
        ("OpenCode", {"fields": [
            "opencode_session_id", "opencode_server_url", "workspace_path", "branch_name", "worker_id",
            "worker_heartbeat_at", "resume_checkpoint",
        ]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        # Every change goes through the services; the admin reads and runs actions.
        return [field for fieldset in self.fieldsets for field in fieldset[1]["fields"]]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="health")
    def health(self, session):
        score = session.health_score
        return f"{score:.1f}{' at risk' if session.is_at_risk else ''}"

    @admin.display(description="age", ordering="created_at")
    def age(self, session):
        return timesince(session.created_at, timezone.now())

    @admin.display(description="deleted", boolean=True)
    def deleted(self, session):
        return session.deleted_at is not None

    @admin.action(description="Delete (soft: hidden from lists and the API)", permissions=["change"])
    def soft_delete_sessions(self, request, queryset):
        actor = services.Actor.of_user(request.user)
        _run_per_session(
            self, request, queryset.filter(Q(deleted_at__isnull=True)), "Deleted",
            lambda session: services.session_delete(session=session, actor=actor),
        )
