"""The agents app's hand-written SQL: routing's ranked candidate query.

Written as SQL rather than ORM expressions because compiling the score's CASE
expressions cost more than running the query (docs/decisions/0024). The text of
the statement holds only fixed identifiers (the Agent table and its columns) and
placeholders; every value, including the point tables of `agents.routing`, is a
parameter, so the database's ranking and `routing.score` agree by construction.
The tests hold this query to the pure score on a population of agents
(agents/tests/test_routing_sql.py). Portable to SQLite and PostgreSQL.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from django.db import connection

from agents import routing
from agents.models import ROUTABLE_STATUSES, Agent, AgentStatus

# What a candidate row carries: the ranking's inputs and a decision's brief (id, name, type). The other
# columns (prompts, tools, the track record) stay deferred: building every candidate whole was most of
# the cost of routing. A reserved choice is read again whole.
CANDIDATE_COLUMNS = ("id", "name", "agent_type", "tier", "status", "current_load", "max_concurrent_tasks")


@dataclass(frozen=True)
class Candidate:
    """One ranked row: the agent (CANDIDATE_COLUMNS loaded, the rest on access) and its uncapped points."""

    agent: Agent
    raw_points: int


@lru_cache(maxsize=64)
def _ranked_candidates_sql(tier_count: int, excluded_count: int) -> str:
    """The statement for `tier_count` allowed tiers and `excluded_count` excluded ids (placeholders only)."""

    def placeholders(count: int) -> str:
        return ", ".join(["%s"] * count)

    quote = connection.ops.quote_name
    columns = ", ".join(quote(name) for name in CANDIDATE_COLUMNS)
    tier_case = " ".join(["WHEN %s THEN %s"] * len(routing.TIER_POINTS))
    load_case = " ".join(
        ["WHEN current_load * 10 <= max_concurrent_tasks * %s THEN %s"] * len(routing.LOAD_BOUNDS_TENTHS)
    )
    points = (
        f"(CASE tier {tier_case} ELSE 0 END)"
        " + %s"  # matched / required: every candidate holds every required capability
        f" + (CASE {load_case} WHEN current_load < max_concurrent_tasks THEN %s ELSE 0 END)"
        " + (CASE WHEN status = %s THEN %s ELSE 0 END)"
        " + (CASE WHEN id = %s THEN %s ELSE 0 END)"
        " + (CASE WHEN agent_type = %s THEN %s ELSE 0 END)"
    )
    # The bitmask test comes first: one integer AND discards most rows before any text comparison.
    where = (
        "(capability_mask & %s) = %s AND current_load < max_concurrent_tasks"
        f" AND status IN ({placeholders(len(ROUTABLE_STATUSES))}) AND NOT draining"
        f" AND tier IN ({placeholders(tier_count)})"
        " AND (last_heartbeat_at IS NULL OR last_heartbeat_at >= %s)"
    )
    if excluded_count:
        where += f" AND id NOT IN ({placeholders(excluded_count)})"
    return (
        f"SELECT * FROM (SELECT {columns}, {points} AS raw_points FROM {quote(Agent._meta.db_table)} "
        f"WHERE {where}) ranked "
        "ORDER BY (CASE WHEN raw_points > %s THEN %s ELSE raw_points END) DESC, raw_points DESC, current_load, id "
        "LIMIT %s"
    )


def ranked_candidates(
    *,
    mask: int,
    tiers: Sequence[str],
    fresh_after: datetime,
    preferred_agent_id: int | None,
    preferred_type: str | None,
    limit: int,
    exclude_ids: Collection[int] = (),
) -> list[Candidate]:
    """The best `limit` routable agents holding every capability in `mask`, best first.

    Routable: status available or busy, not draining, not full, tier in `tiers`, heartbeat
    at or after `fresh_after` (or never sent). Ranked as `routing.score` ranks them: the
    capped points, then the uncapped points, then the lighter load, then the id.
    """
    params: list = []
    for tier, tier_points in routing.TIER_POINTS.items():
        params += [tier, tier_points]
    params.append(routing.MATCH_POINTS)
    for level, tenths in routing.LOAD_BOUNDS_TENTHS:
        params += [tenths, routing.LOAD_POINTS[level]]
    params.append(routing.LOAD_POINTS[routing.CRITICAL])
    params += [str(AgentStatus.AVAILABLE), routing.AVAILABLE_POINTS]
    params += [preferred_agent_id, routing.PREFERRED_AGENT_POINTS]
    params += [preferred_type, routing.PREFERRED_TYPE_POINTS]
    params += [mask, mask, *(str(status) for status in ROUTABLE_STATUSES), *tiers]
    params.append(connection.ops.adapt_datetimefield_value(fresh_after))
    excluded = sorted(exclude_ids)
    params += excluded
    params += [routing.MAX_POINTS, routing.MAX_POINTS, limit]
    sql = _ranked_candidates_sql(len(tiers), len(excluded))
    return [Candidate(agent=row, raw_points=row.raw_points) for row in Agent.objects.raw(sql, params)]
