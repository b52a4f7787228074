"""The database-backed series of /metrics, computed when Prometheus scrapes.

Sessions, transitions, queues, approvals, tokens and cost are facts in the database, so they are
read from it (a few aggregate queries over indexed columns) rather than counted in processes that
may restart: every web replica answers the same values, and a restart loses nothing.
"""

from django.db.models import Count, Q
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.models import Agent
from sessions.models import (
    CodingSession,
    PermissionRequest,
    PermissionRequestStatus,
    Priority,
    SessionStatus,
    SessionTransition,
)

PREFIX = "orchestrator"
NO_WORKER = "unknown"
DEFAULT_MODEL = "default"


def sessions_by_status() -> dict[str, int]:
    counts = dict.fromkeys(SessionStatus.values, 0)
    rows = CodingSession.objects.filter(deleted_at__isnull=True).values_list("status").annotate(n=Count("id"))
    counts.update({status: n for status, n in rows.order_by()})
    return counts


def transitions_by_edge() -> list[tuple[str, str, int]]:
    rows = SessionTransition.objects.values_list("from_status", "to_status").annotate(n=Count("id")).order_by()
    return sorted(rows)


def queue_depth_by_priority() -> dict[str, int]:
    counts = {priority.label.lower(): 0 for priority in Priority}
    names = {priority.value: priority.label.lower() for priority in Priority}
    rows = (CodingSession.objects.filter(status=SessionStatus.QUEUED, deleted_at__isnull=True)
            .values_list("priority").annotate(n=Count("id")).order_by())
    for priority, n in rows:
        counts[names[priority]] += n
    return counts


def running_by_worker() -> dict[str, int]:
    rows = (CodingSession.objects.filter(status__in=[SessionStatus.RUNNING, SessionStatus.DEGRADED])
            .values_list("worker_id").annotate(n=Count("id")).order_by())
    return {worker or NO_WORKER: n for worker, n in rows}


def usage_by_agent() -> list[tuple[str, str, int, float]]:
    """(agent, model, tokens, cost) of every agent that has used any."""
    rows = (Agent.objects.filter(Q(total_tokens__gt=0) | Q(total_cost__gt=0))
            .values_list("name", "model_identifier", "total_tokens", "total_cost").order_by("name"))
    return [(name, model or DEFAULT_MODEL, tokens, float(cost)) for name, model, tokens, cost in rows]


def approvals_pending() -> int:
    return PermissionRequest.objects.filter(status=PermissionRequestStatus.PENDING).count()


class DatabaseCollector(Collector):
    """prometheus-client collector reading the aggregates above at each scrape."""

    def collect(self):
        by_status = GaugeMetricFamily(f"{PREFIX}_sessions", "Sessions (not deleted) by status.", labels=["status"])
        for status, n in sessions_by_status().items():
            by_status.add_metric([status], n)
        yield by_status

        transitions = CounterMetricFamily(
            f"{PREFIX}_session_transitions", "Session transitions recorded in the audit table, by from/to status.",
            labels=["from_status", "to_status"])
        for from_status, to_status, n in transitions_by_edge():
            transitions.add_metric([from_status, to_status], n)
        yield transitions

        queue = GaugeMetricFamily(f"{PREFIX}_session_queue_depth", "Queued sessions by priority.", labels=["priority"])
        for priority, n in queue_depth_by_priority().items():
            queue.add_metric([priority], n)
        yield queue

        running = GaugeMetricFamily(f"{PREFIX}_sessions_running",
                                    "Running or degraded sessions by worker (host:pid).", labels=["worker"])
        for worker, n in running_by_worker().items():
            running.add_metric([worker], n)
        yield running

        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens used, by agent and model.", labels=["agent", "model"])
        cost = CounterMetricFamily(f"{PREFIX}_cost", "Cost in the provider's currency, by agent and model.",
                                   labels=["agent", "model"])
        for agent, model, n_tokens, amount in usage_by_agent():
            tokens.add_metric([agent, model], n_tokens)
            cost.add_metric([agent, model], amount)
        yield tokens
        yield cost

        yield GaugeMetricFamily(f"{PREFIX}_approvals_pending",
                                "Tool-permission requests waiting for an operator's answer.", value=approvals_pending())
