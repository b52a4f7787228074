"""The agent registry: a named OpenCode configuration with the capabilities it is good at.

Capabilities are stored as one bitmask integer (`capability_mask`, bit i is
`routing.CAPABILITIES[i]`). The 26 capabilities are a fixed vocabulary from
SPEC, so a through table would buy nothing but a join: holding every required
capability becomes `capability_mask & required = required`, one expression
on one column that SQLite and PostgreSQL both evaluate inside the candidate
query, with no GROUP BY/HAVING and no per-capability join.
"""

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django_fsm import FSMField, FSMModelMixin, transition

from agents import routing

NAME_PATTERN = r"^AGENT-[A-Z0-9-]+$"
MODEL_PATTERN = r"^[A-Za-z0-9._-]+/[A-Za-z0-9._:@/-]+$"
OPENCODE_AGENT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MIN_CAPACITY, MAX_CAPACITY, DEFAULT_CAPACITY = 1, 50, 5
HEARTBEAT_STALE_SECONDS = 300


class AgentType(models.TextChoices):
    ARCHITECT = "architect"
    IMPLEMENTER = "implementer"
    REVIEWER = "reviewer"
    DEBUGGER = "debugger"
    INTEGRATOR = "integrator"
    ORCHESTRATOR = "orchestrator"
    ANALYST = "analyst"
    OPTIMIZER = "optimizer"


class AgentStatus(models.TextChoices):
    AVAILABLE = "available"
    BUSY = "busy"
    OFFLINE = "offline"
    MAINTENANCE = "maintenance"


# Statuses that accept new work (busy = working, but may still have room).
ROUTABLE_STATUSES = (AgentStatus.AVAILABLE, AgentStatus.BUSY)


class Tier(models.TextChoices):
    ELITE = routing.ELITE
    ADVANCED = routing.ADVANCED
    COMPETENT = routing.COMPETENT
    TRAINEE = routing.TRAINEE
    DEGRADED = routing.DEGRADED


class OpenCodeAgent:
    """OpenCode's built-in agents; any other slug names a custom agent in its config."""

    BUILD = "build"
    PLAN = "plan"
    GENERAL = "general"
    BUILT_IN = (BUILD, PLAN, GENERAL)


class Agent(FSMModelMixin, models.Model):
    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(NAME_PATTERN, "must look like AGENT-NAME (capitals, digits, hyphens)")],
    )
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    capability_mask = models.IntegerField(default=0)
    description = models.TextField(blank=True)

    # What the agent means to OpenCode.
    opencode_agent = models.CharField(
        max_length=64,
        default=OpenCodeAgent.BUILD,
        validators=[RegexValidator(OPENCODE_AGENT_PATTERN, "must be build, plan, general or a custom agent's slug")],
    )
    model_identifier = models.CharField(
        max_length=200,
        blank=True,
        validators=[RegexValidator(MODEL_PATTERN, "must be provider/model")],
        help_text="provider/model; empty means OpenCode's default model",
    )
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(2.0)],
        help_text="empty means the model's default",
    )
    tools = models.JSONField(
        default=dict,
        blank=True,
        help_text='OpenCode tool switches, e.g. {"edit": false, "write": false, "bash": false} for a read-only agent; '
        "empty means OpenCode's defaults",
    )

    # Capacity and liveness.
    max_concurrent_tasks = models.PositiveSmallIntegerField(
        default=DEFAULT_CAPACITY, validators=[MinValueValidator(MIN_CAPACITY), MaxValueValidator(MAX_CAPACITY)]
    )
    current_load = models.PositiveSmallIntegerField(default=0)
    status = FSMField(default=AgentStatus.AVAILABLE, choices=AgentStatus.choices, protected=True)
    # Null = never heard from: a configuration run by the orchestrator's own OpenCode
    # runtime, which is not heartbeat-monitored until the first heartbeat arrives.
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    reported_load = models.FloatField(null=True, blank=True, help_text="utilisation 0-1 the agent last reported")
    draining = models.BooleanField(default=False, help_text="takes no new tasks; removed once idle")

    # Track record.
    total_tasks = models.PositiveIntegerField(default=0)
    successful_tasks = models.PositiveIntegerField(default=0)
    failed_tasks = models.PositiveIntegerField(default=0)
    partial_tasks = models.PositiveIntegerField(default=0)
    success_rate = models.FloatField(null=True, blank=True)
    average_quality = models.FloatField(null=True, blank=True)
    average_duration_seconds = models.FloatField(null=True, blank=True)
    total_tokens = models.BigIntegerField(default=0)
    total_cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    tier = models.CharField(max_length=10, choices=Tier.choices, default=Tier.COMPETENT)
    circuit_open = models.BooleanField(default=False)
    circuit_opened_at = models.DateTimeField(null=True, blank=True)
    last_task_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                name="agent_capacity_1_to_50",
                condition=models.Q(max_concurrent_tasks__gte=MIN_CAPACITY, max_concurrent_tasks__lte=MAX_CAPACITY),
            ),
            models.CheckConstraint(
                name="agent_capability_mask_in_range",
                condition=models.Q(capability_mask__gte=0, capability_mask__lte=routing.ALL_CAPABILITIES_MASK),
            ),
            models.CheckConstraint(
                name="agent_temperature_0_to_2",
                condition=models.Q(temperature__isnull=True) | models.Q(temperature__gte=0, temperature__lte=2),
            ),
            models.CheckConstraint(
                name="agent_agent_type_valid", condition=models.Q(agent_type__in=AgentType.values)
            ),
        ]
        indexes = [
            # The candidate query filters on these before the bitmask test.
            models.Index(fields=["status", "tier"], name="agent_status_tier_idx"),
            models.Index(fields=["agent_type"], name="agent_type_idx"),
        ]

    def __str__(self):
        return self.name

    # --- state machine: each transition only changes fields; services save and audit.
    @transition(field=status, source=[AgentStatus.AVAILABLE, AgentStatus.BUSY], target=AgentStatus.OFFLINE)
    def go_offline(self):
        pass

    @transition(field=status, source=AgentStatus.OFFLINE, target=AgentStatus.AVAILABLE)
    def come_online(self):
        pass

    @transition(
        field=status,
        source=[AgentStatus.AVAILABLE, AgentStatus.BUSY, AgentStatus.OFFLINE],
        target=AgentStatus.MAINTENANCE,
    )
    def enter_maintenance(self):
        pass

    @transition(field=status, source=AgentStatus.MAINTENANCE, target=AgentStatus.AVAILABLE)
    def leave_maintenance(self):
        pass

    @transition(field=status, source=[AgentStatus.AVAILABLE, AgentStatus.BUSY], target=AgentStatus.BUSY)
    def report_busy(self):
        pass

    @transition(field=status, source=[AgentStatus.AVAILABLE, AgentStatus.BUSY], target=AgentStatus.AVAILABLE)
    def report_available(self):
        pass

    # --- derived values
    @property
    def capabilities(self):
        return routing.capabilities_of(self.capability_mask)

    @property
    def utilisation(self):
        return routing.utilisation(self.current_load, self.max_concurrent_tasks)

    @property
    def load_level(self):
        return routing.load_level(self.current_load, self.max_concurrent_tasks)

    @property
    def is_full(self):
        return self.current_load >= self.max_concurrent_tasks

    @property
    def average_tokens_per_task(self):
        return self.total_tokens / self.total_tasks if self.total_tasks else None

    @property
    def average_cost_per_task(self):
        return self.total_cost / self.total_tasks if self.total_tasks else None

    def has_capabilities(self, names):
        required = routing.capability_mask(names)
        return self.capability_mask & required == required
