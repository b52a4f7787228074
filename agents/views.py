"""Console pages for agents: the registry list (live: orchestrator.live_pages pushes its `agents`
partial through `render_agent_rows`) and one agent's detail."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, QueryDict
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone

from agents import selectors
from agents.models import AgentStatus, AgentType, Tier
from orchestrator.errors import NotFound, ValidationFailed
from sessions import selectors as session_selectors

AGENTS_SHOWN = 500
CURRENT_TASKS_SHOWN = 3


def _row(agent, now, current=()):
    return {
        "agent": agent,
        "load_percent": min(100, round(100 * agent.utilisation)),
        "heartbeat_age": selectors.heartbeat_age_seconds(agent, now=now),
        "current_tasks": list(current)[:CURRENT_TASKS_SHOWN],
        "more_tasks": max(0, len(current) - CURRENT_TASKS_SHOWN),
    }


def _rows(params):
    """(rows, error) of the list filtered by `params` (type, status, tier, ordering)."""
    now = timezone.now()
    try:
        agents = list(selectors.agent_list(
            agent_type=params.get("type") or None,
            status=params.get("status") or None,
            tier=params.get("tier") or None,
            ordering=params.get("ordering") or None,
        )[:AGENTS_SHOWN])
        error = None
    except ValidationFailed as failure:
        agents, error = [], failure.message
    current = selectors.agent_current_tasks([agent.pk for agent in agents])
    return [_row(agent, now, current.get(agent.pk, [])) for agent in agents], error


def render_agent_rows(*, params: QueryDict) -> str:
    """The agents table as the page's filters show it, for a WebSocket push (out of band)."""
    rows, error = _rows(params)
    return render_to_string("agents/list.html#agents", {"rows": rows, "error": error, "push": True})


@login_required
def agent_list_page(request):
    last_event_id = session_selectors.event_latest_id()  # before the rows: see orchestrator.views.home
    rows, error = _rows(request.GET)
    filters = [
        {"name": name, "choices": choices, "selected": request.GET.get(name, "")}
        for name, choices in (("type", AgentType.values), ("status", AgentStatus.values), ("tier", Tier.values))
    ]
    return render(
        request,
        "agents/list.html",
        {"rows": rows, "error": error, "filters": filters, "last_event_id": last_event_id,
         "query": request.GET.urlencode()},
    )


@login_required
def agent_detail_page(request, agent_id):
    try:
        agent = selectors.agent_get(agent_id)
    except NotFound:
        raise Http404("agent not found") from None
    return render(
        request,
        "agents/detail.html",
        {"row": _row(agent, timezone.now()), "agent": agent, "performance": selectors.agent_performance(agent)},
    )
