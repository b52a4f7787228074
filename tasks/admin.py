"""Tasks in the admin: status read-only, transitions and decomposition as actions calling the services."""

from django.contrib import admin, messages

from orchestrator.errors import DomainError
from tasks import services
from tasks.models import SessionPlan, Task, TaskDependency


class PrerequisiteInline(admin.TabularInline):
    """What this task waits for; read-only, since a new link must pass the cycle check in the service."""

    model = TaskDependency
    fk_name = "dependent"
    fields = ("prerequisite", "dependency_type", "is_required", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = "prerequisite"
    verbose_name_plural = "prerequisites (this task waits for them)"

    def has_add_permission(self, request, obj=None):
        return False


def _run(modeladmin, request, queryset, verb, call):
    done = 0
    for task in queryset:
        try:
            call(task)
            done += 1
        except DomainError as error:
            modeladmin.message_user(request, f"{task}: {error.message}", level=messages.WARNING)
    if done:
        modeladmin.message_user(request, f"{verb} {done} task(s).", level=messages.SUCCESS)


@admin.action(description="Decompose (template chosen from the text, depth 3)")
def decompose(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, "Decomposed", lambda task: services.task_decompose(task=task))


@admin.action(description="Mark ready")
def mark_ready(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, "Marked ready", lambda task: services.task_mark_ready(task=task))


@admin.action(description="Cancel")
def cancel(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, "Cancelled", lambda task: services.task_cancel(task=task, reason="admin"))


@admin.action(description="Skip")
def skip(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, "Skipped", lambda task: services.task_skip(task=task, reason="admin"))


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "session", "status", "priority", "complexity", "expected_hours", "assigned_agent")
    list_filter = ("status", "complexity", "priority", "decomposition_template")
    search_fields = ("title", "description", "session__title")
    list_select_related = ("session", "assigned_agent")
    raw_id_fields = ("session", "parent", "assigned_agent")
    readonly_fields = (
        "status", "expected_hours", "sigma_hours", "complexity", "result", "error", "output", "opencode_session_id",
        "decomposition_template", "decomposition_reason", "created_at", "updated_at", "started_at", "completed_at",
        "ended_at",
    )
    inlines = [PrerequisiteInline]
    actions = [decompose, mark_ready, cancel, skip]

    def has_add_permission(self, request):
        # Tasks are created through the API or a decomposition, where the service validates them.
        return False


@admin.register(TaskDependency)
class TaskDependencyAdmin(admin.ModelAdmin):
    list_display = ("id", "prerequisite", "dependent", "dependency_type", "is_required")
    list_filter = ("dependency_type", "is_required")
    raw_id_fields = ("prerequisite", "dependent")
    readonly_fields = ("prerequisite", "dependent", "dependency_type", "is_required", "created_at")

    def has_add_permission(self, request):
        return False


@admin.register(SessionPlan)
class SessionPlanAdmin(admin.ModelAdmin):
    """Plan versions, read-only: plans change through the plan API (checked, with events)."""

    list_display = ("session", "version", "status", "source", "created_by", "created_at", "decided_by")
    list_filter = ("status", "source")
    search_fields = ("session__title", "comment")
    list_select_related = ("session",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
