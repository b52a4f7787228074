"""Reads of the agent registry: lookups, filtered lists and the performance summary."""

from collections.abc import Sequence
from datetime import datetime

from django.db.models import Case, Expression, F, IntegerField, QuerySet, Value, When
from django.utils import timezone

from agents import routing
from agents.models import Agent
from orchestrator.errors import NotFound, ValidationFailed
from tasks.models import Task

TIER_RANK = {tier: rank for rank, tier in enumerate(routing.TIERS)}

# Public ordering keys -> model expressions; "tier" sorts best first.
ORDERINGS = {
    "name": "name",
    "type": "agent_type",
    "status": "status",
    "tier": "tier_rank",
    "success_rate": "success_rate",
    "load": "current_load",
    "capacity": "max_concurrent_tasks",
    "last_heartbeat": "last_heartbeat_at",
    "created": "created_at",
}


def agent_get(agent_id: int | str) -> Agent:
    """The agent with this id (or AGENT- name); NotFound otherwise."""
    lookup = {"name": agent_id} if isinstance(agent_id, str) and agent_id.startswith("AGENT-") else {"pk": agent_id}
    try:
        return Agent.objects.get(**lookup)
    except (Agent.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"agent {agent_id} not found") from None


def agent_list(
    *,
    agent_type: str | None = None,
    status: str | None = None,
    tier: str | None = None,
    capabilities: Sequence[str] = (),
    ordering: str | None = None,
) -> QuerySet[Agent]:
    """Agents filtered by type, status, tier and held capabilities, in a stable order.

    `capabilities` lists names every returned agent must hold; `ordering` is a
    key of ORDERINGS, "-" for descending. Unknown names raise ValidationFailed.
    """
    queryset = Agent.objects.all()
    if agent_type:
        queryset = queryset.filter(agent_type=agent_type)
    if status:
        queryset = queryset.filter(status=status)
    if tier:
        queryset = queryset.filter(tier=tier)
    if capabilities:
        try:
            mask = routing.capability_mask(capabilities)
        except routing.UnknownCapability as error:
            raise ValidationFailed(field="capability", rule=str(error)) from None
        queryset = queryset.alias(held=routing_mask_expression(mask)).filter(held=mask)
    order = ordering or "name"
    key = order.lstrip("-")
    if key not in ORDERINGS:
        raise ValidationFailed(
            field="ordering", rule=f"must be one of {', '.join(sorted(ORDERINGS))}, optionally with -"
        )
    expression = ORDERINGS[key]
    if expression == "tier_rank":
        queryset = queryset.alias(
            tier_rank=Case(
                *[When(tier=tier_name, then=Value(rank)) for tier_name, rank in TIER_RANK.items()],
                output_field=IntegerField(),
            )
        )
    prefix = "-" if order.startswith("-") else ""
    return queryset.order_by(f"{prefix}{expression}", "name")


def routing_mask_expression(mask: int) -> Expression:
    return F("capability_mask").bitand(mask)


def heartbeat_age_seconds(agent: Agent, *, now: datetime | None = None) -> float | None:
    if agent.last_heartbeat_at is None:
        return None
    return max(0.0, ((now or timezone.now()) - agent.last_heartbeat_at).total_seconds())


def agent_performance(agent: Agent) -> dict:
    """The agent's track record, standing and load as plain values."""
    return {
        "agent": agent.name,
        "total_tasks": agent.total_tasks,
        "successful_tasks": agent.successful_tasks,
        "failed_tasks": agent.failed_tasks,
        "partial_tasks": agent.partial_tasks,
        "success_rate": agent.success_rate,
        "average_quality": agent.average_quality,
        "average_duration_seconds": agent.average_duration_seconds,
        "average_tokens_per_task": agent.average_tokens_per_task,
        "average_cost_per_task": None if agent.average_cost_per_task is None else str(agent.average_cost_per_task),
        "total_tokens": agent.total_tokens,
        "total_cost": str(agent.total_cost),
        "tier": agent.tier,
        "circuit_open": agent.circuit_open,
        "circuit_opened_at": agent.circuit_opened_at,
        "current_load": agent.current_load,
        "max_concurrent_tasks": agent.max_concurrent_tasks,
        "utilisation": agent.utilisation,
        "load_level": agent.load_level,
        "last_task_at": agent.last_task_at,
    }


def agent_current_tasks(agent_ids) -> dict:
    """{agent id: [task, ...]} of the tasks each agent holds now (assigned or in progress), oldest
    first, with their session; one query."""
    found = {}
    rows = (
        Task.objects.filter(assigned_agent_id__in=agent_ids, status__in=["assigned", "in_progress"])
        .select_related("session").only("pk", "title", "status", "assigned_agent_id", "session__reference")
        .order_by("pk")
    )
    for task in rows:
        found.setdefault(task.assigned_agent_id, []).append(task)
    return found
