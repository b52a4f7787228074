"""Console pages for agents: the registry list and one agent's detail."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone

from agents import selectors
from agents.models import AgentStatus, AgentType, Tier
from orchestrator.errors import NotFound, ValidationFailed


def _row(agent, now):
    return {
        "agent": agent,
        "load_percent": min(100, round(100 * agent.utilisation)),
        "heartbeat_age": selectors.heartbeat_age_seconds(agent, now=now),
    }


@login_required
def agent_list_page(request):
    now = timezone.now()
    try:
        agents = selectors.agent_list(
            agent_type=request.GET.get("type") or None,
            status=request.GET.get("status") or None,
            tier=request.GET.get("tier") or None,
            ordering=request.GET.get("ordering") or None,
        )[:500]
        error = None
    except ValidationFailed as failure:
        agents, error = [], failure.message
    filters = [
        {"name": name, "choices": choices, "selected": request.GET.get(name, "")}
        for name, choices in (("type", AgentType.values), ("status", AgentStatus.values), ("tier", Tier.values))
    ]
    return render(
        request,
        "agents/list.html",
        {"rows": [_row(agent, now) for agent in agents], "error": error, "filters": filters},
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
