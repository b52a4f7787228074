"""An agent's track record: each finished task updates its totals, averages, tier and circuit breaker."""

from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from agents import routing
from agents.models import Agent, AgentStatus
from orchestrator.errors import ValidationFailed

OUTCOMES = ("completed", "failed", "partial")


def _seconds(duration):
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    return duration


def agent_record_result(
    *,
    agent: Agent,
    outcome: str,
    quality: float,
    duration: float,
    tokens: int = 0,
    cost: Decimal = Decimal("0"),
    release: bool = False,
) -> Agent | None:
    """Add one finished task to the agent's track record and recompute tier and circuit breaker.

    `outcome` is completed, failed or partial; `quality` 0-1; `duration` seconds
    or a timedelta; `tokens` and `cost` are that task's totals. Returns the agent.

    With `release`, the unit of capacity the task held is given back too, in the same
    transaction and UPDATE (what `agent_release` does, for the worker at a task's end: one
    transaction instead of two), and nothing is returned.
    """
    errors = {}
    if outcome not in OUTCOMES:
        errors["outcome"] = [f"must be one of {', '.join(OUTCOMES)}"]
    if not isinstance(quality, (int, float)) or not 0 <= quality <= 1:
        errors["quality"] = ["must be a number from 0 to 1"]
    seconds = _seconds(duration)
    if not isinstance(seconds, (int, float)) or seconds < 0:
        errors["duration"] = ["must be a non-negative number of seconds"]
    if not isinstance(tokens, int) or tokens < 0:
        errors["tokens"] = ["must be a non-negative integer"]
    try:
        cost = Decimal(str(cost))
        if cost < 0 or not cost.is_finite():
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        errors["cost"] = ["must be a non-negative amount"]
    if errors:
        raise ValidationFailed(errors=errors)

    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        locked.total_tasks += 1
        n = locked.total_tasks
        if outcome == "completed":
            locked.successful_tasks += 1
        elif outcome == "failed":
            locked.failed_tasks += 1
        else:
            locked.partial_tasks += 1
        locked.average_quality = _running_mean(locked.average_quality, quality, n)
        locked.average_duration_seconds = _running_mean(locked.average_duration_seconds, seconds, n)
        locked.total_tokens += tokens
        locked.total_cost += cost
        locked.success_rate = routing.success_rate(
            total=n, successful=locked.successful_tasks, partial=locked.partial_tasks
        )
        standing = routing.standing_after(
            total=n, success=locked.success_rate, quality=locked.average_quality, breaker_open=locked.circuit_open
        )
        now = timezone.now()
        if standing.breaker_open and not locked.circuit_open:
            locked.circuit_opened_at = now
        elif not standing.breaker_open:
            locked.circuit_opened_at = None
        locked.tier = standing.tier
        locked.circuit_open = standing.breaker_open
        locked.last_task_at = now
        if not release:
            locked.save(update_fields=[*RESULT_FIELDS, "updated_at"])
            return locked
        values = {name: getattr(locked, name) for name in RESULT_FIELDS}
        if locked.current_load > 0:  # the row is locked: its load is exact (agent_release's rules)
            values["current_load"] = locked.current_load - 1
            if locked.current_load == 1 and locked.status == AgentStatus.BUSY:
                values["status"] = AgentStatus.AVAILABLE  # an update: the status field is protected
        Agent.objects.filter(pk=locked.pk).update(**values, updated_at=now)
        if locked.draining and values.get("current_load", locked.current_load) == 0:
            Agent.objects.filter(pk=locked.pk).delete()
    return None


# What agent_record_result writes.
RESULT_FIELDS = (
    "total_tasks", "successful_tasks", "failed_tasks", "partial_tasks", "average_quality",
    "average_duration_seconds", "total_tokens", "total_cost", "success_rate", "tier", "circuit_open",
    "circuit_opened_at", "last_task_at",
)


def _running_mean(previous, value, count):
    if previous is None or count <= 1:
        return float(value)
    return previous + (float(value) - previous) / count
