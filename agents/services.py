"""Every write to the agent registry, and the routing decision; the track record is in
agents/track_record.py (agent_record_result, re-exported here).

Capacity is reserved with one compare-and-set UPDATE
(`current_load < max_concurrent_tasks`), so concurrent routings can never put
more tasks on an agent than it holds; PostgreSQL re-checks the condition on
the row version it finally updates, SQLite serialises writers.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, F, Q, Value, When
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from agents import routing, sql
from agents.models import (
    HEARTBEAT_STALE_SECONDS,
    MAX_CAPACITY,
    ROUTABLE_STATUSES,
    Agent,
    AgentStatus,
    AgentType,
    Tier,
)
from agents.track_record import agent_record_result as agent_record_result
from orchestrator.errors import Conflict, TransitionRefused, ValidationFailed

# How many ranked candidates one query brings back: the choice, 3 alternatives, and
# spares to fall back on when a concurrent routing fills the first choice first.
CANDIDATE_LIMIT = 8
MAX_RESERVE_ROUNDS = 20

HEARTBEAT_STATUSES = (AgentStatus.AVAILABLE, AgentStatus.BUSY, AgentStatus.MAINTENANCE)


class NoAgentAvailable(Conflict):
    """No agent can take the work; `details["reason"]` says why, naming what was missing."""

    code = "no_agent_available"


@dataclass(frozen=True)
class Alternative:
    agent: Agent
    score: float


@dataclass(frozen=True)
class RouteDecision:
    agent: Agent
    score: float
    reason: str
    alternatives: list[Alternative] = field(default_factory=list)
    reserved: bool = False


# --- registration and changes -------------------------------------------------------------

EDITABLE_FIELDS = (
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


def _mask_or_fail(names, *, field_name):
    if isinstance(names, str) or not isinstance(names, (list, tuple, set, frozenset)):
        raise ValidationFailed(field=field_name, rule="must be a list of capability names")
    try:
        return routing.capability_mask(names)
    except routing.UnknownCapability as error:
        raise ValidationFailed(field=field_name, rule=str(error)) from None


def _validate_tools(tools):
    if not isinstance(tools, dict) or not all(
        isinstance(key, str) and isinstance(value, bool) for key, value in tools.items()
    ):
        raise ValidationFailed(field="tools", rule="must map tool names to true or false")


def _full_clean(agent):
    try:
        # clean_fields() re-assigns every field; the protected status may only change by transition.
        agent.full_clean(exclude=["status"])
    except DjangoValidationError as error:
        raise ValidationFailed(
            errors={name: [str(message) for message in messages] for name, messages in error.message_dict.items()}
        ) from None


def _save_new(agent):
    try:
        with transaction.atomic():
            agent.save()
    except IntegrityError:
        # A concurrent registration took the name between the check and the insert.
        raise ValidationFailed(field="name", rule=f"an agent named {agent.name} already exists") from None


def agent_register(
    *,
    name: str,
    agent_type: str,
    capabilities: list,
    description: str = "",
    opencode_agent: str = "build",
    model_identifier: str = "",
    system_prompt: str = "",
    temperature: float | None = None,
    tools: dict | None = None,
    max_concurrent_tasks: int = 5,
) -> Agent:
    """Create an agent, available and COMPETENT; raises ValidationFailed naming each bad field."""
    tools = {} if tools is None else tools
    _validate_tools(tools)
    agent = Agent(
        name=name,
        agent_type=agent_type,
        capability_mask=_mask_or_fail(capabilities, field_name="capabilities"),
        description=description,
        opencode_agent=opencode_agent,
        model_identifier=model_identifier or "",
        system_prompt=system_prompt,
        temperature=temperature,
        tools=tools,
        max_concurrent_tasks=max_concurrent_tasks,
    )
    _full_clean(agent)
    _save_new(agent)
    return agent


def agent_update(*, agent: Agent, capabilities: list | None = None, **changes: Any) -> Agent:
    """Change an agent's description, OpenCode configuration, capabilities or capacity.

    Only the named fields are written, so a concurrent reservation's
    `current_load` is never overwritten. Lowering capacity below the current load
    is allowed: the agent is then full until enough tasks finish.
    """
    unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValidationFailed(errors={name: ["cannot be changed"] for name in unknown})
    if "tools" in changes:
        if changes["tools"] is None:
            changes["tools"] = {}
        _validate_tools(changes["tools"])
    if "model_identifier" in changes and changes["model_identifier"] is None:
        changes["model_identifier"] = ""
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        for name, value in changes.items():
            setattr(locked, name, value)
        updated = list(changes)
        if capabilities is not None:
            locked.capability_mask = _mask_or_fail(capabilities, field_name="capabilities")
            updated.append("capability_mask")
        _full_clean(locked)
        if updated:
            try:
                with transaction.atomic():
                    locked.save(update_fields=[*updated, "updated_at"])
            except IntegrityError:
                raise ValidationFailed(field="name", rule=f"an agent named {locked.name} already exists") from None
    return locked


def agent_delete(*, agent: Agent, drain: bool = False) -> str:
    """Delete an idle agent ("deleted"), or with `drain` mark a busy one to go when idle ("draining").

    A busy agent without `drain` is refused with Conflict naming its tasks in
    progress. A draining agent takes no new tasks; `agent_release` deletes it
    when its last task finishes.
    """
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if locked.current_load > 0:
            if not drain:
                raise Conflict(
                    f"{locked.name} has {locked.current_load} task(s) in progress; delete with drain=true to stop "
                    "new assignments and remove it when idle",
                    details={"tasks_in_progress": locked.current_load},
                )
            if not locked.draining:
                locked.draining = True
                locked.save(update_fields=["draining", "updated_at"])
            return "draining"
        locked.delete()
        return "deleted"


def _transition(agent, method_name, *, attempted):
    try:
        getattr(agent, method_name)()
    except TransitionNotAllowed:
        allowed = [
            transition.name for transition in agent.get_available_status_transitions()  # type: ignore[attr-defined]
        ]
        raise TransitionRefused(kind="agent", current=agent.status, attempted=attempted, allowed=allowed) from None


def agent_set_maintenance(*, agent: Agent, on: bool) -> Agent:
    """Take an agent out of routing for maintenance, or bring it back (available)."""
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if on and locked.status != AgentStatus.MAINTENANCE:
            _transition(locked, "enter_maintenance", attempted="enter_maintenance")
        elif not on and locked.status == AgentStatus.MAINTENANCE:
            _transition(locked, "leave_maintenance", attempted="leave_maintenance")
            if locked.current_load > 0:
                locked.report_busy()
        else:
            return locked
        locked.save(update_fields=["status", "updated_at"])
    return locked


def agent_reset_circuit_breaker(*, agent: Agent) -> Agent:
    """Close an open circuit breaker: the agent returns as TRAINEE (routable) on probation.

    Its track record is kept, so the next finished task recomputes the tier from it.
    """
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if not locked.circuit_open and locked.tier != Tier.DEGRADED:
            return locked
        locked.circuit_open = False
        locked.circuit_opened_at = None
        locked.tier = Tier.TRAINEE
        locked.save(update_fields=["circuit_open", "circuit_opened_at", "tier", "updated_at"])
    return locked


# --- liveness ------------------------------------------------------------------------------


def agent_heartbeat(
    *,
    agent: Agent,
    status: str | None = None,
    tasks_in_progress: int | None = None,
    load: float | None = None,
) -> Agent:
    """Record that the agent is alive; an offline agent comes back (available, or busy when loaded).

    `status` (available, busy, maintenance) is what the agent says of itself;
    `tasks_in_progress` reconciles `current_load` with what the agent is really
    running; `load` (0-1) is its own utilisation figure, kept for display.
    """
    errors = {}
    if status is not None and status not in HEARTBEAT_STATUSES:
        errors["status"] = [f"must be one of {', '.join(HEARTBEAT_STATUSES)}"]
    if tasks_in_progress is not None and not (
        isinstance(tasks_in_progress, int) and 0 <= tasks_in_progress <= MAX_CAPACITY
    ):
        errors["tasks_in_progress"] = [f"must be an integer from 0 to {MAX_CAPACITY}"]
    if load is not None and not (isinstance(load, (int, float)) and 0 <= load <= 1):
        errors["load"] = ["must be a number from 0 to 1"]
    if errors:
        raise ValidationFailed(errors=errors)

    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        locked.last_heartbeat_at = timezone.now()
        update_fields = ["last_heartbeat_at", "status", "updated_at"]
        if locked.status == AgentStatus.OFFLINE:
            locked.come_online()
        if tasks_in_progress is not None:
            if tasks_in_progress > locked.max_concurrent_tasks:
                raise ValidationFailed(
                    field="tasks_in_progress",
                    rule=f"exceeds the agent's capacity of {locked.max_concurrent_tasks}",
                )
            locked.current_load = tasks_in_progress
            update_fields.append("current_load")
        if load is not None:
            locked.reported_load = float(load)
            update_fields.append("reported_load")
        if status == AgentStatus.MAINTENANCE:
            if locked.status != AgentStatus.MAINTENANCE:
                _transition(locked, "enter_maintenance", attempted="enter_maintenance")
        elif status is not None:
            if locked.status == AgentStatus.MAINTENANCE:
                _transition(locked, "leave_maintenance", attempted="leave_maintenance")
            _transition(locked, "report_busy" if status == AgentStatus.BUSY else "report_available", attempted=status)
        elif locked.status in ROUTABLE_STATUSES:
            # Without a stated status, busy simply means "has work".
            if locked.current_load > 0:
                locked.report_busy()
            else:
                locked.report_available()
        locked.save(update_fields=update_fields)
    return locked


def agent_mark_stale_offline(*, stale_after_seconds: int = HEARTBEAT_STALE_SECONDS, now: datetime | None = None) -> int:
    """Mark offline every available or busy agent not heard from for `stale_after_seconds`.

    One compare-and-set UPDATE: a heartbeat that lands first keeps its agent
    online. Agents that never sent a heartbeat are not monitored. Returns how
    many agents went offline.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=stale_after_seconds)
    return Agent.objects.filter(status__in=ROUTABLE_STATUSES, last_heartbeat_at__lt=cutoff).update(
        status=AgentStatus.OFFLINE, updated_at=timezone.now()
    )


# --- capacity ------------------------------------------------------------------------------


def _reservable(queryset):
    return queryset.filter(
        draining=False,
        status__in=ROUTABLE_STATUSES,
        current_load__lt=F("max_concurrent_tasks"),
    ).exclude(tier=Tier.DEGRADED)


def _try_reserve(agent_id) -> bool:
    return (
        _reservable(Agent.objects.filter(pk=agent_id)).update(
            current_load=F("current_load") + 1, status=AgentStatus.BUSY, updated_at=timezone.now()
        )
        == 1
    )


def agent_reserve(*, agent: Agent) -> Agent:
    """Take one unit of the agent's capacity, atomically; Conflict when it is full or not routable.

    Returns the agent as now stored (a new instance).
    """
    if not _try_reserve(agent.pk):
        current = Agent.objects.filter(pk=agent.pk).first()
        if current is None:
            raise Conflict(f"{agent.name} no longer exists")
        raise Conflict(
            f"{current.name} cannot take a task: "
            + _why_not_reservable(current),
            details={"agent": current.name, "status": current.status, "current_load": current.current_load},
        )
    return _fresh(agent.pk)


def _fresh(agent_id):
    # A new instance rather than refresh_from_db(): django-fsm's refresh toggles the
    # protected flag on the shared field object, which races between threads.
    return Agent.objects.get(pk=agent_id)


def _why_not_reservable(agent):
    if agent.draining:
        return "it is draining"
    if agent.status not in ROUTABLE_STATUSES:
        return f"it is {agent.status}"
    if agent.tier == Tier.DEGRADED:
        return "it is DEGRADED (circuit breaker)"
    return f"it is full ({agent.current_load}/{agent.max_concurrent_tasks})"


def agent_release(*, agent: Agent) -> Agent | None:
    """Give back one unit of capacity when a task finishes.

    The agent becomes available again when its last task finishes; a draining
    agent is deleted at that point and None is returned. Releasing an idle agent
    changes nothing. Returns the agent as now stored (a new instance).
    """
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk, current_load__gt=0).update(
            current_load=F("current_load") - 1,
            status=Case(
                When(Q(current_load__lte=1, status=AgentStatus.BUSY), then=Value(AgentStatus.AVAILABLE)),
                default=F("status"),
                output_field=Agent._meta.get_field("status"),
            ),
            updated_at=timezone.now(),
        )
        removed, _ = Agent.objects.filter(pk=agent.pk, draining=True, current_load=0).delete()
    if removed:
        return None
    return _fresh(agent.pk)


# --- routing -------------------------------------------------------------------------------


def _bitand_holds(queryset, mask, alias="held"):
    """Agents holding every capability in `mask` (the test runs in the database)."""
    return queryset.alias(**{alias: F("capability_mask").bitand(mask)}).filter(**{alias: mask})


def _candidates(*, mask, min_tier, preferred_agent_id, preferred_type, now, exclude_ids=()) -> list[sql.Candidate]:
    """The best-ranked routable agents (at most CANDIDATE_LIMIT), filtered and ranked in the database."""
    return sql.ranked_candidates(
        mask=mask,
        tiers=routing.tier_at_least(min_tier or routing.TRAINEE),
        fresh_after=now - timedelta(seconds=HEARTBEAT_STALE_SECONDS),
        preferred_agent_id=preferred_agent_id,
        preferred_type=preferred_type,
        limit=CANDIDATE_LIMIT,
        exclude_ids=exclude_ids,
    )


def _score(agent, *, required, preferred_agent_id, preferred_type):
    return routing.score(
        tier=agent.tier,
        matched=required,
        required=required,
        current_load=agent.current_load,
        capacity=agent.max_concurrent_tasks,
        available=agent.status == AgentStatus.AVAILABLE,
        preferred_agent=agent.pk == preferred_agent_id,
        preferred_type=preferred_type is not None and agent.agent_type == preferred_type,
    )


def _resolve_preferred_agent(preferred_agent):
    if preferred_agent is None or preferred_agent == "":
        return None
    if isinstance(preferred_agent, Agent):
        return preferred_agent.pk
    lookup = Q(name=preferred_agent)
    if isinstance(preferred_agent, int) or (isinstance(preferred_agent, str) and preferred_agent.isdigit()):
        lookup = Q(pk=int(preferred_agent))
    found = Agent.objects.filter(lookup).values_list("pk", flat=True).first()
    if found is None:
        raise ValidationFailed(field="preferred_agent", rule=f"no agent {preferred_agent}")
    return found


def _validate_route_input(required_capabilities, preferred_type, min_tier):
    errors = {}
    mask = 0
    try:
        mask = _mask_or_fail(required_capabilities, field_name="required_capabilities")
    except ValidationFailed as error:
        errors.update(error.errors)
    if preferred_type is not None and preferred_type not in AgentType.values:
        errors["preferred_type"] = [f"must be one of {', '.join(AgentType.values)}"]
    routable_tiers = [tier for tier in routing.TIERS if tier != routing.DEGRADED]
    if min_tier is not None and min_tier not in routable_tiers:
        errors["min_tier"] = [f"must be one of {', '.join(routable_tiers)}"]
    if errors:
        raise ValidationFailed(errors=errors)
    return mask


def agent_route(
    *,
    required_capabilities: list,
    preferred_agent: int | str | None = None,
    preferred_type: str | None = None,
    min_tier: str | None = None,
    reserve: bool = False,
) -> RouteDecision:
    """Choose the best agent for work needing `required_capabilities` (SPEC's score).

    Candidates are filtered and ranked in the database: routable status, not
    draining, heartbeat fresh, tier at least `min_tier` and never DEGRADED, not
    full, holding every required capability; at most CANDIDATE_LIMIT rows reach
    Python. With `reserve`, one unit of the chosen agent's capacity is taken by
    compare-and-set; losing that race to a concurrent routing moves on to the
    next candidate. `preferred_agent` is an Agent, its id or its name. The agents of a decision
    that reserved nothing, and its alternatives, carry sql.CANDIDATE_COLUMNS (others load on access).

    Raises ValidationFailed for unknown capability, type or tier names, and
    NoAgentAvailable (a Conflict) naming the missing capabilities or why every
    holder is excluded (all full, all offline, ...).
    """
    mask = _validate_route_input(required_capabilities, preferred_type, min_tier)
    preferred_agent_id = _resolve_preferred_agent(preferred_agent)
    required = len(set(required_capabilities))
    lost = set()
    for _ in range(MAX_RESERVE_ROUNDS):
        now = timezone.now()
        candidates = _candidates(
            mask=mask,
            min_tier=min_tier,
            preferred_agent_id=preferred_agent_id,
            preferred_type=preferred_type,
            now=now,
            exclude_ids=lost,
        )
        if not candidates:
            _raise_no_candidate(mask=mask, names=required_capabilities, min_tier=min_tier, now=now)
        scored = sorted(
            (
                (
                    _score(
                        agent, required=required, preferred_agent_id=preferred_agent_id, preferred_type=preferred_type
                    ),
                    agent,
                )
                for agent in (candidate.agent for candidate in candidates)
            ),
            key=lambda pair: (-pair[0].points, -pair[0].raw_points, pair[1].current_load, pair[1].pk),
        )
        for index, (parts, agent) in enumerate(scored):
            level = routing.load_level(agent.current_load, agent.max_concurrent_tasks)
            if reserve and not _try_reserve(agent.pk):
                lost.add(agent.pk)
                continue
            if reserve:
                agent = _fresh(agent.pk)
            others = [pair for pair in scored[index + 1 :] if pair[1].pk not in lost][:3]
            return RouteDecision(
                agent=agent,
                score=parts.total,
                reason=routing.reason(
                    parts=parts,
                    matched=required,
                    required=required,
                    level=level,
                    preferred_agent=agent.pk == preferred_agent_id,
                    preferred_type=preferred_type is not None and agent.agent_type == preferred_type,
                ),
                alternatives=[Alternative(agent=other, score=other_parts.total) for other_parts, other in others],
                reserved=reserve,
            )
    raise NoAgentAvailable(
        "every candidate was filled by concurrent routings; try again",
        details={"reason": "contention", "required_capabilities": sorted(set(required_capabilities))},
    )


def _raise_no_candidate(*, mask, names, min_tier, now):
    """Explain, with a few counting queries, why no agent qualified."""
    names = sorted(set(names))
    holders = _bitand_holds(Agent.objects.all(), mask)
    if not holders.exists():
        missing = [
            name for name in names if not _bitand_holds(Agent.objects.all(), routing.CAPABILITY_BIT[name]).exists()
        ]
        if missing:
            raise NoAgentAvailable(
                f"no agent has {', '.join(missing)}",
                details={
                    "reason": "missing_capabilities",
                    "missing_capabilities": missing,
                    "required_capabilities": names,
                },
            )
        raise NoAgentAvailable(
            f"no single agent has all of {', '.join(names)}",
            details={"reason": "no_agent_has_all", "missing_capabilities": [], "required_capabilities": names},
        )
    stale = Q(last_heartbeat_at__lt=now - timedelta(seconds=HEARTBEAT_STALE_SECONDS))
    allowed_tiers = routing.tier_at_least(min_tier or routing.TRAINEE)
    counts = holders.aggregate(
        holders=Count("pk"),
        offline=Count("pk", filter=Q(status=AgentStatus.OFFLINE) | (Q(status__in=ROUTABLE_STATUSES) & stale)),
        maintenance=Count("pk", filter=Q(status=AgentStatus.MAINTENANCE)),
        draining=Count("pk", filter=Q(draining=True)),
        degraded=Count("pk", filter=Q(tier=Tier.DEGRADED)),
        below_min_tier=Count("pk", filter=~Q(tier__in=allowed_tiers) & ~Q(tier=Tier.DEGRADED)),
        full=Count("pk", filter=Q(current_load__gte=F("max_concurrent_tasks"))),
    )
    total = counts["holders"]
    for reason, label in (("full", "full"), ("offline", "offline"), ("maintenance", "in maintenance")):
        if counts[reason] == total:
            summary = f"all {total} agent(s) with {', '.join(names) or 'no particular capability'} are {label}"
            raise NoAgentAvailable(
                summary, details={"reason": f"all_{reason}", "required_capabilities": names, **counts}
            )
    parts = [f"{counts[key]} {label}" for key, label in (
        ("full", "full"),
        ("offline", "offline"),
        ("maintenance", "in maintenance"),
        ("draining", "draining"),
        ("degraded", "DEGRADED"),
        ("below_min_tier", f"below {min_tier}"),
    ) if counts[key]]
    raise NoAgentAvailable(
        f"none of the {total} agent(s) with {', '.join(names) or 'no particular capability'} can take it: "
        f"{', '.join(parts)}",
        details={"reason": "none_routable", "required_capabilities": names, **counts},
    )
