"""Admin for agents: status and track record are read-only; changes go through the services."""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from agents import routing, selectors, services
from agents.models import Agent
from orchestrator.errors import DomainError

TRACK_RECORD_FIELDS = (
    "status",
    "current_load",
    "last_heartbeat_at",
    "reported_load",
    "draining",
    "tier",
    "circuit_open",
    "circuit_opened_at",
    "total_tasks",
    "successful_tasks",
    "failed_tasks",
    "partial_tasks",
    "success_rate",
    "average_quality",
    "average_duration_seconds",
    "total_tokens",
    "total_cost",
    "last_task_at",
    "created_at",
    "updated_at",
)
CONFIG_FIELDS = (
    "name",
    "agent_type",
    "description",
    "opencode_agent",
    "model_identifier",
    "system_prompt",
    "temperature",
    "tools",
    "max_concurrent_tasks",
)


class AgentAdminForm(forms.ModelForm):
    capabilities = forms.MultipleChoiceField(
        choices=[(name, name) for name in routing.CAPABILITIES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Agent
        fields = CONFIG_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["capabilities"] = self.instance.capabilities


class CapabilityFilter(admin.SimpleListFilter):
    title = "capability"
    parameter_name = "capability"

    def lookups(self, request, model_admin):
        return [(name, name) for name in routing.CAPABILITIES]

    def queryset(self, request, queryset):
        if self.value() in routing.CAPABILITY_BIT:
            bit = routing.CAPABILITY_BIT[self.value()]
            return queryset.alias(held=selectors.routing_mask_expression(bit)).filter(held=bit)
        return queryset


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentAdminForm
    list_display = ("name", "agent_type", "status", "tier", "load_bar", "success_percent", "heartbeat_age")
    list_filter = ("agent_type", "status", "tier", CapabilityFilter, "draining", "circuit_open")
    search_fields = ("name", "description")
    readonly_fields = TRACK_RECORD_FIELDS
    fieldsets = (
        (None, {"fields": ("name", "agent_type", "capabilities", "description")}),
        ("OpenCode", {"fields": ("opencode_agent", "model_identifier", "system_prompt", "temperature", "tools")}),
        ("Capacity and liveness", {"fields": ("max_concurrent_tasks",) + TRACK_RECORD_FIELDS[:5]}),
        ("Track record", {"fields": TRACK_RECORD_FIELDS[5:]}),
    )
    actions = ("maintenance_on", "maintenance_off", "reset_circuit_breaker")

    @admin.display(description="load")
    def load_bar(self, agent):
        percent = min(100, round(100 * agent.utilisation))
        return format_html(
            '<div class="loadbar" style="width:90px;height:8px;background:#e7ebf3;border-radius:4px;overflow:hidden" '
            'title="{}"><span style="display:block;height:100%;background:#2956d6;width:{}%"></span></div>{}/{} {}',
            agent.load_level,
            percent,
            agent.current_load,
            agent.max_concurrent_tasks,
            agent.load_level,
        )

    @admin.display(description="success rate", ordering="success_rate")
    def success_percent(self, agent):
        return "–" if agent.success_rate is None else f"{agent.success_rate:.0%}"

    @admin.display(description="last heartbeat", ordering="last_heartbeat_at")
    def heartbeat_age(self, agent):
        age = selectors.heartbeat_age_seconds(agent, now=timezone.now())
        return "not monitored" if age is None else f"{age:.0f} s ago"

    def save_model(self, request, obj, form, change):
        values = {name: form.cleaned_data[name] for name in CONFIG_FIELDS if name in form.cleaned_data}
        capabilities = form.cleaned_data["capabilities"]
        if change:
            saved = services.agent_update(agent=obj, capabilities=capabilities, **values)
        else:
            saved = services.agent_register(capabilities=capabilities, **values)
        obj.pk = saved.pk

    def get_actions(self, request):
        # The bulk delete would bypass the in-progress check of agent_delete.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request, obj):
        services.agent_delete(agent=obj, drain=True)

    def _each(self, request, queryset, service, done, **kwargs):
        changed = 0
        for agent in queryset:
            try:
                service(agent=agent, **kwargs)
                changed += 1
            except DomainError as error:
                self.message_user(request, f"{agent.name}: {error.message}", messages.ERROR)
        if changed:
            self.message_user(request, f"{changed} agent(s) {done}.", messages.SUCCESS)

    @admin.action(description="Put into maintenance")
    def maintenance_on(self, request, queryset):
        self._each(request, queryset, services.agent_set_maintenance, "put into maintenance", on=True)

    @admin.action(description="Bring back from maintenance")
    def maintenance_off(self, request, queryset):
        self._each(request, queryset, services.agent_set_maintenance, "back from maintenance", on=False)

    @admin.action(description="Reset circuit breaker")
    def reset_circuit_breaker(self, request, queryset):
        self._each(request, queryset, services.agent_reset_circuit_breaker, "reset to TRAINEE")
